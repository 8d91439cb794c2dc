"""The dependency analyzer: op rules, channel spaces, groups."""

from .analyzer import Analysis, AnalysisOptions, Group, analyze

__all__ = ["Analysis", "AnalysisOptions", "Group", "analyze"]
