"""Conv / ConvTranspose rules: plain, 1-D/3-D, grouped (equal local cuts), depthwise (whole groups)."""

import numpy as np
import pytest

from tests.graphs import GraphBuilder, attr, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _chain(dims: int):
    g = GraphBuilder()
    x = g.input("x", [1, 8] + [6] * dims)
    y = g.conv(x, 8, 16, dims=dims, name="c1")
    y = g.op("Relu", [y])
    g.output(g.conv(y, 16, 4, dims=dims, name="c2"))
    return g.model()


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_chain_nd(dims):
    m = _chain(dims)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert grp.producers == ["c1"] and grp.consumers == ["c2"]
    frozen = {g.key: g for g in a.frozen}
    assert len(frozen) == 2
    assert any("graph input 'x'" in r for g in frozen.values() for r in g.reasons)
    assert any("graph output" in r for r in group_of(a, "c2", "producer").reasons)
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert init_value(p, "c1.W").shape == (n, 8) + (3,) * dims
    assert init_value(p, "c1.b").shape == (n,)
    assert init_value(p, "c2.W").shape == (4, n) + (3,) * dims
    assert init_value(p, "c2.b").shape == (4,)
    assert_ratio_zero_identical(m)


def test_conv_without_bias_and_strides():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 8, 8])
    y = g.conv(x, 8, 12, bias=False, strides=[2, 2], name="c1")
    g.output(g.conv(y, 12, 4, k=1, bias=False, name="c2"))
    m = g.model()
    a, p, removed = assert_oracle(m)
    assert sizes(a.prunable) == [12]
    assert init_value(p, "c1.W").shape[0] == 12 - len(removed)


def test_conv_weight_not_constant_is_frozen():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    w = g.input("w", [16, 8, 3, 3])
    y = g.op("Conv", [x, w], name="dyn", pads=[1, 1, 1, 1])
    g.output(g.conv(y, 16, 4, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    g16 = group_of(a, "c2", "consumer")
    assert g16.frozen and any("'dyn'" in r and "not a constant" in r for r in g16.reasons)


def _grouped(groups=4, per=8):
    c = groups * per
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, c, k=1, name="c1")
    y = g.op("Relu", [y])
    y = g.conv(y, c, c, group=groups, name="gc")
    y = g.op("Relu", [y])
    g.output(g.conv(y, c, 4, k=1, name="c3"))
    return g.model()


def test_grouped_conv_resnext_same_local_index():
    m = _grouped(4, 8)
    a = run_analysis(m)
    # c1->gc: 8 units of 4 channels (one per group); gc->c3: the same.
    assert sizes(a.prunable) == [8, 8]
    for grp in a.prunable:
        assert grp.round_multiple == 4
    assert group_of(a, "c1", "producer").consumers == ["gc"]
    assert group_of(a, "gc", "producer").consumers == ["c3"]
    a, p, removed = assert_oracle(m, fraction=0.25)
    for t in ("c1_out", "gc_out"):
        k = kept(a, removed, t, 1)
        per = len(k) // 4
        assert len(k) % 4 == 0 and 0 < per < 8
        local = k.reshape(4, per) - (np.arange(4) * 8)[:, None]
        assert (local == local[0]).all(), f"{t}: groups cut differently: {k}"
    assert attr(p, "gc", "group") == 4
    n_in = len(kept(a, removed, "c1_out", 1))
    n_out = len(kept(a, removed, "gc_out", 1))
    assert init_value(p, "gc.W").shape == (n_out, n_in // 4, 3, 3)


def test_depthwise_conv_shrinks_group():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, k=1, name="c1")
    y = g.conv(y, 16, 16, group=16, name="dw")
    y = g.op("Relu", [y])
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert set(grp.producers) == {"c1", "dw"} and grp.consumers == ["c3"]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert attr(p, "dw", "group") == n
    assert init_value(p, "dw.W").shape == (n, 1, 3, 3)
    assert init_value(p, "dw.b").shape == (n,)


def test_depthwise_channel_multiplier_2():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 8, k=1, name="c1")
    y = g.conv(y, 8, 16, group=8, name="dw")  # W[16, 1, 3, 3]: output 2g, 2g+1 read input g
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [8]
    grp = a.prunable[0]
    assert set(grp.producers) == {"c1", "dw"} and grp.consumers == ["c3"]
    a, p, removed = assert_oracle(m)
    k_in = kept(a, removed, "c1_out", 1)
    k_out = kept(a, removed, "dw_out", 1)
    np.testing.assert_array_equal(k_out, np.stack([2 * k_in, 2 * k_in + 1], 1).ravel())
    assert attr(p, "dw", "group") == len(k_in)
    assert init_value(p, "dw.W").shape == (2 * len(k_in), 1, 3, 3)


def test_conv_transpose_plain():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    y = g.conv(x, 8, 16, name="c1")
    y = g.conv_transpose(y, 16, 12, name="up")
    y = g.op("Relu", [y])
    g.output(g.conv(y, 12, 4, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [12, 16]
    assert group_of(a, "up", "consumer").producers == ["c1"]
    assert group_of(a, "up", "producer").consumers == ["c3"]
    a, p, removed = assert_oracle(m)
    n16 = len(kept(a, removed, "c1_out", 1))
    n12 = len(kept(a, removed, "up_out", 1))
    assert init_value(p, "up.W").shape == (n16, n12, 2, 2)
    assert init_value(p, "up.b").shape == (n12,)


def test_conv_transpose_grouped_same_local_index():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    y = g.conv(x, 8, 16, k=1, name="c1")
    y = g.conv_transpose(y, 16, 16, group=4, name="up")  # W[16, 4, 2, 2]
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [4, 4]
    a, p, removed = assert_oracle(m, fraction=0.25)
    assert attr(p, "up", "group") == 4
    for t in ("c1_out", "up_out"):
        k = kept(a, removed, t, 1)
        local = k.reshape(4, -1) - (np.arange(4) * 4)[:, None]
        assert (local == local[0]).all()
    n_in, n_out = len(kept(a, removed, "c1_out", 1)), len(kept(a, removed, "up_out", 1))
    assert init_value(p, "up.W").shape == (n_in, n_out // 4, 2, 2)


def test_conv_transpose_depthwise_shrinks_group():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    y = g.conv(x, 8, 16, k=1, name="c1")
    y = g.conv_transpose(y, 16, 16, group=16, name="up")  # W[16, 1, 2, 2]
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    # W[in, out/group] of a depthwise ConvTranspose: axis 0 is both the input and the output channel.
    assert set(a.prunable[0].nodes) == {"c1", "up", "c3"}
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert attr(p, "up", "group") == n
    assert init_value(p, "up.W").shape == (n, 1, 2, 2)
