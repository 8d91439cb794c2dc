"""The dependency analyzer: op rules, channel spaces, groups."""

# The rules register themselves on import; importing them with the package completes the table whichever
# module looks a rule up first (a MAC count from costs.py before any analysis used to count 0).
from . import rules  # noqa: F401
from .analyzer import Analysis, AnalysisOptions, Group, analyze

__all__ = ["Analysis", "AnalysisOptions", "Group", "analyze"]
