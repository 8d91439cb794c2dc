"""Property-based tests: random small CNNs and MLPs from the supported op set must analyze, prune to a valid
model and equal the masked original (tests/oracle.py); mutated valid models must fail cleanly.

The graphs are drawn by hypothesis with a fixed example budget and derandomized, so the file runs the same
examples every time in a few seconds; benchmarks/robustness.py runs the same generators with a larger budget.
"""

from __future__ import annotations

import io
import random
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import graphprune
from graphprune.core import runtime
from tests import corpus
from tests.graphs import GraphBuilder
from tests.oracle import assert_oracle, assert_ratio_zero_identical

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CNN_EXAMPLES = 40
MLP_EXAMPLES = 30
MUTANTS = 100

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "Elu", "Identity")


# ---- random CNNs -------------------------------------------------------------------------------------------
class _Net:
    """A GraphBuilder plus the current tensor, its channel count and spatial size."""

    def __init__(self, draw, opset):
        self.g = GraphBuilder(opset=opset, seed=draw(st.integers(0, 2**16)))
        self.draw = draw

    def conv(self, x, cin, cout, **kw):
        return self.g.conv(x, cin, cout, **kw)


def _channels(draw):
    return draw(st.sampled_from([4, 6, 8, 12, 16]))


def _cnn_block(net: _Net, x: str, c: int, hw: int, draw) -> tuple[str, int, int]:
    g = net.g
    kind = draw(st.sampled_from(["conv", "conv_bn", "grouped", "depthwise", "residual", "concat", "split",
                                 "slice", "pool", "transpose_linear", "act", "mul_const"]))
    if kind in ("conv", "conv_bn"):
        cout = _channels(draw)
        k = draw(st.sampled_from([1, 3]))
        y = g.conv(x, c, cout, k=k, bias=draw(st.booleans()))
        if kind == "conv_bn":
            y = g.bn(y, cout)
        return g.op(draw(st.sampled_from(ACTIVATIONS)), [y]), cout, hw
    if kind == "grouped":
        groups = draw(st.sampled_from([d for d in (2, 4) if c % d == 0] or [1]))
        cout = groups * draw(st.sampled_from([1, 2, 3]))
        return g.op("Relu", [g.conv(x, c, cout, group=groups)]), cout, hw
    if kind == "depthwise":
        mult = draw(st.sampled_from([1, 2]))
        return g.op("Relu", [g.conv(x, c, c * mult, group=c)]), c * mult, hw
    if kind == "residual":
        y = g.op("Relu", [g.conv(x, c, c)])
        return g.op("Add", [x, g.conv(y, c, c, k=1)]), c, hw
    if kind == "concat":
        c1, c2 = _channels(draw), _channels(draw)
        a = g.op("Relu", [g.conv(x, c, c1, k=1)])
        b = g.op("Relu", [g.conv(x, c, c2)])
        parts = [a, b] + ([x] if draw(st.booleans()) else [])
        return g.op("Concat", parts, axis=1), c1 + c2 + (c if len(parts) == 3 else 0), hw
    if kind == "split":
        c1 = draw(st.integers(1, c - 1)) if c > 1 else 0
        if not c1:
            return x, c, hw
        a, b = g.op("Split", [x, g.ints([c1, c - c1])], n_out=2, axis=1)
        cout = _channels(draw)
        return g.op("Add", [g.conv(a, c1, cout, k=1), g.conv(b, c - c1, cout)]), cout, hw
    if kind == "slice":
        lo = draw(st.integers(0, c - 1))
        hi = draw(st.integers(lo + 1, c))
        return g.op("Slice", [x, g.ints([lo]), g.ints([hi]), g.ints([1])]), hi - lo, hw
    if kind == "pool" and hw >= 4:
        op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
        return g.op(op, [x], kernel_shape=[2, 2], strides=[2, 2]), c, hw // 2
    if kind == "transpose_linear":
        # NHWC detour: a MatMul over the channel axis (a 1x1 conv written as a linear layer)
        cout = _channels(draw)
        t = g.op("Transpose", [x], perm=[0, 2, 3, 1])
        t = g.op("Add", [g.matmul(t, c, cout), g.weight([cout])])
        return g.op("Transpose", [t], perm=[0, 3, 1, 2]), cout, hw
    if kind == "mul_const":
        return g.op("Mul", [x, g.positive([c, 1, 1])]), c, hw
    return g.op(draw(st.sampled_from(ACTIVATIONS)), [x]), c, hw


