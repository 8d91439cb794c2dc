"""The command line as a user runs it: a subprocess, real files, exit codes, stdout/stderr."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphprune

from .tinynet import tinynet


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real thing: a new Python process, as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "graphprune.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli(capsys, monkeypatch):
    """`graphprune.cli.main` in this process (same code path, without ~0.5 s of interpreter start-up);
    used for the long lists of bad arguments, the happy paths above run as real subprocesses."""
    from graphprune.cli import main

    def call(*args, cwd=None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["graphprune", *args], rc, out, err)

    return call


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def initializer_bytes(path: Path) -> dict[str, bytes]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}


@pytest.fixture
def model(tmp_path, tmp_path_factory) -> Path:
    return tinynet(tmp_path / "m.onnx", tmp_path_factory)


@pytest.fixture
def other_model(tmp_path, tmp_path_factory) -> Path:
    (tmp_path / "other").mkdir()
    return tinynet(tmp_path / "other" / "m2.onnx", tmp_path_factory, width=24)


# ---- the happy path -----------------------------------------------------------------------------------
def test_prune_default_output(model, tmp_path):
    before = sha256(model)
    r = run_cli(model, "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = tmp_path / "m.pruned.onnx"
    assert out.exists()
    assert sha256(model) == before
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert ort_run(out, x).shape == ort_run(model, x).shape == (1, 10)
    assert params(onnx.load(str(out))) < params(onnx.load(str(model)))
    assert "m.pruned.onnx" in r.stdout
    # nothing but the input and the output in the folder (no temp files)
    assert listing(tmp_path) == {"m.onnx", "m.pruned.onnx"}


def test_output_and_report(model, tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    r = run_cli(model, "--ratio", "0.5", "-o", out, "--report", rep)
    assert r.returncode == 0, r.stderr
    assert out.exists() and rep.exists()
    assert not (tmp_path / "m.pruned.onnx").exists()
    report = json.loads(rep.read_text())
    for key in ("params", "macs", "size_bytes"):
        assert report["before"][key] > report["after"][key] > 0
        assert report["summary"][key]["before"] == report["before"][key]
        assert report["summary"][key]["after"] == report["after"][key]
    assert report["after"]["params"] == params(onnx.load(str(out)))
    assert report["output"] == str(out)
    assert report["validation"]["checker"] and report["validation"]["runtime"]


def test_json_output_is_parseable(model, tmp_path):
    r = run_cli(model, "--ratio", "0.3", "--json", "-o", tmp_path / "j.onnx")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["summary"]["params"]["after"] < report["summary"]["params"]["before"]


def test_analyze_lists_groups(model):
    r = run_cli("analyze", model)
    assert r.returncode == 0, r.stderr
    assert "channel groups" in r.stdout
    assert "conv1.weight:0" in r.stdout  # the residual group, anchored at conv1's output channels
    assert "prunable" in r.stdout and "frozen" in r.stdout


def test_analyze_json(model, tmp_path):
    before = listing(tmp_path)
    r = run_cli("analyze", model, "--json")
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert isinstance(a["groups"], list) and a["groups"]
    keys = {g["group"] for g in a["groups"]}
    assert "conv1.weight:0" in keys
    assert a["prunable_groups"] >= 3
    assert a["prunable_groups"] + a["frozen_groups"] == len(a["groups"])
    frozen = [g for g in a["groups"] if not g["prunable"]]
    assert all(g["reasons"] for g in frozen)  # every refusal says why
    assert listing(tmp_path) == before  # analyze writes nothing


def test_analyze_summary_and_quiet(model):
    r = run_cli("analyze", model, "--summary")
    assert r.returncode == 0 and "channel groups" in r.stdout
    r = run_cli("analyze", model, "--quiet")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize("args", [["m.onnx", "--json"], ["analyze", "m.onnx"]])
def test_closed_stdout_is_not_an_internal_error(model, tmp_path, args):
    """`graphprune ... | head -1`: the reader goes away; no traceback, no "internal error"."""
    proc = subprocess.Popen([sys.executable, "-m", "graphprune.cli", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1)
    assert err.decode() == ""


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"graphprune {graphprune.__version__}"


def test_quiet_prints_nothing(model, tmp_path):
    r = run_cli(model, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert (tmp_path / "m.pruned.onnx").exists()


def test_dry_run_writes_nothing(model, tmp_path):
    before, digest = listing(tmp_path), sha256(model)
    r = run_cli(model, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "nothing written" in r.stdout
    r = run_cli(model, "--dry-run", "-o", tmp_path / "x.onnx")
    assert r.returncode == 0, r.stderr
    assert listing(tmp_path) == before
    assert sha256(model) == digest


def test_dry_run_can_save_a_plan_to_apply_later(model, tmp_path):
    plan = tmp_path / "p.json"
    r = run_cli(model, "--dry-run", "--save-plan", plan, "--quiet")
    assert r.returncode == 0, r.stderr
    assert listing(tmp_path) == {"m.onnx", "p.json"}  # the plan that was asked for, no model
    r = run_cli(model, "--plan", plan, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.pruned.onnx").exists()


def test_saved_plan_reproduces_the_model(model, tmp_path):
    plan = tmp_path / "p.json"
    r = run_cli(model, "--ratio", "0.5", "--importance", "random", "--seed", "3", "-o", tmp_path / "a.onnx",
                "--save-plan", plan)
    assert r.returncode == 0, r.stderr
    assert json.loads(plan.read_text())["cuts"]
    # a different ratio/importance on the command line must not matter: the plan decides
    r = run_cli(model, "--ratio", "0.1", "--plan", plan, "-o", tmp_path / "b.onnx")
    assert r.returncode == 0, r.stderr
    a, b = initializer_bytes(tmp_path / "a.onnx"), initializer_bytes(tmp_path / "b.onnx")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


def test_plan_for_another_model_is_refused(model, other_model, tmp_path):
    plan = tmp_path / "p.json"
    assert run_cli(model, "--save-plan", plan, "-o", tmp_path / "a.onnx").returncode == 0
    before = listing(other_model.parent)
    r = run_cli(other_model, "--plan", plan)
    assert r.returncode == 2
    assert_one_line_error(r)
    assert "different model" in r.stderr
    assert listing(other_model.parent) == before


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.__setitem__("removed", [0, 10_000]), "outside"),
    (lambda c: c.__setitem__("removed", [-1]), "outside"),
    (lambda c: c.__setitem__("removed", [0, 0]), "twice"),
    (lambda c: c.__setitem__("removed", list(range(c["size"]))), "all"),
    (lambda c: c.__setitem__("key", "no_such_tensor:0"), "does not have"),
    (lambda c: c.__setitem__("size", c["size"] + 1), "channels"),
])
def test_edited_plan_is_refused(model, tmp_path, cli, mutate, message):
    plan = tmp_path / "p.json"
    assert cli(model, "--save-plan", plan, "-o", tmp_path / "a.onnx", "-q").returncode == 0
    d = json.loads(plan.read_text())
    mutate(d["cuts"][0])
    plan.write_text(json.dumps(d))
    r = cli(model, "--plan", plan, "-o", tmp_path / "b.onnx")
    assert r.returncode == 2
    assert_one_line_error(r)
    assert message in r.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_plan_cutting_a_frozen_group_is_refused(model, tmp_path, cli):
    plan = tmp_path / "p.json"
    assert cli(model, "--save-plan", plan, "-o", tmp_path / "a.onnx", "-q").returncode == 0
    d = json.loads(plan.read_text())
    d["cuts"].append({"key": "input:1", "size": 3, "removed": [0]})  # the image's RGB channels
    plan.write_text(json.dumps(d))
    r = cli(model, "--plan", plan, "-o", tmp_path / "b.onnx")
    assert r.returncode == 2
    assert_one_line_error(r)
    assert "frozen" in r.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_output_equal_to_input_needs_overwrite(model, tmp_path, cli):
    digest = sha256(model)
    r = run_cli(model, "-o", model)
    assert r.returncode == 2
    assert_one_line_error(r)
    assert "--overwrite" in r.stderr
    assert sha256(model) == digest
    for same in (tmp_path / "." / "m.onnx", "m.onnx"):  # the same file spelled differently
        r = cli("m.onnx", "-o", same, cwd=tmp_path)
        assert r.returncode == 2
        assert_one_line_error(r)
        assert sha256(model) == digest
    r = run_cli(model, "-o", model, "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr
    assert sha256(model) != digest
    onnx.checker.check_model(str(model), full_check=True)
    assert listing(tmp_path) == {"m.onnx"}


# ---- bad input ----------------------------------------------------------------------------------------
def assert_one_line_error(r: subprocess.CompletedProcess) -> None:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("graphprune: error:"), r.stderr
    assert "Traceback" not in r.stderr


def _bad_model(tmp_path: Path, model: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "missing.onnx"
    if kind == "directory":
        d = tmp_path / "folder.onnx"
        d.mkdir()
        return d
    if kind == "text":
        p = tmp_path / "notes.onnx"
        p.write_text("this is not a model\n")
        return p
    if kind == "truncated":
        data = model.read_bytes()
        p = tmp_path / "truncated.onnx"
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "empty":
        p = tmp_path / "empty.onnx"
        p.write_bytes(b"")
        return p
    raise AssertionError(kind)


BAD_FILES = ["missing", "directory", "text", "truncated", "empty"]


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("command", ["prune", "analyze"])
def test_bad_model_file(model, tmp_path, cli, kind, command):
    bad = _bad_model(tmp_path, model, kind)
    digest = sha256(bad) if bad.is_file() else None
    before = listing(tmp_path)
    run = run_cli if command == "prune" else cli  # each file once through a real process
    r = run(*(["analyze"] if command == "analyze" else []), bad)
    assert r.returncode != 0
    assert_one_line_error(r)
    assert r.stdout == ""
    assert listing(tmp_path) == before
    if digest is not None:
        assert sha256(bad) == digest


BAD_ARGS = [
    (["--ratio", "1.0"], "--ratio"),
    (["--ratio", "-0.1"], "--ratio"),
    (["--ratio", "abc"], "--ratio"),
    (["--ratio", "nan"], "--ratio"),
    (["--max-ratio", "1.5"], "--max-ratio"),
    (["--importance", "taylor_magic"], "--importance"),
    (["--input-shape", "input"], "--input-shape"),
    (["--input-shape", "input:1,3,x,16"], "--input-shape"),
    (["--input-shape", "input:1,3,0,16"], "--input-shape"),
    (["--input-shape", ":1,3"], "--input-shape"),
    (["--input-shape", "image:1,3,16,16"], "not a graph input"),
    (["--input-shape", "input:2,3,16,16"], "fixed to 1"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--round-to", "0"], "--round-to"),
    (["--round-to", "2.5"], "--round-to"),
    (["--seed", "x"], "--seed"),
    (["-o", "no_such_folder/out.onnx"], "no_such_folder"),
    (["-o", "."], "directory"),
    (["--report", "no_such_folder/r.json"], "--report"),
    (["--save-plan", "no_such_folder/p.json"], "--save-plan"),
    (["--report", "m.onnx"], "input model"),
    (["--save-plan", "./m.onnx"], "input model"),
    (["--report", "out.onnx", "-o", "out.onnx"], "output model"),
    (["--plan", "missing_plan.json"], "missing_plan.json"),
    (["--plan", "m.onnx"], "not a readable plan"),
]


@pytest.mark.parametrize("args, mentions", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_usage_errors(model, tmp_path, cli, args, mentions):
    digest, before = sha256(model), listing(tmp_path)
    r = cli("m.onnx", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert_one_line_error(r)
    assert mentions in r.stderr
    assert r.stdout == ""
    assert listing(tmp_path) == before
    assert sha256(model) == digest


@pytest.mark.parametrize("args", [["--ratio", "abc"], ["--input-shape", "input:1,x"], ["--bogus"]])
def test_usage_errors_in_a_real_process(model, tmp_path, args):
    before = listing(tmp_path)
    r = run_cli("m.onnx", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert_one_line_error(r)
    assert r.stdout == ""
    assert listing(tmp_path) == before


def test_no_arguments_is_a_usage_error():
    r = run_cli()
    assert r.returncode == 2
    assert_one_line_error(r)


def test_analyze_unknown_flag(model):
    r = run_cli("analyze", model, "--overwrite")  # a prune-only flag (analyze takes --ratio: it computes a plan)
    assert r.returncode == 2
    assert_one_line_error(r)
