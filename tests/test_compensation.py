"""Compensation: new weights that bring the pruned model's outputs back to the original's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune import UsageError
from graphprune.core import runtime

from .graphs import GraphBuilder

CONST = [0, 3, 6]  # channels of c1 that are constant after the ReLU


def constant_channel_model(consumer="conv1x1", consumer_bias=True) -> onnx.ModelProto:
    """conv(3->8) -> relu -> consumer(8->5). Channels CONST of the first conv have zero weights and a
    positive bias, so the consumer reads a constant there; they carry big weights (magnitude keeps them)."""
    g = GraphBuilder(seed=5)
    x = g.input("x", ["N", 3, 6, 6] if consumer != "matmul" else ["N", 6, 6, 3])
    if consumer == "matmul":  # channels last: x[N, H, W, C] -> MatMul -> relu -> MatMul
        y = g.op("Relu", [g.op("Add", [g.matmul(x, 3, 8, name="c1"), g.weight([8], "c1.b")])])
        g.output(g.matmul(y, 8, 5, name="c2"))
    else:
        y = g.op("Relu", [g.conv(x, 3, 8, name="c1")])
        k = 1 if consumer == "conv1x1" else 3
        g.output(g.conv(y, 8, 5, k=k, name="c2", bias=consumer_bias, pad=False))
    m = g.model()
    inits = {t.name: t for t in m.graph.initializer}
    w = numpy_helper.to_array(inits["c1.W"]).copy()
    b = numpy_helper.to_array(inits["c1.b"]).copy()
    if consumer == "matmul":
        w[:, CONST] = 0.0
    else:
        w[CONST] = 0.0
    b[CONST] = [0.5, 1.0, 2.0]
    w2 = numpy_helper.to_array(inits["c2.W"]).copy()
    if consumer == "matmul":
        w2[CONST] *= 5
    else:
        w2[:, CONST] *= 5
    for name, v in (("c1.W", w), ("c1.b", b), ("c2.W", w2)):
        inits[name].CopyFrom(numpy_helper.from_array(v, name))
    return m


def feeds(n=64, shape=(3, 6, 6), seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)}


def out_of(r):
    (row,) = r.report.fidelity["outputs"].values()
    return row


def constant_plan(m):
    """Plan cutting exactly the constant channels (fluctuation scores them 0: no variance)."""
    return graphprune.prune(m, ratio=3 / 8, calib=feeds(), importance="fluctuation", compensate="none")


@pytest.mark.parametrize("consumer, bias", [("conv1x1", True), ("conv1x1", False), ("conv3x3valid", True),
                                            ("matmul", False)])
def test_bias_compensation_restores_constant_channels_exactly(consumer, bias):
    m = constant_channel_model(consumer, bias)
    shape = (6, 6, 3) if consumer == "matmul" else (3, 6, 6)
    cal = feeds(shape=shape)
    plain = graphprune.prune(m, ratio=3 / 8, calib=cal, importance="fluctuation", compensate="none")
    (cut,) = plain.plan.cuts.values()
    assert cut.removed == CONST
    assert out_of(plain)["relative_error"] > 0.05
    r = graphprune.prune(m, ratio=3 / 8, calib=cal, importance="fluctuation", compensate="bias")
    assert out_of(r)["max_abs_diff"] < 1e-4
    # and on inputs it never saw
    x = feeds(16, shape, seed=9)
    np.testing.assert_allclose(runtime.run(r.model, x)[0], runtime.run(m, x)[0], atol=1e-4)
    assert r.report.validation["oracle_max_abs_diff"] is not None  # the structural rewrite was proved
    if consumer == "matmul":
        assert [n.op_type for n in r.model.graph.node].count("Add") == 2  # an Add now carries the bias
    elif not bias:
        (conv,) = [n for n in r.model.graph.node if n.output[0] == "c2_out"]
        assert len(conv.input) == 3  # a bias input was added


def test_bias_compensation_without_data_uses_batchnorm():
    g = GraphBuilder(seed=6)
    x = g.input("x", ["N", 3, 6, 6])
    y = g.op("Relu", [g.bn(g.conv(x, 3, 8, name="c1"), 8, name="bn")])
    g.output(g.conv(y, 8, 5, k=1, name="c2", pad=False))
    m = g.model()
    a = graphprune.prune(m, ratio=0.5, compensate="none", atol=1e9)
    b = graphprune.prune(m, ratio=0.5, compensate="bias", atol=1e9)
    assert b.report.quality["compensation"]["layers"] == {"c2_out": "bias (BatchNorm estimate)"}
    # BN statistics here are made up (not the data's), so only check it ran and changed the bias
    assert a.report.fidelity["outputs"] != b.report.fidelity["outputs"]


def resnetish() -> onnx.ModelProto:
    g = GraphBuilder(seed=7)
    x = g.input("x", ["N", 3, 8, 8])
    a = g.op("Relu", [g.conv(x, 3, 12, name="c1")])
    b = g.op("Relu", [g.conv(a, 12, 12, name="c2")])
    s = g.op("Add", [a, g.conv(b, 12, 12, name="c3")])
    d = g.op("Relu", [g.conv(s, 12, 16, name="c4", group=4)])
    p = g.op("Flatten", [g.op("GlobalAveragePool", [d])])
    g.output(g.gemm(p, 16, 10, name="fc"))
    return g.model()


def test_lstsq_reduces_output_error_layer_by_layer():
    m = resnetish()
    cal = feeds(200, (3, 8, 8))
    errs = {}
    for mode in ("none", "bias", "lstsq", "all"):
        r = graphprune.prune(m, ratio=0.5, calib=cal, calib_samples=150, importance="l2", compensate=mode)
        errs[mode] = out_of(r)["relative_error"]
        assert r.report.fidelity["held_out"] and r.report.fidelity["samples"] == 50
    assert errs["bias"] < errs["none"]
    assert errs["lstsq"] < 0.7 * errs["none"]
    assert errs["all"] <= errs["lstsq"] * 1.05
    r = graphprune.prune(m, ratio=0.5, calib=cal, importance="l2", compensate="lstsq")
    assert set(r.report.quality["compensation"]["layers"]) == {"c2_out", "c3_out", "c4_out", "fc_out"}


def test_compensated_weights_keep_dtype_and_names():
    m = resnetish()
    r = graphprune.prune(m, ratio=0.5, calib=feeds(64, (3, 8, 8)), compensate="all")
    before = {t.name: t.data_type for t in m.graph.initializer}
    for t in r.model.graph.initializer:
        if t.name in before:
            assert t.data_type == before[t.name]
    onnx.checker.check_model(r.model, full_check=True)
    v = r.report.validation
    assert v["checker"] and v["shape_inference"] and v["runtime"]
    assert any("before compensation" in n for n in v["notes"])


def test_least_squares_without_data_is_a_usage_error():
    with pytest.raises(UsageError, match="needs calibration data"):
        graphprune.prune(resnetish(), ratio=0.5, compensate="lstsq")


def test_fidelity_tolerances_pass_and_fail(tmp_path):
    m = constant_channel_model()
    r = graphprune.prune(m, ratio=3 / 8, calib=feeds(), importance="fluctuation", compensate="bias",
                         atol=1e-3, rtol=1e-3)
    assert r.report.fidelity["passed"] is True
    r = graphprune.prune(m, ratio=3 / 8, calib=feeds(), importance="fluctuation", compensate="none",
                         atol=1e-3, rtol=1e-3)
    assert r.report.fidelity["passed"] is False


def test_cli_fidelity_failure_writes_nothing(tmp_path):
    import contextlib
    import io

    from graphprune.cli import main

    onnx.save(constant_channel_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **feeds())
    out, err = io.StringIO(), io.StringIO()
    base = [str(tmp_path / "m.onnx"), "--ratio", "0.375", "--calib", str(tmp_path / "c.npz"),
            "--importance", "fluctuation", "--atol", "1e-3", "-o", str(tmp_path / "o.onnx")]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(base + ["--compensate", "none"])
    assert rc == 1 and "FAILED" in out.getvalue() and not (tmp_path / "o.onnx").exists()
    assert "fidelity check FAILED" in err.getvalue()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(base + ["--compensate", "bias"])
    assert rc == 0 and "PASSED" in out.getvalue() and (tmp_path / "o.onnx").exists()


def test_statistics_correction_where_a_layer_is_too_wide_for_a_gram_matrix(monkeypatch):
    from graphprune.passes import calibration

    m = resnetish()
    cal = feeds(200, (3, 8, 8))
    none = graphprune.prune(m, ratio=0.5, calib=cal, calib_samples=150, importance="l2", compensate="none")
    monkeypatch.setattr(calibration, "MAX_GRAM_DIM", 8)  # every conv is "too wide": no Gram matrices
    r = graphprune.prune(m, ratio=0.5, calib=cal, calib_samples=150, importance="l2", compensate="all")
    layers = r.report.quality["compensation"]["layers"]
    assert set(layers.values()) == {"stats", "lstsq"} and layers["c2_out"] == "stats"
    assert out_of(r)["relative_error"] < out_of(none)["relative_error"]


def test_fixed_batch_of_one_runs_sample_by_sample_with_the_same_sessions(monkeypatch):
    """A model fixed to a batch of 1 that cannot run batched goes sample by sample: the sessions compensation
    creates do not grow with the samples, and the weights are the batched run's."""
    from graphprune.passes import calibration

    g = GraphBuilder(seed=7)
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("Relu", [g.conv(x, 3, 12, name="c1")])
    b = g.op("Relu", [g.conv(a, 12, 12, name="c2")])
    g.output(g.conv(b, 12, 6, name="c3"))
    m = g.model()
    batched = graphprune.prune(m, ratio=0.5, calib=feeds(40, (3, 8, 8)), calib_samples=30, compensate="all")
    monkeypatch.setattr(calibration, "batches_agree", lambda *args: False)
    runs = {n: graphprune.prune(m, ratio=0.5, calib=feeds(n + 10, (3, 8, 8)), calib_samples=n, compensate="all")
            for n in (10, 30)}
    assert runs[10].report.sessions["compensation"] == runs[30].report.sessions["compensation"]
    assert runs[30].report.sessions["compensation"] <= 2 * runs[30].report.quality["compensation"]["waves"]
    one = {t.name: numpy_helper.to_array(t) for t in runs[30].model.graph.initializer}
    for t in batched.model.graph.initializer:
        np.testing.assert_allclose(one[t.name], numpy_helper.to_array(t), rtol=1e-4, atol=1e-5)


