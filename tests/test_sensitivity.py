"""Sensitivity: the unit-mask model equals the oracle, measured cost curves, allocation by cost (a fragile layer
keeps more than a robust one), --uniform-heads, and the per-layer kept counts in the report."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import OptionError
from graphprune.core.runtime import session
from graphprune.passes import calibration, oracle, scoring, sensitivity

from .graphs import GraphBuilder, run_analysis


def two_blocks(robust: float = 0.05, seed: int = 0) -> onnx.ModelProto:
    """x -> residual MLP block a -> residual MLP block b -> y. Block a's down projection is scaled by `robust`,
    so its hidden units carry far less of the output than block b's."""
    g = GraphBuilder(seed=seed)
    x = g.input("x", ["N", 16])
    h = x
    for name, scale in (("a", robust), ("b", 1.0)):
        up = g.op("Relu", [g.gemm(h, 16, 48, name=f"{name}_up")])
        w = (g.rng.standard_normal([16, 48]) * 0.2 * scale).astype(np.float32)
        down = g.op("Gemm", [up, g.const(w, f"{name}_down.W"), g.weight([16], f"{name}_down.b")],
                    name=f"{name}_down", transB=1)
        h = g.op("Add", [h, down], name=f"{name}_res")
    g.output(h)
    return g.model()


