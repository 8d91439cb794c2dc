"""Sensitivity pass: what cutting each group costs, measured on calibration samples, and the allocation of a
global budget across groups by those costs (fragile layers keep more; Kwon et al. 2022).

Requires the analysis, per-unit scores (the order in which a group loses units) and calibration samples.
Ensures, for every prunable group, a cost curve: the model outputs' relative squared error against the
original, ||y' - y||^2 / ||y||^2 averaged over outputs, when only that group loses its k lowest-scored units,
at a few counts k (SENSITIVITY_FRACTIONS of the group). With calibration statistics, a removed channel reads
as its mean at every linear layer (what bias compensation leaves of the cut), else as zero. The curves are
measured by ablation through one session of the oracle's unit-mask model (`oracle.unit_mask_model`), which
computes what the rewrite would, so nothing is rewritten.

`ranked_costs` turns the curves into a ranking for allocation (passes/allocation.py): each group's curve is
made monotone and replaced by its lower convex envelope, and each unit is ranked by the marginal cost it
adds there (per parameter or MAC for those targets). The global search over that ranking takes the cheapest
units of all groups first, which is optimal for the sum of the groups' costs (the groups are assumed to add
up, as separate ablations do for small errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphprune.analysis.costs import group_costs
from graphprune.core.compare import cosine, flat, relative_error
from graphprune.errors import ModelError, first_line

from .base import StageResult
from .calibration import Calibration, batches, progress, session_for
from .oracle import KEEP_INPUT, unit_mask_model


def resolve(allocation: str, have_data: bool) -> str:
    """What `auto` stands for: uniform allocation (sensitivity measures and allocates only when asked)."""
    return "uniform" if allocation == "auto" else allocation


SENSITIVITY_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # of a group's units, per curve point
SENSITIVITY_SAMPLES = 32  # calibration samples the curves are measured on


@dataclass
class Curve:
    """Output error when only this group loses its `counts[i]` lowest-scored units (counts[0] is 0)."""

    key: str
    kind: str
    size: int
    counts: np.ndarray
    costs: np.ndarray
    relative_errors: np.ndarray | None = None  # ||y' - y|| / ||y|| over all outputs together, per count
    cosines: np.ndarray | None = None  # cosine of all outputs together, per count

    def cost(self, k) -> np.ndarray:
        """Interpolated (monotone) cost of removing k units; beyond the last measured count it grows linearly
        with the last segment's slope."""
        c = np.maximum.accumulate(np.maximum(self.costs, 0.0))
        k = np.asarray(k, dtype=np.float64)
        last = len(self.counts) - 1
        if last == 0:
            return np.zeros_like(k)
        slope = (c[last] - c[last - 1]) / max(self.counts[last] - self.counts[last - 1], 1)
        inside = np.interp(k, self.counts, c)
        return np.where(k > self.counts[last], c[last] + slope * (k - self.counts[last]), inside)

    def to_dict(self) -> dict:
        return {"group": self.key, "kind": self.kind, "size": self.size,
                "points": [[int(k), float(f"{c:.4g}")] for k, c in zip(self.counts, self.costs)]}


def curve_counts(size: int, fractions=SENSITIVITY_FRACTIONS) -> list[int]:
    """Unit counts a curve is measured at: 0, then the fractions of the group (every count for small groups,
    never the whole group)."""
    if size <= len(fractions) + 1:
        return list(range(size))
    return sorted({0} | {min(size - 1, max(1, int(round(f * size)))) for f in fractions})


def fill_values(stats: dict | None) -> dict:
    """What a removed channel reads as at each linear layer's input: its mean on the calibration samples
    (bias compensation folds that into the layer): {layer output: (input, channel axis, means)}."""
    return {y: (st.layer.x, st.layer.x_axis, st.mean) for y, st in (stats or {}).items()
            if st.sum is not None and not st.estimated}


