"""`graphprune bench`: interleaved latency of two models. Fields only; timings are never asserted."""

from __future__ import annotations

import json

import pytest

import graphprune
from graphprune.bench import bench
from graphprune.cli import main
from graphprune.core.io import save_model
from tests.tinynet import tinynet


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    original = tinynet(folder / "tiny.onnx", tmp_path_factory)
    pruned = folder / "tiny.pruned.onnx"
    save_model(graphprune.prune(original, ratio=0.5).model, pruned)
    return original, pruned


def test_bench_api_fields(pair):
    original, pruned = pair
    res = bench(original, pruned, warmup=1, repeat=3, threads=1, ops=True)
    d = res.to_dict()
    for side in ("original", "pruned"):
        t = d[side]
        assert t["runs"] == 3 * 2  # 3 rounds, blocks of 3 runs of which the first is not counted
        assert 0 < t["min_ms"] <= t["median_ms"] and t["p10_ms"] <= t["p90_ms"]
        assert isinstance(t["optimized_ops"], dict) and t["optimized_ops"]
    assert d["speedup"] > 0 and d["paired_speedup"] > 0
    assert d["threads"] == 1 and d["warmup"] == 1 and d["repeat"] == 3
    assert d["input_shapes"] == {"input": [1, 3, 16, 16]}


def test_bench_cli_json(pair, capsys):
    original, pruned = pair
    rc = main(["bench", str(original), str(pruned), "--warmup", "0", "--repeat", "2", "--threads", "1", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= {"original", "pruned", "speedup", "paired_speedup", "threads", "input_shapes"}
    assert d["original"]["optimized_ops"] is None  # only with --ops
    assert d["original"]["path"] == str(original) and d["pruned"]["path"] == str(pruned)


def test_bench_cli_text(pair, capsys):
    original, pruned = pair
    rc = main(["bench", str(original), str(pruned), "--repeat", "2", "--warmup", "0", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "original" in out and "pruned" in out


def test_bench_batch_and_bad_input(pair, tmp_path, capsys):
    original, pruned = pair
    # tinynet has a static batch: --batch leaves static dims alone
    assert bench(original, pruned, batch=4, warmup=0, repeat=1, threads=1).input_shapes == {"input": [1, 3, 16, 16]}
    rc = main(["bench", str(original), str(tmp_path / "missing.onnx")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("graphprune: error:") and "no such file" in err
    rc = main(["bench", str(original), str(pruned), "--input-shape", "nope:1,2"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err


def test_bench_block_of_one_counts_every_run(pair):
    original, pruned = pair
    res = bench(original, pruned, warmup=0, repeat=4, threads=1, block=1)
    assert res.original.runs == res.pruned.runs == 4
