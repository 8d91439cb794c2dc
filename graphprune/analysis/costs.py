"""Parameters and multiply-accumulates: of a model, of one node, as a function of a cut, and at stake per
channel group. The one home of this knowledge; the per-op MAC formulas are hooks on the rule table
(`Rule.macs`, registered by the conv and linear rules).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from ..core.graph import GraphView
from ..core.io import model_nbytes
from . import registry


@dataclass
class ModelStats:
    params: int
    macs: int
    size_bytes: int
    nodes: int
    op_counts: dict



def node_macs_and_axes(view: GraphView, i: int) -> tuple[int, list[tuple[str, int]]]:
    """Multiply-accumulates of node i (0 when its op has none or shapes are unknown) and the (tensor, axis)
    channel axes the count is proportional to (it scales with the kept fraction of each)."""
    node = view.nodes[i]
    rule = registry.lookup(node.domain, node.op_type)
    if rule is None or rule.macs is None:
        return 0, []
    try:
        macs, axes = rule.macs(view, node)
        return int(macs), axes
    except (TypeError, IndexError):  # a shape the formula needs is unknown
        return 0, []


def node_macs(view: GraphView, i: int) -> int:
    return node_macs_and_axes(view, i)[0]


def weight_sizes(view: GraphView) -> list[tuple[str, int, int]]:
    """(tensor, elements, rank) of every parameter: each initializer, and each floating Constant node with
    more than one element (Paddle and some tf2onnx exports keep their weights there)."""
    out = [(t.name, math.prod(t.dims), len(t.dims)) for t in view.graph.initializer]
    for node in view.nodes:
        if node.op_type == "Constant":
            v = GraphView.const_value_of_constant_node(node)
            if v is not None and v.size > 1 and np.issubdtype(v.dtype, np.floating):
                out.append((node.output[0], int(v.size), v.ndim))
    return out


def model_stats(model: onnx.ModelProto, view: GraphView | None = None) -> ModelStats:
    view = view or GraphView(model)
    params = sum(n for _, n, _ in weight_sizes(view))
    macs = sum(node_macs(view, i) for i in range(len(view.nodes)))
    ops = Counter(n.op_type for n in model.graph.node)
    size = model_nbytes(model)  # ByteSize() serializes every weight, and misses lazy (external) ones
    return ModelStats(params, macs, size, len(model.graph.node), dict(sorted(ops.items())))


class CostModel:
    """Parameters or MACs of the model as a function of the removed units (exact for the rewrite: each
    term is its original cost times the kept fraction of every channel axis it depends on)."""

    def __init__(self, analysis, what: str):
        self.analysis = analysis
        view = analysis.view
        self.terms: list[tuple[float, list[np.ndarray]]] = []
        if what == "macs":
            for i in range(len(view.nodes)):
                base, axes = node_macs_and_axes(view, i)
                if base:
                    self.terms.append((float(base), self._units(axes)))
        else:
            for name, size, rank in weight_sizes(view):
                self.terms.append((float(size), self._units([(name, ax) for ax in range(rank)])))
        self.total = sum(b for b, _ in self.terms)

    def _units(self, axes) -> list[np.ndarray]:
        a = self.analysis
        return [a.units_of(sp) for t, ax in axes if (sp := a.space(t, ax)) is not None]

    def removed_fraction(self, removed: np.ndarray) -> float:
        """`removed`: boolean mask over unit ids (Cut.removed)."""
        if not self.total:
            return 0.0
        kept = 0.0
        for base, spaces in self.terms:
            f = base
            for r in spaces:
                f *= float(np.mean(~removed[r]))
            kept += f
        return 1.0 - kept / self.total


def group_costs(analysis) -> tuple[np.ndarray, np.ndarray]:
    """Parameters and MACs at stake per channel group: every stored constant sliced along one of the
    group's spaces (weights, biases, norm parameters), and each weighted node's MACs in proportion to the
    group's share of the channels it produces or consumes."""
    view = analysis.view
    n = len(analysis.channel_groups)
    params, macs = np.zeros(n), np.zeros(n)
    if n == 0:
        return params, macs
    unit_group = np.full(analysis.id_count, -1, dtype=np.int64)
    for i, g in enumerate(analysis.channel_groups):
        unit_group[g.units] = i

    def share(sp):
        """Fraction of the axis each group holds."""
        gids = unit_group[analysis.units_of(sp)]
        return np.bincount(gids[gids >= 0], minlength=n) / sp.size

    # A weight whose input and output channels are both in a group (a residual block's inner conv) loses
    # at most all of itself: shares add up per tensor (per node for MACs) and are capped at 1.
    tensor_share: dict[str, np.ndarray] = {}
    for sp in analysis.spaces.spaces:
        if sp.constant:
            tensor_share[sp.tensor] = tensor_share.get(sp.tensor, 0) + share(sp)
    for t, s in tensor_share.items():
        shape = view.shape(t) or []
        params += np.minimum(s, 1.0) * math.prod(d for d in shape if d is not None)
    node_share: dict[int, np.ndarray] = {}
    seen = set()
    for role in analysis.roles:
        if not role.weight or (role.node, role.space) in seen:
            continue
        seen.add((role.node, role.space))
        node_share[role.node] = node_share.get(role.node, 0) + share(analysis.spaces.spaces[role.space])
    for i, s in node_share.items():
        macs += np.minimum(s, 1.0) * node_macs(view, i)
    return params, macs
