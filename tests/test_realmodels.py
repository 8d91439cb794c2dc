"""A real trained model shipped in a PyPI package: rapidocr's text orientation classifier (a Paddle export:
every weight a Constant node, input batch written as -1) pruned data-free at 30% of its MACs is a valid model
that runs batched and keeps its output contract. Skipped unless the benchmark data package is installed
(`make bench-setup`); benchmarks/realmodels.py measures the quality of the same prunes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from benchmarks.realmodels import ctc_greedy, edit_distance, match, model_file, nms, rec_metric
from graphprune.core import runtime

CLS = model_file("cls")
needs_rapidocr = pytest.mark.skipif(CLS is None, reason="rapidocr-onnxruntime is not installed (make bench-setup)")


def test_benchmark_metrics():
    """The benchmark's own decoding and matching (numpy, no package needed)."""
    probs = np.eye(4)[[1, 1, 0, 1, 2, 2, 0, 0, 3]][None]  # "a a _ a b b _ _ c"
    assert ctc_greedy(probs, ["blank", "a", "b", "c"]) == ["aabc"]
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    m = rec_metric(["abc", "abd"], ["abc", "abc"], ["abc", "abc"])
    assert m["lines_exact"] == m["lines_same"] == 0.5 and abs(m["char_acc"] - 5 / 6) < 1e-12
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float64)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.45).tolist() == [0, 2]  # the second overlaps the first
    ref = np.array([[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 2]])
    got = np.array([[0, 0, 10, 11, 0.5, 1], [20, 20, 30, 30, 0.5, 3]])  # one box moved a little, one class changed
    assert match(got, ref) == 1


@needs_rapidocr
def test_rapidocr_classifier_prunes_data_free_and_runs():
    original = onnx.load(str(CLS))
    assert sum(n.op_type == "Constant" for n in original.graph.node) > 100 and not original.graph.initializer
    res = graphprune.prune(original, ratio=0.3, target="macs", input_shapes={"x": [1, 3, 48, 192]})
    onnx.checker.check_model(res.model, full_check=True)
    assert res.report.validation["runtime"]
    kept = res.report.ratio("macs")
    assert 0.5 < kept < 0.85, kept  # something was removed, and not everything
    assert res.report.after.params < res.report.before.params
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    before, after = runtime.run(original, {"x": x})[0], runtime.run(res.model, {"x": x})[0]
    assert after.shape == before.shape == (4, 2)
    assert np.all(np.isfinite(after)) and np.allclose(after.sum(1), 1.0, atol=1e-4)  # still a softmax over 2 labels
