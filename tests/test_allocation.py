"""Allocation: uniform and global cuts, parameter and MAC targets, per-group limits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import UsageError
from graphprune.analysis.costs import CostModel, model_stats
from graphprune.core.graph import GraphView
from graphprune.passes import allocation, rewrite
from graphprune.passes.normalize import unshare_uniform_constants

from .graphs import GraphBuilder


def cnn(seed=0) -> onnx.ModelProto:
    """Convs at two resolutions (MACs differ per channel), a residual add, a grouped conv and a linear head."""
    g = GraphBuilder(seed=seed)
    x = g.input("x", ["N", 3, 16, 16])
    a = g.op("Relu", [g.conv(x, 3, 16, name="c1")])
    b = g.op("Relu", [g.conv(a, 16, 24, name="c2")])
    p = g.op("MaxPool", [b], kernel_shape=[2, 2], strides=[2, 2])
    c = g.op("Relu", [g.conv(p, 24, 32, name="c3")])
    d = g.op("Add", [c, g.conv(g.op("Relu", [g.conv(c, 32, 32, name="c4")]), 32, 32, name="c5")])
    e = g.op("Relu", [g.conv(d, 32, 48, name="c6", group=4)])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [e])])
    g.output(g.gemm(f, 48, 10, name="fc"))
    return g.model()


def fraction_removed(r, what):
    b, a = getattr(r.report.before, what), getattr(r.report.after, what)
    return 1 - a / b


@pytest.mark.parametrize("global_pruning", [False, True])
@pytest.mark.parametrize("target, ratio", [("macs", 0.5), ("macs", 0.75), ("params", 0.4)])
def test_targets_are_hit(target, ratio, global_pruning):
    r = graphprune.prune(cnn(), ratio=ratio, target=target, global_pruning=global_pruning)
    got = fraction_removed(r, target)
    assert abs(got - ratio) < 0.04, (got, r.report.quality["allocation"])  # a unit is up to 8% of the MACs
    assert abs(r.report.quality["allocation"]["achieved"] - got) < 1e-3  # the cost model is exact


def test_global_channels_ratio_counts_all_units():
    m = cnn()
    r = graphprune.prune(m, ratio=0.5, global_pruning=True, round_to=1)  # exact counts: no rounding granularity
    assert abs(r.report.channels_removed / r.report.channels_total - 0.5) < 0.02
    sizes = {k: (c.size, len(c.removed)) for k, c in r.plan.cuts.items()}
    assert len({round(n / s, 2) for s, n in sizes.values()}) > 1  # not uniform


def test_global_takes_from_the_group_with_the_weakest_channels():
    a = graphprune.analyze(cnn())
    rng = np.random.default_rng(0)
    weak = a.prunable[1].key
    scores = {g.key: rng.uniform(1, 2, g.size) * (0.01 if g.key == weak else 1) for g in a.prunable}
    alloc = allocation.allocate(a, scores, "fp", ratio=0.1, global_pruning=True, normalize="none")
    cuts = {k: len(c.removed) / c.size for k, c in alloc.value.cuts.items()}
    assert list(cuts) == [weak]
    # with mean normalisation every group is on the same scale again
    alloc = allocation.allocate(a, scores, "fp", ratio=0.3, global_pruning=True, normalize="mean")
    assert len(alloc.value.cuts) > 2


def test_global_respects_max_ratio_min_keep_and_round_to():
    r = graphprune.prune(cnn(), ratio=0.6, target="macs", global_pruning=True, max_ratio=0.7, min_keep=6,
                         round_to=4)
    a = graphprune.analyze(cnn())
    for g in a.prunable:
        cut = r.plan.cuts.get(g.key)
        n = len(cut.removed) if cut else 0
        kept = g.size - n
        assert n <= int(0.7 * g.size) + 1e-9
        assert kept >= min(6, g.size)
        if n and g.size * g.round_multiple >= 4:
            assert (kept * g.round_multiple) % 4 == 0 or kept == g.size


def test_unreachable_target_is_reported():
    r = graphprune.prune(cnn(), ratio=0.95, target="macs", max_ratio=0.5)
    t = r.report.quality["allocation"]["target"]
    assert not t["met"] and t["achieved"] == t["reachable_max"] < 0.95
    assert any(x.get("option") == "max_ratio" for x in t["reasons"])  # tests/test_targets.py: the details
    assert r.report.warnings[0].startswith("target='macs' ratio=0.95 is not reachable")


def test_uniform_channels_is_the_old_behaviour():
    m = cnn()
    a = graphprune.prune(m, ratio=0.5, importance="l2", round_to=1)
    plan = allocation.allocate_uniform(a.analysis, _l2(a.analysis), 0.5, a.plan.fingerprint)
    assert {k: c.removed for k, c in plan.cuts.items()} == {k: c.removed for k, c in a.plan.cuts.items()}


def _l2(analysis):
    from graphprune.passes import scoring

    return scoring.score(analysis, "l2").value


def test_cost_model_matches_the_rewritten_model():
    m = cnn()
    a = graphprune.analyze(m)
    rng = np.random.default_rng(0)
    for what in ("macs", "params"):
        cm = CostModel(a, what)
        for _ in range(3):
            rm = np.concatenate([rng.choice(g.units, g.size // 3, replace=False) for g in a.prunable])
            cut = a.cut(rm)
            work, _ = unshare_uniform_constants(m)
            pruned = rewrite.apply(work, cut)
            before, after = model_stats(m), model_stats(pruned, GraphView(pruned))
            want = 1 - getattr(after, what) / getattr(before, what)
            assert abs(cm.removed_fraction(cut.removed) - want) < 1e-6


def test_option_errors():
    # Python callers see the keyword they wrote (the CLI renders the flag: tests/test_options.py).
    with pytest.raises(UsageError, match="^target= must be one of"):
        graphprune.prune(cnn(), target="flops")
    with pytest.raises(UsageError, match="^min_keep= must be a positive integer"):
        graphprune.prune(cnn(), min_keep=0)
    with pytest.raises(UsageError, match="only apply with target='channels'"):
        graphprune.prune(cnn(), target="macs", head_ratio=0.5)


def test_cli_global_macs_with_calibration(tmp_path, capsys):
    from graphprune.cli import main

    onnx.save(cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32))
    rc = main([str(tmp_path / "m.onnx"), "--global", "--target", "macs", "--ratio", "0.5", "--calib",
               str(tmp_path / "c.npz"), "--calib-samples", "30", "-o", str(tmp_path / "o.onnx"),
               "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "o.onnx").exists()
    assert "allocation: global, macs removed" in out and "fidelity on 10 held-out" in out
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["fidelity"]["held_out"] and rep["quality"]["compensation"]["mode"] == "all"
    assert abs(1 - rep["summary"]["macs"]["ratio"] - 0.5) < 0.04


def test_mac_count_needs_no_analysis_first(tmp_path):
    """model_stats in a fresh interpreter that imported only analysis/costs.py counts the Conv's MACs (the
    rule table loads itself on first lookup instead of depending on import order)."""
    import subprocess
    import sys

    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    g.output(g.conv(x, 3, 4, k=3))
    path = tmp_path / "m.onnx"
    onnx.save(g.model(), str(path))
    code = ("import onnx, sys; from graphprune.analysis.costs import model_stats; "
            f"print(model_stats(onnx.load({str(path)!r})).macs)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == 4 * 3 * 3 * 3 * 8 * 8
