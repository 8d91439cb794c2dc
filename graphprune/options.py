"""PruneOptions: one dataclass feeds both the CLI flags and the Python keyword arguments."""

from __future__ import annotations

import numbers
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import UsageError


@dataclass
class PruneOptions:
    ratio: float = 0.5
    head_ratio: float | None = None  # attention heads (default: ratio)
    mlp_ratio: float | None = None  # MLP neurons of linear layers (default: ratio)
    max_ratio: float | None = None
    round_to: int | str = "auto"  # "auto": 16 (8 in groups of 16-31 channels), see passes/allocation.py
    exclude: tuple[str, ...] = ()
    importance: str = "auto"  # l2 without calibration data or BatchNorm, see passes/scoring.py
    input_shapes: dict = field(default_factory=dict)
    seed: int = 0
    validate: bool = True
    prune_head_dim: bool = False
    prune_hidden: bool = False
    # Post-training quality (passes/calibration.py, scoring.py, allocation.py, compensation.py).
    calib: object = None  # .npz path, dict of arrays keyed by input name, or an iterable of feed dicts
    calib_samples: int | None = None
    reduction: str = "mean"  # how a unit's consumers/slices combine: mean, sum, max
    normalize: str = "lamp"  # per-group score normalisation for global ranking: lamp, mean, zscore, none
    global_pruning: bool = False
    target: str = "channels"  # what --ratio measures: channels, params, macs
    min_keep: int = 1  # units kept in every group at least
    compensate: str = "auto"  # none, bias, lstsq, all (auto: all with data, bias from BatchNorm without, or none)
    ridge: float = 1e-3
    atol: float | None = None
    rtol: float | None = None
    debug: bool = False  # a rule that raises propagates instead of freezing its node (the CLI's --debug)

    def check(self) -> PruneOptions:
        # The API passes Python values straight in: a wrong type must be a UsageError, not a TypeError deep
        # inside allocation, and a lone string for `exclude` must not become one pattern per character.
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        if not all(isinstance(p, str) for p in self.exclude):
            raise UsageError(f"exclude must be glob strings, got {list(self.exclude)!r}")
        for name in ("ratio", "head_ratio", "mlp_ratio", "max_ratio", "ridge", "atol", "rtol"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise UsageError(f"{name} must be a number, got {v!r}")
                setattr(self, name, float(v))
        for name in ("round_to", "seed", "min_keep", "calib_samples"):
            v = getattr(self, name)
            if (v is None and name == "calib_samples") or (v == "auto" and name == "round_to"):
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                kind = "an integer or 'auto'" if name == "round_to" else "an integer"
                raise UsageError(f"{name} must be {kind}, got {v!r}")
            setattr(self, name, int(v))
        if not (0.0 <= self.ratio < 1.0):
            raise UsageError(f"--ratio must be in [0, 1), got {self.ratio}")
        for name in ("head_ratio", "mlp_ratio"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.max_ratio is not None and not (0.0 <= self.max_ratio < 1.0):
            raise UsageError(f"--max-ratio must be in [0, 1), got {self.max_ratio}")
        if self.round_to != "auto" and self.round_to < 1:
            raise UsageError(f"--round-to must be 'auto' or a positive integer, got {self.round_to}")
        from graphprune.passes.scoring import IMPORTANCES

        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")
        self._check_quality()
        self.exclude = tuple(self.exclude)
        return self

    def _check_quality(self) -> None:
        from graphprune.passes.allocation import TARGETS
        from graphprune.passes.compensation import MODES
        from graphprune.passes.scoring import NORMALIZATIONS, REDUCTIONS

        for name, allowed in (("reduction", REDUCTIONS), ("normalize", NORMALIZATIONS), ("target", TARGETS),
                              ("compensate", MODES)):
            v = getattr(self, name)
            if v not in allowed:
                raise UsageError(f"--{name} must be one of {', '.join(allowed)}, got {v!r}")
        if not isinstance(self.debug, (bool, np.bool_)):
            raise UsageError(f"debug must be True or False, got {self.debug!r}")
        self.debug = bool(self.debug)
        if not isinstance(self.global_pruning, (bool, np.bool_)):
            raise UsageError(f"global_pruning must be True or False, got {self.global_pruning!r}")
        self.global_pruning = bool(self.global_pruning)
        if self.min_keep < 1:
            raise UsageError(f"--min-keep must be a positive integer, got {self.min_keep}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be a positive integer, got {self.calib_samples}")
        if self.calib_samples is not None and self.calib is None:
            raise UsageError("--calib-samples needs calibration data (--calib)")
        if self.ridge < 0:
            raise UsageError(f"--ridge must be >= 0, got {self.ridge}")
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UsageError(f"--{name} must be >= 0, got {v}")
        if self.target != "channels" and (self.head_ratio is not None or self.mlp_ratio is not None):
            raise UsageError("--head-ratio/--mlp-ratio only apply with --target channels")
        if self.global_pruning and (self.head_ratio is not None or self.mlp_ratio is not None):
            raise UsageError("--head-ratio/--mlp-ratio only apply to uniform allocation (not --global)")
        if isinstance(self.calib, os.PathLike):
            self.calib = os.fspath(self.calib)

    def ratio_for(self, kind: str) -> float:
        """The ratio a group of this kind gets: --head-ratio / --mlp-ratio where given, else --ratio."""
        if kind == "head" and self.head_ratio is not None:
            return self.head_ratio
        if kind == "mlp" and self.mlp_ratio is not None:
            return self.mlp_ratio
        return self.ratio

    def to_dict(self) -> dict:
        calib = self.calib
        self.calib = None  # asdict would deep-copy (and a report would embed) the calibration arrays
        try:
            d = asdict(self)
        finally:
            self.calib = calib
        d["exclude"] = list(self.exclude)
        d["calib"] = calib if calib is None or isinstance(calib, str) else f"<{type(calib).__name__}>"
        return d

    @classmethod
    def from_kwargs(cls, **kwargs) -> PruneOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**kwargs).check()


def parse_input_shapes(specs: list[str]) -> dict[str, list[int]]:
    """`name:1,3,224,224` (onnxsim style); several may be given."""
    out = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shape '{spec}' must look like name:1,3,224,224")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape '{spec}': dims must be integers") from None
        if any(d <= 0 for d in out[name]):
            raise UsageError(f"--input-shape '{spec}': dims must be positive")
    return out
