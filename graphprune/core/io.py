"""Loading and saving models: clear errors for bad input, atomic writes, external data kept external."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import GraphpruneError, ModelError, UsageError, first_line
from . import progress

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
        with progress.file_step(f"loading {path.name}", path.stat().st_size):
            model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    _check_external(model, path)
    if _lazy_candidate(model):
        _make_lazy(model, path)
        _check_basic(model, str(path))
        return model
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: external data cannot be read ({first_line(exc)})") from None
    _check_basic(model, str(path))
    return model


def load_model_for_pruning(source) -> tuple[onnx.ModelProto, bool]:
    """`load_model`, and a large model stored inline (weights inside the .onnx file) has its weights moved to
    a spill file, so that it is pruned like a model with external data: memory-mapped, never copied whole
    (the work copy, the rewrite, ONNX Runtime's sessions). Returns (model, spilled); the caller turns a
    spilled result back into an inline model with `materialize`."""
    model = load_model(source)
    if isinstance(source, onnx.ModelProto):
        return model, False
    return _spill_inline(model)


INLINE_SPILL_BYTES = 256 << 20  # inline weights from this much on are spilled (load_model_for_pruning)
_SPILL_TENSOR_BYTES = 1 << 20  # only tensors at least this big; small ones stay in the proto


def _spill_inline(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    big = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
           and t.HasField("raw_data") and tensor_nbytes(t) >= _SPILL_TENSOR_BYTES]
    if sum(tensor_nbytes(t) for t in big) < INLINE_SPILL_BYTES:
        return model, False
    spill = SpillFile()
    for t in big:
        spill.add_raw(t)
    # protobuf keeps cleared bytes in the message's arena until the message itself goes: a fresh copy of the
    # (now light) model lets the loaded one, and its weights, be freed.
    light = onnx.ModelProto()
    light.CopyFrom(model)
    return light, True


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every lazy (memory-mapped) weight is read back into the proto: the inline model a
    spilled one stands for."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if not is_lazy(t):
            continue
        info = _external_info(t)
        n = tensor_nbytes(t)
        with open(info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0) or 0))
            data = f.read(n)
        if len(data) != n:
            raise ModelError(f"{info['location']}: spilled data for '{t.name}' ends early")
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = data
    return out


# ---- lazy external data ---------------------------------------------------------------------------------
# A model with external data is not read into memory: its initializers
# stay EXTERNAL with the data file's absolute path as location (that is what marks them lazy), and are read
# as read-only memory maps when needed (`tensor_array`). The rewrite writes the slices it makes, and copies
# the lazy weights it leaves alone, to a spill file (`SpillFile`), so a pruned billion-parameter model is
# never in memory either. ONNX Runtime maps lazy weights itself (runtime.session), the checker and shape
# inference get a copy in which they are typed graph inputs (`light_copy`), and `save_model` streams them
# into the output's own data file: a model loaded with external data is written back with external data.
def _external_info(t: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in t.external_data}


def _lazy_candidate(model: onnx.ModelProto) -> bool:
    ext = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not ext:
        return False
    # Tensors in attributes (Constant nodes, subgraphs) are rare in external data; keep those models eager.
    attr_ext = any(a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL
                   for n in model.graph.node for a in n.attribute)
    return not attr_ext


def _make_lazy(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    sizes: dict[Path, int] = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external_info(t)
        target = (base / info["location"]).resolve()
        if target not in sizes:
            sizes[target] = target.stat().st_size
        offset = int(info.get("offset", 0) or 0)
        need = tensor_nbytes(t)
        length = int(info.get("length", need) or need)
        if length != need or offset + length > sizes[target]:
            raise ModelError(f"{path}: external data cannot be read (tensor '{t.name}' needs bytes "
                             f"{offset}..{offset + need} of '{info['location']}', which has {sizes[target]})")
        _set_external(t, str(target), offset, length)


def _set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def is_lazy(t: onnx.TensorProto) -> bool:
    """An initializer left on disk by `load_model` (or spilled by the rewrite): EXTERNAL, absolute location."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return False
    loc = next((e.value for e in t.external_data if e.key == "location"), "")
    return os.path.isabs(loc)


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in model.graph.initializer)


_SUB_BYTE = {getattr(onnx.TensorProto, k): b for k, b in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4),
                                                           ("INT2", 2), ("UINT2", 2)) if hasattr(onnx.TensorProto, k)}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data from its dims and type (no data is read or serialized)."""
    n = 1
    for d in t.dims:
        n *= d
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return len(t.raw_data) if t.HasField("raw_data") else sum(len(s) for s in t.string_data)
    bits = _SUB_BYTE.get(t.data_type)
    if bits is None:
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return (n * bits + 7) // 8


def model_nbytes(model: onnx.ModelProto) -> int:
    """Size of a model with its weights (initializers by dims and type, nodes by their serialized size),
    without serializing the weights: `ModelProto.ByteSize()` copies every byte of a large model."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer) + sum(n.ByteSize() for n in model.graph.node)


