"""Gemm / MatMul rules: weight as either operand, transA/transB, weights seen through Transpose and Cast."""

import numpy as np
import pytest

from tests.graphs import GraphBuilder, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_as_b(trans_a, trans_b):
    """Y = A·B + C with B the weight; transA reads the activation transposed."""
    g = GraphBuilder()
    x = g.input("x", [4, 8])
    h = g.gemm(x, 8, 16, trans_b=trans_b, name="g1")
    h = g.op("Relu", [h])
    if trans_a:
        h = g.op("Transpose", [h], perm=[1, 0])  # [16, 4]
    w2 = g.weight([6, 16] if trans_b else [16, 6], "g2.W")
    y = g.op("Gemm", [h, w2, g.weight([6], "g2.b")], name="g2", transA=trans_a, transB=trans_b)
    g.output(y)
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert grp.producers == ["g1"] and grp.consumers == ["g2"]
    assert len(a.frozen) == 2
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "g1.W").shape == ((n, 8) if trans_b else (8, n))
    assert init_value(p, "g1.b").shape == (n,)
    assert init_value(p, "g2.W").shape == ((6, n) if trans_b else (n, 6))
    assert_ratio_zero_identical(m)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_weight_as_a(trans_a):
    """Y[M, N] = W[M, K] · X[K, N]: channels live on axis 0 of the activations."""
    g = GraphBuilder()
    x = g.input("x", [8, 5])
    w1 = g.weight([8, 16] if trans_a else [16, 8], "g1.W")
    h = g.op("Gemm", [w1, x, g.weight([16, 1], "g1.b")], name="g1", transA=trans_a)
    h = g.op("Relu", [h])
    w2 = g.weight([16, 6] if trans_a else [6, 16], "g2.W")
    g.output(g.op("Gemm", [w2, h], name="g2", transA=trans_a))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["g1"] and a.prunable[0].consumers == ["g2"]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "g1.W").shape == ((8, n) if trans_a else (n, 8))
    assert init_value(p, "g1.b").shape == (n, 1)
    assert init_value(p, "g2.W").shape == ((n, 6) if trans_a else (6, n))


def test_matmul_constant_weight():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8])
    h = g.matmul(x, 8, 16, name="m1")
    h = g.op("Add", [h, g.weight([16], "m1.b")])
    h = g.op("Relu", [h])
    g.output(g.matmul(h, 16, 6, name="m2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "m1.W").shape == (8, n)
    assert init_value(p, "m1.b").shape == (n,)
    assert init_value(p, "m2.W").shape == (n, 6)


def test_matmul_weight_through_transpose():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8])
    wt1 = g.op("Transpose", [g.weight([16, 8], "W1")], perm=[1, 0])
    h = g.op("MatMul", [x, wt1], name="m1")
    h = g.op("Relu", [h])
    wt2 = g.op("Transpose", [g.weight([6, 16], "W2")], perm=[1, 0])
    g.output(g.op("MatMul", [h, wt2], name="m2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["m1"] and a.prunable[0].consumers == ["m2"]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    k = kept(a, removed, "W1", 0)
    assert init_value(p, "W1").shape == (n, 8)
    assert init_value(p, "W2").shape == (6, n)
    np.testing.assert_array_equal(init_value(p, "W1"), init_value(m, "W1")[k])


def test_matmul_weight_through_cast():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8])
    w1 = g.const(g.rng.standard_normal([8, 16]).astype(np.float16), "W1")
    h = g.op("MatMul", [x, g.op("Cast", [w1], to=1)], name="m1")
    h = g.op("Relu", [h])
    w2 = g.const(g.rng.standard_normal([16, 6]).astype(np.float16), "W2")
    g.output(g.op("MatMul", [h, g.op("Cast", [w2], to=1)], name="m2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "W1").shape == (8, n) and init_value(p, "W1").dtype == np.float16
    assert init_value(p, "W2").shape == (n, 6) and init_value(p, "W2").dtype == np.float16


def test_matmul_two_activations_ties_contraction():
    """Q·Kᵀ between activations: the contraction axis of both operands is one group."""
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8])
    q = g.matmul(x, 8, 16, name="q")
    k = g.matmul(x, 8, 16, name="k")
    kt = g.op("Transpose", [k], perm=[0, 2, 1])
    g.output(g.op("MatMul", [q, kt], name="qk"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"q", "k"}
    assert_oracle(m)


def test_gemm_weight_not_constant_contraction_still_tied():
    g = GraphBuilder()
    x = g.input("x", [4, 8])
    h = g.gemm(x, 8, 16, name="g1")
    w = g.input("w", [6, 16])
    g.output(g.op("Gemm", [h, w], name="g2", transB=1))
    a = run_analysis(g.model())
    grp = group_of(a, "g1", "producer")
    assert grp.frozen and any("graph input 'w'" in r for r in grp.reasons)


@pytest.mark.parametrize("gather", ["Gather", "GatherND"])
@pytest.mark.parametrize("weight_first", [True, False])
def test_moe_batched_experts_are_mlp_groups(gather, weight_first):
    """MoE experts run batched (transformers' batched_mm): each token's expert matrices are gathered from
    [E, ...] tables by routed indices, then one MatMul per token. The experts' intermediate width is an MLP
    group (roles on the tables where the gather reads them), not attention; cutting it slices both tables."""
    s, h, e, i = 6, 8, 4, 12
    g = GraphBuilder()
    x = g.input("x", [s, h])
    ids = g.op("ArgMax", [g.op("MatMul", [x, g.weight([h, e], "router")])], axis=1, keepdims=0)  # [S]
    if gather == "GatherND":  # dynamo: indices [S, 1]
        ids = g.op("Unsqueeze", [ids, g.ints([1])])

    def pick(table):
        return g.op(gather, [table, ids], name=f"pick_{table}", **({"axis": 0} if gather == "Gather" else {}))

    if weight_first:  # W[S, I, H] · x[S, H, 1]
        up = g.op("MatMul", [pick(g.weight([e, i, h], "up")), g.op("Unsqueeze", [x, g.ints([2])])], name="mm_up")
        act = g.op("Relu", [up])  # [S, I, 1]
        down = g.op("MatMul", [pick(g.weight([e, h, i], "down")), act], name="mm_down")  # [S, H, 1]
        y = g.op("Squeeze", [down, g.ints([2])])
    else:  # x[S, 1, H] · W[S, H, I]
        up = g.op("MatMul", [g.op("Unsqueeze", [x, g.ints([1])]), pick(g.weight([e, h, i], "up"))], name="mm_up")
        act = g.op("Relu", [up])  # [S, 1, I]
        down = g.op("MatMul", [act, pick(g.weight([e, i, h], "down"))], name="mm_down")  # [S, 1, H]
        y = g.op("Squeeze", [down, g.ints([1])])
    g.output(g.op("Add", [y, x]))
    m = g.model()
    a = run_analysis(m)
    grp = group_of(a, "pick_up", "producer")
    assert not grp.frozen and grp.size == i and (grp.kind, grp.structure) == ("mlp", "mlp")
    assert grp.consumers == ["pick_down"]
    assert not any(gr.kind == "head" for gr in a.channel_groups)  # the token axis is no attention head
    a, p, removed = assert_oracle(m)
    n = i - len(removed)
    assert init_value(p, "up").shape == ((e, n, h) if weight_first else (e, h, n))
    assert init_value(p, "down").shape == ((e, h, n) if weight_first else (e, n, h))