def measure(analysis, scores: dict[str, np.ndarray], calib: Calibration, samples: int = SENSITIVITY_SAMPLES,
            fractions=SENSITIVITY_FRACTIONS, groups=None, fill: dict | None = None) -> StageResult:
    """Cost curves of the prunable groups (the result's value: {group key: Curve}); its info: samples and
    runs, whether removed channels read as their mean (`fill`, from `fill_values`) or as zero, and the groups
    that could not be measured (their consumers are integer or quantized weights)."""
    groups = list(analysis.prunable if groups is None else groups)
    info: dict = {"samples": 0, "runs": 0, "removed_read_as": "mean" if fill else "zero", "unmeasured": []}
    model = analysis.view.model
    units = np.concatenate([g.units for g in groups]) if groups else np.zeros(0, dtype=np.int64)
    masked, unmaskable = unit_mask_model(model, analysis, units, fill)
    n = min(samples, calib.n_train)
    if calib.batch:
        n = max(calib.batch, n - n % calib.batch)
    feeds = {k: v[:n] for k, v in calib.train.items()}
    try:
        sess = session_for(masked, calib)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"sensitivity curves need ONNX Runtime to run the model: {first_line(exc, 1000)}") from None
    bs = calib.batch or max(1, min(n, 16))
    offset = {}
    pos = 0
    for g in groups:
        offset[g.key] = pos
        pos += g.size

    def run(keep: np.ndarray) -> list[np.ndarray]:
        try:
            outs = [sess.run(None, {**b, KEEP_INPUT: keep}) for b in batches(feeds, bs, calib.constants)]
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's many kinds
            raise ModelError(f"sensitivity curves need ONNX Runtime to run the model: {first_line(exc, 1000)}") \
                from None
        return [np.concatenate([o[i] for o in outs]).astype(np.float64) for i in range(len(outs[0]))]

    ones = np.ones(len(units), dtype=np.float32)
    base = run(ones)
    base_flat = flat(base)
    curves: dict[str, Curve] = {}
    todo = [g for g in groups if not np.isin(g.units, list(unmaskable)).any()] if unmaskable else groups
    info["unmeasured"] = [g.key for g in groups if g not in todo]
    total = sum(len(curve_counts(g.size, fractions)) - 1 for g in todo)
    with progress("sensitivity: one group at a time", total) as advance:
        for g in todo:
            order = np.argsort(scores[g.key], kind="stable")
            counts = curve_counts(g.size, fractions)
            costs, errors, cosines = [0.0], [0.0], [1.0]
            for k in counts[1:]:
                keep = ones.copy()
                keep[offset[g.key] + order[:k]] = 0.0
                got = run(keep)
                costs.append(float(np.mean([relative_error(r.ravel(), p.ravel()) ** 2 for r, p in zip(base, got)])))
                errors.append(relative_error(base_flat, flat(got)))
                cosines.append(cosine(base_flat, flat(got)))
                info["runs"] += 1
                advance()
            curves[g.key] = Curve(g.key, g.kind, g.size, np.asarray(counts), np.asarray(costs), np.asarray(errors),
                                  np.asarray(cosines))
    info["samples"] = n
    info["curves"] = [c.to_dict() for c in curves.values()]
    return StageResult(curves, info)


# ---- allocation by cost ------------------------------------------------------------------------------------
BEYOND = 1e6  # marginal cost factor of units past a curve's last measured count: cut only when nothing else is left


def _envelope(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex envelope of the points (x ascending)."""
    pts: list[int] = []
    for i in range(len(x)):
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def marginal_costs(curve: Curve) -> np.ndarray:
    """[size]: what the k-th unit removed adds to the group's cost, on the lower convex envelope of the
    (monotone) curve, so ascending: ranking all groups' units by it and taking a prefix is the cheapest cut for
    any budget, when the groups' costs add up. Units past the last measured count rank last."""
    last = int(curve.counts[-1])
    k = np.arange(last + 1, dtype=np.float64)
    c = curve.cost(k)
    hull = _envelope(k, c)
    out = np.zeros(curve.size)
    out[:last] = np.diff(np.interp(k, k[hull], c[hull]))
    out[last:] = BEYOND * max(float(c[-1]), 1e-12)
    return np.maximum.accumulate(out)


def ranked_costs(analysis, groups, curves: dict[str, Curve], target: str = "channels") -> list[np.ndarray]:
    """Per group (aligned with `groups`), its units' marginal costs in the order they are removed, per unit of
    the budget: per unit for a channel ratio, per parameter or MAC at stake for those targets. A group without
    a curve ranks after every measured unit."""
    weight = None
    if target != "channels":
        at_stake = group_costs(analysis)[0 if target == "params" else 1]
        index = {g.key: i for i, g in enumerate(analysis.channel_groups)}
        weight = {g.key: max(float(at_stake[index[g.key]]) / g.size, 1e-12) for g in groups}
    out, top = [], 0.0
    for g in groups:
        c = curves.get(g.key)
        m = marginal_costs(c) if c is not None else None
        if m is not None and weight is not None:
            m = m / weight[g.key]
        out.append(m)
        if m is not None and len(m):
            top = max(top, float(np.max(m)))
    return [m if m is not None else np.full(g.size, 2.0 * top + 1.0) for g, m in zip(groups, out)]


__all__ = ["Curve", "curve_counts", "fill_values", "marginal_costs", "measure", "ranked_costs", "resolve"]