def _cnn_head(net: _Net, x: str, c: int, hw: int, draw) -> str:
    g = net.g
    kind = draw(st.sampled_from(["gap_gemm", "flatten_gemm", "reshape_matmul", "conv_out"]))
    n_out = draw(st.sampled_from([3, 5]))
    if kind == "gap_gemm":
        return g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [x])]), c, n_out)
    if kind == "flatten_gemm":  # every spatial position of every channel is a feature: channel blocks
        return g.gemm(g.op("Flatten", [x]), c * hw * hw, n_out)
    if kind == "reshape_matmul":
        y = g.op("Reshape", [x, g.ints([1, c * hw * hw])])
        return g.matmul(y, c * hw * hw, n_out)
    return g.conv(x, c, n_out, k=1)


@st.composite
def cnns(draw):
    net = _Net(draw, opset=draw(st.sampled_from([14, 17])))  # HardSwish needs 14
    c, hw = 3, draw(st.sampled_from([4, 6, 8]))
    x = net.g.input("input", [1, c, hw, hw])
    c1 = _channels(draw)
    x, c = net.g.op("Relu", [net.g.conv(x, 3, c1)]), c1
    for _ in range(draw(st.integers(1, 4))):
        x, c, hw = _cnn_block(net, x, c, hw, draw)
    net.g.output(_cnn_head(net, x, c, hw, draw))
    return net.g.model()


# ---- random MLPs -------------------------------------------------------------------------------------------
@st.composite
def mlps(draw):
    g = GraphBuilder(opset=17, seed=draw(st.integers(0, 2**16)))
    batch_dims = draw(st.sampled_from([[2], [2, 5]]))  # [B, F] or tokens [B, T, F]
    f = draw(st.sampled_from([6, 8, 12]))
    x = g.input("input", batch_dims + [f])
    gemm_ok = len(batch_dims) == 1
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["linear", "residual", "concat", "split", "act"]))
        h = draw(st.sampled_from([8, 12, 16, 24]))
        if kind == "linear":
            use_gemm = gemm_ok and draw(st.booleans())
            y = g.gemm(x, f, h) if use_gemm else g.op("Add", [g.matmul(x, f, h), g.weight([h])])
            x, f = g.op(draw(st.sampled_from(ACTIVATIONS)), [y]), h
        elif kind == "residual":
            y = g.op("Relu", [g.matmul(x, f, h)])
            x = g.op("Add", [x, g.matmul(y, h, f)])
        elif kind == "concat":
            a = g.op("Relu", [g.matmul(x, f, h)])
            b = g.op("Sigmoid", [g.matmul(x, f, 8)])
            x, f = g.op("Concat", [a, b], axis=-1), h + 8
        elif kind == "split" and f > 1:
            f1 = draw(st.integers(1, f - 1))
            a, b = g.op("Split", [x, g.ints([f1, f - f1])], n_out=2, axis=-1)
            x = g.op("Mul", [g.matmul(a, f1, h), g.op("Sigmoid", [g.matmul(b, f - f1, h)])])  # a gated unit
            f = h
        else:
            x = g.op(draw(st.sampled_from(ACTIVATIONS)), [x])
    g.output(g.matmul(x, f, draw(st.sampled_from([2, 4]))))
    return g.model()


# ---- the properties ----------------------------------------------------------------------------------------
def check_random_model(m: onnx.ModelProto, seed: int = 0) -> dict:
    """Valid graph; analysis, and if anything is prunable: oracle on a random cut, ratio 0 identical, and
    the whole pipeline validates. Returns a summary (used by benchmarks/robustness.py)."""
    onnx.checker.check_model(m, full_check=True)
    runtime.run(m, runtime.synthetic_inputs(m))
    res = graphprune.prune(m, ratio=0.5, seed=seed)
    prunable = len(res.analysis.prunable)
    if prunable:
        assert_oracle(m, seed=seed)
        assert_ratio_zero_identical(m)
        assert res.report.validation["oracle_max_abs_diff"] is not None
        assert res.report.after.params < res.report.before.params
    return {"nodes": len(m.graph.node), "groups": len(res.analysis.channel_groups), "prunable": prunable}


@settings(max_examples=CNN_EXAMPLES, **SETTINGS)
@given(cnns(), st.integers(0, 3))
def test_random_cnns(m, seed):
    check_random_model(m, seed)


@settings(max_examples=MLP_EXAMPLES, **SETTINGS)
@given(mlps(), st.integers(0, 3))
def test_random_mlps(m, seed):
    check_random_model(m, seed)


def test_generators_cover_the_op_set():
    """The generators really draw the ops they claim (a generator bug would silently narrow the tests)."""
    seen = set()

    @settings(max_examples=80, **SETTINGS)  # generation only: cheap
    @given(cnns())
    def collect(m):
        seen.update(n.op_type for n in m.graph.node)
        seen.update("grouped" for n in m.graph.node for a in n.attribute if a.name == "group" and a.i > 1)

    collect()
    for op in ("Conv", "BatchNormalization", "Add", "Concat", "Split", "Slice", "Flatten", "Gemm",
               "GlobalAveragePool", "Transpose", "MatMul", "grouped"):
        assert op in seen, op


