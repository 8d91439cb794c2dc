"""Tiny hand-built ONNX graphs for rule tests (onnx.helper only, seeded random weights).

    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16)            # Conv with random W[16, 8, 3, 3] and bias
    y = g.op("Relu", [y])
    g.output(g.conv(y, 16, 4))
    model = g.model()
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis import AnalysisOptions, analyze
from graphprune.core.graph import GraphView


class GraphBuilder:
    def __init__(self, opset: int = 17, seed: int = 0):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    # ---- tensors ------------------------------------------------------------------------------------
    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, value, name: str | None = None) -> str:
        """An initializer holding `value` (kept in its dtype)."""
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, values, name: str | None = None) -> str:
        return self.const(np.asarray(values, dtype=np.int64), name)

    def weight(self, shape, name: str | None = None, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), name or self._name("w"))

    def positive(self, shape, name: str | None = None) -> str:
        return self.const(self.rng.uniform(0.5, 1.5, shape).astype(np.float32), name or self._name("p"))

    def declare(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        """Record the shape of an intermediate tensor (for ops ONNX shape inference cannot type)."""
        self.value_info.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, *names: str) -> None:
        for n in names:
            self.outputs.append(helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None))

    # ---- nodes --------------------------------------------------------------------------------------
    def op(self, op_type: str, inputs, n_out: int = 1, name: str | None = None, domain: str = "", **attrs):
        """Add a node; returns its output name (or a list of names when n_out > 1)."""
        name = name or self._name(op_type.lower() + "_")
        outs = [f"{name}_out{k}" if n_out > 1 else f"{name}_out" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, bias=True, dims=2, name=None, pad=True, **attrs):
        """Conv with random W[cout, cin/group, k...] (and bias); 'same' padding by default."""
        name = name or self._name("conv")
        w = self.weight([cout, cin // group] + [k] * dims, f"{name}.W")
        ins = [x, w]
        if bias:
            ins.append(self.weight([cout], f"{name}.b"))
        if pad:
            attrs.setdefault("pads", [k // 2] * (2 * dims))
        return self.op("Conv", ins, name=name, group=group, kernel_shape=[k] * dims, **attrs)

    def conv_transpose(self, x, cin, cout, k=2, group=1, bias=True, name=None, **attrs):
        name = name or self._name("convT")
        w = self.weight([cin, cout // group, k, k], f"{name}.W")
        ins = [x, w] + ([self.weight([cout], f"{name}.b")] if bias else [])
        return self.op("ConvTranspose", ins, name=name, group=group, kernel_shape=[k, k], strides=[k, k],
                       **attrs)

    def gemm(self, x, k, n, trans_b=1, name=None, **attrs):
        name = name or self._name("gemm")
        w = self.weight([n, k] if trans_b else [k, n], f"{name}.W")
        return self.op("Gemm", [x, w, self.weight([n], f"{name}.b")], name=name, transB=trans_b, **attrs)

    def matmul(self, x, k, n, name=None):
        name = name or self._name("matmul")
        return self.op("MatMul", [x, self.weight([k, n], f"{name}.W")], name=name)

    def bn(self, x, c, name=None):
        name = name or self._name("bn")
        ins = [x, self.positive([c]), self.weight([c]), self.weight([c]), self.positive([c])]
        return self.op("BatchNormalization", ins, name=name)

    # ---- model --------------------------------------------------------------------------------------
    def model(self, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.inits,
                                  value_info=self.value_info)
        opsets = [helper.make_opsetid("", self.opset)]
        domains = {n.domain for n in self.nodes if n.domain}
        opsets += [helper.make_opsetid(d, 1) for d in sorted(domains)]
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 8
        if not domains:
            _fill_output_shapes(m)
        if check and not domains:
            onnx.checker.check_model(m, full_check=True)
        return m


def _fill_output_shapes(m: onnx.ModelProto) -> None:
    """Graph outputs are declared without a shape; give them the inferred one (the checker wants it)."""
    inferred = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in m.graph.output:
        vi = known.get(o.name)
        if vi is not None and vi.type.tensor_type.HasField("shape"):
            o.type.CopyFrom(vi.type)


# ---- reading analyses ---------------------------------------------------------------------------------


def run_analysis(model, **options):
    opts = AnalysisOptions(**options)
    return analyze(GraphView(model, opts.input_shapes), opts)


def sizes(groups) -> list[int]:
    return sorted(g.size for g in groups)


def group_of(analysis, node: str, kind: str | None = None):
    """The channel group in which `node` is a producer/consumer (or either)."""
    hits = [g for g in analysis.channel_groups
            if (kind in (None, "producer") and node in g.producers)
            or (kind in (None, "consumer") and node in g.consumers)]
    assert len(hits) == 1, f"{node}: {len(hits)} groups {[(g.key, g.producers, g.consumers) for g in hits]}"
    return hits[0]


def group_of_space(analysis, tensor: str, axis: int):
    """Groups containing any element of (tensor, axis)."""
    sp = analysis.spaces.get(tensor, axis)
    roots = set(analysis.roots[sp.offset:sp.offset + sp.size].tolist())
    return [g for g in analysis.groups if roots & set(g.units.tolist())]


def reasons(analysis) -> str:
    return " | ".join(r for g in analysis.frozen for r in g.reasons)


def init_value(model, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def node_by_name(model, name: str) -> onnx.NodeProto:
    for n in model.graph.node:
        if n.name == name:
            return n
    raise KeyError(name)


def attr(model, node: str, name: str, default=None):
    for a in node_by_name(model, node).attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def input_value(model, node: str, k: int) -> np.ndarray:
    """Value of input k of a node in a (pruned) model: an initializer."""
    return init_value(model, node_by_name(model, node).input[k])


def kept(analysis, removed, tensor: str, axis: int) -> np.ndarray:
    """Kept indices of (tensor, axis) when the units `removed` are cut."""
    return np.flatnonzero(analysis.cut(removed).kept(tensor, axis))


def out_shape(model, tensor: str, feeds=None):
    """Run `model` with ORT and return the shape of an intermediate tensor (added as an extra output)."""
    from graphprune.core import runtime

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    feeds = feeds or runtime.synthetic_inputs(model)
    return runtime.run(m, feeds)[-1].shape


def assert_removal_oracle(model, analysis, removed, check: bool = True, seed: int = 0, rtol=1e-4, atol=1e-5):
    """Prune exactly the units `removed` and compare with the masked original (tests.oracle tolerance)."""
    from graphprune.core import runtime
    from graphprune.passes import oracle, rewrite

    removed = np.asarray(removed, dtype=np.int64)
    pruned = rewrite.apply(model, analysis.cut(removed))
    if check:
        onnx.checker.check_model(pruned, full_check=True)
    feeds = runtime.synthetic_inputs(model, seed=seed)
    for g, w in zip(runtime.run(pruned, feeds), runtime.run(oracle.masked_model(model, analysis.cut(removed)), feeds)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * max(1.0, float(np.abs(w).max())))
    return pruned


def assert_oracle_unchecked(model, seed: int = 0, fraction: float = 0.5):
    """tests.oracle.assert_oracle without onnx.checker, for models the checker refuses but ORT runs
    (deprecated op versions such as GroupNormalization-18). Same tolerance."""
    from tests.oracle import random_removal

    a = run_analysis(model)
    assert a.prunable
    removed = random_removal(a, np.random.default_rng(seed), fraction)
    return a, assert_removal_oracle(model, a, removed, check=False, seed=seed), removed
