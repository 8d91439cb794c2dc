"""com.microsoft rules: fused attention cuts whole heads (num_heads follows), fused norms tie the hidden axis,
fused GELUs are elementwise with a sliced bias; KV caches, packed layouts and split halves freeze."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphprune
from graphprune.core import runtime
from graphprune.passes import rewrite
from tests.graphs import GraphBuilder, attr, group_of, init_value, kept, reasons, run_analysis, sizes
from tests.oracle import assert_oracle, random_removal

MS = "com.microsoft"


def _runnable(g: GraphBuilder) -> onnx.ModelProto:
    """The builder's model with its graph outputs typed from one ONNX Runtime run (ONNX shape inference
    knows no com.microsoft op, and the checker wants typed outputs)."""
    m = g.model()
    for o in m.graph.output:
        o.type.tensor_type.elem_type = TensorProto.FLOAT
    values = runtime.run(m, runtime.synthetic_inputs(m))
    for o, v in zip(m.graph.output, values, strict=True):
        o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, list(v.shape)))
    return m


def _assert_prune_validates(m, **options):
    """graphprune.prune (validation with the oracle) cuts something and matches the masked original."""
    res = graphprune.prune(m, ratio=0.5, **options)
    assert res.report.groups_pruned >= 1
    diff = res.report.validation["oracle_max_abs_diff"]
    assert diff is not None and diff < 1e-4
    return res


# ---- Attention -----------------------------------------------------------------------------------------
def _attention(qkv_hidden_sizes=None, mask=False, heads=3):
    """x -> MatMul m0 [8 -> 12] -> Attention (packed W[12, q+k+v]) -> MatMul m1 [v -> 5]."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 12, name="m0")
    sizes_ = qkv_hidden_sizes or [12, 12, 12]
    extra = {"qkv_hidden_sizes": sizes_} if qkv_hidden_sizes else {}
    ins = [h, g.weight([12, sum(sizes_)], "att.W"), g.weight([sum(sizes_)], "att.b")]
    if mask:
        ins.append(g.input("mask", [2, 4], TensorProto.INT32))
    y = g.op("Attention", ins, name="att", domain=MS, num_heads=heads, **extra)
    g.output(g.matmul(y, sizes_[2], 5, name="m1"))
    return _runnable(g), sizes_


