"""Allocation pass: how many units each group loses, and which (the lowest scored).

Uniform allocation removes the fraction `ratio` of every prunable group (the Torch-Pruning convention),
capped by `max_ratio`, keeping at least `min_keep` units and, with `round_to`, a kept channel count that is
a multiple of it where the group is large enough. Global allocation ranks the units of all groups together
on normalised scores and removes the lowest, under the same per-group limits.

The target says what `ratio` measures: `channels` (units, over all prunable groups), or `params` / `macs`:
the fraction of the whole model's parameters or multiply-accumulates to remove. Rounding moves every group
by whole blocks, so one common ratio misses; passes/targets.py searches the per-group counts (a common ratio
then single groups adjusted, or the length of the global ranking's prefix) until the cut, measured exactly,
is within 2 points of the target, and says what stops it where it cannot be (the info's `target`).

Sensitivity allocation (`costs`: the cost curves passes/sensitivity.py measured) is a global allocation whose
ranking is each unit's marginal cost on its group's curve (per parameter or MAC for those targets), so the
budget goes where cutting hurts least; a channel ratio is spent per kind of group (heads, MLP neurons,
channels), and with `uniform_heads` the head groups are cut uniformly.
"""

from __future__ import annotations

import math

import numpy as np

from graphprune.analysis.costs import CostModel
from graphprune.analysis.plan import GroupCut, Plan

from . import sensitivity, targets
from .base import StageResult
from .choices import TARGETS  # noqa: F401 - the accepted values, re-exported
from .scoring import normalize as norm
from .targets import TargetError, group_round_to  # noqa: F401 - re-exported


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


def _uniform_keep(g, ratio, max_ratio, round_to, min_keep) -> int:
    multiple = 1 if g.kind == "head" else g.round_multiple
    return kept_count(g.size, ratio, max_ratio, group_round_to(g, round_to), multiple, min_keep)


def _cut(plan: Plan, g, s: np.ndarray, n_remove: int) -> None:
    if n_remove <= 0:
        return
    order = np.argsort(s, kind="stable")
    plan.cuts[g.key] = GroupCut(g.key, g.size, sorted(int(i) for i in order[:n_remove]))


