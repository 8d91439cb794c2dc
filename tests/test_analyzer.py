"""The analyzer around the rules: union-find, unknown ops, graph boundaries, shared initializers, --exclude."""

import numpy as np
import pytest

from graphprune.analysis import AnalysisOptions
from graphprune.analysis.spaces import connected_components
from tests.graphs import GraphBuilder, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle

# ---- union-find ---------------------------------------------------------------------------------------


def _reference_components(n, u, v):
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(u, v):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comp_min = {}
    for i in range(n):
        r = find(i)
        comp_min[r] = min(comp_min.get(r, i), i)
    return np.array([comp_min[find(i)] for i in range(n)])


@pytest.mark.parametrize("seed", range(12))
def test_connected_components_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    m = int(rng.integers(0, 2 * n))
    u = rng.integers(0, n, m)
    v = rng.integers(0, n, m)
    if m and seed % 3 == 0:  # duplicates and self loops
        u = np.concatenate([u, u[: m // 2], v[:5]])
        v = np.concatenate([v, v[: m // 2], v[:5]])
    got = connected_components(n, u, v)
    np.testing.assert_array_equal(got, _reference_components(n, u, v))


def test_connected_components_long_chain_and_no_edges():
    n = 1000
    perm = np.random.default_rng(0).permutation(n)
    got = connected_components(n, perm[:-1], perm[1:])  # one long path in random order
    assert (got == 0).all()
    np.testing.assert_array_equal(connected_components(5, np.zeros(0), np.zeros(0)), np.arange(5))


# ---- unknown ops --------------------------------------------------------------------------------------


def test_custom_domain_op_freezes_with_reason():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y = g.declare(g.op("MyOp", [y], name="custom", domain="com.example"), [1, 16, 5, 5])
    y = g.conv(y, 16, 12, name="c2")
    g.output(g.conv(y, 12, 4, name="c3"))
    a = run_analysis(g.model(check=False))
    grp = group_of(a, "c1", "producer")
    assert grp.frozen
    assert any("no rule for op com.example::MyOp" in r and "'custom'" in r for r in grp.reasons)
    # The custom op's output side is frozen too; the next group is untouched.
    assert group_of(a, "c2", "consumer").frozen
    assert sizes(a.prunable) == [12]


def test_standard_op_without_rule_freezes_with_reason():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y = g.op("Trilu", [y], name="tri")  # a standard op no rule describes
    y = g.conv(y, 16, 12, name="c2")
    g.output(g.conv(y, 12, 4, name="c3"))
    m = g.model()
    a = run_analysis(m)
    assert any("no rule for op Trilu (node 'tri')" in r for r in group_of(a, "c1", "producer").reasons)
    assert sizes(a.prunable) == [12]
    assert_oracle(m)


# ---- graph boundaries ---------------------------------------------------------------------------------


def test_graph_inputs_and_outputs_freeze():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y1 = g.conv(x, 8, 16, name="c1")
    y2 = g.conv(y1, 16, 12, name="c2")
    g.output(g.conv(y2, 12, 4, name="c3"), y1)  # c1's output is also a graph output
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [12]
    assert any("reaches graph input 'x'" in r for r in group_of(a, "c1", "consumer").reasons)
    assert any("reaches graph output 'c1_out'" in r for r in group_of(a, "c1", "producer").reasons)
    assert any("reaches graph output 'c3_out'" in r for r in group_of(a, "c3", "producer").reasons)
    assert_oracle(m)


def test_graph_input_reaching_weight_through_add_freezes():
    """A graph input added to a conv output pins that conv's channels."""
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    skip = g.input("skip", [1, 16, 5, 5])
    y = g.op("Add", [g.conv(x, 8, 16, name="c1"), skip])
    g.output(g.conv(y, 16, 4, name="c2"))
    a = run_analysis(g.model())
    assert a.prunable == []
    assert any("reaches graph input 'skip'" in r for r in group_of(a, "c1", "producer").reasons)


# ---- shared initializers ------------------------------------------------------------------------------


def test_initializer_shared_by_two_convs_is_sliced_once():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    w = g.weight([16, 8, 3, 3], "shared.W")
    a1 = g.op("Conv", [x, w], name="c1", pads=[1, 1, 1, 1])
    b1 = g.op("Conv", [g.op("Neg", [x]), w], name="c2", pads=[1, 1, 1, 1])
    ya = g.conv(a1, 16, 4, k=1, name="ha")
    yb = g.conv(b1, 16, 4, k=1, name="hb")
    g.output(ya, yb)
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    grp = a.prunable[0]
    assert set(grp.producers) == {"c1", "c2"} and set(grp.consumers) == {"ha", "hb"}
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "shared.W", 0)
    np.testing.assert_array_equal(k, kept(a, removed, "c1_out", 1))
    np.testing.assert_array_equal(k, kept(a, removed, "c2_out", 1))
    assert [t.name for t in p.graph.initializer].count("shared.W") == 1
    np.testing.assert_array_equal(init_value(p, "shared.W"), init_value(m, "shared.W")[k])
    assert len(p.graph.initializer) == len(m.graph.initializer)


def test_initializer_shared_as_consumer_ties_two_producers():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    w = g.weight([4, 16, 1, 1], "shared.W")
    a1 = g.conv(x, 8, 16, name="p1")
    b1 = g.conv(x, 8, 16, name="p2")
    g.output(g.op("Conv", [a1, w], name="h1"), g.op("Conv", [b1, w], name="h2"))
    m = g.model()
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].producers) == {"p1", "p2"}
    a, p, removed = assert_oracle(m)
    assert init_value(p, "shared.W").shape == (4, 16 - len(removed), 1, 1)


# ---- --exclude ----------------------------------------------------------------------------------------


def _chain4():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="block1/conv")
    y = g.conv(y, 16, 12, name="block2/conv")
    y = g.conv(y, 12, 10, name="head/conv")
    g.output(g.conv(y, 10, 4, name="out"))
    return g.model()


def test_exclude_node_freezes_its_groups():
    m = _chain4()
    assert sizes(run_analysis(m).prunable) == [10, 12, 16]
    a = run_analysis(m, exclude=("head/*",))
    assert sizes(a.prunable) == [16]
    for node in ("block2/conv", "head/conv"):
        grp = group_of(a, node, "producer")
        assert grp.frozen
        assert any("excluded by --exclude 'head/*' (node 'head/conv')" in r for r in grp.reasons)
    assert not group_of(a, "block1/conv", "producer").frozen
    assert_oracle(m, options=AnalysisOptions(exclude=("head/*",)))


def test_exclude_initializer_by_name():
    m = _chain4()
    a = run_analysis(m, exclude=("block1/conv.b",))
    grp = group_of(a, "block1/conv", "producer")
    assert grp.frozen and any("(initializer 'block1/conv.b')" in r for r in grp.reasons)
    assert sizes(a.prunable) == [10, 12]


def test_exclude_pattern_matching_nothing_changes_nothing():
    m = _chain4()
    assert sizes(run_analysis(m, exclude=("nothing*",)).prunable) == [10, 12, 16]


# ---- recorded shapes ----------------------------------------------------------------------------------


def test_recorded_value_info_follows_the_cut():
    """Exported models record every intermediate shape; the rewrite must update them (full checker)."""
    import onnx

    g = GraphBuilder()
    x = g.input("x", [1, 8, 3, 3])
    y = g.conv(x, 8, 16, name="c1")
    p1, p2 = g.op("Split", [y, g.ints([6, 10])], n_out=2, name="sp", axis=1)
    y = g.op("Concat", [g.op("Relu", [p2]), p1], name="cat", axis=1)
    y = g.op("Reshape", [y, g.ints([1, 144])], name="rs")
    g.output(g.gemm(y, 144, 4, name="fc"))
    m = onnx.shape_inference.infer_shapes(g.model())
    assert len(m.graph.value_info) >= 5
    a, p, removed = assert_oracle(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in p.graph.value_info}
    n1, n2 = len(kept(a, removed, "sp_out0", 1)), len(kept(a, removed, "sp_out1", 1))
    assert shapes["c1_out"] == [1, n1 + n2, 3, 3]
    assert shapes["cat_out"] == [1, n1 + n2, 3, 3]
    assert shapes["rs_out"] == [1, 9 * (n1 + n2)]


# ---- group keys ---------------------------------------------------------------------------------------


def _overlapping_slices():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    y = g.conv(x, 8, 16, name="c1")
    s1 = g.op("Slice", [y, g.ints([0]), g.ints([8]), g.ints([1])], name="s1")
    s2 = g.op("Slice", [y, g.ints([4]), g.ints([12]), g.ints([1])], name="s2")
    g.output(g.conv(s1, 8, 4, name="c2"), g.conv(s2, 8, 4, name="c3"))
    return g.model()


def _single_channel_slice(start):
    g = GraphBuilder()
    x = g.input("x", [1, 8, 4, 4])
    y = g.conv(x, 8, 16, name="c1")
    s = g.op("Slice", [y, g.ints([start]), g.ints([start + 1]), g.ints([1])], name="sl")
    g.output(g.conv(s, 1, 4, name="c2"))
    return g.model()


@pytest.mark.parametrize("model", [_overlapping_slices, lambda: _single_channel_slice(0),
                                   lambda: _single_channel_slice(5)])
def test_group_keys_are_unique(model):
    """Plans name groups by key: groups without a space of their own must still get distinct keys."""
    m = model()
    a = run_analysis(m)
    keys = [g.key for g in a.groups]
    assert len(keys) == len(set(keys)), keys
    for g in a.groups:
        assert a.group(g.key) is g
    again = run_analysis(m)
    assert [g.key for g in again.groups] == keys  # stable across runs
    assert_oracle(m)


def test_overlapping_slices_units():
    a = run_analysis(_overlapping_slices())
    # 0-3 only c2, 4-7 both, 8-11 only c3, 12-15 nobody.
    assert sizes(a.prunable) == [4, 4, 4, 4]


def test_plan_for_single_kept_channel_applies():
    """A plan cut for the prunable channels beside a single kept one must name that group, not the kept one."""
    from graphprune import api

    res = api.prune(_single_channel_slice(0), ratio=0.5, validate=True)
    (cut,) = res.plan.cuts.values()
    assert cut.size == 15 and len(cut.removed) > 0
