"""Quantized rules: QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger as producers and consumers; the
weight's per-channel scale, zero point and int32 bias are sliced with it, in their dtypes; a removed input
channel is masked at the weight's zero point (the oracle is exact: integer arithmetic, tolerance 0)."""

import numpy as np
import pytest
from onnx import TensorProto as TP

import graphprune
from tests.graphs import GraphBuilder, attr, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle


def _reasons(a) -> str:
    """Reasons of every group (a frozen quantization parameter may sit in a group of its own)."""
    return " | ".join(r for g in a.groups for r in g.reasons)


def _quantized_input(g, shape):
    x = g.input("x", shape)
    s, z = g.const(np.float32(0.05), "x.s"), g.const(np.uint8(128), "x.z")
    return g.op("QuantizeLinear", [x, s, z], name="quant"), s, z


def _qlinear_conv(g, rng, inp, in_s, in_z, cin, cout, name, group=1, per_channel=True, bias=True):
    w = g.const(rng.integers(-60, 61, (cout, cin // group, 3, 3)).astype(np.int8), f"{name}.W")
    if per_channel:
        ws = g.const(rng.uniform(0.002, 0.01, cout).astype(np.float32), f"{name}.Ws")
    else:
        ws = g.const(np.float32(0.005), f"{name}.Ws")
    wz = g.const(np.zeros(cout if per_channel else (), np.int8), f"{name}.Wz")  # ORT: int8 weights, zero point 0
    ys, yz = g.const(np.float32(0.08), f"{name}.Ys"), g.const(np.uint8(128), f"{name}.Yz")
    ins = [inp, in_s, in_z, w, ws, wz, ys, yz]
    if bias:
        ins.append(g.const(rng.integers(-500, 500, cout).astype(np.int32), f"{name}.B"))
    y = g.op("QLinearConv", ins, name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
    return y, ys, yz


def _qlinear_matmul(g, rng, a, a_s, a_z, k, n, name, per_column=True):
    b = g.const(rng.integers(-60, 61, (k, n)).astype(np.int8), f"{name}.B")
    if per_column:
        bs = g.const(rng.uniform(0.002, 0.01, n).astype(np.float32), f"{name}.Bs")
        bz = g.const(rng.integers(-3, 4, n).astype(np.int8), f"{name}.Bz")
    else:
        bs, bz = g.const(np.float32(0.005), f"{name}.Bs"), g.const(np.int8(2), f"{name}.Bz")
    ys, yz = g.const(np.float32(0.08), f"{name}.Ys"), g.const(np.uint8(128), f"{name}.Yz")
    return g.op("QLinearMatMul", [a, a_s, a_z, b, bs, bz, ys, yz], name=name), ys, yz


def _assert_prune_validates(m, tolerance=0.0):
    """graphprune.prune (validated with the oracle) cuts something; exact where the model is all integer."""
    res = graphprune.prune(m, ratio=0.5)
    assert res.report.groups_pruned >= 1
    diff = res.report.validation["oracle_max_abs_diff"]
    assert diff is not None and diff <= tolerance
    return res


# ---- QLinearConv ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_channel, bias", [(True, True), (False, False)])
def test_qlinear_conv_chain_slices_weight_scale_zero_point_and_bias(per_channel, bias):
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(0)
    q, s, z = _quantized_input(g, [1, 3, 6, 6])
    y, s, z = _qlinear_conv(g, rng, q, s, z, 3, 16, "c1", per_channel=per_channel, bias=bias)
    y, s, z = _qlinear_conv(g, rng, y, s, z, 16, 4, "c2", per_channel=per_channel, bias=bias)
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["c1"] and a.prunable[0].consumers == ["c2"]
    a, p, removed = assert_oracle(m, rtol=0, atol=0)
    k = kept(a, removed, "c1.W", 0)
    assert 0 < len(k) < 16
    for t in ["c1.W"] + (["c1.Ws", "c1.Wz", "c1.B"] if per_channel else []):
        np.testing.assert_array_equal(init_value(p, t), init_value(m, t)[k])
        assert init_value(p, t).dtype == init_value(m, t).dtype
    if not per_channel:
        assert init_value(p, "c1.Ws").shape == () and init_value(p, "c1.Wz").shape == ()
    np.testing.assert_array_equal(init_value(p, "c2.W"), init_value(m, "c2.W")[:, k])
    _assert_prune_validates(m)


def test_qlinear_conv_depthwise_shrinks_group():
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(1)
    q, s, z = _quantized_input(g, [1, 3, 6, 6])
    y, s, z = _qlinear_conv(g, rng, q, s, z, 3, 16, "c1")
    y, s, z = _qlinear_conv(g, rng, y, s, z, 16, 16, "dw", group=16)
    y, s, z = _qlinear_conv(g, rng, y, s, z, 16, 4, "c3")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"c1", "dw"} and a.prunable[0].consumers == ["c3"]
    a, p, removed = assert_oracle(m, rtol=0, atol=0)
    n = 16 - len(removed)
    assert attr(p, "dw", "group") == n
    assert init_value(p, "dw.W").shape == (n, 1, 3, 3)
    assert init_value(p, "dw.B").shape == (n,)
    _assert_prune_validates(m)


def test_qlinear_conv_per_channel_input_scale_freezes():
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(0)
    q, s, z = _quantized_input(g, [1, 3, 6, 6])
    y, _, z = _qlinear_conv(g, rng, q, s, z, 3, 16, "c1")
    s16 = g.const(np.full(16, 0.08, np.float32), "c2.Xs")  # one input scale per channel
    y, s, z = _qlinear_conv(g, rng, y, s16, z, 16, 4, "c2")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert "QLinearConv 'c2': per-channel input scale or zero point ('c2.Xs') is not supported" in _reasons(a)


def test_qlinear_conv_weight_scale_of_another_size_freezes():
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(0)
    q, s, z = _quantized_input(g, [1, 3, 6, 6])
    y, s, z = _qlinear_conv(g, rng, q, s, z, 3, 16, "c1")
    y, s, z = _qlinear_conv(g, rng, y, s, z, 16, 4, "c2")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    m = g.model(check=False)
    for t in m.graph.initializer:
        if t.name == "c1.Ws":  # 8 scales for 16 output channels
            t.dims[:] = [8]
            t.raw_data = np.full(8, 0.005, np.float32).tobytes()
    a = run_analysis(m)
    assert a.prunable == []
    assert ("QLinearConv 'c1': quantization parameter 'c1.Ws' of shape [8] matches neither a scalar nor the 16 "
            "output channels") in _reasons(a)


# ---- ConvInteger ----------------------------------------------------------------------------------------
def _conv_integer_model():
    """QLinearConv c0 (uint8 out) -> ConvInteger c1 -> Cast -> Relu -> Conv c2: ConvInteger consumes the
    c0 channels (masked at its weight zero point) and produces its own (ORT: per-tensor zero points)."""
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(2)
    q, s, z = _quantized_input(g, [1, 3, 6, 6])
    y, _, yz = _qlinear_conv(g, rng, q, s, z, 3, 16, "c0")
    w = g.const(rng.integers(0, 256, (12, 16, 3, 3)).astype(np.uint8), "c1.W")
    y = g.op("ConvInteger", [y, w, yz, g.const(np.uint8(120), "c1.Wz")], name="c1", kernel_shape=[3, 3],
             pads=[1, 1, 1, 1])
    y = g.op("Relu", [g.op("Mul", [g.op("Cast", [y], to=TP.FLOAT), g.const(np.float32(1e-4))])])
    g.output(g.conv(y, 12, 4, name="c2"))
    return g.model()


def test_conv_integer_consumes_and_produces_channels():
    m = _conv_integer_model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [12, 16]
    assert group_of(a, "c1", "consumer").producers == ["c0"]
    assert group_of(a, "c1", "producer").consumers == ["c2"]
    a, p, removed = assert_oracle(m)
    k_in, k_out = kept(a, removed, "c1.W", 1), kept(a, removed, "c1.W", 0)
    assert 0 < len(k_in) < 16 and 0 < len(k_out) < 12
    np.testing.assert_array_equal(init_value(p, "c1.W"), init_value(m, "c1.W")[k_out][:, k_in])
    assert init_value(p, "c1.Wz").shape == ()  # per tensor: not sliced
    _assert_prune_validates(m, tolerance=1e-4)  # the float Conv c2 at the end


def test_conv_integer_weight_not_constant_freezes():
    g = GraphBuilder(opset=13)
    x = g.input("x", [1, 3, 6, 6], TP.UINT8)
    w = g.input("w", [16, 3, 3, 3], TP.UINT8)
    y = g.op("ConvInteger", [x, w], name="c1", kernel_shape=[3, 3])
    g.output(g.conv(g.op("Cast", [y], to=TP.FLOAT), 16, 4, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("ConvInteger 'c1': weight is not a constant or shapes are unknown" in r
               for r in group_of(a, "c2", "consumer").reasons)


# ---- QLinearMatMul --------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_column", [True, False])
def test_qlinear_matmul_chain_slices_columns_scales_and_zero_points(per_column):
    g = GraphBuilder(opset=21)  # opset 21: per-column b scale and zero point
    rng = np.random.default_rng(3)
    q, s, z = _quantized_input(g, [4, 8])
    y, s, z = _qlinear_matmul(g, rng, q, s, z, 8, 16, "mm1", per_column)
    y, s, z = _qlinear_matmul(g, rng, y, s, z, 16, 6, "mm2", per_column)
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["mm1"] and a.prunable[0].consumers == ["mm2"]
    a, p, removed = assert_oracle(m, rtol=0, atol=0)
    k = kept(a, removed, "mm1.B", 1)
    assert 0 < len(k) < 16
    np.testing.assert_array_equal(init_value(p, "mm1.B"), init_value(m, "mm1.B")[:, k])
    np.testing.assert_array_equal(init_value(p, "mm2.B"), init_value(m, "mm2.B")[k])
    for t in ("mm1.Bs", "mm1.Bz"):
        want = init_value(m, t)[k] if per_column else init_value(m, t)
        np.testing.assert_array_equal(init_value(p, t), want)
        assert init_value(p, t).dtype == init_value(m, t).dtype
    _assert_prune_validates(m)


def test_qlinear_matmul_weight_of_rank_3_freezes():
    g = GraphBuilder(opset=21)
    q, s, z = _quantized_input(g, [2, 4, 8])
    b = g.const(np.ones((2, 8, 16), np.int8), "mm.B")
    y = g.op("QLinearMatMul", [q, s, z, b, g.const(np.float32(0.01)), g.const(np.int8(0)), s, z], name="mm")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    a = run_analysis(g.model())
    assert "QLinearMatMul 'mm': operand shapes unknown or not [..., M, K] x [K, N]" in _reasons(a)


def test_qlinear_matmul_per_column_output_scale_freezes():
    g = GraphBuilder(opset=21)
    rng = np.random.default_rng(3)
    q, s, z = _quantized_input(g, [4, 8])
    b = g.const(rng.integers(-60, 61, (8, 16)).astype(np.int8), "mm.B")
    ys = g.const(np.full(16, 0.08, np.float32), "mm.Ys")
    y = g.op("QLinearMatMul", [q, s, z, b, g.const(np.float32(0.01)), g.const(np.int8(0)), ys, z], name="mm")
    y, s, z = _qlinear_matmul(g, rng, y, s, z, 16, 6, "mm2")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert "QLinearMatMul 'mm': per-channel input or output scale or zero point ('mm.Ys') is not supported" \
        in _reasons(a)


# ---- MatMulInteger --------------------------------------------------------------------------------------
def _matmul_integer_model():
    """QLinearMatMul q0 (uint8 out) -> MatMulInteger m1 (per-column int8 zero point) -> Cast -> Relu ->
    MatMul m2: MatMulInteger consumes q0's columns and produces its own."""
    g = GraphBuilder(opset=21)
    rng = np.random.default_rng(4)
    q, s, z = _quantized_input(g, [4, 8])
    y, _, yz = _qlinear_matmul(g, rng, q, s, z, 8, 16, "q0")
    b = g.const(rng.integers(-100, 100, (16, 12)).astype(np.int8), "m1.B")
    y = g.op("MatMulInteger", [y, b, yz, g.const(rng.integers(-5, 6, 12).astype(np.int8), "m1.Bz")], name="m1")
    y = g.op("Relu", [g.op("Mul", [g.op("Cast", [y], to=TP.FLOAT), g.const(np.float32(1e-3))])])
    g.output(g.matmul(y, 12, 4, name="m2"))
    return g.model()


def test_matmul_integer_consumes_and_produces_channels():
    m = _matmul_integer_model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [12, 16]
    assert group_of(a, "m1", "consumer").producers == ["q0"]
    assert group_of(a, "m1", "producer").consumers == ["m2"]
    a, p, removed = assert_oracle(m)
    k_in, k_out = kept(a, removed, "m1.B", 0), kept(a, removed, "m1.B", 1)
    assert 0 < len(k_in) < 16 and 0 < len(k_out) < 12
    np.testing.assert_array_equal(init_value(p, "m1.B"), init_value(m, "m1.B")[k_in][:, k_out])
    np.testing.assert_array_equal(init_value(p, "m1.Bz"), init_value(m, "m1.Bz")[k_out])
    _assert_prune_validates(m, tolerance=1e-4)  # the float MatMul m2 at the end


def test_matmul_integer_between_activations_freezes():
    g = GraphBuilder(opset=13)
    a_ = g.input("a", [4, 8], TP.UINT8)
    b = g.input("b", [8, 6], TP.UINT8)
    y = g.op("MatMulInteger", [a_, b], name="mmi")
    g.output(g.matmul(g.op("Cast", [y], to=TP.FLOAT), 6, 4, name="m2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert "MatMulInteger 'mmi': the second operand is not a constant weight" in _reasons(a)