def allocate(analysis, scores: dict[str, np.ndarray], fingerprint: str, *, ratio: float, ratio_for=None,
             target: str = "channels", global_pruning: bool = False, max_ratio: float | None = None,
             round_to: int | str = 1, min_keep: int = 1, normalize: str = "lamp", options: dict | None = None,
             strict_target: bool = False, costs: dict | None = None, uniform_heads: bool = False) -> StageResult:
    """Plan a cut. The result's value is a Plan; its info has the mode, the ratio asked, the fraction
    achieved and `target` (passes/targets.py: asked, achieved, reachable_max, met, reasons). `ratio_for(kind)`
    gives per-kind ratios for uniform allocation of channels. A target missed by more than 2 points raises
    TargetError with `strict_target`, and is otherwise pruned as closely as it can be and reported."""
    groups = analysis.prunable
    normed = {g.key: norm(scores[g.key], normalize) for g in groups}
    orders = [np.argsort((normed if global_pruning else scores)[g.key], kind="stable") for g in groups]
    ranked = [normed[g.key][o] for g, o in zip(groups, orders)]  # comparable across groups, ascending
    limits = {"max_ratio": max_ratio, "min_keep": min_keep, "round_to": round_to}
    measure = targets.Measure(analysis, groups, orders, CostModel(analysis, target) if target != "channels" else None)
    if costs is not None:  # sensitivity: each unit ranked by its marginal cost (per parameter or MAC)
        ranked = sensitivity.ranked_costs(analysis, groups, costs, target)
    # Per-kind ratios (uniform channels only): each set of groups with the same ratio is searched on its own.
    ratio_of = ratio_for if ratio_for is not None and target == "channels" and not global_pruning else (
        lambda kind: ratio)
    parts: dict = {}
    by_kind = (costs is not None or uniform_heads) and target == "channels" and not global_pruning
    for i, g in enumerate(groups):  # sensitivity and --uniform-heads: one part per kind, keyed (ratio, kind)
        parts.setdefault((ratio_of(g.kind), g.kind) if by_kind else ratio_of(g.kind), []).append(i)
    sub = {r: measure if len(parts) == 1 else targets.Measure(analysis, [groups[i] for i in idx],
                                                             [orders[i] for i in idx])
           for r, idx in parts.items()}

    def steps_with(max_ratio, min_keep, round_to):
        return [targets.removal_steps(g, max_ratio, round_to, min_keep) for g in groups]

    def search(**lim) -> np.ndarray:
        steps = steps_with(**lim)
        if global_pruning or (costs is not None and target != "channels"):
            return targets.search_global(measure, ratio, steps, ranked)
        counts = np.zeros(len(groups), dtype=np.int64)
        for key, idx in parts.items():
            r, kind = key if isinstance(key, tuple) else (key, None)

            def counts_at(x, idx=idx):
                return np.array([groups[i].size - _uniform_keep(groups[i], x, lim["max_ratio"], lim["round_to"],
                                                                lim["min_keep"]) for i in idx])

            if uniform_heads and kind == "head":  # one common ratio, never adjusted group by group
                counts[idx] = _common_ratio(sub[key], r, counts_at)
            elif kind is not None and costs is not None:
                counts[idx] = targets.search_global(sub[key], r, [steps[i] for i in idx], [ranked[i] for i in idx])
            else:
                counts[idx] = targets.search_uniform(sub[key], r, [steps[i] for i in idx],
                                                     [ranked[i] for i in idx], counts_at)
        return counts

    counts = search(**limits)
    plan = Plan(fingerprint, options=dict(options or {}))
    for g, o, n in zip(groups, orders, counts):
        if n > 0:
            plan.cuts[g.key] = GroupCut(g.key, g.size, sorted(int(j) for j in o[:n]))
    achieved = measure(counts)
    info = {"mode": "global" if global_pruning else "sensitivity" if costs is not None else "uniform",
            "ratio": ratio, "achieved": round(achieved, 4)}
    if global_pruning:
        info["normalize"] = normalize
    if costs is not None:
        info["uniform_heads"] = uniform_heads

    def record(m, asked, setting, idx):
        """The target record of the groups idx (all, or those of one per-kind ratio), explained if missed."""
        def steps_of(**lim):
            return [steps_with(**lim)[i] for i in idx]

        t = targets.assess(target, asked, m(counts[idx]), m(targets.most(steps_of(**limits))), setting)
        if not t["met"]:
            targets.explain(t, analysis, m, steps_of, limits, retry=lambda **lim: m(search(**dict(limits, **lim))[idx]))
        return t

    everything = np.arange(len(groups))
    if set(parts) <= {ratio}:  # one ratio for every group (or no group at all)
        t = record(measure, ratio, [("target", target), ("ratio", ratio)], everything)
    else:  # --head-ratio / --mlp-ratio: one record per ratio, and the fraction of all units they ask together
        recs = []
        for key, idx in parts.items():
            r = key[0] if isinstance(key, tuple) else key
            kinds = sorted({groups[i].kind for i in idx})
            names = [("ratio", r)] if r == ratio else [(f"{k}_ratio", r) for k in kinds]
            recs.append(dict(record(sub[key], r, [("target", target)] + names, np.array(idx)), groups=kinds))
        asked = sum(g.size * ratio_of(g.kind) for g in groups) / max(sum(g.size for g in groups), 1)
        t = targets.assess(target, asked, achieved, measure(targets.most(steps_with(**limits))),
                           [("target", target)] + sorted({tuple(p) for rec in recs for p in rec["setting"][1:]}))
        t["met"] = all(rec["met"] for rec in recs)
        t["parts"] = recs
    info["target"] = t
    if strict_target and not t["met"]:
        raise TargetError(t)
    return StageResult(plan, info)


def _common_ratio(measure, ratio: float, counts_at) -> np.ndarray:
    """The counts of the common per-group ratio whose cut comes closest to `ratio` (--uniform-heads: every
    attention block keeps the same number of heads, which adjusting single groups would break)."""
    lo, hi = 0.0, 0.999
    if measure(counts_at(hi)) < ratio:
        return counts_at(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if measure(counts_at(mid)) >= ratio:
            hi = mid
        else:
            lo = mid
    below, above = counts_at(lo), counts_at(hi)
    return below if abs(measure(below) - ratio) <= abs(measure(above) - ratio) else above