# ---- ridge toward the pruned weights, chosen on held-out samples ------------------------------------------
def _fold_sums(x, t):
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)[None]
    return xa[0].T @ xa[0] / len(x), xa[0].T @ t / len(x)


def _ridge_case(n, d=40, o=5, seed=0):
    """t = x @ w_true + noise, where w0 (the pruned weights) is close to w_true."""
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal((d, o))
    w0 = w_true + 0.05 * rng.standard_normal((d, o))
    x = rng.standard_normal((n, d))
    t = x @ w_true + 0.5 + 2.0 * rng.standard_normal((n, o))
    return x, t, w_true, w0


def test_held_out_ridge_is_strong_with_few_samples_and_weak_with_many():
    from graphprune.passes import ridge

    chosen = {}
    for n in (30, 20000):
        x, t, w_true, w0 = _ridge_case(n)
        half = n // 2
        folds = []
        for part in (slice(0, half), slice(half, n)):
            a, r = _fold_sums(x[part], t[part])
            folds.append((a[None], r[None], len(x[part])))
        w, b, used = ridge.fit(folds, w0[None], None)
        chosen[n] = used
        plain, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((n, 1))], axis=1), t, rcond=None)
        err, err_plain = np.linalg.norm(w[0] - w_true), np.linalg.norm(plain[:-1] - w_true)
        assert err <= err_plain * 1.01  # never worse than plain least squares at recovering the weights
        if n == 30:
            assert err < 0.5 * err_plain  # few samples: pulled toward w0, far closer to the truth
        assert abs(float(b[0].mean()) - 0.5) < (1.0 if n == 30 else 0.05)  # the bias is not shrunk
    assert chosen[30] > chosen[20000]


