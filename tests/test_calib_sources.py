"""Calibration data as users have it: folders of samples, Python data loaders, image folders with a
--preprocess spec, and inputs fed unchanged to every batch (scalars, initial states)."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap

import numpy as np
import onnx
import pytest

import graphprune
from graphprune import UsageError
from graphprune.cli import main
from graphprune.core.graph import GraphView
from graphprune.core.runtime import SESSION_COUNTS, session
from graphprune.errors import OptionError
from graphprune.passes import calibration
from graphprune.passes.images import Preprocess, parse_preprocess

from .graphs import GraphBuilder
from .test_calibration import samples, small_cnn


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


# ---- models with inputs that are not samples ----------------------------------------------------------------
def scalar_model() -> onnx.ModelProto:
    """x * sr (sr a 0-d float, like a sample rate) feeding conv -> relu -> conv -> pool -> gemm."""
    g = GraphBuilder(seed=3)
    x = g.input("x", ["N", 3, 6, 6])
    sr = g.input("sr", [])
    y = g.op("Relu", [g.conv(g.op("Mul", [x, sr]), 3, 8, name="c1")])
    y = g.op("Relu", [g.conv(y, 8, 6, name="c2")])
    g.output(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [y])]), 6, 4, name="fc"))
    return g.model()


def state_model(broadcast: bool = False) -> onnx.ModelProto:
    """A recurrent-style step: x [N, 8] -> fc1 -> relu -> fc2, joined with an initial state [2, N, 16]
    (batch on axis 1, summed over axis 0) by Concat (which, unlike Add, needs the same batch: such a model
    calibrates sample by sample), and scaled by a scalar sr."""
    g = GraphBuilder(seed=4)
    x = g.input("x", ["N", 8])
    state = g.input("state", [2, "N", 16])
    sr = g.input("sr", [])
    h = g.op("Relu", [g.gemm(g.op("Mul", [x, sr]), 8, 16, name="fc1")])
    h = g.gemm(h, 16, 16, name="fc2")
    s = g.op("ReduceSum", [state, g.ints([0])], keepdims=0)
    y = g.op("Add", [h, s]) if broadcast else g.op("Concat", [h, s], axis=1)
    g.output(g.gemm(g.op("Relu", [y]), 16 if broadcast else 32, 4, name="fc3"))
    return g.model()


def fixed_batch_model() -> onnx.ModelProto:
    """Batch fixed to 1 with a Reshape to [1, -1]: it cannot run batched, so calibration goes sample by sample."""
    g = GraphBuilder(seed=5)
    x = g.input("x", [1, 3, 6, 6])
    y = g.op("Relu", [g.conv(x, 3, 8, name="c1")])
    y = g.op("Relu", [g.conv(y, 8, 4, name="c2")])
    g.output(g.gemm(g.op("Reshape", [y, g.ints([1, -1])]), 4 * 36, 3, name="fc"))
    return g.model()


# ---- folders of samples --------------------------------------------------------------------------------------
def test_folder_of_npz_and_npy_samples_sorted_by_name(tmp_path):
    m = small_cnn()
    x = samples(12)
    npz, npy = tmp_path / "npz", tmp_path / "npy"
    npz.mkdir()
    npy.mkdir()
    order = np.random.default_rng(0).permutation(12)  # written in a shuffled order, read by name
    for i in order:
        s = x[i] if i % 2 else x[i:i + 1]  # with or without the batch axis
        np.savez(npz / f"s{i:03d}.npz", x=s)
        np.save(npy / f"s{i:03d}.npy", s)
    (npz / "README.txt").write_text("not a sample")
    for folder in (npz, npy):
        cal = calibration.load(str(folder), m)
        np.testing.assert_array_equal(cal.train["x"], x)
    assert "1 other files ignored" in calibration.load(str(npz), m).source
    r = graphprune.prune(m, ratio=0.5, calib=str(npz), calib_samples=8)
    assert r.report.quality["calibration"]["samples"] == 8 and r.report.fidelity["samples"] == 4


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "a.txt").write_text("x"), "no .npz or .npy files in it"),
    (lambda d: (d / "a.npz").write_text("x"), "a.npz: not a readable .npz archive"),
    (lambda d: np.save(d / "a.npy", np.zeros((8,), np.float32)), "only a single-input model takes"),
])
def test_bad_sample_folders_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UsageError) as exc:
        calibration.load(str(tmp_path), scalar_model())
    assert message in _one_line(exc)


# ---- Python data loaders (polygraphy's convention) -----------------------------------------------------------
LOADER = '''
import numpy as np
from helper_mod import SAMPLES  # a module next to the loader

def load_data():
    rng = np.random.default_rng(1)
    for _ in range(SAMPLES):
        yield {"x": rng.standard_normal((3, 6, 6)).astype(np.float32)}

def batches():
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(SAMPLES)]

def forever():
    while True:
        yield {"x": np.zeros((1, 3, 6, 6), np.float32)}
'''


def test_loader_file_default_and_named_function(tmp_path):
    (tmp_path / "helper_mod.py").write_text("SAMPLES = 10\n")
    (tmp_path / "loader.py").write_text(LOADER)
    m = small_cnn()
    a = calibration.load(str(tmp_path / "loader.py"), m)
    b = calibration.load(f"{tmp_path / 'loader.py'}:batches", m)
    assert a.n_train == 10 and "data loader" in a.source
    np.testing.assert_array_equal(a.train["x"], b.train["x"])
    c = calibration.load(f"{tmp_path / 'loader.py'}:forever", m)  # endless: only what is used is read
    assert (c.n_train, c.n_held_out) == (calibration.DEFAULT_SAMPLES, calibration.HELD_OUT_MAX)
    r = graphprune.prune(m, ratio=0.5, calib=f"{tmp_path / 'loader.py'}:batches", calib_samples=6)
    assert r.report.fidelity["held_out"] and r.report.fidelity["samples"] == 4


def test_python_function_returning_feeds():
    x = samples(9)
    cal = calibration.load(lambda: ({"x": s} for s in x), small_cnn())
    np.testing.assert_array_equal(cal.train["x"], x)


@pytest.mark.parametrize("body, target, message", [
    ("import numpy\nfoo(\n", "", "importing loader.py raised SyntaxError"),
    ("x = undefined_name\n", "", "importing loader.py raised NameError: name 'undefined_name' is not defined"),
    ("def other():\n    return []\n", "", "loader.py defines no 'load_data' (its functions: other)"),
    ("load_data = 3\n", "", "'load_data' in loader.py is a int, not a function"),
    ("def load_data():\n    raise ValueError('no data here')\n", "", "load_data() raised ValueError: no data here"),
    ("def gen():\n    yield {'x': 1}\n    raise RuntimeError('disk gone')\n", ":gen",
     "iterating the data raised RuntimeError: disk gone"),
    ("def load_data():\n    return [1, 2]\n", "", "must yield feed dicts"),
    ("def load_data():\n    return []\n", "", "yields no feed dicts"),
    ("def load_data():\n    return 42\n", "", "got int"),
])
def test_loader_errors_name_the_file_and_the_exception(tmp_path, body, target, message):
    (tmp_path / "loader.py").write_text(body)
    source = f"{tmp_path / 'loader.py'}{target}"
    with pytest.raises(UsageError) as exc:
        graphprune.prune(small_cnn(), calib=source)
    text = _one_line(exc)
    assert message in text and f"--calib {source}" in text
    onnx.save(small_cnn(), tmp_path / "m.onnx")
    rc, err = _cli([tmp_path / "m.onnx", "--calib", source, "--dry-run"])
    assert rc == 2 and err.count("\n") == 1 and message in err


def test_missing_loader_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        calibration.load(f"{tmp_path / 'nope.py'}:fn", small_cnn())


# ---- the --preprocess spec -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, want", [
    ("size=320x240,scale=1/255,mean=0.5,0.5,0.5,std=0.25,0.5,1,layout=NCHW,rgb",
     Preprocess((320, 240), 1 / 255, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "NCHW", "rgb")),
    ("size=64, bgr, layout=nhwc", Preprocess((64, 64), layout="NHWC", order="bgr")),
    ("mean=123.7,116.3,103.5,std=58.4,57.1,57.4", Preprocess(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))),
    ("", Preprocess()),
])
def test_preprocess_spec_parses(spec, want):
    assert parse_preprocess(spec) == want


@pytest.mark.parametrize("spec, message", [
    ("size=abc", "size must be WIDTHxHEIGHT"),
    ("size=0x10", "size must be WIDTHxHEIGHT"),
    ("scale=1/0", "scale takes numbers, got '1/0'"),
    ("scale=0", "finite non-zero"),
    ("mean=a,b", "mean takes numbers, got 'a'"),
    ("std=0.5,0", "std values must be positive"),
    ("layout=CHW", "layout must be NCHW or NHWC, got 'CHW'"),
    ("crop=10", "unknown key 'crop'"),
    ("rgb,bgr", "rgb and bgr are both given"),
    ("size=8,size=9", "size is given twice"),
    ("gray", "'gray' is neither key=value nor a flag"),
])
def test_bad_preprocess_specs_are_one_line_option_errors(tmp_path, spec, message):
    with pytest.raises(OptionError) as exc:
        graphprune.prune(small_cnn(), calib_images=str(tmp_path), preprocess=spec)
    assert _one_line(exc).startswith(f"preprocess= {spec!r}: ") and message in str(exc.value)
    rc, err = _cli([tmp_path / "never_read.onnx", "--calib-images", tmp_path, "--preprocess", spec])
    assert rc == 2 and err.startswith(f"graphprune: error: --preprocess {spec!r}: ") and err.count("\n") == 1


def test_preprocess_without_images_is_an_option_error():
    with pytest.raises(OptionError, match=r"preprocess= applies to calib_images="):
        graphprune.prune(small_cnn(), preprocess="scale=1/255")


# ---- image folders -------------------------------------------------------------------------------------------
def _images(folder, n=6, size=(6, 6), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, size[1], size[0], 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        sub = folder / ("cats" if i % 2 else "dogs")  # one subfolder per class, as image datasets come
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(sub / f"{i:02d}.png")
    order = sorted(range(n), key=lambda i: f"{'cats' if i % 2 else 'dogs'}/{i:02d}.png")
    return pixels[order]


def test_images_are_scaled_normalised_and_laid_out(tmp_path):
    pixels = _images(tmp_path / "imgs").astype(np.float32)  # 6x6: the model's size, no resampling
    (tmp_path / "imgs" / "labels.csv").write_text("not an image")
    spec = "scale=1/255,mean=0.5,0.4,0.3,std=0.2,0.25,0.5"
    cal = calibration.load(None, small_cnn(), images=str(tmp_path / "imgs"), preprocess=spec)
    want = (pixels / 255 - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.5])
    np.testing.assert_allclose(cal.train["x"], want.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    assert "6 images" in cal.source and "6x6, NCHW, rgb" in cal.source
    bgr = calibration.load(None, small_cnn(), images=str(tmp_path / "imgs"), preprocess=spec + ",bgr")
    np.testing.assert_allclose(bgr.train["x"][:, 0], (pixels[..., 2] / 255 - 0.5) / 0.2, rtol=1e-5, atol=1e-5)


def test_nhwc_gray_and_resized_images(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i, v in enumerate((10, 200, 90)):
        Image.fromarray(np.full((20, 30, 3), v, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    g = GraphBuilder()
    x = g.input("x", ["N", "H", "W", 1])  # NHWC, one channel, dynamic size
    g.output(g.op("Transpose", [x], perm=[0, 3, 1, 2]))
    m = g.model()
    with pytest.raises(UsageError) as exc:
        calibration.load(None, m, images=str(tmp_path / "imgs"))
    assert "needs size=WIDTHxHEIGHT: input 'x' float32 [N, H, W, 1]" in _one_line(exc)
    cal = calibration.load(None, m, images=str(tmp_path / "imgs"), preprocess="size=5x4")
    assert cal.train["x"].shape == (3, 4, 5, 1)
    np.testing.assert_allclose(cal.train["x"][:, 0, 0, 0], [10, 200, 90], atol=1)  # uniform images stay uniform


def test_image_size_must_match_a_static_input(tmp_path):
    _images(tmp_path / "imgs")
    with pytest.raises(UsageError) as exc:
        calibration.load(None, small_cnn(), images=str(tmp_path / "imgs"), preprocess="size=8x8")
    assert "size=8x8 (width x height), but input 'x' float32 [N, 3, 6, 6] takes 6x6 images" in _one_line(exc)


def test_images_prune_end_to_end_through_the_cli(tmp_path):
    _images(tmp_path / "imgs", n=10)
    onnx.save(small_cnn(), tmp_path / "m.onnx")
    rc = main([str(tmp_path / "m.onnx"), "--calib-images", str(tmp_path / "imgs"), "--preprocess",
               "scale=1/255,mean=0.5,std=0.5", "--calib-samples", "6", "-o", str(tmp_path / "o.onnx"),
               "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quality"]["calibration"]["samples"] == 6 and report["fidelity"]["samples"] == 4
    assert report["options"]["calib_images"] == str(tmp_path / "imgs")


def test_unreadable_image_and_input_given_twice(tmp_path):
    _images(tmp_path / "imgs", n=2)
    (tmp_path / "imgs" / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError) as exc:
        calibration.load(None, small_cnn(), images=str(tmp_path / "imgs"))
    assert "cannot read dogs/broken.jpg as an image (UnidentifiedImageError" in _one_line(exc)
    (tmp_path / "imgs" / "dogs" / "broken.jpg").unlink()
    with pytest.raises(UsageError) as exc:
        calibration.load({"x": samples(2)}, small_cnn(), images=str(tmp_path / "imgs"))
    assert "--calib gives 'x', the input --calib-images fills" in _one_line(exc)


def test_images_need_pillow(tmp_path, monkeypatch):
    import sys

    _images(tmp_path / "imgs")
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` raises ImportError
    with pytest.raises(UsageError) as exc:
        calibration.load(None, small_cnn(), images=str(tmp_path / "imgs"))
    assert "pip install pillow" in _one_line(exc)


def test_images_for_a_model_with_other_inputs(tmp_path):
    _images(tmp_path / "imgs", n=8)
    m = scalar_model()
    with pytest.raises(UsageError) as exc:
        graphprune.prune(m, calib_images=str(tmp_path / "imgs"))
    assert "no array for graph input 'sr' (float32 []" in _one_line(exc) and "give the others with --calib" in str(
        exc.value)
    np.savez(tmp_path / "sr.npz", sr=np.float32(0.5))
    r = graphprune.prune(m, ratio=0.5, calib=str(tmp_path / "sr.npz"), calib_images=str(tmp_path / "imgs"),
                         preprocess="scale=1/255", calib_samples=6)
    assert r.report.quality["calibration"]["constants"] == {"sr": []}
    assert r.report.fidelity["held_out"] and r.report.fidelity["samples"] == 2
    g = GraphBuilder()
    a, b = g.input("a", ["N", 3, 6, 6]), g.input("b", ["N", 3, 6, 6])
    g.output(g.op("Add", [a, b]))
    with pytest.raises(UsageError) as exc:
        calibration.load(None, g.model(), images=str(tmp_path / "imgs"))
    assert "exactly one 4-D float input to fill, the model has 2" in _one_line(exc)


# ---- inputs fed unchanged to every batch ---------------------------------------------------------------------
def test_scalar_input_is_broadcast_to_every_batch():
    m = scalar_model()
    x = samples(40)
    cal = calibration.prepare(calibration.load({"x": x, "sr": np.float32(2.0)}, m, samples=30), m)
    assert cal.constants["sr"].shape == () and "sr" not in cal.train and cal.batch is None
    assert cal.describe()["constants"] == {"sr": []}
    view = GraphView(m)
    layers = calibration.linear_layers(m, {n.input[0]: view.shape(n.input[0]) for n in m.graph.node})
    st = calibration.collect(m, {"c1_out": layers["c1_out"]}, cal)["c1_out"]
    np.testing.assert_allclose(st.mean, (x[:30] * 2).astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5)
    r = graphprune.prune(m, ratio=0.5, calib={"x": x, "sr": np.float32(2.0)}, calib_samples=30, atol=10.0)
    fid = r.report.fidelity
    assert fid["held_out"] and fid["samples"] == 10 and fid["passed"] is True
    # the pruned model, run by hand with the same scalar, reproduces the reported agreement
    sr = np.array(2.0, np.float32)
    out, ref = (session(model).run(None, {"x": x[30:], "sr": sr})[0] for model in (r.model, m))
    assert np.isclose(np.abs(out - ref).max(), fid["outputs"]["fc_out"]["max_abs_diff"], rtol=1e-4)


def test_scalar_in_every_feed_of_a_loader(tmp_path):
    (tmp_path / "loader.py").write_text(textwrap.dedent('''
        import numpy as np

        def load_data():
            rng = np.random.default_rng(0)
            for _ in range(12):
                yield {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32), "sr": np.float32(16000.0)}
    '''))
    r = graphprune.prune(scalar_model(), ratio=0.5, calib=str(tmp_path / "loader.py"), calib_samples=8)
    assert r.report.quality["calibration"]["constants"] == {"sr": []} and r.report.fidelity["samples"] == 4


def test_state_input_goes_sample_by_sample_in_one_session():
    m = state_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    state = rng.standard_normal((2, 1, 16)).astype(np.float32)
    feeds = {"x": x, "state": state, "sr": np.float32(0.5)}
    cal = calibration.prepare(calibration.load(feeds, m, samples=14), m)
    assert set(cal.constants) == {"state", "sr"} and cal.batch == 1  # Concat needs the state's batch
    r = graphprune.prune(m, ratio=0.5, calib=feeds, calib_samples=14, importance="reconstruction")
    assert r.report.fidelity["samples"] == 6 and r.report.quality["calibration"]["batch"] == 1
    assert r.report.sessions["statistics"] <= 2 and r.report.sessions["fidelity"] == 2  # never one per sample
    assert r.report.quality["compensation"]["mode"] == "all"
    sr = np.array(0.5, np.float32)
    ref, got = (np.concatenate([session(model).run(None, {"x": x[i:i + 1], "state": state, "sr": sr})[0]
                                for i in range(14, 20)]) for model in (m, r.model))
    assert np.isclose(np.abs(got - ref).max(), r.report.fidelity["outputs"]["fc3_out"]["max_abs_diff"], rtol=1e-4)


def test_state_that_broadcasts_runs_batched():
    m = state_model(broadcast=True)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((20, 8)).astype(np.float32),
             "state": rng.standard_normal((2, 1, 16)).astype(np.float32), "sr": np.float32(1.5)}
    cal = calibration.prepare(calibration.load(feeds, m), m)
    assert cal.batch is None and set(cal.constants) == {"state", "sr"}
    r = graphprune.prune(m, ratio=0.5, calib=feeds)
    assert r.report.fidelity["outputs"]["fc3_out"]["cosine"] > 0


def test_one_feed_of_a_free_batch_input_is_a_constant():
    g = GraphBuilder(seed=6)
    x, h0 = g.input("x", ["N", 8]), g.input("h0", ["N", 8])
    y = g.op("Relu", [g.gemm(g.op("Add", [x, h0]), 8, 8, name="fc1")])
    g.output(g.gemm(y, 8, 2, name="fc2"))
    m = g.model()
    h0v = np.ones((1, 8), np.float32)
    cal = calibration.load({"x": np.zeros((10, 8), np.float32), "h0": h0v}, m)
    assert cal.n_train == 10 and list(cal.constants) == ["h0"]


def test_fixed_batch_of_one_goes_sample_by_sample():
    m = fixed_batch_model()
    x = samples(16)
    cal = calibration.prepare(calibration.load({"x": x}, m), m)
    assert cal.batch == 1 and not cal.rebatch  # Reshape [1, -1] cannot take a batch of 2
    before = SESSION_COUNTS["sessions"]
    r = graphprune.prune(m, ratio=0.5, calib={"x": x}, calib_samples=12)
    assert SESSION_COUNTS["sessions"] - before < 16
    assert r.report.sessions["statistics"] <= 2 and r.report.sessions["fidelity"] == 2
    assert r.report.fidelity["samples"] == 4


# ---- refusals name the input, the expected and the given shape or dtype ------------------------------------
@pytest.mark.parametrize("model, calib, message", [
    (scalar_model, {"x": samples(), "sr": np.full(40, 2.0, np.float32)},
     "input 'sr' is a scalar in the model (float32 []), fed unchanged to every batch; give one value (shape []), "
     "got shape [40]"),
    (scalar_model, [{"x": samples(1), "sr": np.float32(v)} for v in (1, 2)],
     "input 'sr' is a scalar in the model (float32 []), fed unchanged to every batch, but the feeds give different"),
    (scalar_model, {"x": samples()},
     "no array for graph input 'sr' (float32 []; given: x)"),
    (scalar_model, {"x": samples(), "sr": np.int64(2)},
     "input 'sr' is int64, the model expects float32 (input float32 [], given int64 [])"),
    (state_model, {"x": np.zeros((4, 8), np.float32), "state": np.zeros((2, 1, 12), np.float32), "sr": 1.0},
     "input 'state' has shape [2, 1, 12]: dim 2 is 12, the model expects 16 (float32 [2, N, 16]"),
    (state_model, {"x": np.zeros((4, 8), np.float32), "state": np.zeros((2, 3, 16), np.float32), "sr": 1.0},
     "the model does not run on one calibration sample with state [2, 3, 16], sr [] fed unchanged: "),
    (state_model, {"x": np.zeros((4, 8), np.float32), "state": np.zeros((1, 16), np.float32), "sr": 1.0},
     "input 'state' has shape [1, 16], of rank 2, the model expects rank 3: float32 [2, N, 16]"),
    (small_cnn, [{"x": samples(1)}, {"x": samples(1)[:, :, :5]}],
     "feeds of input 'x' have different shapes ([1, 3, 6, 6] and [1, 3, 5, 6]), the model expects float32 "
     "[N, 3, 6, 6]"),
    (small_cnn, {"x": samples(4), "y": samples(4)},
     "'y' is not a graph input (given [4, 3, 6, 6]; the model's inputs: x)"),
])
def test_refusals_name_input_expected_and_given(model, calib, message):
    with pytest.raises(UsageError) as exc:
        graphprune.prune(model(), calib=calib)
    assert message in _one_line(exc)


# ---- analyze --calib -----------------------------------------------------------------------------------------
def test_analyze_reads_the_same_sources(tmp_path, capsys):
    (tmp_path / "loader.py").write_text(textwrap.dedent('''
        import numpy as np

        def feeds():
            rng = np.random.default_rng(0)
            return [{"x": rng.standard_normal((3, 6, 6)).astype(np.float32), "sr": np.float32(3.0)}
                    for _ in range(5)]
    '''))
    onnx.save(scalar_model(), tmp_path / "m.onnx")
    for argv in (["--calib", f"{tmp_path / 'loader.py'}:feeds"],):
        rc = main(["analyze", str(tmp_path / "m.onnx"), *argv, "--json"])
        assert rc == 0
        rows = json.loads(capsys.readouterr().out)["sensitivity"]
        assert rows and all(p["relative_error"] > 0 for p in rows[0]["points"][1:])
    _images(tmp_path / "imgs", n=4)
    onnx.save(small_cnn(), tmp_path / "cnn.onnx")
    rc = main(["analyze", str(tmp_path / "cnn.onnx"), "--calib-images", str(tmp_path / "imgs"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["sensitivity"]
    rc, err = _cli(["analyze", tmp_path / "m.onnx", "--calib", tmp_path / "missing"])
    assert rc == 2 and "no such file or folder" in err and err.count("\n") == 1


def test_a_stream_of_batches_is_read_only_as_far_as_needed():
    pulled = []

    def stream():
        for i in range(100):
            pulled.append(i)
            yield {"x": samples(32, seed=i), "sr": np.float32(1.0)}  # batches of 32 with a scalar

    cal = calibration.load(stream(), scalar_model(), samples=64)
    assert (cal.n_train, cal.n_held_out) == (64, calibration.HELD_OUT_MAX)
    assert len(pulled) == (64 + calibration.HELD_OUT_MAX) // 32  # 10 batches, not 100