@pytest.mark.parametrize("qkv_hidden_sizes", [None, [6, 6, 9]])
def test_attention_cuts_whole_heads(qkv_hidden_sizes):
    m, (qs, ks, vs) = _attention(qkv_hidden_sizes)
    a = run_analysis(m)
    assert sizes(a.prunable) == [3, 12]
    heads = group_of(a, "att", "producer")
    assert heads.consumers == ["m1"] and heads.round_multiple == vs // 3
    assert group_of(a, "att", "consumer").producers == ["m0"]
    a, p, removed = assert_oracle(m)
    kept_heads = np.unique(kept(a, removed, "att_out", 2) // (vs // 3))
    assert 0 < len(kept_heads) < 3
    assert attr(p, "att", "num_heads") == len(kept_heads)
    if qkv_hidden_sizes:
        assert attr(p, "att", "qkv_hidden_sizes") == [s // 3 * len(kept_heads) for s in (qs, ks, vs)]
    else:
        assert attr(p, "att", "qkv_hidden_sizes") is None
    # q, k and v keep the same heads in the packed weight and bias
    cols, offset = [], 0
    for size in (qs, ks, vs):
        d = size // 3
        cols += [offset + h * d + i for h in kept_heads for i in range(d)]
        offset += size
    rows = kept(a, removed, "m0_out", 2)
    np.testing.assert_array_equal(init_value(p, "att.W"), init_value(m, "att.W")[rows][:, cols])
    np.testing.assert_array_equal(init_value(p, "att.b"), init_value(m, "att.b")[cols])
    _assert_prune_validates(m)


def test_attention_mask_index_constrains_nothing():
    m, _ = _attention(mask=True)
    assert sizes(run_analysis(m).prunable) == [3, 12]
    _assert_prune_validates(m)


def test_attention_weight_not_constant_freezes():
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 12, name="m0")
    w = g.input("w", [12, 36])
    y = g.op("Attention", [h, w, g.weight([36])], name="att", domain=MS, num_heads=3)
    g.output(g.matmul(y, 12, 5, name="m1"))
    a = run_analysis(_runnable(g))
    assert a.prunable == []
    assert any("Attention 'att': weights or shapes unknown" in r for r in group_of(a, "m0", "producer").reasons)


def test_attention_with_kv_cache_keeps_every_head():
    """Regression: past/present were left out of the head group, so heads were cut and ONNX Runtime
    refused the pruned model ("'past' dimension 2 shall have length of num_heads")."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    past = g.input("past", [2, 2, 3, 5, 4])
    h = g.matmul(x, 8, 12, name="m0")
    y, present = g.op("Attention", [h, g.weight([12, 36], "att.W"), g.weight([36], "att.b"), "", past], n_out=2,
                      name="att", domain=MS, num_heads=3, unidirectional=1)
    g.output(g.matmul(y, 12, 5, name="m1"), present)
    m = _runnable(g)
    a = run_analysis(m)
    assert sizes(a.prunable) == [12]  # the input hidden size still is
    grp = group_of(a, "m1", "consumer")
    assert grp.frozen
    assert any("Attention 'att' reads a KV cache ('past') laid out by head" in r for r in grp.reasons)
    assert any("Attention 'att' returns a KV cache ('att_out1')" in r for r in grp.reasons)
    res = _assert_prune_validates(m)
    assert attr(res.model, "att", "num_heads") == 3


# ---- MultiHeadAttention --------------------------------------------------------------------------------
def _mha(bias=False, cross=False, v_hidden=12, n_out=1):
    """q, k, v from three MatMuls (k, v from a second sequence when `cross`) -> MHA -> MatMul m1."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    mem = g.input("mem", [2, 6, 8]) if cross else x
    q, k, v = g.matmul(x, 8, 12, name="mq"), g.matmul(mem, 8, 12, name="mk"), g.matmul(mem, 8, v_hidden, name="mv")
    ins = [q, k, v] + ([g.weight([24 + v_hidden], "mha.bias")] if bias else [])
    out = g.op("MultiHeadAttention", ins, n_out=n_out, name="mha", domain=MS, num_heads=3)
    y, caches = (out, []) if n_out == 1 else (out[0], out[1:])
    g.output(g.matmul(y, v_hidden, 5, name="m1"), *caches)
    return _runnable(g)


@pytest.mark.parametrize("cross, v_hidden", [(False, 12), (True, 9)])
def test_mha_cuts_whole_heads_of_q_k_v(cross, v_hidden):
    m = _mha(cross=cross, v_hidden=v_hidden)
    a = run_analysis(m)
    assert sizes(a.prunable) == [3]
    grp = a.prunable[0]
    assert set(grp.producers) == {"mq", "mk", "mv"} and "m1" in grp.consumers
    a, p, removed = assert_oracle(m)
    kept_heads = np.unique(kept(a, removed, "mq_out", 2) // 4)
    assert 0 < len(kept_heads) < 3
    assert attr(p, "mha", "num_heads") == len(kept_heads)
    np.testing.assert_array_equal(kept(a, removed, "mk_out", 2) // 4, np.repeat(kept_heads, 4))
    np.testing.assert_array_equal(kept(a, removed, "mv_out", 2) // (v_hidden // 3),
                                  np.repeat(kept_heads, v_hidden // 3))
    assert init_value(p, "m1.W").shape == (len(kept_heads) * v_hidden // 3, 5)
    _assert_prune_validates(m)


def test_mha_packed_bias_follows_the_heads():
    """Regression: the packed [q | k | v] bias was frozen on its own while the heads were cut, so the pruned
    model failed in ONNX Runtime ("Input 'bias' length is expected to be ...")."""
    m = _mha(bias=True)
    a = run_analysis(m)
    assert sizes(a.prunable) == [3]
    a, p, removed = assert_oracle(m)
    kq = kept(a, removed, "mq_out", 2)
    assert 0 < len(kq) < 12
    np.testing.assert_array_equal(init_value(p, "mha.bias"), init_value(m, "mha.bias")[np.concatenate(
        [kq, 12 + kq, 24 + kq])])
    _assert_prune_validates(m)


def test_mha_with_kv_cache_outputs_keeps_every_head():
    """Regression: present_key/present_value were not tied to the heads; the cut changed their shape."""
    m = _mha(n_out=3)
    a = run_analysis(m)
    assert a.prunable == []
    rs = group_of(a, "m1", "consumer").reasons
    assert any("MultiHeadAttention 'mha' returns a KV cache ('mha_out1') laid out by head" in r for r in rs)


@pytest.mark.parametrize("bias_heads", [1, 3])
def test_mha_attention_bias_with_a_head_axis_keeps_every_head(bias_heads):
    """An attention bias [B, H, S, T] is laid out by head (not cut): it keeps the heads; broadcast over
    heads (H = 1) it constrains nothing."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    q, k, v = g.matmul(x, 8, 12, name="mq"), g.matmul(x, 8, 12, name="mk"), g.matmul(x, 8, 12, name="mv")
    y = g.op("MultiHeadAttention", [q, k, v, "", "", g.weight([1, bias_heads, 4, 4], "mha.ab")], name="mha",
             domain=MS, num_heads=3)
    g.output(g.matmul(y, 12, 5, name="m1"))
    m = _runnable(g)
    a = run_analysis(m)
    if bias_heads == 1:
        assert sizes(a.prunable) == [3]
        _assert_prune_validates(m)
    else:
        assert a.prunable == []
        assert any("MultiHeadAttention 'mha': attention bias 'mha.ab' has a head axis" in r
                   for r in group_of(a, "m1", "consumer").reasons)


def test_mha_packed_qkv_freezes():
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    qkv = g.op("Reshape", [g.matmul(x, 8, 36, name="mqkv"), g.ints([2, 4, 3, 3, 4])])  # [B, S, H, 3, D]
    # packed QKV has no CPU kernel: analysis only, on a declared output shape
    y = g.declare(g.op("MultiHeadAttention", [qkv], name="mha", domain=MS, num_heads=3), [2, 4, 12])
    g.output(g.matmul(y, 12, 5, name="m1"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert "MultiHeadAttention 'mha': only separate 3-D q, k, v are described" in reasons(a)


# ---- Skip / Simplified LayerNormalization ---------------------------------------------------------------
def _skip_ln(op, beta=True, bias=False, outputs=1):
    """Two MatMuls [8 -> 16] summed and normalised by a fused Skip(Simplified)LayerNormalization -> m2."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h, skip = g.matmul(x, 8, 16, name="m0"), g.matmul(x, 8, 16, name="ms")
    ins = [h, skip, g.positive([16], "ln.g")]
    if op == "SkipLayerNormalization":
        ins.append(g.weight([16], "ln.beta") if beta else "")
    if bias:
        ins.append(g.weight([16], "ln.bias"))
    out = g.op(op, ins, n_out=outputs, name="ln", domain=MS, epsilon=1e-5)
    y = out if outputs == 1 else out[0]
    g.output(g.matmul(y, 16, 5, name="m2"))
    if outputs == 4:
        g.output(g.matmul(out[3], 16, 5, name="m3"))  # the residual sum, read on
    return _runnable(g)


def _skip_ln_reference(m, k, simplified, feeds):
    """numpy: the norm over the kept hidden channels k only (what the pruned model must compute)."""
    x = feeds["x"].astype(np.float64)
    s = x @ init_value(m, "m0.W")[:, k] + x @ init_value(m, "ms.W")[:, k]
    if any(t.name == "ln.bias" for t in m.graph.initializer):
        s = s + init_value(m, "ln.bias")[k]
    if simplified:
        n = s / np.sqrt((s * s).mean(-1, keepdims=True) + 1e-5)
    else:
        n = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5)
    n = n * init_value(m, "ln.g")[k]
    if not simplified:
        n = n + init_value(m, "ln.beta")[k]
    return n @ init_value(m, "m2.W")[k]


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_layernorm_freezes_hidden_unless_asked(op):
    m = _skip_ln(op)
    a = run_analysis(m)
    assert a.prunable == []
    rs = group_of(a, "m0", "producer").reasons
    assert any(f"{op} 'ln' normalises over this axis" in r and "--prune-hidden" in r for r in rs)


@pytest.mark.parametrize("op, bias", [("SkipLayerNormalization", False), ("SkipLayerNormalization", True),
                                      ("SkipSimplifiedLayerNormalization", False)])
def test_skip_layernorm_prune_hidden_cuts_input_skip_and_parameters(op, bias):
    """--prune-hidden: the oracle does not apply (the statistics change), so the pruned model is compared
    with a numpy norm over the kept channels."""
    m = _skip_ln(op, bias=bias)
    a = run_analysis(m, prune_hidden=True)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert set(grp.producers) == {"m0", "ms"} and grp.consumers == ["m2"] and grp.kind == "hidden"
    removed = random_removal(a, np.random.default_rng(0))
    p = rewrite.apply(m, a.cut(removed))
    onnx.checker.check_model(p, full_check=True)
    k = kept(a, removed, "m0_out", 2)
    assert 0 < len(k) < 16
    for t in ["ln.g"] + (["ln.beta"] if op == "SkipLayerNormalization" else []) + (["ln.bias"] if bias else []):
        np.testing.assert_array_equal(init_value(p, t), init_value(m, t)[k])
    feeds = runtime.synthetic_inputs(m)
    got = runtime.run(p, feeds)[0]
    want = _skip_ln_reference(m, k, op == "SkipSimplifiedLayerNormalization", feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    res = graphprune.prune(m, ratio=0.5, prune_hidden=True)
    assert res.report.groups_pruned == 1 and res.report.validation["oracle_max_abs_diff"] is None


def test_skip_layernorm_statistics_outputs_fixed_and_residual_sum_tied():
    m = _skip_ln("SkipLayerNormalization", outputs=4)
    a = run_analysis(m, prune_hidden=True)
    stats = [g for g in a.groups if "SkipLayerNormalization 'ln' returns normalisation statistics" in g.reasons]
    assert sorted(g.size for g in stats) == [2, 2, 4, 4]  # batch and sequence axes of mean and inv_std_var
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]  # the residual sum (output 3) follows the hidden channels
    assert set(grp.producers) == {"m0", "ms"} and set(grp.consumers) == {"m2", "m3"}
    removed = random_removal(a, np.random.default_rng(1))
    p = rewrite.apply(m, a.cut(removed))
    assert init_value(p, "m3.W").shape == (16 - len(removed), 5)
    out = runtime.run(p, runtime.synthetic_inputs(m))
    assert [o.shape for o in out] == [(2, 4, 5), (2, 4, 5)]


@pytest.mark.parametrize("op", ["LayerNormalization", "SimplifiedLayerNormalization"])
def test_ms_layernorm_is_layer_normalization(op):
    """com.microsoft (Simplified)LayerNormalization: ONNX Runtime has no kernel in this domain (it runs them in
    the default one), so this is analysis and rewrite only, on declared shapes."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 16, name="m0")
    ins = [h, g.positive([16], "ln.g")] + ([g.weight([16], "ln.b")] if op == "LayerNormalization" else [])
    y = g.declare(g.op(op, ins, name="ln", domain=MS, axis=-1), [2, 4, 16])
    g.output(g.matmul(y, 16, 5, name="m1"))
    m = g.model()
    a = run_analysis(m)
    assert a.prunable == []
    assert any(f"{op} 'ln' normalises over this axis" in r for r in group_of(a, "m0", "producer").reasons)
    a = run_analysis(m, prune_hidden=True)
    assert sizes(a.prunable) == [16]
    removed = random_removal(a, np.random.default_rng(0))
    p = rewrite.apply(m, a.cut(removed))
    k = kept(a, removed, "m0_out", 2)
    np.testing.assert_array_equal(init_value(p, "ln.g"), init_value(m, "ln.g")[k])
    assert init_value(p, "m1.W").shape == (len(k), 5)


# ---- fused GELUs and BiasAdd ---------------------------------------------------------------------------
@pytest.mark.parametrize("op, with_bias, attrs", [("FastGelu", True, {}), ("FastGelu", False, {}),
                                                   ("BiasGelu", True, {}), ("Gelu", False, {}),
                                                   ("QuickGelu", False, {"alpha": 1.702})])
def test_fused_gelu_is_elementwise_and_slices_its_bias(op, with_bias, attrs):
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 16, name="m0")
    ins = [h] + ([g.weight([16], "gelu.b")] if with_bias else [])
    y = g.op(op, ins, name="gelu", domain=MS, **attrs)
    g.output(g.matmul(y, 16, 5, name="m1"))
    m = _runnable(g)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["m0"] and a.prunable[0].consumers == ["m1"]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "m0_out", 2)
    assert 0 < len(k) < 16
    if with_bias:
        np.testing.assert_array_equal(init_value(p, "gelu.b"), init_value(m, "gelu.b")[k])
    _assert_prune_validates(m)


def test_bias_add_ties_input_bias_and_skip():
    """BiasAdd has no CPU kernel in ONNX Runtime: analysis and rewrite only, on a declared output shape."""
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h, skip = g.matmul(x, 8, 16, name="m0"), g.matmul(x, 8, 16, name="ms")
    y = g.declare(g.op("BiasAdd", [h, g.weight([16], "ba.b"), skip], name="ba", domain=MS), [2, 4, 16])
    g.output(g.matmul(y, 16, 5, name="m1"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"m0", "ms"}
    removed = random_removal(a, np.random.default_rng(0))
    p = rewrite.apply(m, a.cut(removed))
    k = kept(a, removed, "m0_out", 2)
    np.testing.assert_array_equal(init_value(p, "ba.b"), init_value(m, "ba.b")[k])
    np.testing.assert_array_equal(init_value(p, "ms.W"), init_value(m, "ms.W")[:, k])


def test_bias_split_gelu_freezes():
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 16, name="m0")
    y = g.declare(g.op("BiasSplitGelu", [h, g.weight([16])], name="bsg", domain=MS), [2, 4, 8])
    g.output(g.matmul(y, 8, 5, name="m1"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("BiasSplitGelu 'bsg': split halves not described" in r for r in group_of(a, "m0", "producer").reasons)


# ---- ops whose packed layouts are not described ----------------------------------------------------------
@pytest.mark.parametrize("op", ["EmbedLayerNormalization", "GroupQueryAttention", "RotaryEmbedding",
                                "PackedAttention", "DecoderMaskedMultiHeadAttention", "DecoderAttention",
                                "LongformerAttention", "QAttention", "QOrderedAttention", "SparseAttention",
                                "PagedAttention"])
def test_packed_layout_ops_freeze_what_they_touch(op):
    g = GraphBuilder()
    x = g.input("x", [2, 4, 8])
    h = g.matmul(x, 8, 16, name="m0")
    y = g.declare(g.op(op, [h], name="fused", domain=MS), [2, 4, 16])
    g.output(g.matmul(y, 16, 5, name="m1"))
    a = run_analysis(g.model())
    assert a.prunable == []
    want = f"com.microsoft {op} (node 'fused') has a packed layout graphprune does not rewrite"
    assert any(want in r for r in group_of(a, "m0", "producer").reasons)
    assert any(want in r for r in group_of(a, "m1", "consumer").reasons)
