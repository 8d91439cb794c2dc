"""What users see beyond the tables: `graphprune analyze --html` (a self-contained page, checked in headless
Chromium when it is installed) and progress bars (only on a terminal)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import graphprune
from graphprune.cli import main
from graphprune.html_report import page_data, render_html
from tests import corpus


@pytest.fixture
def model(tmp_path) -> Path:
    """A model with prunable and frozen groups, a residual tie, and a fully connected head."""
    g = corpus.cnn()
    # a second branch whose channels reach a graph output: a frozen group with a reason
    g.output(g.op("Relu", [g.conv("input", 3, 8, name="side")], name="side_features"))
    path = tmp_path / "m.onnx"
    onnx.save_model(g.model(), str(path))
    return path


def _plan(model):
    res = graphprune.prune(model, ratio=0.5, validate=False)
    return res.analysis, res.plan


def test_page_data_matches_the_plan(model):
    a, plan = _plan(model)
    d = page_data(a, plan)
    assert len(d["groups"]) == len(a.channel_groups)
    by_key = {g["key"]: g for g in d["groups"]}
    for key, cut in plan.cuts.items():
        assert by_key[key]["removed"] == len(cut.removed)
    frozen = [g for g in d["groups"] if not g["prunable"]]
    assert frozen and all(g["reasons"] for g in frozen)
    assert any("side_features" in r for g in frozen for r in g["reasons"])
    layers = {r["node"]: r for r in d["layers"]}
    assert layers["conv1"]["removed"] == layers["conv2"]["removed"] == 8  # one residual group
    assert layers["side"]["removed"] == 0 and layers["side"]["frozen"] == 8
    # what is at stake: the residual group holds conv1, bn1, conv2 whole and fc's input slice
    g = by_key["conv1.W:0"]
    assert g["params"] == 3 * 16 * 9 + 16 + 4 * 16 + 16 * 16 * 9 + 16 + 10 * 16
    assert g["macs"] > 0


def test_page_is_self_contained(model):
    a, plan = _plan(model)
    page = render_html(a, plan, title="m.onnx")
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert not re.search(r"\s(src|href)=", page)
    assert "default-src 'none'" in page  # and the browser is told so
    assert page.count('<g class="layer"') == len(page_data(a, plan)["layers"])
    assert page.count("<tr class=") == len(a.channel_groups)
    no_plan = render_html(a, None, title="m.onnx")
    assert "prunable and frozen" in no_plan and "removed</th>" not in no_plan


def test_analyze_html_through_the_cli(model, tmp_path, capsys):
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["analyze", str(model), "--ratio", "0.5", "--html", str(tmp_path / "report.html"), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    assert d["plan"]["channels_removed"] > 0 and d["plan"]["ratio"] == 0.5
    assert {p.name for p in tmp_path.iterdir()} == before | {"report.html"}  # no model written
    page = (tmp_path / "report.html").read_text()
    assert "Channels per layer: kept and removed" in page
    rc = main(["analyze", str(model), "--html", str(tmp_path / "plain.html"), "-q"])
    assert rc == 0 and "prunable and frozen" in (tmp_path / "plain.html").read_text()


@pytest.mark.parametrize("args, mentions", [
    (["--html", "nowhere/r.html"], "--html"),
    (["--html", "."], "--html"),
    (["--html", "m.onnx"], "input model"),
    (["--ratio", "1"], "--ratio"),
    (["--ratio", "0.5", "--importance", "bogus"], "--importance"),
])
def test_analyze_html_usage_errors(model, tmp_path, monkeypatch, capsys, args, mentions):
    monkeypatch.chdir(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    rc = main(["analyze", "m.onnx", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and mentions in err
    assert {p.name for p in tmp_path.iterdir()} == before


# ---- sensitivity curves -------------------------------------------------------------------------------------
def test_sensitivity_equals_pruning_that_group(model, tmp_path):
    """The curve is computed on the oracle's masked model; each point must equal the error of the model
    really pruned at that point."""
    import numpy as np

    from graphprune.core import runtime
    from graphprune.html_report import read_calibration, sensitivity
    from graphprune.passes import rewrite, scoring

    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((6, 3, 16, 16), np.float32))
    a = graphprune.analyze(model)
    feeds = read_calibration(tmp_path / "calib.npz", a.view.model)
    rows = sensitivity(a, feeds)
    assert [r["key"] for r in rows] == [g.key for g in sorted(a.prunable, key=lambda g: -g.size)]
    row = rows[0]
    errors = [p["relative_error"] for p in row["points"]]
    assert errors[0] == 0 and all(e > 0 for e in errors[1:])
    g = a.group(row["key"])
    p = row["points"][2]
    order = np.argsort(scoring.score(a, "l2", 0).value[g.key], kind="stable")
    pruned = rewrite.apply(a.view.model, a.cut(g.units[order[:p["removed"]]]))
    got, base = [], []
    for i in range(feeds.n_train):  # the model's batch is fixed to 1
        f = {"input": feeds.train["input"][i:i + 1]}
        got.append(np.concatenate([o.ravel() for o in runtime.run(pruned, f)]))
        base.append(np.concatenate([o.ravel() for o in runtime.run(a.view.model, f)]))
    got, base = np.concatenate(got).astype(np.float64), np.concatenate(base).astype(np.float64)
    assert np.isclose(np.linalg.norm(got - base) / np.linalg.norm(base), p["relative_error"], rtol=1e-4)


def test_analyze_calib_through_the_cli(model, tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "calib.npz", input=np.ones((2, 3, 16, 16), np.float32))
    rc = main(["analyze", str(model), "--calib", str(tmp_path / "calib.npz"), "--html", str(tmp_path / "r.html"),
               "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["sensitivity"] and d["sensitivity"][0]["points"][0]["ratio"] == 0
    assert (tmp_path / "r.html").read_text().count('<svg class="curve"') == len(d["sensitivity"])
    for bad, mentions in (({"image": np.ones((2, 3, 16, 16), np.float32)}, "no array for graph input 'input'"),
                          ({"input": np.ones((2, 3, 8, 8), np.float32)}, "shape"),
                          ({"input": np.ones((2, 3, 16, 16), np.int64)}, "int64")):
        np.savez(tmp_path / "bad.npz", **bad)
        rc = main(["analyze", str(model), "--calib", str(tmp_path / "bad.npz")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and mentions in err, err


# ---- headless Chromium -------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--disable-extensions",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(tmp_path)})


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(model, tmp_path):
    import numpy as np

    page = tmp_path / "report.html"
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((2, 3, 16, 16), np.float32))
    assert main(["analyze", str(model), "--ratio", "0.5", "--calib", str(tmp_path / "calib.npz"),
                 "--html", str(page), "-q"]) == 0
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a real picture, not a blank page
    r = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = r.stdout
    assert 'data-ready="1"' in dom, r.stderr[-2000:]  # the inline script ran
    a, plan = _plan(model)
    n_groups, n_prunable = len(a.channel_groups), len(a.prunable)
    assert f"ready: {n_groups} groups, {n_prunable} prunable" in dom
    assert dom.count('<g class="layer"') == len(page_data(a, plan)["layers"])
    assert '<svg id="layer-chart"' in dom
    assert dom.count('<svg class="curve"') == len(a.prunable)  # one sensitivity curve per prunable group


# ---- progress ----------------------------------------------------------------------------------------------
def _run_in_pty(args, cwd, stdout_tty=True) -> tuple[int, str]:
    """Run the CLI with stderr (and stdout) on a pseudo-terminal; returns (exit code, terminal bytes)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    env.pop("GRAPHPRUNE_NO_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "graphprune.cli", *args], cwd=cwd, stdin=slave,
                            stdout=slave if stdout_tty else subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_only(model, tmp_path):
    rc, screen = _run_in_pty([str(model), "-o", str(tmp_path / "a.onnx")], tmp_path)
    assert rc == 0, screen
    assert "validating" in screen  # the spinner was drawn (and erased: it is transient)
    assert "wrote" in screen
    rc, screen = _run_in_pty([str(model), "-o", str(tmp_path / "b.onnx")], tmp_path, stdout_tty=False)
    assert rc == 0, screen
    assert "validating" not in screen  # stdout redirected: no bars even though stderr is a terminal
    rc, screen = _run_in_pty([str(model), "-o", str(tmp_path / "c.onnx"), "--quiet"], tmp_path)
    assert rc == 0 and screen.strip() == ""


def test_progress_never_shows_through_the_api(model, capsys):
    graphprune.prune(model, ratio=0.5)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
