"""Scores: which channels each importance cuts first, the reductions and normalisations, BatchNorm estimates."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune import UsageError
from graphprune.passes import scoring

from .graphs import GraphBuilder

DEAD = [1, 5]


def dead_channel_model() -> onnx.ModelProto:
    """conv(3->8) -> relu -> conv(8->4): channels 1 and 5 never fire (bias -100) but read big weights, so
    magnitude would keep them."""
    g = GraphBuilder(seed=3)
    x = g.input("x", ["N", 3, 6, 6])
    y = g.conv(x, 3, 8, name="c1")
    y = g.op("Relu", [y])
    g.output(g.conv(y, 8, 4, name="c2"))
    m = g.model()
    inits = {t.name: t for t in m.graph.initializer}
    b = numpy_helper.to_array(inits["c1.b"]).copy()
    b[DEAD] = -100.0
    inits["c1.b"].CopyFrom(numpy_helper.from_array(b, "c1.b"))
    for name in ("c1.W", "c2.W"):
        w = numpy_helper.to_array(inits[name]).copy()
        if name == "c1.W":
            w[DEAD] *= 4
        else:
            w[:, DEAD] *= 4
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    return m


def calib(n=64, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def removed(result) -> list[int]:
    (cut,) = result.plan.cuts.values()
    return cut.removed


@pytest.mark.parametrize("importance", ["dead", "wanda", "fluctuation", "reconstruction"])
def test_dead_channels_are_scored_first(importance):
    m = dead_channel_model()
    r = graphprune.prune(m, ratio=0.25, calib=calib(), importance=importance, compensate="none")
    assert removed(r) == DEAD
    mag = graphprune.prune(m, ratio=0.25, importance="l2")
    assert not set(removed(mag)) & set(DEAD)  # magnitude alone keeps them


def test_dead_channels_cost_nothing():
    m = dead_channel_model()
    r = graphprune.prune(m, ratio=0.25, calib=calib(), importance="dead", compensate="none")
    out = r.report.fidelity["outputs"]["c2_out"]
    assert out["max_abs_diff"] < 1e-5 and out["cosine"] > 0.999999


def gemm_model(n_in=6) -> onnx.ModelProto:
    g = GraphBuilder(seed=1)
    x = g.input("x", ["N", n_in])
    y = g.op("Relu", [g.gemm(x, n_in, n_in, name="fc1")])
    g.output(g.gemm(y, n_in, 3, name="fc2"))
    return g.model()


def consumer_scores(m, importance, feeds):
    analysis = graphprune.analyze(m)
    from graphprune.passes import calibration
    from graphprune.passes.calibration import consumer_layers

    layers = consumer_layers(analysis)
    cal = calibration.load(feeds, m)
    stats = calibration.collect(m, layers, cal, gram=set(layers), shapes={})
    (g,) = analysis.prunable
    return analysis, g, stats, scoring.score(analysis, importance, stats=stats).value[g.key]


def test_wanda_is_weight_times_activation_norm():
    m = gemm_model()
    feeds = {"x": np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)}
    analysis, g, stats, s = consumer_scores(m, "wanda", feeds)
    (st,) = stats.values()
    w = analysis.view.const_value("fc2.W")  # [3, 6] (transB)
    want = np.abs(w.astype(np.float64)).sum(axis=0) * np.sqrt(st.meansq)
    np.testing.assert_allclose(s, want[np.argsort(np.argsort(g.units))], rtol=1e-9)


def test_reconstruction_sees_redundant_channels():
    """Hidden channel 2 copies channel 0: either can go for free once the other's weight absorbs it, while
    wanda and fluctuation see two strong channels."""
    g = GraphBuilder(seed=2)
    x = g.input("x", ["N", 4])
    y = g.op("Relu", [g.gemm(x, 4, 5, name="fc1")])
    g.output(g.gemm(y, 5, 3, name="fc2"))
    m = g.model()
    inits = {t.name: t for t in m.graph.initializer}
    w1 = np.zeros((5, 4), np.float32)
    w1[[0, 1, 2, 3, 4], [0, 1, 0, 2, 3]] = 1.0
    w2 = numpy_helper.to_array(inits["fc2.W"]).copy()
    w2 /= np.linalg.norm(w2, axis=0, keepdims=True)
    for name, v in (("fc1.W", w1), ("fc1.b", np.zeros(5, np.float32)), ("fc2.W", w2)):
        inits[name].CopyFrom(numpy_helper.from_array(v, name))
    feeds = {"x": np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)}
    r = graphprune.prune(m, ratio=0.2, calib=feeds, importance="reconstruction", compensate="lstsq")
    assert removed(r)[0] in (0, 2)
    assert r.report.fidelity["outputs"]["fc2_out"]["relative_error"] < 1e-3
    r = graphprune.prune(m, ratio=0.2, calib=feeds, importance="reconstruction", compensate="none")
    assert r.report.fidelity["outputs"]["fc2_out"]["relative_error"] > 0.1  # the copy's weight is needed


def test_reductions():
    a = [np.array([1.0, 4.0]), np.array([3.0, 0.0])]
    t = [np.array([1, 1]), np.array([1, 0])]
    np.testing.assert_allclose(scoring._reduce(a, t, "sum"), [4, 4])
    np.testing.assert_allclose(scoring._reduce(a, t, "mean"), [2, 4])
    np.testing.assert_allclose(scoring._reduce(a, t, "max"), [3, 4])


def test_normalisations():
    s = np.array([1.0, 3.0, 2.0, 4.0])
    np.testing.assert_allclose(scoring.normalize(s, "mean"), s / 2.5)
    np.testing.assert_allclose(scoring.normalize(s, "zscore"), (s - 2.5) / np.std(s))
    np.testing.assert_allclose(scoring.normalize(s, "lamp"), [1 / 10, 3 / 7, 2 / 9, 1.0])
    np.testing.assert_array_equal(scoring.normalize(s, "none"), s)
    for method in ("mean", "zscore", "lamp"):  # monotone: uniform allocation cuts the same channels
        np.testing.assert_array_equal(np.argsort(scoring.normalize(s, method)), np.argsort(s))


def test_magnitude_reduction_default_is_unchanged():
    m = gemm_model()
    a = graphprune.prune(m, ratio=0.5, importance="l2")
    b = graphprune.prune(m, ratio=0.5, importance="l2", reduction="mean")
    assert a.plan.cuts == b.plan.cuts


def bn_model() -> onnx.ModelProto:
    """conv -> BN -> relu -> conv, with one BN channel whose ReLU output is almost always 0."""
    g = GraphBuilder(seed=4)
    x = g.input("x", ["N", 3, 6, 6])
    y = g.bn(g.conv(x, 3, 6, name="c1"), 6, name="bn")
    y = g.op("Relu", [y])
    g.output(g.conv(y, 6, 4, name="c2"))
    m = g.model()
    inits = {t.name: t for t in m.graph.initializer}
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    beta = numpy_helper.to_array(inits[bn.input[2]]).copy()
    beta[3] = -20.0
    inits[bn.input[2]].CopyFrom(numpy_helper.from_array(beta, bn.input[2]))
    return m


def test_data_free_scores_use_batchnorm_statistics():
    r = graphprune.prune(bn_model(), ratio=1 / 6)
    assert r.report.quality["scoring"] == {"importance": "fluctuation", "magnitude_fallback": [],
                                           "statistics": "BatchNorm estimates"}
    assert removed(r) == [3]


def test_data_aware_importance_without_data_is_a_usage_error():
    with pytest.raises(UsageError, match="needs calibration data"):
        graphprune.prune(gemm_model(), importance="wanda")


def test_unknown_reduction_or_normalisation():
    with pytest.raises(UsageError, match="^reduction= must be one of"):
        graphprune.prune(gemm_model(), reduction="median")
    with pytest.raises(UsageError, match="^normalize= must be one of"):
        graphprune.prune(gemm_model(), normalize="softmax")


@pytest.mark.parametrize("g, d, k", [(1, 300, 1), (2, 270, 9), (3, 36, 4)])
def test_inverse_diagonal_blocks_match_the_full_inverse(g, d, k):
    rng = np.random.default_rng(g)
    x = rng.standard_normal((3 * d, g, d + 1)) * rng.uniform(0.01, 3.0, d + 1) + 0.4
    h = np.einsum("ngi,ngj->gij", x, x) / len(x) + 1e-2 * np.eye(d + 1)
    got = scoring.inverse_diagonal_blocks(h, d, k)
    hinv = np.linalg.inv(h)[:, :d, :d]
    c = d // k
    for gi in range(g):
        for ci in range(c):
            b = slice(ci * k, (ci + 1) * k)
            np.testing.assert_allclose(got[gi, ci], hinv[gi, b, b], rtol=1e-9, atol=1e-12)
    low = np.linalg.cholesky(h)
    np.testing.assert_allclose(scoring.triangular_inverse(low) @ low, np.broadcast_to(np.eye(d + 1), h.shape),
                               atol=1e-9)
    # not positive definite by rounding (an indefinite matrix here): the full inverse is used instead
    sym = h - 2 * np.linalg.eigvalsh(h)[:, :1, None] * np.eye(d + 1)
    np.testing.assert_allclose(scoring.inverse_diagonal_blocks(sym, d, k)[0, 0],
                               np.linalg.inv(sym)[0, :k, :k], rtol=1e-9)