def feeds(n=64, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def hidden_group(analysis, block: str):
    return next(g for g in analysis.prunable if any(n.startswith(f"{block}_up") for n in g.nodes))


def test_unit_mask_model_equals_the_oracle():
    m = two_blocks()
    a = run_analysis(m)
    units = np.concatenate([g.units for g in a.prunable])
    masked, unmaskable = oracle.unit_mask_model(m, a, units)
    assert not unmaskable
    rng = np.random.default_rng(0)
    f = feeds(8)
    sess = session(masked)
    for _ in range(3):
        drop = rng.random(len(units)) < 0.4
        keep = (~drop).astype(np.float32)
        want = session(oracle.masked_model(m, a.cut(units[drop]))).run(None, f)
        got = sess.run(None, {**f, oracle.KEEP_INPUT: keep})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_unit_mask_model_fills_removed_channels_with_their_mean():
    """With `fill`, a removed hidden unit of block b reads as its mean at b's down projection: the output moves
    from the zero-masked oracle's by exactly W_down[:, removed] @ mean[removed]."""
    from graphprune.core.graph import GraphView

    m = two_blocks()
    a = run_analysis(m)
    g = hidden_group(a, "b")
    view = GraphView(m)
    down = next(n for n in m.graph.node if n.name == "b_down")
    mean = np.random.default_rng(2).uniform(0.5, 1.5, g.size).astype(np.float32)
    masked, _ = oracle.unit_mask_model(m, a, g.units, fill={down.output[0]: (down.input[0], 1, mean)})
    drop = np.zeros(g.size, dtype=bool)
    drop[[1, 5, 7, 30]] = True
    f = feeds(4)
    got = session(masked).run(None, {**f, oracle.KEEP_INPUT: (~drop).astype(np.float32)})[0]
    zero = session(oracle.masked_model(m, a.cut(g.units[drop]))).run(None, f)[0]
    w = view.const_value(down.input[1])  # [16, 48], transB
    np.testing.assert_allclose(got - zero, np.broadcast_to(w[:, drop] @ mean[drop], got.shape), rtol=1e-4, atol=1e-4)


def _curves(m):
    a = run_analysis(m)
    scores = scoring.score(a, "l2").value
    calib = calibration.load(feeds(), m)
    return a, sensitivity.measure(a, scores, calib)


def test_curves_are_measured_per_group_and_rise():
    a, res = _curves(two_blocks())
    curves = res.value
    assert set(curves) == {g.key for g in a.prunable}
    for c in curves.values():
        assert c.counts[0] == 0 and c.costs[0] == 0 and c.counts[-1] < c.size
        assert c.costs[-1] > c.costs[1] > 0
    fragile, robust = curves[hidden_group(a, "b").key], curves[hidden_group(a, "a").key]
    assert fragile.costs[-1] > 10 * robust.costs[-1]
    assert res.info["runs"] == sum(len(c.counts) - 1 for c in curves.values())


def test_sensitivity_allocation_keeps_more_of_the_fragile_layer():
    m = two_blocks()
    f = feeds()
    r = graphprune.prune(m, ratio=0.5, calib=f, allocation="sensitivity", round_to=1)
    a = r.analysis
    fragile, robust = hidden_group(a, "b"), hidden_group(a, "a")
    removed = {k: len(c.removed) for k, c in r.plan.cuts.items()}
    assert removed.get(fragile.key, 0) < removed[robust.key]
    assert sum(removed.values()) == 48  # the budget: half of the 96 hidden units
    assert r.report.quality["allocation"]["mode"] == "sensitivity"
    assert r.report.quality["sensitivity"]["runs"] > 0
    u = graphprune.prune(m, ratio=0.5, calib=f, allocation="uniform", round_to=1, compensate="none")
    s = graphprune.prune(m, ratio=0.5, calib=f, allocation="sensitivity", round_to=1, compensate="none")
    err = {}
    for name, res in (("uniform", u), ("sensitivity", s)):
        err[name] = res.report.fidelity["outputs"][m.graph.output[0].name]["relative_error"]
    assert err["sensitivity"] < err["uniform"]


def test_sensitivity_allocation_hits_a_mac_target():
    m = two_blocks()
    r = graphprune.prune(m, ratio=0.3, target="macs", calib=feeds(), allocation="sensitivity", round_to=1)
    got = 1 - r.report.after.macs / r.report.before.macs
    assert abs(got - 0.3) < 0.02, got
    assert abs(r.report.quality["allocation"]["achieved"] - got) < 1e-3


def test_allocation_options():
    with pytest.raises(OptionError, match="needs calibration data"):
        graphprune.prune(two_blocks(), allocation="sensitivity")
    with pytest.raises(OptionError, match="global_pruning=True means allocation='global'"):
        graphprune.prune(two_blocks(), global_pruning=True, allocation="uniform")
    with pytest.raises(OptionError, match="uniform_heads"):
        graphprune.prune(two_blocks(), allocation="global", uniform_heads=True)
    r = graphprune.prune(two_blocks(), global_pruning=True, ratio=0.3)
    assert r.report.options["allocation"] == "global"


def test_marginal_costs_follow_the_convex_envelope():
    c = sensitivity.Curve("a", "mlp", 8, np.array([0, 2, 4, 7]), np.array([0.0, 0.5, 0.6, 0.9]))
    m = sensitivity.marginal_costs(c)
    assert len(m) == 8 and np.all(np.diff(m) >= 0)  # ascending: a prefix of the ranking is a cut
    np.testing.assert_allclose(m[:7], 0.9 / 7)  # the lower convex hull of the points, not the curve itself
    assert m[7] > 1e3 * m[6]  # past the last measured count: only when nothing else is left


def test_report_lists_what_each_layer_keeps_and_embedding_agreement():
    m = two_blocks()
    r = graphprune.prune(m, ratio=0.5, calib=feeds(96), calib_samples=64, allocation="sensitivity", round_to=1)
    rows = {row["group"]: row for row in r.report.kept}
    assert set(rows) == {g.key for g in r.analysis.prunable}
    for key, row in rows.items():
        cut = r.plan.cuts.get(key)
        assert row["kept"] == row["size"] - (len(cut.removed) if cut else 0)
        assert row["layer"] and row["kind"] == r.analysis.group(key).kind
    out = r.report.fidelity["outputs"][m.graph.output[0].name]
    assert 0.0 <= out["nn_agreement"] <= 1.0 and out["min_sample_cosine"] <= out["sample_cosine"]
    assert r.report.to_dict()["kept"] == r.report.kept


def test_nearest_neighbour_agreement():
    from graphprune.core.compare import nearest_neighbour_agreement

    e = np.random.default_rng(0).standard_normal((50, 8))
    assert nearest_neighbour_agreement(e, e * 3.0) == 1.0
    shuffled = nearest_neighbour_agreement(e, np.random.default_rng(1).standard_normal((50, 8)))
    assert shuffled < 0.3


def test_cli_sensitivity_allocation(tmp_path, capsys):
    from graphprune.cli import main

    onnx.save(two_blocks(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", **feeds(48))
    rc = main([str(tmp_path / "m.onnx"), "--allocation", "sensitivity", "--calib", str(tmp_path / "calib.npz"),
               "--ratio", "0.5", "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "allocation: sensitivity" in out
    report = __import__("json").loads((tmp_path / "r.json").read_text())
    assert report["quality"]["sensitivity"]["curves"] and report["kept"]
    rc = main([str(tmp_path / "m.onnx"), "--allocation", "sensitivity"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--allocation sensitivity needs calibration data (--calib)" in err
