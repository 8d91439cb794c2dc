"""ONNX Runtime helpers: sessions from in-memory models, model copies with extra outputs, and concrete
input shapes and synthetic inputs for dynamic models.

Dynamic batch becomes 1; other dynamic dims take the smallest of a few odd sizes at which the original
model actually runs in ONNX Runtime (a speech encoder's waveform needs thousands of samples, a text model
is happy with 7 tokens). The user's `--input-shape` always wins.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, UsageError
from .io import _copy_without_initializers, is_lazy, model_nbytes, tensor_array, tensor_nbytes

DEFAULT_DYNAMIC_DIM = 1


# Sessions this process created and the seconds it took: the pipeline reports them per stage (ONNX Runtime's
# session start-up is a large part of the time of big models; benchmarks/scale.py reads it from the report).
SESSION_COUNTS = {"sessions": 0, "session_s": 0.0}


def session(model: onnx.ModelProto, threads: int = 0, arena: bool = True):
    """An ONNX Runtime CPU session on an in-memory model (of any size). Lazy (memory-mapped) weights are
    mapped by ORT itself from their folder, with weight prepacking off so that it keeps no second copy."""
    t0 = time.perf_counter()
    try:
        return _session(model, threads, arena)
    finally:
        SESSION_COUNTS["sessions"] += 1
        SESSION_COUNTS["session_s"] += time.perf_counter() - t0


def _session(model: onnx.ModelProto, threads: int, arena: bool):
    import onnxruntime as ort  # imported here: `graphprune --help` and `--version` never load it

    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures raise; ORT's own error log would be a second stderr line
    if threads:
        so.intra_op_num_threads = threads
    if not arena:  # temporaries go back to the system at once instead of growing a cached arena
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    lazy = [t for t in model.graph.initializer if is_lazy(t)]
    folders = {os.path.dirname(_location(t)) for t in lazy}
    mapped = len(folders) == 1
    if sum(tensor_nbytes(t) for t in lazy) >= 1 << 28:
        so.add_session_config_entry("session.disable_prepacking", "1")  # prepacking copies every weight
    if mapped:
        # One folder: ORT memory-maps the (page-aligned) data files itself, nothing is copied.
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", next(iter(folders)))
    # In-memory weights (and lazy ones from several folders) are handed over as arrays: ORT copies them
    # either way, but this skips serializing and parsing every weight (half of a session's setup time).
    light = _copy_without_initializers(model)
    names, values = [], []
    for t in model.graph.initializer:
        if is_lazy(t) and not mapped:
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(tensor_array(t)))
            light.graph.initializer.append(_placeholder(t))
        elif is_lazy(t):
            light.graph.initializer.append(t)
            for e in light.graph.initializer[-1].external_data:
                if e.key == "location":
                    e.value = os.path.basename(e.value)
        elif (t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data")
              and tensor_nbytes(t) >= 1 << 16):
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t)))
            light.graph.initializer.append(_placeholder(t))
        else:
            light.graph.initializer.append(t)
    if names:
        so.add_external_initializers(names, values)
    model = light
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess._graphprune_external = values  # ORT reads these buffers (memory maps) for the session's lifetime
    return sess


def _placeholder(t: onnx.TensorProto) -> onnx.TensorProto:
    """What ORT needs in the graph for an initializer given with add_external_initializers: its name, type
    and dims, marked external (the location is never read)."""
    p = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=onnx.TensorProto.EXTERNAL)
    for k, v in (("location", "graphprune-in-memory"), ("offset", "0"), ("length", str(tensor_nbytes(t)))):
        p.external_data.add(key=k, value=v)
    return p


def _location(t: onnx.TensorProto) -> str:
    return next(e.value for e in t.external_data if e.key == "location")


def synthetic_inputs(model: onnx.ModelProto, input_shapes: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every graph input at concrete shapes (`input_shapes` first, then probed sizes)."""
    return random_feeds(model, probe_input_shapes(model, input_shapes or {}), seed)