def tensor_array(t: onnx.TensorProto):
    """The value of an initializer; lazy ones come back as read-only memory maps (nothing is read yet)."""
    if not is_lazy(t):
        return numpy_helper.to_array(t)
    info = _external_info(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    shape = tuple(t.dims)
    if tensor_nbytes(t) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0) or 0), shape=shape)


def light_copy(model: onnx.ModelProto, min_bytes: int | None = None) -> onnx.ModelProto:
    """A copy in which lazy initializers (and, with `min_bytes`, in-memory ones with at least that many bytes
    of raw data) are typed graph inputs: for the checker and shape inference, which would otherwise look
    for lazy data relative to the working directory, and serialize every weight to check its dims.
    Returns the model itself when there is nothing to take out."""
    def light(t):
        return is_lazy(t) or (min_bytes is not None and t.data_location != onnx.TensorProto.EXTERNAL
                              and t.HasField("raw_data") and tensor_nbytes(t) >= min_bytes)

    out_names = [t.name for t in model.graph.initializer if light(t)]
    if not out_names:
        return model
    out = _copy_without_initializers(model)
    inputs = {i.name for i in out.graph.input}
    for t in model.graph.initializer:
        if not light(t):
            out.graph.initializer.append(t)
        elif t.name not in inputs:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but graph.initializer (field by field: CopyFrom would copy every weight)."""
    out = onnx.ModelProto()
    for msg, dst in ((model, out), (model.graph, out.graph)):
        for f, value in msg.ListFields():
            if msg is model and f.name == "graph" or msg is model.graph and f.name == "initializer":
                continue
            if getattr(f, "is_repeated", None) or getattr(f, "label", None) == f.LABEL_REPEATED:
                getattr(dst, f.name).extend(value)
            elif f.type == f.TYPE_MESSAGE:
                getattr(dst, f.name).CopyFrom(value)
            else:
                setattr(dst, f.name, value)
    return out


_CHECK_INLINE_BYTES = 1 << 20  # weights this big are checked for size here, not serialized for the checker


def _check_raw_sizes(model: onnx.ModelProto, where: str) -> None:
    """What onnx.checker checks on a tensor's data, for the weights `light_copy` takes out of its sight."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or not t.HasField("raw_data"):
            continue
        need = tensor_nbytes(t)
        if need >= _CHECK_INLINE_BYTES and len(t.raw_data) < need:
            raise ModelError(f"{where}: invalid ONNX model (TensorProto (tensor name: {t.name}) raw_data size "
                             f"({len(t.raw_data)} bytes) is too small for the declared shape and type "
                             f"({need} bytes required).)")


_SPILL_DIR: list[str] = []  # this process's folder of spill files (removed at exit)


class SpillFile:
    """A temporary data file for the tensors a rewrite makes of lazy ones (slices, and copies of the lazy
    tensors it leaves alone, so that every weight of the pruned model lives in one folder that ONNX Runtime
    can memory-map). Files live in one folder per process, removed at exit."""

    def __init__(self):
        if not _SPILL_DIR:
            _SPILL_DIR.append(tempfile.mkdtemp(prefix="graphprune-spill-"))
            atexit.register(_drop_spill)
        fd, self.path = tempfile.mkstemp(prefix="spill-", suffix=".data", dir=_SPILL_DIR[0])
        self._f = os.fdopen(fd, "w+b")
        self._offset = 0

    def _start(self) -> int:
        self._offset += (-self._offset) % 4096  # page-aligned: ONNX Runtime maps aligned external data
        self._f.seek(self._offset)
        return self._offset

    def add(self, value, name: str, data_type: int) -> onnx.TensorProto:
        """A lazy tensor holding `value`."""
        value = np.ascontiguousarray(value)
        t = onnx.TensorProto()
        t.name = name
        t.data_type = data_type
        t.dims.extend(value.shape)
        start = self._start()
        self._f.write(memoryview(value.reshape(-1).view(np.uint8)))
        self._f.flush()
        _set_external(t, self.path, start, value.nbytes)
        self._offset = start + value.nbytes
        return t

    def add_raw(self, t: onnx.TensorProto) -> None:
        """Move an in-memory tensor's raw bytes into this file and point `t` at them."""
        data = t.raw_data
        start = self._start()
        self._f.write(data)
        self._f.flush()
        _set_external(t, self.path, start, len(data))
        self._offset = start + len(data)

    def add_copy(self, t: onnx.TensorProto) -> None:
        """Move a lazy tensor's bytes into this file (a kernel-side copy) and point `t` at them."""
        info = _external_info(t)
        n = tensor_nbytes(t)
        start = self._start()
        _copy_range(info["location"], int(info.get("offset", 0) or 0), n, self._f)
        self._f.flush()
        _set_external(t, self.path, start, n)
        self._offset = start + n

    def contains(self, t: onnx.TensorProto) -> bool:
        return is_lazy(t) and _external_info(t).get("location") == self.path


