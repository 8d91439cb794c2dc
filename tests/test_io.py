"""Loading and saving: atomic writes, external data, and refusing data files outside the model's folder."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.cli import main
from graphprune.core import io, runtime

from .corpus import set_location
from .tinynet import tinynet


@pytest.fixture
def model_path(tmp_path, tmp_path_factory):
    return tinynet(tmp_path / "m.onnx", tmp_path_factory)


@pytest.fixture
def pruned(model_path) -> onnx.ModelProto:
    return graphprune.prune(model_path, ratio=0.5).model


def weights(m: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: np.asarray(io.tensor_array(t)).tobytes() for t in m.graph.initializer}  # lazy ones too


def save_external(model_path, folder, location="m.data") -> os.PathLike:
    """The model saved with every initializer in one external data file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "ext.onnx"
    onnx.save_model(onnx.load(str(model_path)), str(out), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return out


# ---- atomic save ----------------------------------------------------------------------------------------
def test_save_leaves_no_temp_files(tmp_path, pruned):
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    io.save_model(pruned, out)
    assert os.listdir(out.parent) == ["p.onnx"]
    assert weights(onnx.load(str(out))) == weights(pruned)
    io.save_model(pruned, out)  # replacing an existing file is just as clean
    assert os.listdir(out.parent) == ["p.onnx"]


def test_saved_file_has_normal_permissions(tmp_path, pruned):
    out = tmp_path / "p.onnx"
    io.save_model(pruned, out)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def _failing_save(monkeypatch, exc):
    real = onnx.save_model

    def half_then_fail(model, f, *args, **kwargs):
        real(model, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # a partial file is on disk when the failure comes
            fh.truncate(100)
        raise exc

    monkeypatch.setattr(onnx, "save_model", half_then_fail)


@pytest.mark.parametrize("exc", [RuntimeError("serializer broke"), KeyboardInterrupt()])
def test_failed_save_leaves_no_partial_file(tmp_path, pruned, monkeypatch, exc):
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    _failing_save(monkeypatch, exc)
    with pytest.raises(type(exc)):
        io.save_model(pruned, out)
    assert os.listdir(out.parent) == []


def test_failed_save_keeps_the_previous_file(tmp_path, pruned, monkeypatch):
    out = tmp_path / "p.onnx"
    out.write_bytes(b"previous version")
    _failing_save(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(graphprune.GraphpruneError, match="No space left"):
        io.save_model(pruned, out)
    assert out.read_bytes() == b"previous version"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "p.onnx"]


def test_cli_write_failure_is_one_line(tmp_path, model_path, monkeypatch, capsys):
    _failing_save(monkeypatch, OSError(28, "No space left on device"))
    rc = main([str(model_path), "-o", str(tmp_path / "p.onnx")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("graphprune: error:") and "No space left" in err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_cli_report_write_failure_is_one_line(tmp_path, model_path, monkeypatch, capsys):
    real = type(tmp_path).write_text

    def fail(self, *a, **k):
        if "r.json" in self.name:  # the report, or the temporary file it is written to
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "write_text", fail)
    rc = main([str(model_path), "-q", "-o", str(tmp_path / "p.onnx"), "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("graphprune: error:") and "Permission denied" in err


# ---- external data --------------------------------------------------------------------------------------
def test_external_data_model_loads_and_prunes(tmp_path, model_path):
    ext = save_external(model_path, tmp_path / "ext")
    assert (tmp_path / "ext" / "m.data").exists()
    assert ext.stat().st_size < model_path.stat().st_size / 2  # the weights really are outside
    loaded = io.load_model(ext)
    assert weights(loaded) == weights(onnx.load(str(model_path)))
    a = graphprune.prune(ext, ratio=0.5)
    b = graphprune.prune(model_path, ratio=0.5)
    assert weights(a.model) == weights(b.model)
    feeds = runtime.synthetic_inputs(a.model)
    assert np.array_equal(runtime.run(a.model, feeds)[0], runtime.run(b.model, feeds)[0])


def test_external_data_through_the_cli(tmp_path, model_path, capsys):
    ext = save_external(model_path, tmp_path / "ext")
    data_before = (tmp_path / "ext" / "m.data").read_bytes()
    rc = main([str(ext), "--ratio", "0.5", "-q"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "ext" / "ext.pruned.onnx"
    onnx.checker.check_model(str(out), full_check=True)
    assert (tmp_path / "ext" / "m.data").read_bytes() == data_before  # the input's data is untouched
    # written back the way it came: weights in a data file next to the output (named after it)
    assert (tmp_path / "ext" / "ext.pruned.onnx.data").exists()
    assert out.stat().st_size < (tmp_path / "ext" / "ext.pruned.onnx.data").stat().st_size
    assert runtime.run(onnx.load(str(out)), runtime.synthetic_inputs(onnx.load(str(out))))[0].shape == (1, 10)


def test_external_data_in_a_subfolder_is_fine(tmp_path, model_path):
    (tmp_path / "ext" / "weights").mkdir(parents=True)
    ext = save_external(model_path, tmp_path / "ext", location="weights/m.data")
    assert graphprune.prune(ext, ratio=0.5).report.validation["runtime"]


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_folder_is_refused(tmp_path, model_path, capsys, where):
    ext = save_external(model_path, tmp_path / "sub")
    shutil.move(tmp_path / "sub" / "m.data", tmp_path / "x.data")
    location = "../x.data" if where == "parent" else str(tmp_path / "x.data")
    set_location(ext, location)
    with pytest.raises(graphprune.ModelError, match="outside the model's folder"):
        graphprune.prune(ext, ratio=0.5)
    with pytest.raises(graphprune.ModelError, match="outside the model's folder"):
        graphprune.analyze(ext)
    capsys.readouterr()
    rc = main([str(ext)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("graphprune: error:") and location in err
    assert sorted(os.listdir(tmp_path / "sub")) == ["ext.onnx"]


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path, model_path):
    ext = save_external(model_path, tmp_path / "sub")
    shutil.move(tmp_path / "sub" / "m.data", tmp_path / "x.data")
    os.symlink(tmp_path / "x.data", tmp_path / "sub" / "m.data")
    with pytest.raises(graphprune.ModelError, match="outside"):
        graphprune.prune(ext, ratio=0.5)


def test_missing_external_data_is_a_one_line_error(tmp_path, model_path, capsys):
    ext = save_external(model_path, tmp_path / "ext")
    os.unlink(tmp_path / "ext" / "m.data")
    rc = main([str(ext)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("graphprune: error:") and "missing" in err


def test_truncated_external_data_is_a_one_line_error(tmp_path, model_path, capsys):
    ext = save_external(model_path, tmp_path / "ext")
    data = tmp_path / "ext" / "m.data"
    data.write_bytes(data.read_bytes()[:100])
    rc = main([str(ext)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("graphprune: error:"), err
