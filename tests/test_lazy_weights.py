"""Large external-data models stay on disk: lazy (memory-mapped) weights through load, analyze, rewrite,
validate and save give the same pruned model as loading everything into memory."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.cli import main
from graphprune.core import io, runtime

from .tinynet import tinynet


def _save_external(src, folder):
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "ext.onnx"
    onnx.save_model(onnx.load(str(src)), str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    return out


def _values(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: np.array(io.tensor_array(t)) for t in m.graph.initializer}


@pytest.fixture
def ext(tmp_path, tmp_path_factory):
    src = tinynet(tmp_path / "m.onnx", tmp_path_factory)
    return src, _save_external(src, tmp_path / "ext")


def test_lazy_load_reads_nothing(ext):
    src, path = ext
    m = io.load_model(path)
    assert io.has_lazy(m)
    big = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(io.is_lazy(t) and not t.raw_data for t in big)
    v = io.tensor_array(big[0])
    assert isinstance(v, np.memmap) and not v.flags.writeable
    eager = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    assert all(np.array_equal(eager[k], v) for k, v in _values(m).items())


def test_lazy_prune_equals_eager_prune(ext):
    src, path = ext
    a = graphprune.prune(path, ratio=0.5)
    b = graphprune.prune(src, ratio=0.5)
    assert a.report.validation["oracle_max_abs_diff"] is not None
    va, vb = _values(a.model), _values(b.model)
    assert va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)
    # every lazy weight of the pruned model lives in one spill folder (ONNX Runtime memory-maps it)
    folders = {os.path.dirname(io._external_info(t)["location"]) for t in a.model.graph.initializer
               if io.is_lazy(t)}
    assert len(folders) == 1
    feeds = runtime.synthetic_inputs(b.model)
    # same weights; ORT without weight prepacking (lazy models) may round the last bit differently
    got, want = runtime.run(a.model, feeds)[0], runtime.run(b.model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_lazy_model_is_written_back_with_external_data(ext, tmp_path, capsys):
    src, path = ext
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    assert main([str(path), "--ratio", "0.5", "-q", "-o", str(out)]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(out.parent)) == ["p.onnx", "p.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    m = onnx.load(str(out))  # plain onnx reads it back: relative location, offsets inside the file
    ref = graphprune.prune(src, ratio=0.5).model
    feeds = runtime.synthetic_inputs(ref)
    np.testing.assert_allclose(runtime.run(m, feeds)[0], runtime.run(ref, feeds)[0], rtol=1e-5, atol=1e-6)
    # saving the same in-memory result twice (and over itself) stays correct
    io.save_model(graphprune.prune(path, ratio=0.5).model, out)
    again = runtime.run(onnx.load(str(out)), feeds)[0]
    np.testing.assert_allclose(again, runtime.run(ref, feeds)[0], rtol=1e-5, atol=1e-6)


def test_lazy_truncated_data_is_a_model_error(ext):
    _, path = ext
    data = path.parent / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(graphprune.ModelError, match="external data cannot be read"):
        io.load_model(path)


def test_model_nbytes_needs_no_serialization(ext):
    src, _ = ext
    m = onnx.load(str(src))
    assert abs(io.model_nbytes(m) - m.ByteSize()) < 0.05 * m.ByteSize()


def test_in_memory_model_over_the_limit_is_saved_with_external_data(ext, tmp_path, monkeypatch):
    src, _ = ext
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)  # stands for protobuf's 2 GB
    m = graphprune.prune(src, ratio=0.5).model
    assert not io.has_lazy(m)
    out = tmp_path / "big" / "p.onnx"
    out.parent.mkdir()
    io.save_model(m, out)
    assert sorted(os.listdir(out.parent)) == ["p.onnx", "p.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    back = onnx.load(str(out))
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in back.graph.initializer} == \
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}


def test_lazy_weights_through_compensation(ext, tmp_path):
    """Passes that read weights (bias compensation here) see lazy ones through io.tensor_array."""
    src, path = ext
    a = graphprune.prune(path, ratio=0.5, compensate="bias")
    b = graphprune.prune(src, ratio=0.5, compensate="bias")
    va, vb = _values(a.model), _values(b.model)
    assert va.keys() == vb.keys() and all(np.allclose(va[k], vb[k], rtol=1e-6, atol=1e-7) for k in va)


def test_large_inline_model_is_pruned_memory_mapped_and_comes_back_inline(ext, tmp_path, monkeypatch):
    """An inline model over io.INLINE_SPILL_BYTES (lowered here) is spilled on load, pruned lazily, and the
    result is an ordinary inline model with the very weights an in-memory prune gives."""
    src, _ = ext
    monkeypatch.setattr(io, "INLINE_SPILL_BYTES", 1)
    monkeypatch.setattr(io, "_SPILL_TENSOR_BYTES", 256)
    m, spilled = io.load_model_for_pruning(src)
    assert spilled and io.has_lazy(m)
    a = graphprune.prune(src, ratio=0.5, seed=3)
    assert not io.has_lazy(a.model)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in a.model.graph.initializer)
    monkeypatch.setattr(io, "INLINE_SPILL_BYTES", 1 << 60)
    b = graphprune.prune(src, ratio=0.5, seed=3)
    va, vb = _values(a.model), _values(b.model)
    assert va.keys() == vb.keys() and all(np.array_equal(va[k], vb[k]) for k in va)
    assert a.report.validation["oracle_max_abs_diff"] is not None
    out = tmp_path / "out.onnx"
    assert main([str(src), "--ratio", "0.5", "-o", str(out), "--quiet"]) == 0  # the CLI, threshold back up
    monkeypatch.setattr(io, "INLINE_SPILL_BYTES", 1)
    out2 = tmp_path / "out2.onnx"
    assert main([str(src), "--ratio", "0.5", "-o", str(out2), "--quiet"]) == 0
    assert not (tmp_path / "out2.onnx.data").exists()  # written inline, like its input
    assert _values(onnx.load(str(out2))).keys() == _values(onnx.load(str(out))).keys()
    assert all(np.array_equal(x, y) for x, y in zip(_values(onnx.load(str(out2))).values(),
                                                    _values(onnx.load(str(out))).values()))
