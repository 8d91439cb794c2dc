"""Spatial rules: pooling, Resize, Pad, reductions (spatial prunable, channel frozen)."""

import numpy as np
import pytest

from tests.graphs import GraphBuilder, group_of, init_value, input_value, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _sandwich(build, opset=17, hw=6, k2=1):
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, hw, hw])
    y = g.conv(x, 8, 16, name="c1")
    y = build(g, y)
    g.output(g.conv(y, 16, 4, k=k2, name="c2"))
    return g.model()


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("LpPool", {"kernel_shape": [2, 2]}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_pooling_keeps_channels(op, attrs):
    m = _sandwich(lambda g, y: g.op(op, [y], name="pool", **attrs))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["c1"] and a.prunable[0].consumers == ["c2"]
    assert_oracle(m)
    assert_ratio_zero_identical(m)


def test_maxpool_with_indices_freezes_channels():
    m = _sandwich(lambda g, y: g.op("MaxPool", [y], n_out=2, name="mp", kernel_shape=[2, 2])[0])
    a = run_analysis(m)
    assert a.prunable == []
    assert any("MaxPool 'mp'" in r and "indices" in r for r in group_of(a, "c1", "producer").reasons)


def test_resize_with_scales():
    def build(g, y):
        return g.op("Resize", [y, "", g.const(np.array([1, 1, 2, 2], np.float32))], name="up", mode="nearest")

    m = _sandwich(build)
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


def test_resize_with_sizes_is_rewritten():
    def build(g, y):
        return g.op("Resize", [y, "", "", g.ints([1, 16, 12, 12], "sizes")], name="up", mode="linear")

    m = _sandwich(build)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    np.testing.assert_array_equal(input_value(p, "up", 3), [1, 16 - len(removed), 12, 12])


@pytest.mark.parametrize("axes,sizes_", [([2, 3], [8, 8]), ([1, 2, 3], [16, 8, 8]), ([-2, -1], [8, 8])])
def test_resize_opset18_sizes_with_axes(axes, sizes_):
    """Opset 18 `axes`: sizes lists only those axes, and only the channel entry (if any) changes."""
    def build(g, y):
        return g.op("Resize", [y, "", "", g.ints(sizes_, "sizes")], name="up", axes=axes)

    m = _sandwich(build, opset=18)
    assert sizes(run_analysis(m).prunable) == [16]
    a, p, removed = assert_oracle(m)
    want = [16 - len(removed) if s == 16 else s for s in sizes_]
    np.testing.assert_array_equal(input_value(p, "up", 3), want)


def test_pad_spatial_only_is_prunable():
    m = _sandwich(lambda g, y: g.op("Pad", [y, g.ints([0, 0, 1, 2, 0, 0, 2, 1])], name="pad", mode="reflect"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert_oracle(m)


def test_pad_with_axes_input_opset18():
    m = _sandwich(lambda g, y: g.op("Pad", [y, g.ints([1, 1, 1, 1]), "", g.ints([2, 3])], name="pad"), opset=18)
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


def test_pad_on_channel_axis_frozen():
    m = _sandwich(lambda g, y: g.op("Pad", [y, g.ints([0, 1, 0, 0, 0, 1, 0, 0])], name="pad"))
    a = run_analysis(m)
    assert a.prunable == []
    grp = group_of(a, "c1", "producer")
    assert grp.frozen and any("Pad 'pad' pads axis 1" in r for r in grp.reasons)


def _reduce(op, axes, opset, keepdims=1, **kw):
    def build(g, y):
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):
            return g.op(op, [y, g.ints(axes)], name="red", keepdims=keepdims, **kw)
        return g.op(op, [y], name="red", axes=axes, keepdims=keepdims, **kw)
    return build


@pytest.mark.parametrize("op,opset", [("ReduceMean", 13), ("ReduceMean", 17), ("ReduceMean", 18),
                                      ("ReduceSum", 13), ("ReduceMax", 18), ("ReduceL2", 17)])
def test_reduce_spatial_prunable(op, opset):
    m = _sandwich(_reduce(op, [2, 3], opset), opset=opset)
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert_oracle(m)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_spatial_no_keepdims_then_gemm(opset):
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, name="c1")
    y = _reduce("ReduceMean", [-1, -2], opset, keepdims=0)(g, y)  # [1, 16]
    g.output(g.gemm(y, 16, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].nodes) == {"c1", "fc"}
    a, p, removed = assert_oracle(m)
    assert init_value(p, "fc.W").shape == (4, 16 - len(removed))


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_over_channel_axis_frozen(opset):
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, name="c1")
    y = _reduce("ReduceMean", [1], opset)(g, y)  # [1, 1, 6, 6]
    g.output(g.conv(y, 1, 4, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    grp = group_of(a, "c1", "producer")
    assert any("ReduceMean 'red' reduces over axis 1" in r for r in grp.reasons)


def _grn_mlp(opset=17):
    """ConvNeXtV2's MLP on NHWC tokens: Linear -> GRN (ReduceL2 over H, W; ReduceMean over channels; per-channel
    scale and shift) -> Linear."""
    g = GraphBuilder(opset=opset)

    def reduce(op, y, axes):
        return g.op(op, [y, g.ints(axes)], keepdims=1) if opset >= 18 else g.op(op, [y], axes=axes, keepdims=1)

    x = g.input("x", [1, 4, 4, 8])
    h = g.op("Relu", [g.matmul(x, 8, 16, name="fc1")])
    gx = reduce("ReduceL2", h, [1, 2])  # [1, 1, 1, 16]: per channel, over space
    nx = g.op("Div", [gx, g.op("Add", [reduce("ReduceMean", gx, [-1]), g.const(np.float32(1e-6))])])
    y = g.op("Add", [g.op("Add", [g.op("Mul", [g.weight([1, 1, 1, 16]), g.op("Mul", [h, nx])]),
                                   g.weight([1, 1, 1, 16])]), h])
    g.output(g.matmul(y, 16, 8, name="fc2"))
    return g.model()


@pytest.mark.parametrize("opset", [13, 18])
def test_grn_mean_over_channels_is_a_norm(opset):
    """The spatial ReduceL2 leaves channels alone; the mean across channels is a normalisation statistic, cut
    only under --prune-hidden (by design, saying so)."""
    m = _grn_mlp(opset)
    a = run_analysis(m)
    grp = group_of(a, "fc1", "producer")
    assert grp.frozen and grp.kind == "hidden" and grp.consumers == ["fc2"]
    (why,) = [r for r in grp.refusals if "ReduceMean" in str(r)]
    assert why.kind == "by_design" and "--prune-hidden" in str(why) and "axis 3" in str(why)
    a = run_analysis(m, prune_hidden=True)
    assert group_of(a, "fc1", "producer") in a.prunable
    assert not any("ReduceL2" in r for g in a.frozen for r in g.reasons)


def test_reduce_all_axes_default_frozen():
    """No axes and noop_with_empty_axes=0: every axis is reduced (channels included)."""
    g = GraphBuilder(opset=18)
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, name="c1")
    g.output(g.op("ReduceMean", [y], name="red"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("reduces over axis 1" in r for r in group_of(a, "c1", "producer").reasons)


def test_argmax_over_channels_frozen():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.conv(x, 8, 16, name="c1")
    g.output(g.op("ArgMax", [y], name="am", axis=1))
    a = run_analysis(g.model())
    assert any("ArgMax 'am'" in r for r in group_of(a, "c1", "producer").reasons)


def test_selecting_channels_freezes():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.op("TopK", [g.conv(x, 8, 16, name="c1"), g.ints([2])], n_out=2, name="sel", axis=1)[0]
    g.output(g.conv(y, 2, 4, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("TopK 'sel' selects" in r for r in group_of(a, "c1", "producer").reasons)


def test_tile_channel_axis_cuts_every_copy():
    """Channel c of a Tile repeated twice is output channels c and c + 16: one unit, sliced in c2's weight."""
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    y = g.op("Tile", [g.conv(x, 8, 16, name="c1"), g.ints([1, 2, 1, 1])], name="sel")
    g.output(g.conv(y, 32, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16] and a.prunable[0].consumers == ["c2"]
    a, p, removed = assert_oracle(m)
    assert init_value(p, "c2.W").shape[1] == 2 * (16 - len(removed))


def test_tile_spatial_prunable():
    m = _sandwich(lambda g, y: g.op("Tile", [y, g.ints([1, 1, 2, 2])], name="tile"))
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)
