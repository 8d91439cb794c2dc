"""A weight is a weight wherever it is stored: an initializer, a Constant node (Paddle exports), or a
constant seen through Transpose / Cast on the way to its layer. Pruning the same model in each form must
give the same plan, scores, compensated weights and fidelity (issue 11, item 1)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphprune
from graphprune.core.graph import GraphView

from .test_compensation import constant_channel_model, feeds
from .tinynet import tinynet


def as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer becomes a Constant node of the same name (what paddle2onnx writes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in g.initializer]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    names = {t.name for t in model.graph.initializer}
    keep = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(keep)
    return out


def through_layout_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """2-D weights stored transposed and read through a Transpose, 4-D ones stored as float16 and read
    through a Cast to float (what tf2onnx and mixed-precision exports write)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    readers = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    added = []
    for t in g.initializer:
        if len(readers.get(t.name, [])) != 1 or readers[t.name][0].op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        reader = readers[t.name][0]
        if list(reader.input).index(t.name) != 1:
            continue
        v = numpy_helper.to_array(t)
        name = t.name
        stored = f"{name}__stored"
        if v.ndim == 2:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(v.T), stored))
            added.append(helper.make_node("Transpose", [stored], [name], perm=[1, 0]))
        elif v.ndim == 4:
            t.CopyFrom(numpy_helper.from_array(v.astype(np.float16), stored))
            added.append(helper.make_node("Cast", [stored], [name], to=onnx.TensorProto.FLOAT))
    nodes = added + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every stored float tensor as its layer reads it, by the name the layer reads (layout ops undone)."""
    view = GraphView(model)
    out = {}
    for node in model.graph.node:
        for t in node.input:
            sw = view.weight(t) if t else None
            if sw is not None and node.op_type not in ("Transpose", "Cast", "Constant"):
                v = np.asarray(view.const_value(t))
                if v.dtype.kind == "f":
                    out[t.removesuffix("__stored")] = v.astype(np.float64)
    return out


def _compare(a, b, tol):
    def cuts(r):  # group keys name a tensor and axis of the group: the stored one where layout ops were added
        return sorted(list(c.removed) for c in r.plan.cuts.values())

    assert cuts(a) == cuts(b)
    assert a.report.quality.get("scoring") == b.report.quality.get("scoring")
    ca, cb = a.report.quality.get("compensation", {}), b.report.quality.get("compensation", {})
    assert ca.get("layers") == cb.get("layers")
    assert ca.get("skipped") == cb.get("skipped")
    wa, wb = weights_of(a.model), weights_of(b.model)
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=tol, atol=tol, err_msg=k)
    assert a.report.before.params == b.report.before.params and a.report.after.params == b.report.after.params
    assert a.report.before.macs == b.report.before.macs and a.report.after.macs == b.report.after.macs
    assert bool(a.report.fidelity) == bool(b.report.fidelity)
    for name, row in a.report.fidelity.get("outputs", {}).items():
        other = b.report.fidelity["outputs"][name]
        assert abs(row["relative_error"] - other["relative_error"]) <= max(tol, 1e-3 * row["relative_error"])


SETTINGS = [
    dict(ratio=0.5),  # data-free: magnitude scores, BatchNorm-estimate bias compensation
    dict(ratio=0.5, calib="feeds", importance="wanda", compensate="all"),
    dict(ratio=0.5, calib="feeds", importance="reconstruction", compensate="lstsq", target="macs",
         global_pruning=True),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return onnx.load(str(tinynet(tmp_path_factory.mktemp("tiny") / "tiny.onnx", tmp_path_factory)))


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_constant_nodes_prune_like_initializers(tiny, setting):
    kw = dict(SETTINGS[setting])
    if kw.get("calib") == "feeds":
        kw["calib"] = {"input": np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)}
    a = graphprune.prune(tiny, **kw)
    b = graphprune.prune(as_constant_nodes(tiny), **kw)
    _compare(a, b, 1e-5)
    if "calib" in kw:  # the data-aware path really ran on the Constant-node model
        assert b.report.quality["scoring"]["importance"] == kw["importance"]
        assert not b.report.quality["scoring"].get("magnitude_fallback")
        assert len(b.report.quality["compensation"]["layers"]) > 0


@pytest.mark.parametrize("consumer", ["conv1x1", "matmul"])
def test_layout_ops_prune_like_initializers(consumer):
    m = constant_channel_model(consumer)
    shape = (6, 6, 3) if consumer == "matmul" else (3, 6, 6)
    kw = dict(ratio=0.375, calib=feeds(64, shape), importance="wanda", compensate="all")
    a = graphprune.prune(m, **kw)
    b = graphprune.prune(through_layout_ops(m), **kw)
    # float16 storage rounds the Conv weights, so the comparison is at float16 precision there
    _compare(a, b, 1e-5 if consumer == "matmul" else 2e-2)
    assert len(b.report.quality["compensation"]["layers"]) == len(a.report.quality["compensation"]["layers"]) > 0
    assert not b.report.quality["compensation"]["skipped"]


def test_quantized_weight_is_named_not_refit():
    """A weight read through DequantizeLinear is scored from its dequantized values; the re-fit skips it
    and says why."""
    m = constant_channel_model("conv1x1")
    g = m.graph
    w = next(t for t in g.initializer if t.name == "c2.W")
    v = numpy_helper.to_array(w)
    scale = float(np.abs(v).max() / 127)
    q = np.clip(np.round(v / scale), -127, 127).astype(np.int8)
    w.CopyFrom(numpy_helper.from_array(q, "c2.Wq"))
    g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "c2.s"),
                          numpy_helper.from_array(np.array(0, np.int8), "c2.z")])
    g.node.insert(0, helper.make_node("DequantizeLinear", ["c2.Wq", "c2.s", "c2.z"], ["c2.W"]))
    r = graphprune.prune(m, ratio=0.375, calib=feeds(64), importance="wanda", compensate="all")
    comp = r.report.quality["compensation"]
    assert any("quantized" in why for why in comp["skipped"].values())
    assert not r.report.quality["scoring"].get("magnitude_fallback")


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_transformer_constant_nodes_prune_like_initializers(name):
    """MatMul + Add biases, LayerNorm/RMSNorm scales and attention reshapes, all read from Constant nodes."""
    from graphprune.core import runtime
    from models.transformers_zoo import get_transformer_model

    model = onnx.load(str(get_transformer_model(name)))
    shapes = {k: [48] + list(v[1:]) for k, v in runtime.probe_input_shapes(model, {}).items()}
    calib = runtime.random_feeds(model, shapes, seed=1)
    kw = dict(ratio=0.5, calib=calib, calib_samples=32, importance="wanda", compensate="all")
    a = graphprune.prune(model, **kw)
    b = graphprune.prune(as_constant_nodes(model), **kw)
    _compare(a, b, 1e-4)
    assert len(b.report.quality["compensation"]["layers"]) > 0
