"""Calibration input: the forms it takes, the checks on it, and the statistics gathered from it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphprune
from graphprune import UsageError
from graphprune.core.graph import GraphView
from graphprune.passes import calibration
from graphprune.passes.calibration import LinearLayer

from .graphs import GraphBuilder


def small_cnn(batch="N", seed=0) -> onnx.ModelProto:
    """conv(3->8) -> relu -> conv(8->6) -> relu -> global pool -> flatten -> gemm(6->4)."""
    g = GraphBuilder(seed=seed)
    x = g.input("x", [batch, 3, 6, 6])
    y = g.op("Relu", [g.conv(x, 3, 8, name="c1")])
    y = g.op("Relu", [g.conv(y, 8, 6, name="c2")])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    g.output(g.gemm(y, 6, 4, name="fc"))
    return g.model()


def samples(n=40, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)


# ---- the forms of calibration data -----------------------------------------------------------------
def test_npz_dict_and_feed_dicts_are_the_same_data(tmp_path):
    m = small_cnn()
    x = samples()
    np.savez(tmp_path / "c.npz", x=x)
    a = calibration.load(str(tmp_path / "c.npz"), m)
    b = calibration.load({"x": x}, m)
    c = calibration.load([{"x": x[i:i + 7]} for i in range(0, 40, 7)], m)
    d = calibration.load(({"x": s} for s in x), m)  # a generator of single samples without batch axis
    for cal in (a, b, c, d):
        assert cal.n_train == 40 and cal.held_out is None
        np.testing.assert_array_equal(cal.train["x"], x)


def test_samples_split_into_calibration_and_held_out():
    m = small_cnn()
    cal = calibration.load({"x": samples(50)}, m, samples=30)
    assert cal.n_train == 30 and cal.n_held_out == 20
    cal = calibration.load({"x": samples(300)}, m)  # default: 256 used, the rest held out
    assert cal.n_train == 256 and cal.n_held_out == 44


def test_float64_is_cast_to_the_model_dtype():
    cal = calibration.load({"x": samples().astype(np.float64)}, small_cnn())
    assert cal.train["x"].dtype == np.float32


@pytest.mark.parametrize("calib, samples_asked, message", [
    ({"y": samples()}, None, "no array for graph input 'x'"),
    ({"x": samples(), "extra": samples()}, None, "'extra' is not a graph input"),
    ({"x": samples()[:, 0]}, None, "rank 3, the model expects rank 4"),
    ({"x": np.zeros((4, 3, 5, 6), np.float32)}, None, "dim 2 is 5, the model expects 6"),
    ({"x": np.zeros((4, 3, 6, 6), np.int64)}, None, "is int64, the model expects float32"),
    ({"x": np.full((4, 3, 6, 6), np.nan, np.float32)}, None, "NaN"),
    ({"x": samples(10)}, 20, "--calib-samples 20 asks for more samples than the calibration data has (10)"),
    ({"x": np.zeros((0, 3, 6, 6), np.float32)}, None, "no samples"),
    ([{"x": samples(2)}, {"z": samples(2)}], None, "name different inputs"),
    (42, None, "calib must be"),
    ("/nonexistent/calib.npz", None, "no such file"),
])
def test_bad_calibration_data_is_a_one_line_usage_error(calib, samples_asked, message):
    with pytest.raises(UsageError) as exc:
        graphprune.prune(small_cnn(), ratio=0.5, calib=calib, calib_samples=samples_asked)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_an_npz_file(tmp_path):
    p = tmp_path / "c.npz"
    p.write_text("hello")
    with pytest.raises(UsageError, match="not a readable .npz"):
        graphprune.prune(small_cnn(), calib=str(p))


def test_cli_bad_calibration_exits_2_with_one_line(tmp_path):
    from graphprune.cli import main

    onnx.save(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", image=samples())
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "o.onnx")])
    assert rc == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "graph input 'x'" in lines[0]
    assert not (tmp_path / "o.onnx").exists()


def test_calib_samples_without_calib_is_a_usage_error():
    with pytest.raises(UsageError, match="needs calibration data"):
        graphprune.prune(small_cnn(), calib_samples=10)


# ---- statistics ------------------------------------------------------------------------------------
def test_conv_rows_reproduce_the_convolution():
    rng = np.random.default_rng(0)
    for groups, cin, cout, k, stride, pad, dil in [(1, 3, 4, 3, 1, 1, 1), (2, 4, 6, 3, 2, 1, 1),
                                                    (4, 4, 4, 3, 1, 2, 2), (1, 3, 5, 1, 1, 0, 1)]:
        x = rng.standard_normal((2, cin, 7, 6)).astype(np.float32)
        w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
        node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=[stride] * 2,
                                     pads=[pad] * 4, dilations=[dil] * 2)
        layer = LinearLayer.from_node(node, list(w.shape), 4)
        y = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), stride=stride, padding=pad,
                                       dilation=dil, groups=groups).numpy()
        got = np.einsum("ngd,gdo->ngo", layer.rows(x), layer.wmat(w))
        np.testing.assert_allclose(got, layer.targets(y), atol=1e-4)
        np.testing.assert_array_equal(layer.from_wmat(layer.wmat(w), w.shape), w)
        pick = np.array([0, 5, 9])
        got = np.einsum("ngd,gdo->ngo", layer.rows(x, pick), layer.wmat(w))
        np.testing.assert_allclose(got, layer.targets(y, pick), atol=1e-4)


def test_collected_statistics_match_numpy():
    m = small_cnn()
    x = samples(30)
    cal = calibration.load({"x": x}, m)
    view = GraphView(m)
    layers = calibration.linear_layers(m, {n.input[0]: view.shape(n.input[0]) for n in m.graph.node})
    assert sorted(layers) == ["c1_out", "c2_out", "fc_out"]
    names = {layer.x for layer in layers.values()}
    probe = calibration.Probe(m, sorted(names))
    acts = probe.run({"x": x})
    stats = calibration.collect(m, layers, cal, gram=set(layers), shapes={})
    for y, st in stats.items():
        a = acts[st.layer.x].astype(np.float64)
        red = tuple(i for i in range(a.ndim) if i != st.layer.x_axis)
        np.testing.assert_allclose(st.sum, a.sum(axis=red), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st.sumsq, (a ** 2).sum(axis=red), rtol=1e-6)
        np.testing.assert_array_equal(st.zeros, (np.abs(a) <= 1e-7).sum(axis=red))
        r = st.layer.rows(acts[st.layer.x]).astype(np.float64)
        np.testing.assert_allclose(st.gram[0], r[:, 0].T @ r[:, 0], rtol=1e-6, atol=1e-6)
        assert st.rows == len(r)


def test_model_with_a_fixed_batch_of_one_runs_batched():
    m = small_cnn(batch=1)
    cal = calibration.prepare(calibration.load({"x": samples(20)}, m), m)
    assert cal.rebatch and cal.batch is None
    r = graphprune.prune(m, ratio=0.5, calib={"x": samples(20)}, compensate="lstsq")
    assert r.report.fidelity["outputs"]


def test_no_progress_bar_off_a_terminal(capsys):
    from graphprune.core import progress

    progress.enable(True)
    try:
        graphprune.prune(small_cnn(), ratio=0.5, calib={"x": samples()})
    finally:
        progress.enable(False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_gram_budget_splits_passes_without_changing_results(monkeypatch):
    m = small_cnn()
    view = GraphView(m)
    layers = calibration.linear_layers(m, {n.input[0]: view.shape(n.input[0]) for n in m.graph.node})
    cal = calibration.load({"x": samples(30)}, m)
    one = calibration.collect(m, layers, cal, gram=set(layers))
    calls = []
    real = calibration.Probe

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(calibration, "GRAM_BUDGET", 1)
    monkeypatch.setattr(calibration, "Probe", counting)
    split = calibration.collect(m, layers, cal, gram=set(layers))
    assert len(calls) == 3  # one pass per Gram matrix
    for y in layers:
        np.testing.assert_allclose(split[y].gram, one[y].gram)
        np.testing.assert_allclose(split[y].sum, one[y].sum)
        assert split[y].count == one[y].count and split[y].rows == one[y].rows


@pytest.mark.parametrize("groups", [1, 3])
def test_float32_moments_match_float64_sums(groups):
    """Large batch products run in float32 on shifted rows; the float64 totals stay at float32 rounding of
    the spread (not of the mean, which is large here), and small products are exact float64."""
    rng = np.random.default_rng(4)
    n, d, e = 4096, 80, 24
    x = (rng.standard_normal((n, groups, d)) * rng.uniform(0.1, 2.0, d) + 5.0).astype(np.float32)
    t = (x[..., :e] * 0.5 + rng.standard_normal((n, groups, e))).astype(np.float32)
    assert n * d * d >= calibration.F32_MIN_MACS
    m = calibration.Moments()
    for s in range(0, n, 1000):
        m.add(x[s:s + 1000], t[s:s + 1000])
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    xx, xt = np.einsum("ngi,ngj->gij", x64, x64), np.einsum("ngi,ngj->gij", x64, t64)
    c = x64 - x64.mean(axis=0)
    spread = np.einsum("ngi,ngj->gij", c, c)  # the centred Gram: what rounding must stay small against
    assert m.n == n
    np.testing.assert_allclose(m.sx, x64.sum(axis=0), rtol=1e-12)
    assert np.abs(m.xx() - xx).max() < 1e-5 * np.abs(spread).max()
    assert np.abs(m.xt() - xt).max() < 1e-5 * np.abs(spread).max()
    small = calibration.Moments()  # under F32_MIN_MACS: float64 throughout
    small.add(x[:50], t[:50])
    np.testing.assert_allclose(small.xx(), np.einsum("ngi,ngj->gij", x64[:50], x64[:50]), rtol=1e-12)


def test_calibrated_stages_report_progress_in_samples_and_waves(monkeypatch):
    import contextlib

    from graphprune.core import progress

    bars = []

    @contextlib.contextmanager
    def recorder(description, total=None):
        bar = {"description": description, "total": total, "done": 0}
        bars.append(bar)
        yield lambda n=1: bar.__setitem__("done", bar["done"] + n)

    monkeypatch.setattr(progress, "step", recorder)
    monkeypatch.setattr(calibration, "BATCH_BYTES", 4 << 10)  # several batches
    r = graphprune.prune(small_cnn(), ratio=0.5, calib={"x": samples(50)}, calib_samples=30, compensate="all")
    by = {b["description"].split(":")[0]: b for b in bars if b["total"] is not None}
    assert by["calibration statistics"]["total"] == by["calibration statistics"]["done"] == 30
    waves = r.report.quality["compensation"]["waves"]
    assert waves >= 2 and by["compensation (all)"]["total"] == by["compensation (all)"]["done"] == waves
    assert by["fidelity"]["total"] == by["fidelity"]["done"] == 20 and "held-out" in by["fidelity"]["description"]