def test_ridge_chosen_on_an_output_subset_matches_the_choice_on_all_outputs():
    """A layer wider than ridge.CHOICE_OUTPUTS has its ridge chosen on a column subset: the grid's held-out
    errors are estimated, so the choice stays the one made on every column, for few and for many samples."""
    from graphprune.passes import ridge

    for n in (30, 20000):
        x, t, _, w0 = _ridge_case(n, o=3 * ridge.CHOICE_OUTPUTS, seed=1)
        half = n // 2
        folds = [(a[None], r[None], half) for a, r in (_fold_sums(x[:half], t[:half]), _fold_sums(x[half:], t[half:]))]
        assert ridge.choose(folds, w0[None]) == ridge.choose(folds, w0[None], outputs=w0.shape[1])


def test_residual_layers_are_fit_to_the_block_output(monkeypatch):
    from graphprune.passes import compensation

    from .test_sensitivity import feeds as mlp_feeds
    from .test_sensitivity import two_blocks

    m = two_blocks(robust=1.0)
    cal = mlp_feeds(400, seed=3)
    out = m.graph.output[0].name

    def err(**kw):
        r = graphprune.prune(m, ratio=0.6, calib=cal, calib_samples=300, compensate="lstsq", round_to=1, **kw)
        return r.report.fidelity["outputs"][out]["relative_error"], r.report.quality["compensation"]

    block, info = err()
    assert info.get("block_targets") == 2
    monkeypatch.setattr(compensation, "_residual", lambda *a, **k: None)
    local, info = err()
    assert "block_targets" not in info
    assert block < local


