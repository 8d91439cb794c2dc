"""The pass contract: every pipeline stage returns a StageResult, the value it made and what it did.

A pass is a function from declared inputs (the model, the analysis, a cut, options) to a value; the
pipeline (graphprune/pipeline.py) wraps each in a `Stage` that names what it needs and what it provides,
times it, and files its `info` in the report. A stage whose preconditions do not hold raises
`PreconditionError` naming the stage and what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphprune.errors import UsageError


@dataclass
class StageResult:
    value: Any = None
    info: dict = field(default_factory=dict)


class PreconditionError(UsageError):
    """A stage was asked to run without what it needs (e.g. calibration data for a data-aware score)."""
