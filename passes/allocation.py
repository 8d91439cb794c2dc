"""Allocation pass: how many units each group loses, and which (the lowest scored).

Uniform allocation removes the fraction `ratio` of every prunable group (the Torch-Pruning convention),
capped by `max_ratio`, keeping at least one unit and, with `round_to`, a kept channel count that is a
multiple of it where the group is large enough.
"""

from __future__ import annotations

import math

import numpy as np

from graphprune.plan import GroupCut, Plan


def kept_count(n: int, ratio: float, max_ratio: float | None, round_to: int, channels_per_unit: int) -> int:
    """Units to keep in a group of n units."""
    r = min(ratio, max_ratio) if max_ratio is not None else ratio
    keep = n - int(math.floor(n * r + 1e-9))
    if round_to > 1:
        q = round_to // math.gcd(round_to, channels_per_unit)
        if q > 1 and n >= q:
            keep = max(q, int(math.floor(keep / q + 0.5)) * q)
            keep = min(keep, (n // q) * q) if keep > n else keep
            if max_ratio is not None:
                # Rounding to the nearest multiple may round down past the cap: max_ratio is a promise,
                # so round up instead (keeping the whole group when no multiple fits).
                floor_keep = n - int(math.floor(n * max_ratio + 1e-9))
                if keep < floor_keep:
                    keep = -(-floor_keep // q) * q
                    keep = n if keep > n else keep
    return max(1, min(n, keep))


def allocate_uniform(analysis, scores: dict[str, np.ndarray], ratio, fingerprint: str,
                     max_ratio: float | None = None, round_to: int = 1, options: dict | None = None) -> Plan:
    """`ratio` is a number, or a function of the group kind ("head", "mlp", "channel", "hidden")."""
    plan = Plan(fingerprint, options=dict(options or {}))
    ratio_of = ratio if callable(ratio) else (lambda kind: ratio)
    for g in analysis.prunable:
        multiple = 1 if g.kind == "head" else g.round_multiple
        rt = 1 if g.kind == "head" else round_to  # whole heads: --round-to is about channel counts
        keep = kept_count(g.size, ratio_of(g.kind), max_ratio, rt, multiple)
        n_remove = g.size - keep
        if n_remove <= 0:
            continue
        s = scores[g.key]
        order = np.argsort(s, kind="stable")
        removed = sorted(int(i) for i in order[:n_remove])
        plan.cuts[g.key] = GroupCut(g.key, g.size, removed)
    return plan
