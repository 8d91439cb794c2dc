"""ONNX Runtime helpers: sessions from in-memory models and synthetic inputs for dynamic shapes."""

from __future__ import annotations

import os

import numpy as np
import onnx

DEFAULT_DYNAMIC_DIM = 1


def session(model: onnx.ModelProto, threads: int = 0, arena: bool = True):
    """An ONNX Runtime CPU session on an in-memory model (of any size). Lazy (memory-mapped) weights are
    mapped by ORT itself from their folder, with weight prepacking off so that it keeps no second copy."""
    import onnxruntime as ort

    from onnx import numpy_helper

    from .io import _copy_without_initializers, is_lazy, tensor_array, tensor_nbytes

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
    from .io import tensor_nbytes

    p = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=onnx.TensorProto.EXTERNAL)
    for k, v in (("location", "graphprune-in-memory"), ("offset", "0"), ("length", str(tensor_nbytes(t)))):
        p.external_data.add(key=k, value=v)
    return p


def _location(t: onnx.TensorProto) -> str:
    return next(e.value for e in t.external_data if e.key == "location")


def synthetic_inputs(model: onnx.ModelProto, input_shapes: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every graph input at concrete shapes (`input_shapes` first, then probed sizes)."""
    from .inputs import probe_input_shapes

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
