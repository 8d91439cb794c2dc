"""Model statistics (parameters, MACs, size, op counts) and the before/after report of a prune."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from .core.graph import GraphView
from .core.io import model_nbytes


def human(n: float, digits: int = 4) -> str:
    """A count with a K/M/G/T suffix and `digits` significant digits (tables, the HTML page)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.{digits}g}{unit}"
        n /= 1000
    return f"{n:.{digits}g}P"


@dataclass
class ModelStats:
    params: int
    macs: int
    size_bytes: int
    nodes: int
    op_counts: dict


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


def node_macs(view: GraphView, i: int) -> int:
    """Multiply-accumulates of one node (convolutions and matrix products; 0 when shapes are unknown)."""
    node = view.nodes[i]
    op = node.op_type
    try:
        if op in ("Conv", "ConvTranspose"):
            w = view.shape(node.input[1])
            y = view.shape(node.output[0])
            x = view.shape(node.input[0])
            if op == "Conv":
                if None in y:
                    return 0
                return _prod(y) * _prod(w[1:])
            if None in x:
                return 0
            return _prod(x) * _prod(w[1:])
        if op == "Gemm":
            a = view.shape(node.input[0])
            y = view.shape(node.output[0])
            k = a[0] if view.attr(node, "transA", 0) else a[1]
            return _prod(y) * int(k)
        if op == "MatMul":
            a = view.shape(node.input[0])
            y = view.shape(node.output[0])
            if None in y or a[-1] is None:
                return 0
            return _prod(y) * int(a[-1])
    except (TypeError, IndexError):
        return 0
    return 0


def stats(model, view: GraphView | None = None) -> ModelStats:
    view = view or GraphView(model)
    params = 0
    for t in model.graph.initializer:
        params += _prod(t.dims)
    for n in model.graph.node:
        if n.op_type == "Constant":
            v = GraphView.const_value_of_constant_node(n)
            if v is not None and v.size > 1 and np.issubdtype(v.dtype, np.floating):
                params += v.size
    macs = sum(node_macs(view, i) for i in range(len(view.nodes)))
    ops = Counter(n.op_type for n in model.graph.node)
    size = model_nbytes(model)  # ByteSize() serializes every weight, and misses lazy (external) ones
    return ModelStats(params, macs, size, len(model.graph.node), dict(sorted(ops.items())))


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
    timings: dict = field(default_factory=dict)
    version: str = ""
    quality: dict = field(default_factory=dict)  # calibration, scoring, allocation, compensation details
    fidelity: dict = field(default_factory=dict)  # pruned vs original outputs on held-out samples
    internal_errors: list = field(default_factory=list)  # rules that raised (Refusal.to_dict rows): bugs

    def ratio(self, attr: str) -> float:
        b = getattr(self.before, attr)
        return getattr(self.after, attr) / b if b else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = {k: {"before": getattr(self.before, k), "after": getattr(self.after, k),
                            "ratio": round(self.ratio(k), 4)} for k in ("params", "macs", "size_bytes")}
        return d
