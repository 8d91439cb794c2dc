"""Parameters and multiply-accumulates: of a model, of one node, as a function of a cut, and at stake per
channel group. The one home of this knowledge; the per-op MAC formulas are hooks on the rule table
(`Rule.macs`, registered by the conv, linear and recurrent rules).
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



def node_mac_terms(view: GraphView, i: int) -> list[tuple[int, list[tuple[str, int]]]]:
    """Multiply-accumulates of node i as terms (macs, the (tensor, axis) channel axes the term is
    proportional to: it scales with the kept fraction of each). A hook gives one term, or a list where
    parts of the count scale differently (a recurrent layer's input and recurrence). No terms when the op
    has no MACs or a shape the formula needs is unknown."""
    node = view.nodes[i]
    rule = registry.lookup(node.domain, node.op_type)
    if rule is None or rule.macs is None:
        return []
    try:
        terms = rule.macs(view, node)
        terms = terms if isinstance(terms, list) else [terms]
        return [(int(macs), axes) for macs, axes in terms]
    except (TypeError, IndexError):  # a shape the formula needs is unknown
        return []


def node_macs(view: GraphView, i: int) -> int:
    return sum(macs for macs, _ in node_mac_terms(view, i))


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
    term is its original cost times the kept fraction of every channel axis it depends on).

    The terms are kept as flat arrays (each distinct channel axis once), so one evaluation is a few numpy
    reductions: allocation evaluates many cuts while it searches for a target."""

    def __init__(self, analysis, what: str):
        self.analysis = analysis
        view = analysis.view
        terms: list[tuple[float, list]] = []
        if what == "macs":
            for i in range(len(view.nodes)):
                for base, axes in node_mac_terms(view, i):
                    if base:
                        terms.append((float(base), self._spaces(axes)))
        else:
            for name, size, rank in weight_sizes(view):
                terms.append((float(size), self._spaces([(name, ax) for ax in range(rank)])))
        self.base = np.array([b for b, _ in terms], dtype=np.float64)
        self.total = float(self.base.sum())
        axis_of: dict[int, int] = {}  # space id -> index among the distinct axes
        units: list[np.ndarray] = []
        self.term_axes: list[list[int]] = []
        for _, spaces in terms:
            idx = []
            for sp in spaces:
                if sp.id not in axis_of:
                    axis_of[sp.id] = len(units)
                    units.append(analysis.units_of(sp))
                idx.append(axis_of[sp.id])
            self.term_axes.append(idx)
        self.axis_units = units
        self._flat = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
        self._sizes = np.array([len(u) for u in units], dtype=np.float64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes[:-1])]).astype(np.int64) if units else None
        scaled = [i for i, ax in enumerate(self.term_axes) if ax]
        self._const = float(sum(self.base[i] for i, ax in enumerate(self.term_axes) if not ax))
        self._scaled_base = self.base[scaled]
        self._pair_axis = np.array([a for i in scaled for a in self.term_axes[i]], dtype=np.int64)
        lengths = [len(self.term_axes[i]) for i in scaled]
        self._pair_starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64) if scaled else None

    def _spaces(self, axes) -> list:
        a = self.analysis
        return [sp for t, ax in axes if (sp := a.space(t, ax)) is not None]

    def axis_kept(self, removed: np.ndarray) -> np.ndarray:
        """The kept fraction of every distinct channel axis (in `axis_units` order)."""
        if self._starts is None:
            return np.zeros(0)
        hit = np.add.reduceat(removed[self._flat].astype(np.float64), self._starts)
        return 1.0 - hit / self._sizes

    def removed_fraction(self, removed: np.ndarray) -> float:
        """`removed`: boolean mask over unit ids (Cut.removed)."""
        if not self.total:
            return 0.0
        kept = self._const
        if self._pair_starts is not None:
            per_term = np.multiply.reduceat(self.axis_kept(removed)[self._pair_axis], self._pair_starts)
            kept += float(self._scaled_base @ per_term)
        return 1.0 - kept / self.total

    def fixed_shares(self, movable: np.ndarray, label: np.ndarray, n_labels: int, channel: np.ndarray
                     ) -> tuple[float, np.ndarray]:
        """What no cut of the `movable` units (boolean mask over unit ids) can remove: the cost a term keeps
        when every movable unit is gone (its base times the fixed fraction of each of its axes), as a fraction
        of the total, and that floor split over the labels of the fixed units holding it (`label`: int per
        unit id, in [0, n_labels)). Only channel axes (with a unit in the `channel` mask) hold a share, each
        axis of a term an equal part: a kernel or spatial axis is never cut, so it holds nothing back. The
        last of the n_labels + 1 shares is the cost of terms with no channel axis at all."""
        shares = np.zeros(n_labels + 1)
        if not self.total:
            return 0.0, shares
        dist = []  # per axis: None (not a channel axis), or its fixed fraction and the fixed units' labels
        for u in self.axis_units:
            if not channel[u].any():
                dist.append(None)
                continue
            fixed = ~movable[u]
            hist = np.bincount(label[u][fixed], minlength=n_labels).astype(np.float64)
            dist.append((float(fixed.mean()), hist / hist.sum() if hist.sum() else hist))
        for base, axes in zip(self.base, self.term_axes):
            held = [dist[a] for a in axes if dist[a] is not None]
            if not held:
                shares[n_labels] += base
                continue
            floor = base * math.prod(f for f, _ in held)
            if floor:
                shares[:n_labels] += floor * sum(h for _, h in held) / len(held)
        shares /= self.total
        return float(shares.sum()), shares


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
