"""Einsum: per-letter ties, weight roles from contracted / kept letters, attention marks (Funnel's equations)."""

import onnx
import pytest

from graphprune.analysis import AnalysisOptions
from graphprune.analysis.costs import node_macs
from graphprune.core.graph import GraphView
from tests.graphs import GraphBuilder, init_value, reasons, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _mlp(eq_in: str, eq_out: str, x_shape, w1_shape, w2_shape):
    g = GraphBuilder()
    x = g.input("x", x_shape)
    h = g.op("Einsum", [x, g.weight(w1_shape, "w1")], name="e1", equation=eq_in)
    h = g.op("Relu", [h])
    g.output(g.op("Einsum", [h, g.weight(w2_shape, "w2")], name="e2", equation=eq_out))
    return g.model()


@pytest.mark.parametrize("eq_in, eq_out, x_shape", [
    ("bld,dh->blh", "blh,hd->bld", [2, 5, 8]),  # a Linear as einsum
    ("...d,dh->...h", "...h,hd->...d", [2, 5, 8]),  # with an ellipsis
    ("ij,jk", "ij,jk", [5, 8]),  # implicit output: the letters used once, sorted
])
def test_einsum_linear_layers(eq_in, eq_out, x_shape):
    m = _mlp(eq_in, eq_out, x_shape, [8, 12], [12, 8])
    a = run_analysis(m)
    assert sizes(a.prunable) == [12]
    (grp,) = a.prunable
    assert grp.producers == ["e1"] and grp.consumers == ["e2"] and grp.kind == "mlp"
    a, p, removed = assert_oracle(m)
    assert init_value(p, "w1").shape == (8, 12 - len(removed))
    assert init_value(p, "w2").shape == (12 - len(removed), 8)
    assert_ratio_zero_identical(m)


def test_einsum_macs():
    m = _mlp("bld,dh->blh", "blh,hd->bld", [2, 5, 8], [8, 12], [12, 8])
    view = GraphView(m)
    assert node_macs(view, 0) == 2 * 5 * 8 * 12


def _funnel_attention(heads=4, dh=4, d=16, n=5):
    """Funnel-style attention written in einsums: per-head projection weights [d, heads, dh], scores
    'bind,bjnd->bnij', softmax, 'bnij,bjnd->bind', output projection 'binh,nhd->bid'."""
    g = GraphBuilder()
    x = g.input("x", [2, n, d])
    q, k, v = (g.op("Einsum", [x, g.weight([d, heads, dh], f"w{t}")], name=t, equation="bid,dnh->binh")
               for t in "qkv")
    s = g.op("Einsum", [q, k], name="scores", equation="bind,bjnd->bnij")
    p = g.op("Softmax", [s], axis=-1)
    o = g.op("Einsum", [p, v], name="pv", equation="bnij,bjnd->bind")
    y = g.op("Einsum", [o, g.weight([heads, dh, d], "wo")], name="out", equation="binh,nhd->bid")
    g.output(g.op("Add", [y, x]))
    return g.model()


def test_einsum_attention_cuts_whole_heads():
    m = _funnel_attention()
    a = run_analysis(m)
    heads = [g for g in a.prunable if g.kind == "head"]
    assert sizes(heads) == [4]  # the n letter, in every projection weight
    assert set(heads[0].producers) == {"q", "k", "v"} and heads[0].consumers == ["out"]
    a, p, removed = assert_oracle(m)
    kept = 4 - len(removed)
    assert init_value(p, "wq").shape == (16, kept, 4) and init_value(p, "wo").shape == (kept, 4, 16)


def test_einsum_attention_head_dim_opt_in():
    m = _funnel_attention()
    a, p, removed = assert_oracle(m, options=AnalysisOptions(prune_head_dim=True))
    kinds = {(g.kind, g.size) for g in a.prunable}
    assert ("head", 4) in kinds  # heads and, now, the dimension inside them (q·k, v)
    assert sum(1 for g in a.prunable if g.kind == "head") == 3


def test_einsum_diagonal_and_unknown_equations_freeze():
    g = GraphBuilder()
    x = g.input("x", [6, 6])
    h = g.op("Einsum", [x, g.weight([6, 6])], name="mm", equation="ij,jk->ik")
    g.output(g.op("Einsum", [h], name="diag", equation="ii->i"))
    a = run_analysis(g.model())
    assert not a.prunable and "takes a diagonal over 'i'" in reasons(a)
    bad = GraphBuilder()
    x = bad.input("x", [6, 6])
    # ONNX shape inference accepts it; the letters do not fit the rank, so the rule refuses.
    bad.nodes.append(onnx.helper.make_node("Einsum", [x, bad.weight([6, 6], "w")], ["y"], name="e",
                                           equation="ijk,jk->ik"))
    bad.declare("y", [6, 6])
    bad.output("y")
    a = run_analysis(bad.model(check=False))
    said = [str(r) for refusals in a.space_reasons.values() for r, _ in refusals]
    assert "Einsum 'e': equation 'ijk,jk->ik' or operand shapes not understood" in said
    assert not a.prunable
