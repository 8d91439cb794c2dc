"""Allocation pass: how many units each group loses, and which (the lowest scored).

Uniform allocation removes the fraction `ratio` of every prunable group (the Torch-Pruning convention),
capped by `max_ratio`, keeping at least `min_keep` units and, with `round_to`, a kept channel count that is
a multiple of it where the group is large enough. Global allocation ranks the units of all groups together
on normalised scores and removes the lowest, under the same per-group limits.

The target says what `ratio` measures: `channels` (units, per group when uniform, over all groups when
global), or `params` / `macs`: the fraction of the whole model's parameters or multiply-accumulates to
remove. For those, the cut is searched (a common per-group ratio, or the length of the global ranking's
prefix; the closest to the target the channel granularity allows) with an exact cost model: every MAC-counting node and every weight scales with the kept fraction of
each of its channel axes.
"""

from __future__ import annotations

import math

import numpy as np

from graphprune.analysis.costs import CostModel
from graphprune.analysis.plan import GroupCut, Plan

from .base import StageResult
from .choices import TARGETS  # noqa: F401 - the accepted values, re-exported
from .scoring import normalize as norm


def kept_count(n: int, ratio: float, max_ratio: float | None, round_to: int, channels_per_unit: int,
               min_keep: int = 1) -> int:
    """Units to keep in a group of n units."""
    r = min(ratio, max_ratio) if max_ratio is not None else ratio
    keep = n - int(math.floor(n * r + 1e-9))
    if round_to > 1:
        q = round_to // math.gcd(round_to, channels_per_unit)
        if q > 1 and n >= q and keep < n:
            # The nearest of the multiples of q and the whole group (an uncut group is never made smaller by
            # rounding, so --ratio 0 changes nothing); at least one block is kept.
            lower = max(q, (keep // q) * q)
            upper = min(n, lower + q)
            keep = lower if keep - lower < upper - keep else upper
            if max_ratio is not None:
                # Rounding to the nearest multiple may round down past the cap: max_ratio is a promise,
                # so round up instead (keeping the whole group when no multiple fits).
                floor_keep = n - int(math.floor(n * max_ratio + 1e-9))
                if keep < floor_keep:
                    keep = -(-floor_keep // q) * q
                    keep = n if keep > n else keep
    return max(1, min(n, max(keep, min(min_keep, n))))


def allocate_uniform(analysis, scores: dict[str, np.ndarray], ratio, fingerprint: str,
                     max_ratio: float | None = None, round_to: int | str = 1, options: dict | None = None,
                     min_keep: int = 1) -> Plan:
    """`ratio` is a number, or a function of the group kind ("head", "mlp", "channel", "hidden")."""
    plan = Plan(fingerprint, options=dict(options or {}))
    ratio_of = ratio if callable(ratio) else (lambda kind: ratio)
    for g in analysis.prunable:
        keep = _uniform_keep(g, ratio_of(g.kind), max_ratio, round_to, min_keep)
        _cut(plan, g, scores[g.key], g.size - keep)
    return plan


def group_round_to(g, round_to: int | str) -> int:
    """The channel multiple a group's kept count is rounded to. Whole heads are never rounded (--round-to
    is about channel counts). "auto" (the default) is 16 in groups of at least 32 channels and 8 in groups of
    16 to 31: vectorised CPU kernels work on blocks of channels (ONNX Runtime's NCHWc layout: 8 with AVX2,
    16 with AVX-512) and fall back to slower kernels, with layout conversions around them, for counts that
    are not a multiple; GPU tensor cores want multiples of 8. benchmarks/results/speed.md measured it."""
    if g.kind == "head":
        return 1
    if round_to != "auto":
        return int(round_to)
    channels = g.size * g.round_multiple
    return 16 if channels >= 32 else 8 if channels >= 16 else 1


def _uniform_keep(g, ratio, max_ratio, round_to, min_keep) -> int:
    multiple = 1 if g.kind == "head" else g.round_multiple
    return kept_count(g.size, ratio, max_ratio, group_round_to(g, round_to), multiple, min_keep)


def _cut(plan: Plan, g, s: np.ndarray, n_remove: int) -> None:
    if n_remove <= 0:
        return
    order = np.argsort(s, kind="stable")
    plan.cuts[g.key] = GroupCut(g.key, g.size, sorted(int(i) for i in order[:n_remove]))


def _unit_cost(analysis, removed_units: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(analysis.id_count + 1, dtype=bool)
    for u in removed_units:
        mask[u] = True
    return mask


def allocate(analysis, scores: dict[str, np.ndarray], fingerprint: str, *, ratio: float, ratio_for=None,
             target: str = "channels", global_pruning: bool = False, max_ratio: float | None = None,
             round_to: int | str = 1, min_keep: int = 1, normalize: str = "lamp", options: dict | None = None
             ) -> StageResult:
    """Plan a cut (the result's value: a Plan; its info: mode, target, the ratio asked and achieved, and a note
    when the target cannot be reached); `ratio_for(kind)` gives per-kind ratios for uniform allocation."""
    groups = analysis.prunable
    info = {"mode": "global" if global_pruning else "uniform", "target": target, "ratio": ratio}
    if not global_pruning and target == "channels":
        plan = allocate_uniform(analysis, scores, ratio_for or ratio, fingerprint, max_ratio, round_to,
                                options, min_keep)
        info["achieved"] = _achieved(analysis, plan, "channels")
        return StageResult(plan, info)
    cost = CostModel(analysis, target) if target != "channels" else None
    total_units = sum(g.size for g in groups) or 1

    def removed_of(plan: Plan) -> float:
        if cost is None:
            return plan.n_removed / total_units
        mask = _unit_cost(analysis, [g.units[np.asarray(plan.cuts[g.key].removed, dtype=np.int64)]
                                     for g in groups if g.key in plan.cuts])
        return cost.removed_fraction(mask)

    if not global_pruning:
        def make(r: float) -> Plan:
            return allocate_uniform(analysis, scores, r, fingerprint, max_ratio, round_to, options, min_keep)

        lo, hi = 0.0, 0.999
        if removed_of(make(hi)) >= ratio:
            for _ in range(40):
                mid = (lo + hi) / 2
                if removed_of(make(mid)) >= ratio:
                    hi = mid
                else:
                    lo = mid
        plan = _closest(make(lo), make(hi), removed_of, ratio)
        info["group_ratio"] = round(hi, 4)
    else:
        normed = {g.key: norm(scores[g.key], normalize) for g in groups}
        order_in = {g.key: np.argsort(normed[g.key], kind="stable") for g in groups}
        limit = {g.key: g.size - _uniform_keep(g, max_ratio if max_ratio is not None else 1.0, max_ratio,
                                               1, min_keep) for g in groups}
        flat_s = np.concatenate([normed[g.key] for g in groups]) if groups else np.zeros(0)
        flat_g = np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)]) if groups else np.zeros(0, int)
        rank = np.argsort(flat_s, kind="stable")
        ranked_groups = flat_g[rank]

        def make(k: int) -> Plan:
            counts = np.bincount(ranked_groups[:k], minlength=len(groups))
            plan = Plan(fingerprint, options=dict(options or {}))
            for i, g in enumerate(groups):
                n_rm = min(int(counts[i]), limit[g.key])
                n_rm = _round_removal(g, n_rm, round_to, limit[g.key])
                if n_rm > 0:
                    plan.cuts[g.key] = GroupCut(g.key, g.size, sorted(int(j) for j in order_in[g.key][:n_rm]))
            return plan

        lo, hi = 0, len(rank)
        if removed_of(make(hi)) < ratio:
            lo = hi
        while lo < hi:
            mid = (lo + hi) // 2
            if removed_of(make(mid)) >= ratio:
                hi = mid
            else:
                lo = mid + 1
        plan = _closest(make(max(lo - 1, 0)), make(lo), removed_of, ratio)
        info["normalize"] = normalize
    achieved = removed_of(plan)
    info["achieved"] = round(achieved, 4)
    if achieved + 1e-3 < ratio:
        info["note"] = (f"target not reachable: at most {achieved:.1%} of the {target} can be removed "
                        "with these limits (frozen groups, --max-ratio, --min-keep)")
    return StageResult(plan, info)


def _closest(below: Plan, above: Plan, removed_of, ratio: float) -> Plan:
    """Of the cuts just below and just at or above the target, the one closer to it (channels are
    removed whole, so a target is met as closely as the channel granularity allows)."""
    return below if abs(removed_of(below) - ratio) < abs(removed_of(above) - ratio) else above


def _round_removal(g, n_rm: int, round_to: int, limit: int) -> int:
    """Round the kept count up to a multiple of round_to (in channels) where the group allows it."""
    round_to = group_round_to(g, round_to)
    if round_to <= 1 or n_rm <= 0:
        return n_rm
    q = round_to // math.gcd(round_to, g.round_multiple)
    if q <= 1 or g.size < q:
        return n_rm
    keep = g.size - n_rm
    keep = min(g.size, -(-keep // q) * q)
    return max(0, min(limit, g.size - keep))


def _achieved(analysis, plan: Plan, target: str) -> float:
    total = sum(g.size for g in analysis.prunable) or 1
    return round(plan.n_removed / total, 4)
