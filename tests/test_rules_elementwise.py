"""Elementwise rules: activations, per-channel and scalar constants, residual and gating ties, variadic ops."""

import numpy as np
import pytest
from onnx import TensorProto

from tests.graphs import GraphBuilder, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _sandwich(build, opset=17, c=16):
    """x -> c1 (8->c) -> build(g, y) -> c2 (c->4) -> out."""
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, c, name="c1")
    y = build(g, y)
    g.output(g.conv(y, c, 4, k=1, name="c2"))
    return g.model()


ACTIVATIONS = [
    ("Relu", {}, 17, []),
    ("LeakyRelu", {"alpha": 0.1}, 17, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17, []),
    ("HardSwish", {}, 17, []),
    ("Elu", {"alpha": 0.7}, 17, []),
    ("Selu", {}, 17, []),
    ("Softplus", {}, 17, []),
    ("Erf", {}, 17, []),
    ("Mish", {}, 18, []),
    ("Gelu", {"approximate": "tanh"}, 20, []),
    ("Clip", {}, 17, ["min", "max"]),
    ("Sigmoid", {}, 17, []),
    ("Tanh", {}, 17, []),
]


@pytest.mark.parametrize("op,attrs,opset,extra", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_passes_channels(op, attrs, opset, extra):
    def build(g, y):
        ins = [y] + [g.const(np.float32(v)) for v in ([-0.5, 0.6] if extra else [])]
        return g.op(op, ins, name="act", **attrs)

    m = _sandwich(build, opset)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["c1"] and a.prunable[0].consumers == ["c2"]
    assert_oracle(m)
    assert_ratio_zero_identical(m)


def test_prelu_per_channel_slope_is_sliced():
    m = _sandwich(lambda g, y: g.op("PRelu", [y, g.weight([16, 1, 1], "slope")], name="prelu"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    np.testing.assert_array_equal(init_value(p, "slope"), init_value(m, "slope")[k])


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_binary_per_channel_constant_is_sliced(op):
    def build(g, y):
        return g.op(op, [y, g.positive([16, 1, 1], "k")], name="bin")

    m = _sandwich(build)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    assert init_value(p, "k").shape == (16 - len(removed), 1, 1)


@pytest.mark.parametrize("op", ["Add", "Mul"])
@pytest.mark.parametrize("shape", [[], [1], [1, 1, 1]])
def test_binary_scalar_constant_ties_nothing(op, shape):
    m = _sandwich(lambda g, y: g.op(op, [y, g.const(np.full(shape, 0.5, np.float32), "s")], name="bin"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    _, p, _ = assert_oracle(m)
    assert list(init_value(p, "s").shape) == shape


def test_binary_spatial_constant_does_not_freeze_channels():
    """A [H, W] constant broadcasts over channels: spatial axes tie, channels stay prunable."""
    m = _sandwich(lambda g, y: g.op("Add", [y, g.weight([5, 5], "pos")], name="bin"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    _, p, _ = assert_oracle(m)
    assert init_value(p, "pos").shape == (5, 5)


def test_residual_add_ties_two_convs():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    a1 = g.conv(x, 8, 16, name="c1")
    b = g.op("Relu", [a1])
    b = g.conv(b, 16, 16, name="c2")
    s = g.op("Add", [a1, b], name="res")
    g.output(g.conv(s, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert set(grp.producers) == {"c1", "c2"} and set(grp.consumers) == {"c2", "c3"}
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "c2.W").shape == (n, n, 3, 3)


def test_add_with_single_channel_broadcast():
    """Add of [1,16,...] and [1,1,...]: the size-1 channel axis broadcasts and ties nothing."""
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    a1 = g.conv(x, 8, 16, name="c1")
    b = g.conv(x, 8, 1, name="c2")  # size-1 channel axis broadcasts
    s = g.op("Add", [a1, b], name="res")
    g.output(g.conv(s, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    # c2's single output channel ties nothing; c1's channels stay prunable.
    assert sizes(a.prunable) == [16]
    assert_oracle(m)


def test_squeeze_excitation_gate():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, name="c1")
    y = g.op("Relu", [y])
    s = g.op("GlobalAveragePool", [y], name="gap")
    s = g.conv(s, 16, 4, k=1, name="fc1")
    s = g.op("Relu", [s])
    s = g.conv(s, 4, 16, k=1, name="fc2")
    s = g.op("Sigmoid", [s])
    y = g.op("Mul", [y, s], name="gate")
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [4, 16]
    big = group_of(a, "c1", "producer")
    assert set(big.producers) == {"c1", "fc2"} and set(big.consumers) == {"fc1", "c3"}
    small = group_of(a, "fc1", "producer")
    assert small.consumers == ["fc2"]
    a, p, removed = assert_oracle(m)
    n16 = len(kept(a, removed, "c1_out", 1))
    n4 = len(kept(a, removed, "fc1_out", 1))
    assert init_value(p, "fc2.W").shape == (n16, n4, 1, 1)


def test_where_ties_condition_and_branches():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    a1 = g.conv(x, 8, 16, name="c1")
    b1 = g.conv(x, 8, 16, name="c2")
    cond = g.op("Greater", [a1, g.const(np.float32(0.0))], name="gt")
    w = g.op("Where", [cond, a1, b1], name="where")
    w2 = g.op("Where", [cond, w, g.const(np.float32(0.25))], name="where_scalar")
    g.output(g.conv(w2, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"c1", "c2"}
    assert_oracle(m)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic_ties_all_inputs(op):
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    ins = [g.conv(x, 8, 16, name=f"c{k}") for k in range(3)]
    ins.append(g.weight([16, 1, 1], "k"))
    y = g.op(op, ins, name="v")
    g.output(g.conv(y, 16, 4, k=1, name="out"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"c0", "c1", "c2"}
    a, p, removed = assert_oracle(m)
    assert init_value(p, "k").shape == (16 - len(removed), 1, 1)


def test_cast_roundtrip_passes_channels():
    def build(g, y):
        y = g.op("Cast", [y], to=TensorProto.FLOAT16)
        y = g.op("Relu", [y])
        return g.op("Cast", [y], to=TensorProto.FLOAT)

    m = _sandwich(build)
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m, rtol=1e-2, atol=1e-2)


def test_softmax_over_channels_frozen():
    m = _sandwich(lambda g, y: g.op("Softmax", [y], name="sm", axis=1))
    a = run_analysis(m)
    assert a.prunable == []
    grp = group_of(a, "c1", "producer")
    assert grp.frozen and any("Softmax 'sm'" in r and "axis 1" in r for r in grp.reasons)


def test_softmax_over_spatial_axis_prunable():
    m = _sandwich(lambda g, y: g.op("Softmax", [y], name="sm", axis=-1))
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


@pytest.mark.parametrize("op,axis_input,reason", [
    ("CumSum", 1, "CumSum 'mix' accumulates along axis 1"),
    ("Softmax", None, "Softmax 'mix' normalises over axis 1"),
    ("LogSoftmax", None, "LogSoftmax 'mix' normalises over axis 1"),
])
def test_channel_mixing_axis_ops_freeze_both_sides(op, axis_input, reason):
    def build(g, y):
        if axis_input is not None:
            return g.op(op, [y, g.ints(axis_input)], name="mix")
        return g.op(op, [y], name="mix", axis=1)

    m = _sandwich(build)
    a = run_analysis(m)
    assert a.prunable == []
    assert any(reason in r for r in group_of(a, "c1", "producer").reasons)
    assert group_of(a, "c2", "consumer").frozen


def test_cumsum_over_spatial_axis_prunable():
    m = _sandwich(lambda g, y: g.op("CumSum", [y, g.ints(2)], name="cs"))
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


def test_softmax_opset11_coerces_trailing_axes():
    """Before opset 13 Softmax flattens from `axis` on: axis=2 mixes H and W but not channels."""
    m = _sandwich(lambda g, y: g.op("Softmax", [y], name="sm", axis=2), opset=11)
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)
    m = _sandwich(lambda g, y: g.op("Softmax", [y], name="sm", axis=1), opset=11)
    assert run_analysis(m).prunable == []


def test_glu_style_gate_of_two_convs():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.op("Mul", [g.conv(x, 8, 16, name="a"), g.op("Sigmoid", [g.conv(x, 8, 16, name="b")])])
    g.output(g.conv(y, 16, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16] and set(a.prunable[0].producers) == {"a", "b"}
    assert_oracle(m)


def test_subtract_own_spatial_mean():
    m = _sandwich(lambda g, y: g.op("Sub", [y, g.op("ReduceMean", [y], axes=[2, 3], keepdims=1)]))
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


def test_quantize_dequantize_per_channel_activation():
    def build(g, y):
        q = g.op("QuantizeLinear", [y, g.positive([16], "qs"), g.const(np.zeros(16, np.uint8), "qz")], axis=1)
        return g.op("DequantizeLinear", [q, "qs", "qz"], axis=1)

    m = _sandwich(build, opset=13)
    assert sizes(run_analysis(m).prunable) == [16]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    np.testing.assert_array_equal(init_value(p, "qs"), init_value(m, "qs")[k])
    np.testing.assert_array_equal(init_value(p, "qz"), init_value(m, "qz")[k])


def test_dropout_with_ratio_inputs():
    m = _sandwich(lambda g, y: g.op("Dropout", [y, g.const(np.float32(0.1)), g.const(np.bool_(False))]))
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)