def test_weighted_moments_equal_the_moments_of_repeated_rows():
    """Moments.add with integer row weights sums what adding each row that many times sums (float64 path and
    the float32 one of large products)."""
    from graphprune.passes.calibration import F32_MIN_MACS, Moments

    rng = np.random.default_rng(0)
    for n, d in ((40, 6), (F32_MIN_MACS // (64 * 64) + 8, 64)):
        x, t = rng.standard_normal((n, 1, d)) + 3.0, rng.standard_normal((n, 1, 5 if d < 64 else 64))
        w = rng.integers(0, 4, n)
        weighted, repeated = Moments(), Moments()
        weighted.add(x, t, w.astype(np.float64))
        repeated.add(np.repeat(x, w, axis=0), np.repeat(t, w, axis=0))
        assert weighted.n == repeated.n
        tol = 1e-9 if d < 64 else 1e-4
        for a, b in ((weighted.xx(), repeated.xx()), (weighted.xt(), repeated.xt()), (weighted.sx, repeated.sx)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_block_outputs_read_by_a_layer_norm_are_fit_row_weighted(monkeypatch):
    """In a post-LN transformer (the zoo BERT) the attention output and FFN down projections feed residual Adds
    read by LayerNorm: their re-fits weigh each token by 1 / its block output's variance."""
    pytest.importorskip("transformers")
    from graphprune.passes import compensation
    from models.transformers_zoo import get_transformer_model

    from .test_tokens import padded_feeds

    bert = onnx.load(str(get_transformer_model("bert")))
    r = graphprune.prune(bert, ratio=0.5, calib=padded_feeds(), compensate="all")
    info = r.report.quality["compensation"]
    assert info["norm_weighted"] == info["block_targets"] == 4  # 2 layers x (attention output, FFN down)
    monkeypatch.setattr(compensation, "NORM_WEIGHTS", False)
    plain = graphprune.prune(bert, ratio=0.5, calib=padded_feeds(), compensate="all")
    assert "norm_weighted" not in plain.report.quality["compensation"]
    w = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert any(not np.array_equal(w[t.name], numpy_helper.to_array(t)) for t in plain.model.graph.initializer
               if t.name in w and w[t.name].shape == tuple(t.dims))
