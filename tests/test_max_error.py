"""--max-error: the largest cut whose held-out error stays within the bound (issue 11, item 5)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.errors import OptionError

from .tinynet import tinynet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tinynet(tmp_path_factory.mktemp("tiny") / "tiny.onnx", tmp_path_factory, width=32)


def calib(n=64, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def rel_error(r):
    return max(row["relative_error"] for row in r.report.fidelity["outputs"].values())


def test_search_keeps_error_within_bound_and_cuts_more_with_a_looser_one(tiny):
    model = onnx.load(str(tiny))
    results = {}
    for bound in (0.03, 0.12):
        r = graphprune.prune(model, calib=calib(), calib_samples=32, max_error=bound, ratio=0.9, target="macs",
                             compensate="none", round_to=1)  # without re-fit the error grows quickly with the cut
        sr = r.report.quality["search"]
        assert sr["held_out"] and r.report.fidelity["held_out"]
        assert len(sr["curve"]) >= 2
        assert rel_error(r) <= bound  # the written model is the chosen candidate, measured again
        chosen = sr["chosen_ratio"]
        tried_above = [p for p in sr["curve"] if p["ratio"] > chosen]
        assert all(not p["within"] for p in tried_above)  # every larger ratio tried was over the bound
        # the curve's errors are what was measured: the chosen point's error is the final fidelity
        point = next(p for p in sr["curve"] if abs(p["ratio"] - chosen) < 1e-9) if chosen > 0 else None
        if point is not None:
            assert point["error"] == pytest.approx(rel_error(r), rel=1e-6, abs=1e-9)
            assert point["macs_kept"] == pytest.approx(r.report.after.macs / r.report.before.macs, abs=1e-9)
        results[bound] = r
    assert results[0.12].report.after.macs <= results[0.03].report.after.macs
    assert results[0.12].report.quality["search"]["chosen_ratio"] > 0


def test_unreachable_bound_writes_the_unpruned_model_and_says_so(tiny):
    r = graphprune.prune(str(tiny), calib=calib(), calib_samples=32, max_error=0.0, ratio=0.5)
    sr = r.report.quality["search"]
    assert "unpruned" in sr["warning"]
    assert r.report.after.macs == r.report.before.macs


def test_max_error_needs_calibration(tiny):
    with pytest.raises(OptionError, match="calibration"):
        graphprune.prune(str(tiny), max_error=0.05)


def test_cli_prints_the_curve(tiny, tmp_path, capsys):
    from graphprune.cli import main

    np.savez(tmp_path / "c.npz", **calib())
    out = tmp_path / "p.onnx"
    rc = main([str(tiny), "--calib", str(tmp_path / "c.npz"), "--calib-samples", "32", "--max-error", "0.1",
               "--ratio", "0.8", "-o", str(out), "--report", str(tmp_path / "r.json")])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "--max-error 0.1" in text and "chose ratio" in text
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["quality"]["search"]["curve"]
