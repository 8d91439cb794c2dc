"""Layout rules: Concat/Split/Slice offsets, Flatten/Reshape blocks, Transpose, Squeeze/Unsqueeze,
DepthToSpace/SpaceToDepth, channel shuffle, Gather, GatherND, GatherElements, Expand; and the constants each
rewrite edits."""

import numpy as np
import pytest

from tests.graphs import (
    GraphBuilder,
    assert_removal_oracle,
    attr,
    group_of,
    init_value,
    input_value,
    kept,
    node_by_name,
    run_analysis,
    sizes,
)
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _start(c=16, hw=4, k=3, opset=17):
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, hw, hw])
    return g, g.conv(x, 8, c, k=k, name="c1")


# ---- Concat -------------------------------------------------------------------------------------------


def test_concat_channel_axis_offsets_and_single_channel_input():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    a1 = g.conv(x, 8, 6, name="a")
    b1 = g.conv(x, 8, 10, name="b")
    c1 = g.conv(x, 8, 1, name="one")
    y = g.op("Concat", [a1, c1, b1], name="cat", axis=1)  # [1, 17, 4, 4]: a at 0..5, one at 6, b at 7..16
    g.output(g.conv(y, 17, 4, k=1, name="out"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [6, 10]
    assert group_of(a, "a", "producer").consumers == ["out"]
    assert group_of(a, "b", "producer").consumers == ["out"]
    single = [g_ for g_ in a.frozen if any("single channel" in r for r in g_.reasons)]
    assert len(single) == 1 and single[0].size == 1 and "Concat 'cat'" in single[0].reasons[0]
    a, p, removed = assert_oracle(m)
    ka, kb = kept(a, removed, "a_out", 1), kept(a, removed, "b_out", 1)
    k_cat = kept(a, removed, "cat_out", 1)
    np.testing.assert_array_equal(k_cat, np.concatenate([ka, [6], 7 + kb]))
    np.testing.assert_array_equal(init_value(p, "out.W"), init_value(m, "out.W")[:, k_cat])


def test_concat_on_spatial_axis_ties_channels():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    a1 = g.conv(x, 8, 16, name="a")
    b1 = g.conv(x, 8, 16, name="b")
    y = g.op("Concat", [a1, b1], name="cat", axis=2)  # [1, 16, 8, 4]
    g.output(g.conv(y, 16, 4, name="out"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"a", "b"}
    assert_oracle(m)


# ---- Split --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 18])
def test_split_sizes_input_rewritten(opset):
    g, y = _start(opset=opset)
    p1, p2 = g.op("Split", [y, g.ints([6, 10], "split")], n_out=2, name="sp", axis=1)
    g.output(g.conv(p1, 6, 4, k=1, name="o1"), g.conv(p2, 10, 4, k=1, name="o2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [6, 10]
    assert group_of(a, "o1", "consumer").producers == ["c1"]
    a, p, removed = assert_oracle(m)
    n1, n2 = len(kept(a, removed, "sp_out0", 1)), len(kept(a, removed, "sp_out1", 1))
    assert n1 < 6 and n2 < 10
    np.testing.assert_array_equal(input_value(p, "sp", 1), [n1, n2])


def test_split_attr_opset11_rewritten():
    g, y = _start(opset=11)
    p1, p2 = g.op("Split", [y], n_out=2, name="sp", axis=1, split=[6, 10])
    g.output(g.conv(p1, 6, 4, k=1, name="o1"), g.conv(p2, 10, 4, k=1, name="o2"))
    m = g.model()
    a, p, removed = assert_oracle(m)
    n1, n2 = len(kept(a, removed, "sp_out0", 1)), len(kept(a, removed, "sp_out1", 1))
    assert attr(p, "sp", "split") == [n1, n2]


@pytest.mark.parametrize("opset", [13, 18])
def test_split_equal_without_sizes(opset):
    g, y = _start(opset=opset)
    extra = {"num_outputs": 2} if opset >= 18 else {}
    p1, p2 = g.op("Split", [y], n_out=2, name="sp", axis=1, **extra)
    g.output(g.conv(p1, 8, 4, k=1, name="o1"), g.conv(p2, 8, 4, k=1, name="o2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [8, 8]
    # Cut the halves unequally: the equal split must become explicit sizes.
    g1, g2 = group_of(a, "o1", "consumer"), group_of(a, "o2", "consumer")
    removed = np.concatenate([g1.units[[2]], g2.units[[0, 3, 7]]])
    p = assert_removal_oracle(m, a, removed)
    np.testing.assert_array_equal(input_value(p, "sp", 1), [7, 5])
    assert attr(p, "sp", "num_outputs") is None
    assert len(node_by_name(p, "sp").output) == 2


def test_split_single_channel_output_is_kept():
    g, y = _start()
    p1, p2 = g.op("Split", [y, g.ints([1, 15])], n_out=2, name="sp", axis=1)
    g.output(g.conv(p1, 1, 4, k=1, name="o1"), g.conv(p2, 15, 4, k=1, name="o2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [15]
    a, p, removed = assert_oracle(m)
    assert 0 in kept(a, removed, "c1_out", 1)
    assert input_value(p, "sp", 1)[0] == 1


# ---- Slice --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("starts,ends", [([4], [12]), ([-12], [-4]), ([4], [1 << 62])])
def test_slice_channel_axis_bounds_rewritten(starts, ends):
    g, y = _start()
    s = g.op("Slice", [y, g.ints(starts), g.ints(ends), g.ints([1])], name="sl")
    n_out = 8 if ends[0] < 100 else 12
    g.output(g.conv(s, n_out, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    # Channels outside the slice reach nothing: their own prunable group.
    assert sizes(a.prunable) == sorted([n_out, 16 - n_out])
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    ks = kept(a, removed, "sl_out", 1)
    st, en = input_value(p, "sl", 1)[0], input_value(p, "sl", 2)[0]
    np.testing.assert_array_equal(k[st:en], 4 + ks)


def test_slice_with_step_freezes():
    g, y = _start()
    s = g.op("Slice", [y, g.ints([0]), g.ints([16]), g.ints([1]), g.ints([2])], name="sl")
    g.output(g.conv(s, 8, 4, k=1, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("Slice 'sl' uses step 2" in r for r in group_of(a, "c1", "producer").reasons)


def test_slice_spatial_axis_keeps_channels():
    g, y = _start(hw=6)
    s = g.op("Slice", [y, g.ints([1, 1]), g.ints([5, 5]), g.ints([2, 3])], name="sl")
    g.output(g.conv(s, 16, 4, k=1, name="c2"))
    m = g.model()
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


# ---- Flatten / Reshape --------------------------------------------------------------------------------


def test_flatten_gemm_channel_is_block_of_features():
    g, y = _start(hw=3)
    y = g.op("Flatten", [y], name="fl")  # [1, 144]
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert a.prunable[0].producers == ["c1"] and a.prunable[0].consumers == ["fc"]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    feats = (k[:, None] * 9 + np.arange(9)).ravel()
    np.testing.assert_array_equal(kept(a, removed, "fl_out", 1), feats)
    np.testing.assert_array_equal(init_value(p, "fc.W"), init_value(m, "fc.W")[:, feats])


def test_flatten_at_axis_equal_to_rank_merges_every_axis():
    """Flatten axis == rank (BERT's TorchScript mask: [1, 7] -> [7, 1]) is legal: every axis goes to axis 0."""
    g, y = _start(hw=3)
    y = g.op("Flatten", [y], name="fl", axis=4)  # [144, 1]
    y = g.op("Reshape", [y, g.ints([1, 16, 3, 3], "target")], name="rs")
    g.output(g.conv(y, 16, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert not a.internal_errors, [str(r) for r in a.internal_errors]
    assert sizes(a.prunable) == [16]
    assert_oracle(m)


@pytest.mark.parametrize("target", [[1, 144], [1, -1], [0, 144], [0, -1]])
def test_reshape_flatten_constant_target(target):
    g, y = _start(hw=3)
    y = g.op("Reshape", [y, g.ints(target, "target")], name="rs")
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    want = [target[0], 9 * n if target[1] == 144 else -1]
    np.testing.assert_array_equal(input_value(p, "rs", 1), want)
    assert init_value(p, "fc.W").shape == (4, 9 * n)


@pytest.mark.parametrize("last", [-1, 144])
def test_reshape_target_computed_from_shape(last):
    """Target = Concat(Unsqueeze(Gather(Shape(y), 0)), [last]): the constant piece is rewritten."""
    g, y = _start(hw=3)
    s = g.op("Shape", [y])
    n = g.op("Gather", [s, g.ints(0)], axis=0)
    n = g.op("Unsqueeze", [n, g.ints([0])])
    t = g.op("Concat", [n, g.ints([last], "last")], axis=0)
    y = g.op("Reshape", [y, t], name="rs")
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    assert list(init_value(p, "last")) == [-1 if last == -1 else 9 * n]


def test_reshape_target_with_dynamic_batch():
    g = GraphBuilder()
    x = g.input("x", ["N", 8, 3, 3])
    y = g.conv(x, 8, 16, name="c1")
    s = g.op("Shape", [y])
    n = g.op("Unsqueeze", [g.op("Gather", [s, g.ints(0)], axis=0), g.ints([0])])
    y = g.op("Reshape", [y, g.op("Concat", [n, g.ints([144], "last")], axis=0)], name="rs")
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m, input_shapes={"x": [2, 8, 3, 3]})
    assert list(init_value(p, "last")) == [9 * (16 - len(removed))]


def test_transpose_nhwc_then_flatten_channel_innermost():
    g, y = _start(hw=3)
    y = g.op("Transpose", [y], perm=[0, 2, 3, 1], name="nhwc")  # [1, 3, 3, 16]
    y = g.op("Flatten", [y], name="fl")
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    feats = (np.arange(9)[:, None] * 16 + k[None, :]).ravel()
    np.testing.assert_array_equal(kept(a, removed, "fl_out", 1), feats)
    np.testing.assert_array_equal(init_value(p, "fc.W"), init_value(m, "fc.W")[:, feats])


def test_reshape_split_head_dims_then_merge():
    """[1, 16, HW] -> [1, 4, 4, HW] -> [1, 16, HW]: channels survive a split and a merge."""
    g, y = _start(hw=3)
    y = g.op("Reshape", [y, g.ints([1, 4, 4, 9], "t1")], name="r1")
    y = g.op("Relu", [y])
    y = g.op("Reshape", [y, g.ints([1, 16, 3, 3], "t2")], name="r2")
    g.output(g.conv(y, 16, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert len(a.prunable) == 1
    assert_oracle(m)


def test_reshape_merging_spatial_axes_keeps_channels():
    """[1, 16, 4, 4] -> [1, 16, 16] -> Softmax(-1) -> [1, 16, 4, 4]: the channel entry of both targets follows."""
    g, y = _start()
    y = g.op("Reshape", [y, g.ints([1, 16, 16], "t1")], name="r1")
    y = g.op("Softmax", [y], axis=-1)
    y = g.op("Reshape", [y, g.ints([1, 16, 4, 4], "t2")], name="r2")
    g.output(g.conv(y, 16, 4, name="c2"))
    m = g.model()
    assert sizes(run_analysis(m).prunable) == [16]
    a, p, removed = assert_oracle(m)
    n = 16 - len(removed)
    np.testing.assert_array_equal(init_value(p, "t1"), [1, n, 16])
    np.testing.assert_array_equal(init_value(p, "t2"), [1, n, 4, 4])


def test_channel_shuffle():
    g, y = _start(k=1)
    y = g.op("Reshape", [y, g.ints([1, 4, 4, 4, 4], "t1")], name="r1")
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4], name="tr")
    y = g.op("Reshape", [y, g.ints([1, 16, 4, 4], "t2")], name="r2")
    g.output(g.conv(y, 16, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    # One carrier axis: a unit is one local index cut in all 4 groups.
    assert sizes(a.prunable) == [4]
    assert a.prunable[0].producers == ["c1"] and a.prunable[0].consumers == ["c2"]
    a, p, removed = assert_oracle(m)
    k_local = kept(a, removed, "r1_out", 2)
    n = len(k_local)
    np.testing.assert_array_equal(kept(a, removed, "c1_out", 1), (np.arange(4)[:, None] * 4 + k_local).ravel())
    np.testing.assert_array_equal(kept(a, removed, "r2_out", 1), (k_local[:, None] * 4 + np.arange(4)).ravel())
    np.testing.assert_array_equal(init_value(p, "t1"), [1, 4, n, 4, 4])
    np.testing.assert_array_equal(init_value(p, "t2"), [1, 4 * n, 4, 4])


# ---- Transpose / Squeeze / Unsqueeze ------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    g, y = _start(opset=opset)
    y = g.op("GlobalAveragePool", [y])
    if opset >= 13:
        y = g.op("Squeeze", [y, g.ints([2, 3])], name="sq")
    else:
        y = g.op("Squeeze", [y], name="sq", axes=[2, 3])
    h = g.gemm(y, 16, 12, name="fc")  # [1, 12]
    if opset >= 13:
        h = g.op("Unsqueeze", [h, g.ints([-1, -2])], name="unsq")
    else:
        h = g.op("Unsqueeze", [h], name="unsq", axes=[2, 3])
    g.output(g.conv(h, 12, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [12, 16]
    assert group_of(a, "fc", "producer").consumers == ["c2"]
    assert_oracle(m)


def test_transpose_nhwc_roundtrip():
    g, y = _start()
    y = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    y = g.op("Add", [y, g.weight([16], "bias_nhwc")])  # per-channel constant on the last axis
    y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
    g.output(g.conv(y, 16, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    assert init_value(p, "bias_nhwc").shape == (16 - len(removed),)


# ---- DepthToSpace / SpaceToDepth ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    g, y = _start()
    y = g.op("DepthToSpace", [y], name="d2s", blocksize=2, mode=mode)  # [1, 4, 8, 8]
    g.output(g.conv(y, 4, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [4]
    a, p, removed = assert_oracle(m)
    kc = kept(a, removed, "d2s_out", 1)
    k_in = kept(a, removed, "c1_out", 1)
    if mode == "DCR":
        want = (np.arange(4)[:, None] * 4 + kc[None, :]).ravel()
    else:
        want = (kc[:, None] * 4 + np.arange(4)[None, :]).ravel()
    np.testing.assert_array_equal(k_in, np.sort(want))


def test_space_to_depth():
    g, y = _start(c=4, hw=6)
    y = g.op("SpaceToDepth", [y], name="s2d", blocksize=2)  # [1, 16, 3, 3]
    g.output(g.conv(y, 16, 4, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [4]
    a, p, removed = assert_oracle(m)
    kc = kept(a, removed, "c1_out", 1)
    want = (np.arange(4)[:, None] * 4 + kc[None, :]).ravel()
    np.testing.assert_array_equal(kept(a, removed, "s2d_out", 1), np.sort(want))


# ---- Gather / Expand ----------------------------------------------------------------------------------


def test_gather_channel_axis_constant_indices():
    g, y = _start()
    idx = np.array([1, 2, 5, 8, 9, 12, 14, 15])
    s = g.op("Gather", [y, g.ints(idx, "idx")], name="ga", axis=1)
    g.output(g.conv(s, 8, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [8, 8]  # selected channels, and the ones nothing reads
    sel = group_of(a, "c2", "consumer")
    assert sel.producers == ["c1"]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    new_idx = input_value(p, "ga", 1)
    np.testing.assert_array_equal(k[new_idx], idx[np.isin(idx, k)])


def test_gather_single_index_keeps_that_channel():
    g, y = _start()
    s = g.op("Gather", [y, g.ints(3)], name="ga", axis=1)  # [1, 4, 4]
    s = g.op("Unsqueeze", [s, g.ints([1])])
    g.output(g.conv(s, 1, 4, k=1, name="c2"))
    m = g.model()
    a = run_analysis(m)
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    assert 3 in k
    assert int(input_value(p, "ga", 1)) == int(np.searchsorted(k, 3))


def test_gather_repeated_indices_frozen():
    g, y = _start()
    s = g.op("Gather", [y, g.ints([0, 0, 1, 2])], name="ga", axis=1)
    g.output(g.conv(s, 4, 4, k=1, name="c2"))
    a = run_analysis(g.model())
    assert any("Gather 'ga' repeats or reorders" in r for r in group_of(a, "c1", "producer").reasons)


def _nd_start():
    """[3, 4, 8] -> MatMul -> [3, 4, 12]: channels on the last axis, rows on axis 0."""
    g = GraphBuilder()
    x = g.input("x", [3, 4, 8])
    return g, g.op("Relu", [g.matmul(x, 8, 12, name="m1")])


@pytest.mark.parametrize("indices", ["constant", "run-time"])
def test_gather_nd_trailing_axes_pass_through(indices):
    """Falcon/Swinv2 under dynamo: GatherND picks rows of axis 0; the slices it copies keep their channels."""
    g, y = _nd_start()
    if indices == "constant":
        ind = g.ints([[0], [2]])
    else:
        ind = g.op("Cast", [g.op("Less", [g.input("sel", [2, 1]), g.const(np.float32(0.5))])], to=7)
    s = g.op("GatherND", [y, ind], name="gnd")  # [2, 4, 12]
    g.output(g.matmul(s, 12, 5, name="m2"))
    m = g.model()
    a = run_analysis(m)
    grp = group_of(a, "m2", "consumer")
    assert grp.producers == ["m1"] and not grp.frozen and grp.size == 12
    if indices == "constant":
        assert_oracle(m)


def test_scatter_nd_copies_update_channels():
    """Funnel under dynamo (its relative shift): ScatterND overwrites rows of axis 0 of the data with update
    slices; the data's trailing channels and the updates' are one group, the indexed axis is not a channel."""
    g, y = _nd_start()  # [3, 4, 12]
    upd = g.op("Relu", [g.matmul(g.input("z", [2, 4, 8]), 8, 12, name="mu")])  # [2, 4, 12]
    s = g.op("ScatterND", [y, g.ints([[0], [2]]), upd], name="snd")
    g.output(g.matmul(s, 12, 5, name="m2"))
    m = g.model()
    a = run_analysis(m)
    grp = group_of(a, "m2", "consumer")
    assert sorted(grp.producers) == ["m1", "mu"] and not grp.frozen and grp.size == 12
    assert_oracle(m)
    g, y = _nd_start()  # indices into [axis 0, axis 1]: axis 1 is written by index, not a channel
    s = g.op("ScatterND", [g.op("Transpose", [y], perm=[0, 2, 1]), g.ints([[0, 1], [2, 3]]),
                           g.op("Relu", [g.weight([2, 4])])], name="snd")  # data [3, 12, 4]
    g.output(g.matmul(g.op("Transpose", [s], perm=[0, 2, 1]), 12, 5, name="m2"))
    grp = group_of(run_analysis(g.model()), "m1", "producer")
    assert grp.frozen and any("ScatterND 'snd' writes along axis 1" in r for r in grp.reasons)


def test_gather_nd_selects_channels_on_axis_0():
    """k = 1 constant indices into axis 0: an index map, renumbered by the rewrite."""
    g = GraphBuilder()
    x = g.input("x", [4, 8])
    y = g.op("Transpose", [g.op("Relu", [g.matmul(x, 8, 12, name="m1")])], perm=[1, 0])  # [12, 4]
    idx = np.array([1, 3, 4, 7, 9, 10])
    s = g.op("GatherND", [y, g.ints(idx[:, None], "idx")], name="gnd")  # [6, 4]
    g.output(g.matmul(g.op("Transpose", [s], perm=[1, 0]), 6, 5, name="m2"))
    m = g.model()
    a = run_analysis(m)
    sel = group_of(a, "m2", "consumer")
    assert sel.producers == ["m1"] and sel.size == 6
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "m1_out", 1)
    new_idx = input_value(p, "gnd", 1)[:, 0]
    np.testing.assert_array_equal(k[new_idx], idx[np.isin(idx, k)])


def test_gather_nd_single_row_and_repeats():
    g = GraphBuilder()
    x = g.input("x", [4, 8])
    y = g.op("Transpose", [g.matmul(x, 8, 12, name="m1")], perm=[1, 0])  # [12, 4]
    one = g.op("GatherND", [y, g.ints([[3]])], name="one")  # [1, 4]
    rep = g.op("GatherND", [y, g.ints([[5], [5]])], name="rep")  # [2, 4]
    g.output(one, rep)
    a = run_analysis(g.model())
    said = " | ".join(r for grp in a.channel_groups for r in grp.reasons)
    assert "GatherND 'one' reads a single channel" in said and "GatherND 'rep' repeats or reorders" in said


def test_gather_elements_other_axes_pass_through():
    """Funnel's relative shift: GatherElements along axis 0; the channel axis beside it is tied."""
    g = GraphBuilder()
    x = g.input("x", [4, 8])
    y = g.op("Relu", [g.matmul(x, 8, 12, name="m1")])  # [4, 12]
    idx = np.random.default_rng(0).integers(0, 4, size=(3, 12))
    s = g.op("GatherElements", [y, g.ints(idx, "idx")], name="ge", axis=0)  # [3, 12]
    g.output(g.matmul(s, 12, 5, name="m2"))
    m = g.model()
    a = run_analysis(m)
    grp = group_of(a, "m2", "consumer")
    assert grp.producers == ["m1"] and not grp.frozen
    a, p, removed = assert_oracle(m)
    assert input_value(p, "ge", 1).shape == (3, 12 - len(removed))


def test_expand_broadcast_gate():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    a1 = g.conv(x, 8, 16, name="c1")
    s = g.op("GlobalAveragePool", [g.conv(x, 8, 16, name="c2")])  # [1, 16, 1, 1]
    e = g.op("Expand", [s, g.ints([1, 16, 6, 6], "shape")], name="ex")
    y = g.op("Add", [a1, e])
    g.output(g.conv(y, 16, 4, k=1, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"c1", "c2"}
    a, p, removed = assert_oracle(m)
    np.testing.assert_array_equal(init_value(p, "shape"), [1, 16 - len(removed), 6, 6])


def test_expand_with_ones_in_channel_entry():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 6, 6])
    s = g.op("GlobalAveragePool", [g.conv(x, 8, 16, name="c1")])
    e = g.op("Expand", [s, g.ints([1, 1, 6, 6], "shape")], name="ex")  # keeps 16 channels (broadcast)
    g.output(g.conv(e, 16, 4, k=1, name="c2"))
    m = g.model()
    assert sizes(run_analysis(m).prunable) == [16]
    _, p, _ = assert_oracle(m)
    np.testing.assert_array_equal(init_value(p, "shape"), [1, 1, 6, 6])


def test_layout_ratio_zero_identical():
    g, y = _start(hw=3)
    y = g.op("Flatten", [y])
    g.output(g.gemm(y, 144, 4))
    assert_ratio_zero_identical(g.model())


# ---- attention heads (Reshape split/merge around Transpose) ---------------------------------------------


def _attention(T=5, H=4, D=4):
    E = H * D
    g = GraphBuilder()
    x = g.input("x", [1, T, 8])

    def heads(name):
        t = g.matmul(x, 8, E, name=name)
        t = g.op("Reshape", [t, g.ints([1, T, H, D])], name=f"{name}_rs")
        return g.op("Transpose", [t], perm=[0, 2, 1, 3], name=f"{name}_tr")

    q, k, v = heads("q"), heads("k"), heads("v")
    s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])], name="qk")
    s = g.op("Softmax", [g.op("Mul", [s, g.const(np.float32(0.5))])], axis=-1)
    o = g.op("Transpose", [g.op("MatMul", [s, v], name="pv")], perm=[0, 2, 1, 3])
    o = g.op("Reshape", [o, g.ints([1, T, E], "merge")], name="merge_rs")
    g.output(g.matmul(o, E, 6, name="proj"))
    return g.model()


def test_attention_whole_heads():
    from graphprune.analysis import AnalysisOptions

    m = _attention()
    a = run_analysis(m)
    assert sizes(a.prunable) == [4]
    assert set(a.prunable[0].producers) == {"q", "k", "v"} and a.prunable[0].consumers == ["proj"]
    a, p, removed = assert_oracle(m, options=AnalysisOptions())
    n_heads = 4 - len(removed)
    np.testing.assert_array_equal(init_value(p, "merge"), [1, 5, 4 * n_heads])
    assert init_value(p, "q.W").shape == (8, 4 * n_heads)


def test_attention_prune_head_dim():
    """--prune-head-dim: q/k share the head dim (contraction), v's head dim is its own group."""
    from graphprune.analysis import AnalysisOptions

    m = _attention()
    a = run_analysis(m, prune_head_dim=True)
    assert sizes(a.prunable) == [4, 4]
    qk = group_of(a, "q", "producer")
    assert set(qk.producers) == {"q", "k"}
    assert group_of(a, "v", "producer").consumers == ["proj"]
    a, p, removed = assert_oracle(m, options=AnalysisOptions(prune_head_dim=True))
    d_v = len(kept(a, removed, "v_rs_out", 3))
    np.testing.assert_array_equal(init_value(p, "merge"), [1, 5, 4 * d_v])


def test_channel_shuffle_with_prune_head_dim_stays_correct():
    from graphprune.analysis import AnalysisOptions

    g, y = _start(k=1)
    y = g.op("Reshape", [y, g.ints([1, 4, 4, 4, 4], "t1")], name="r1")
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4], name="tr")
    y = g.op("Reshape", [y, g.ints([1, 16, 4, 4], "t2")], name="r2")
    g.output(g.conv(y, 16, 4, k=1, name="c2"))
    m = g.model()
    assert sizes(run_analysis(m, prune_head_dim=True).prunable) == [4]
    assert_oracle(m, options=AnalysisOptions(prune_head_dim=True))


def test_tile_repeats_channels_as_an_index_map():
    """DeBERTa tiles per-head position projections [H, S, d] over the batch of a [B*H, S, d] layout: output
    element i of the repeated axis is channel i mod H, so cutting a head removes all its copies."""
    heads, s, d, b = 4, 5, 3, 2
    g = GraphBuilder()
    x = g.input("x", [s, 8])
    h = g.op("Reshape", [g.matmul(x, 8, heads * d, name="proj"), g.ints([s, heads, d])])
    h = g.op("Transpose", [h], perm=[1, 0, 2])  # [H, S, d]
    t = g.op("Tile", [h, g.ints([b, 1, 1])], name="tile")  # [B*H, S, d]
    t = g.op("Transpose", [g.op("Reshape", [t, g.ints([b, heads, s, d])]), ], perm=[0, 2, 1, 3])
    g.output(g.matmul(g.op("Reshape", [t, g.ints([b, s, heads * d])]), heads * d, 6, name="out"))
    m = g.model()
    a = run_analysis(m)
    grp = group_of(a, "out", "consumer")
    assert grp.producers == ["proj"] and grp.size == heads and not grp.frozen
    cut = a.cut(grp.units[:1])
    assert cut.kept("tile_out", 0).sum() == b * (heads - 1)
    assert_oracle(m)


def test_tile_of_a_size_1_axis_is_not_a_channel():
    g = GraphBuilder()
    x = g.input("x", [1, 8])
    t = g.op("Tile", [g.matmul(x, 8, 12, name="m1"), g.ints([3, 1])], name="tile")  # [3, 12]
    g.output(g.op("Transpose", [t], perm=[1, 0]))
    a = run_analysis(g.model())
    assert sizes(a.prunable) == []
    said = [str(r) for refusals in a.space_reasons.values() for r, _ in refusals]
    assert "Tile 'tile' repeats axis 0" in said
