"""Test helpers: the equivalence oracle on random channel subsets, and running models."""

from __future__ import annotations

import numpy as np
import onnx

from graphprune.analysis import AnalysisOptions, analyze
from graphprune.core import runtime
from graphprune.core.graph import GraphView
from graphprune.passes import oracle, rewrite


def random_removal(analysis, rng, fraction=0.5):
    """Random units of every prunable group (at least one kept per group)."""
    removed = []
    for g in analysis.prunable:
        n = g.size
        k = min(n - 1, max(1, int(round(n * fraction)))) if n > 1 else 0
        if k > 0:
            removed.append(rng.choice(g.units, size=k, replace=False))
    return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)


def assert_oracle(model: onnx.ModelProto, seed: int = 0, fraction: float = 0.5, input_shapes=None,
                  options: AnalysisOptions | None = None, rtol=1e-4, atol=1e-5, min_prunable: int = 1):
    """Prune random channels of every prunable group; the result must equal the masked original."""
    options = options or AnalysisOptions(input_shapes=input_shapes or {})
    a = analyze(GraphView(model, options.input_shapes), options)
    assert len(a.prunable) >= min_prunable, f"only {len(a.prunable)} prunable groups"
    rng = np.random.default_rng(seed)
    removed = random_removal(a, rng, fraction)
    pruned = rewrite.apply(model, a.cut(removed))
    onnx.checker.check_model(pruned, full_check=True)
    feeds = runtime.synthetic_inputs(model, input_shapes, seed=seed)
    got = runtime.run(pruned, feeds)
    want = runtime.run(oracle.masked_model(model, a.cut(removed)), feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * max(1.0, float(np.abs(w).max())))
    return a, pruned, removed


def assert_ratio_zero_identical(model: onnx.ModelProto, input_shapes=None):
    a = analyze(GraphView(model, input_shapes or {}))
    pruned = rewrite.apply(model, a.cut(np.zeros(0, dtype=np.int64)))
    feeds = runtime.synthetic_inputs(model, input_shapes)
    for g, w in zip(runtime.run(pruned, feeds), runtime.run(model, feeds)):
        assert np.array_equal(g, w)
    return pruned