def random_feeds(model: onnx.ModelProto, shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds at the given concrete shapes (normal floats, 0/1 integers, True booleans)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if vi.name in shapes:
            shape = list(shapes[vi.name])
        else:
            shape = [d.dim_value if d.HasField("dim_value") else DEFAULT_DYNAMIC_DIM for d in tt.shape.dim]
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(np_dtype, np.floating) or str(np_dtype) == "bfloat16":
            feeds[vi.name] = rng.standard_normal(shape).astype(np_dtype)
        elif np_dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype=np.bool_)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np_dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def with_outputs(model: onnx.ModelProto, tensors) -> onnx.ModelProto:
    """A copy of `model` that also returns the given intermediate tensors (after its own outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=t))
    return out


# ---- concrete input shapes ----------------------------------------------------------------------------
DYNAMIC_BATCH = 1
DYNAMIC_OTHER = 7  # prime, so it does not factor into channel counts by accident


def concrete_input_shapes(model: onnx.ModelProto, given: dict, other: int = 0) -> dict[str, list[int]]:
    """Concrete dims for every graph input: `given` first, then the model's static dims; a dynamic
    dim becomes 1 on axis 0 (batch) and 7 elsewhere, the same value for the same symbolic name.
    Analysis runs on these, so every channel axis has a static size; the output keeps its dynamic dims."""
    inits = {t.name for t in model.graph.initializer}
    by_name: dict[str, int] = {}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        if vi.name in given:
            dims = [int(d) for d in given[vi.name]]
            for d, proto in zip(dims, vi.type.tensor_type.shape.dim):
                if proto.dim_param:
                    by_name.setdefault(proto.dim_param, d)
            out[vi.name] = dims
    for vi in model.graph.input:
        if vi.name in inits or vi.name in out or not vi.type.HasField("tensor_type"):
            continue
        if not vi.type.tensor_type.HasField("shape"):
            continue
        dims = []
        for ax, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif d.dim_param and d.dim_param in by_name:
                dims.append(by_name[d.dim_param])
            else:
                v = DYNAMIC_BATCH if ax == 0 else (other or DYNAMIC_OTHER)
                if d.dim_param:
                    by_name[d.dim_param] = v
                dims.append(v)
        out[vi.name] = dims
    return out


CANDIDATES = (7, 61, 509, 4093, 16007)
MAX_PROBE_ELEMENTS = 1 << 24  # per probe, all inputs together


def _elements(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n
_MEMO: dict[tuple[int, int], dict] = {}


def _has_free_dims(model: onnx.ModelProto, given: dict) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or vi.name in given or not vi.type.HasField("tensor_type"):
            continue
        for ax, d in enumerate(vi.type.tensor_type.shape.dim):
            if ax > 0 and not (d.HasField("dim_value") and d.dim_value > 0):
                return True
    return False


def probe_input_shapes(model: onnx.ModelProto, given: dict | None = None) -> dict[str, list[int]]:
    given = dict(given or {})
    if not _has_free_dims(model, given):
        return concrete_input_shapes(model, given)
    key = (id(model), len(model.graph.node))
    if not given and key in _MEMO:
        return _MEMO[key]
    shapes = concrete_input_shapes(model, given)
    try:
        # ByteSize() would serialize every weight; lazy (external) weights run fine, unless the model is huge
        too_big = model_nbytes(model) > (1 << 31) - (1 << 26)
    except Exception:  # noqa: BLE001 - over protobuf's limit
        too_big = True
    if not too_big:
        try:
            sess = session(model)
        except Exception:  # noqa: BLE001 - validation reports it; keep the defaults
            sess = None
        if sess is not None:
            for other in CANDIDATES:
                cand = concrete_input_shapes(model, given, other=other)
                if sum(_elements(d) for d in cand.values()) > MAX_PROBE_ELEMENTS:
                    break  # an input with several free dims: 509**3 floats is already 0.5 GB
                try:
                    sess.run(None, random_feeds(model, cand))
                except Exception:  # noqa: BLE001 - too small for this model: try the next size
                    continue
                shapes = cand
                break
    if not given:
        _MEMO[key] = shapes
    return shapes


# ---- what ONNX Runtime can run ---------------------------------------------------------------------------
def check_input_shapes(m: onnx.ModelProto, input_shapes: dict) -> None:
    """--input-shape fixes dynamic dims; a name, rank or static dim the model contradicts is a usage error
    (otherwise it surfaces later as a confusing "pruned model fails in ONNX Runtime")."""
    inits = {t.name for t in m.graph.initializer}
    inputs = {vi.name: vi for vi in m.graph.input if vi.name not in inits}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names '{name}', which is not a graph input "
                             f"(inputs: {', '.join(inputs) or 'none'})")
        tt = inputs[name].type.tensor_type
        if not tt.HasField("shape"):
            continue
        have = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(have) != len(dims):
            raise UsageError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(have)}")
        for axis, (h, d) in enumerate(zip(have, dims)):
            if h is not None and h > 0 and h != d:  # -1 or 0: unknown (Paddle exports write -1)
                raise UsageError(f"--input-shape {name}: dim {axis} is fixed to {h} in the model, got {d}")


@functools.lru_cache(maxsize=1)
def runtime_support() -> tuple[int, frozenset | None]:
    """The newest ai.onnx opset ONNX Runtime loads, and the (domain, op) pairs it has CPU kernels for
    (None when this build does not list them)."""
    def loads(v: int) -> bool:
        vi = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [vi],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", v)])
        m.ir_version = 8
        try:
            session(m)
            return True
        except Exception:  # noqa: BLE001
            return False

    newest = onnx.defs.onnx_opset_version()
    while newest > 7 and not loads(newest):
        newest -= 1
    try:
        from onnxruntime.capi import _pybind_state

        kernels = frozenset((k.domain, k.op_name) for k in _pybind_state.get_all_opkernel_def())
    except Exception:  # noqa: BLE001 - a build without the listing: ORT itself will say it later
        kernels = None
    return newest, kernels


def check_runnable(m: onnx.ModelProto, where: str) -> None:
    """Validation runs the model in ONNX Runtime: refuse up front, naming the opset or the node, what it
    cannot run (instead of a long runtime message about the pruned model after all the work)."""
    import onnxruntime as ort

    newest, kernels = runtime_support()
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 7:
            raise ModelError(f"{where}: opset {o.version} is older than ONNX Runtime runs (7 and newer), and "
                             "validation needs it; convert the model with onnx.version_converter")
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise ModelError(f"{where}: opset {o.version} is newer than ONNX Runtime {ort.__version__} runs "
                             f"(up to {newest}), and validation needs it; convert the model to opset {newest} "
                             "with onnx.version_converter")
    if kernels is None:
        return
    local = {(f.domain, f.name) for f in m.functions}
    for i, n in enumerate(m.graph.node):
        key = (n.domain, n.op_type)
        if n.domain not in ("", "ai.onnx") and key not in kernels and key not in local:
            name = n.name or f"{n.op_type}_{i}"
            raise ModelError(f"{where}: node '{name}' uses op {n.domain}::{n.op_type}, which ONNX Runtime "
                             f"{ort.__version__} cannot run, and validation needs it")
