"""The before/after report of a prune (statistics from analysis/costs.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .analysis.costs import ModelStats
from .errors import python_name
from .passes.targets import miss_lines


@dataclass
class Report:
    before: ModelStats
    after: ModelStats
    groups_total: int
    groups_pruned: int
    groups_frozen: list = field(default_factory=list)  # [{"group", "size", "nodes", "reasons", "refusals"}]
    channels_removed: int = 0
    channels_total: int = 0
    validation: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds per pipeline stage
    sessions: dict = field(default_factory=dict)  # ONNX Runtime sessions created per pipeline stage
    version: str = ""
    quality: dict = field(default_factory=dict)  # calibration, scoring, allocation, compensation details
    fidelity: dict = field(default_factory=dict)  # pruned vs original outputs on held-out samples
    internal_errors: list = field(default_factory=list)  # rules that raised (Refusal.to_dict rows): bugs
    kept: list = field(default_factory=list)  # per prunable group: kind, layer, units kept of its size
    attention: dict = field(default_factory=dict)  # num_heads and width per attention block; uniform or not
    warnings: list = field(default_factory=list)  # one line each: a missed --target (with the reachable maximum), a --max-error no cut meets

    def warning_lines(self, name_of=python_name) -> list[str]:
        """The warnings, naming options with `name_of`: `ratio=0.3` by default, `--ratio 0.3` from the CLI
        (options.cli_name). A target missed by more than 2 points is one line: how far it could go and why."""
        lines = miss_lines((self.quality.get("allocation") or {}).get("target"), name_of)
        search = self.quality.get("search") or {}
        return lines + ([search["warning"]] if search.get("warning") else [])

    def ratio(self, attr: str) -> float:
        b = getattr(self.before, attr)
        return getattr(self.after, attr) / b if b else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = {k: {"before": getattr(self.before, k), "after": getattr(self.after, k),
                            "ratio": round(self.ratio(k), 4)} for k in ("params", "macs", "size_bytes")}
        return d