# ---- mutation fuzz -----------------------------------------------------------------------------------------
def _seed_models() -> dict[str, onnx.ModelProto]:
    return {"cnn": corpus.cnn_model(), "qdq": corpus.qdq_model(), "if": corpus.if_model(),
            "qlinear": corpus.qlinear_conv_model()}


def mutate(m: onnx.ModelProto, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of a valid model, as the bytes of the file to hand to the CLI."""
    kind = rng.choice(["flip_bytes", "truncate", "drop_initializer", "rename_tensor", "drop_node",
                       "dims", "attribute", "opset", "elem_type", "swap_inputs"])
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    g = m2.graph
    if kind in ("flip_bytes", "truncate"):
        data = bytearray(m2.SerializeToString())
        if kind == "truncate":
            return kind, bytes(data[: rng.randrange(1, len(data))])
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "drop_initializer" and len(g.initializer):
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "rename_tensor":
        n = g.node[rng.randrange(len(g.node))]
        if n.input and rng.random() < 0.5:
            n.input[rng.randrange(len(n.input))] = "renamed_tensor"
        else:
            n.output[0] = "renamed_tensor"
    elif kind == "drop_node":
        del g.node[rng.randrange(len(g.node))]
    elif kind == "dims" and len(g.initializer):
        t = g.initializer[rng.randrange(len(g.initializer))]
        v = numpy_helper.to_array(t)
        if v.ndim:
            v = v.reshape(-1)[: max(1, v.size // 2)]
        t.CopyFrom(numpy_helper.from_array(v, t.name))
    elif kind == "attribute":
        n = g.node[rng.randrange(len(g.node))]
        ints = [a for a in n.attribute if a.type == onnx.AttributeProto.INT]
        lists = [a for a in n.attribute if a.type == onnx.AttributeProto.INTS and len(a.ints)]
        if ints:
            ints[0].i = rng.choice([0, -1, 2, 3, 1000])
        elif lists:
            lists[0].ints[rng.randrange(len(lists[0].ints))] = rng.choice([0, -3, 7, 99])
        else:
            n.attribute.append(onnx.helper.make_attribute("bogus_attr", 1))
    elif kind == "opset":
        m2.opset_import[0].version = rng.choice([1, 6, 10, 30])
    elif kind == "elem_type":
        g.input[0].type.tensor_type.elem_type = rng.choice([onnx.TensorProto.INT64, onnx.TensorProto.STRING,
                                                            onnx.TensorProto.DOUBLE])
    elif kind == "swap_inputs":
        n = next((n for n in g.node if len(n.input) >= 2), g.node[0])
        if len(n.input) >= 2:
            n.input[0], n.input[1] = n.input[1], n.input[0]
    return kind, m2.SerializeToString()


def run_cli_on_bytes(data: bytes, folder: Path) -> dict:
    """Hand the bytes to the CLI as a file; classify what happened."""
    from graphprune.cli import main

    path = folder / "m.onnx"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(path), "-o", str(folder / "out.onnx"), "-q"])
    err_text = err.getvalue()
    written = (folder / "out.onnx").exists()
    result = {"rc": rc, "stderr": err_text, "written": written, "input_unchanged": path.read_bytes() == data}
    if rc == 0:
        result["outcome"] = "pruned" if written else "nothing to prune"
    elif "internal error" in err_text or "Traceback" in err_text:
        result["outcome"] = "internal error"
    elif err_text.count("\n") == 1 and err_text.startswith("graphprune: error:"):
        result["outcome"] = "clean error"
    else:
        result["outcome"] = "unclean error"
    if written:
        (folder / "out.onnx").unlink()
    return result


def fuzz(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    models = _seed_models()
    names = sorted(models)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(n):
            name = names[i % len(names)]
            kind, data = mutate(models[name], rng)
            r = run_cli_on_bytes(data, folder)
            r.update(model=name, mutation=kind, index=i)
            results.append(r)
    return results


def test_mutation_fuzz_fails_cleanly():
    results = fuzz(MUTANTS)
    bad = [r for r in results if r["outcome"] in ("internal error", "unclean error") or not r["input_unchanged"]]
    assert not bad, "\n".join(f"{r['model']}/{r['mutation']}#{r['index']}: {r['stderr'].strip()}" for r in bad)
    outcomes = {r["outcome"] for r in results}
    assert "clean error" in outcomes and "pruned" in outcomes  # the fuzz reaches both ends
    assert all(r["rc"] in (0, 1, 2) for r in results)


@pytest.mark.parametrize("model", sorted(_seed_models()))
def test_fuzz_seed_models_are_valid(model):
    m = _seed_models()[model]
    onnx.checker.check_model(m, full_check=True)
    assert np.isfinite(runtime.run(m, runtime.synthetic_inputs(m))[0]).all()
