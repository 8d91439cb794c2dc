"""Scoring pass: an importance per unit of every prunable group (higher = keep).

Magnitude scores follow Torch-Pruning's group magnitude: each weight slice that produces or consumes the
group's channels gives a per-channel |w|^p sum, scattered back onto units through the element->unit map,
and the group score is the mean over slices.
"""

from __future__ import annotations

import numpy as np

from graphprune.errors import UsageError

IMPORTANCES = ("l2", "l1", "random")


def score(analysis, importance: str = "l2", seed: int = 0) -> dict[str, np.ndarray]:
    """Scores per group key, aligned with `group.units`."""
    if importance not in IMPORTANCES:
        raise UsageError(f"unknown importance '{importance}' (choose from {', '.join(IMPORTANCES)})")
    groups = analysis.prunable
    if importance == "random":
        rng = np.random.default_rng(seed)
        return {g.key: rng.random(g.size) for g in groups}
    p = 2 if importance == "l2" else 1
    root_score = np.zeros(len(analysis.roots), dtype=np.float64)
    root_slices = np.zeros(len(analysis.roots), dtype=np.float64)
    view = analysis.view
    seen = set()
    for role in analysis.roles:
        if not role.weight:
            continue
        node = view.nodes[role.node]
        tensor = node.input[role.input_index]
        if (tensor, role.axis) in seen:
            continue
        seen.add((tensor, role.axis))
        w = view.const_value(tensor)
        sp = analysis.spaces.spaces[role.space]
        if w is None or w.shape[role.axis] != sp.size:
            continue
        w = np.abs(np.moveaxis(w.astype(np.float64), role.axis, 0).reshape(sp.size, -1))
        per_elem = (w ** p).sum(axis=1)
        roots = analysis.roots[sp.offset:sp.offset + sp.size]
        np.add.at(root_score, roots, per_elem)
        np.add.at(root_slices, np.unique(roots), 1.0)
    out = {}
    for g in groups:
        s = root_score[g.units] / np.maximum(root_slices[g.units], 1.0)
        out[g.key] = s
    return out
