"""Loading and saving models: clear errors for bad input, atomic writes, external data kept external."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .errors import GraphpruneError, ModelError, UsageError

EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom


def load_model(source) -> onnx.ModelProto:
    """Load a path or pass a ModelProto through; one-line ModelError for anything that is not ONNX."""
    if isinstance(source, onnx.ModelProto):
        _check_basic(source, "model")
        return source
    path = Path(os.fspath(source))
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types
        raise ModelError(f"{path}: not a readable ONNX model ({_short(exc)})") from None
    _check_external(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: external data cannot be read ({_short(exc)})") from None
    _check_basic(model, str(path))
    return model


def _check_external(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise ModelError(f"{path}: initializer '{t.name}' has external data without a location")
        target = (base / loc).resolve()
        if base not in target.parents and target != base:
            raise ModelError(f"{path}: initializer '{t.name}' points outside the model's folder ({loc})")
        if not target.exists():
            raise ModelError(f"{path}: external data file '{loc}' for '{t.name}' is missing")


def _check_basic(model: onnx.ModelProto, where: str) -> None:
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise ModelError(f"{where}: the model has an empty graph")
    if len(model.graph.node) == 0:
        raise ModelError(f"{where}: the graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{where}: invalid ONNX model ({_short(exc)})") from None


def save_model(model: onnx.ModelProto, path, overwrite_input: str | None = None) -> None:
    """Write atomically: a temporary file in the target folder, then rename."""
    path = Path(os.fspath(path))
    if overwrite_input is not None and path.resolve() == Path(overwrite_input).resolve():
        raise UsageError(f"{path}: output would overwrite the input (pass --overwrite to allow it)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise UsageError(f"{folder}: output folder does not exist")
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _can_size(model) else True
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise GraphpruneError(f"{path}: cannot write ({exc.strerror or _short(exc)})") from None
    os.close(fd)
    _chmod_default(tmp)  # mkstemp makes 0600; the output should get the permissions of a normal file
    data_name = path.name + ".data"
    tmp_data = folder / f".{data_name}.tmp"
    try:
        if large:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            _retarget_external(tmp, tmp_data.name, data_name)
            os.replace(tmp_data, folder / data_name)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, tmp_data) if large else (tmp,):
            if os.path.exists(leftover):
                os.unlink(leftover)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not an internal error
            raise GraphpruneError(f"{path}: cannot write ({exc.strerror or _short(exc)})") from None
        raise


def _retarget_external(model_path: str, old: str, new: str) -> None:
    m = onnx.load(model_path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value == old:
                e.value = new
    onnx.save_model(m, model_path)


def _chmod_default(path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def _can_size(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001
        return False


def _short(exc) -> str:
    s = str(exc).strip().splitlines()
    text = s[0] if s else type(exc).__name__
    return text[:200]
