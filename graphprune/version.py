"""The version of graphprune (a leaf module: the CLI reads it without importing anything else)."""

__version__ = "0.1.0"