def _drop_spill() -> None:
    for folder in _SPILL_DIR:
        shutil.rmtree(folder, ignore_errors=True)
    _SPILL_DIR.clear()



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
    for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in vis:  # the checker says only "Field 'shape' of 'type' is required": name the tensor
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
                raise ModelError(f"{where}: graph {kind} '{vi.name}' has no shape (not even a rank); "
                                 "declare one, with symbolic dims where they vary")
    checked = light_copy(model, min_bytes=_CHECK_INLINE_BYTES)
    if checked is not model:
        _check_raw_sizes(model, where)
    try:
        onnx.checker.check_model(checked)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{where}: invalid ONNX model ({first_line(exc)})") from None


def write_text_atomic(path, text: str) -> None:
    """A report, plan or HTML page, written like a model: a temporary file in the target folder, then a
    rename, so an interrupted write leaves the previous file (or none), never half of one."""
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.exists():
            tmp.unlink()
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix
            raise GraphpruneError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
        raise


def save_model(model: onnx.ModelProto, path, overwrite_input: str | None = None) -> None:
    """Write atomically: a temporary file in the target folder, then rename."""
    path = Path(os.fspath(path))
    if overwrite_input is not None and path.resolve() == Path(overwrite_input).resolve():
        raise UsageError(f"{path}: output would overwrite the input (pass --overwrite to allow it)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise UsageError(f"{folder}: output folder does not exist")
    lazy = has_lazy(model)  # loaded with (large) external data: written back with external data
    large = lazy or model_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise GraphpruneError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
    os.close(fd)
    _chmod_default(tmp)  # mkstemp makes 0600; the output should get the permissions of a normal file
    data_name = path.name + ".data"
    tmp_data = folder / f".{data_name}.tmp"
    try:
        if large:
            _save_external(model, tmp, tmp_data, data_name)
            os.replace(tmp_data, folder / data_name)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, tmp_data) if large else (tmp,):
            if os.path.exists(leftover):
                os.unlink(leftover)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not an internal error
            raise GraphpruneError(f"{path}: cannot write ({exc.strerror or first_line(exc)})") from None
        raise


def _save_external(model: onnx.ModelProto, tmp: str, tmp_data: Path, data_name: str) -> None:
    """Every initializer of 1 KiB or more into one data file, streamed: lazy tensors are copied file to
    file (never through memory), in-memory ones written from their raw bytes. The model is not modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)  # cheap when the weights are lazy; in-memory weights are copied once
    offset = 0
    with open(tmp_data, "wb") as f:
        for t in out.graph.initializer:
            n = tensor_nbytes(t)
            if n < 1024 and not is_lazy(t):
                continue
            pad = (-offset) % (4096 if n >= 1 << 20 else 64)  # page-aligned big tensors can be memory-mapped
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            if is_lazy(t):
                info = _external_info(t)
                _copy_range(info["location"], int(info.get("offset", 0) or 0), n, f)
            else:
                if t.HasField("raw_data"):
                    f.write(t.raw_data)
                else:
                    f.write(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes())
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            _set_external(t, data_name, offset, n)
            offset += n
    with open(tmp, "wb") as f:
        f.write(out.SerializeToString())


def _copy_range(src: str, offset: int, length: int, dst) -> None:
    dst.flush()
    with open(src, "rb") as s:
        done = 0
        try:
            while done < length:
                k = os.copy_file_range(s.fileno(), dst.fileno(), length - done, offset + done)
                if k <= 0:
                    raise OSError("copy_file_range made no progress")
                done += k
        except (AttributeError, OSError):
            s.seek(offset + done)
            dst.seek(0, os.SEEK_END)
            while done < length:
                chunk = s.read(min(64 << 20, length - done))
                if not chunk:
                    raise OSError(f"{src}: external data ends early")
                dst.write(chunk)
                done += len(chunk)
    dst.seek(0, os.SEEK_END)


def _chmod_default(path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass
