"""ONNX Runtime helpers: sessions from in-memory models and synthetic inputs for dynamic shapes."""

from __future__ import annotations

import numpy as np
import onnx

DEFAULT_DYNAMIC_DIM = 1


def session(model: onnx.ModelProto, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    data = model.SerializeToString() if model.ByteSize() < 2**31 - 1 else None
    if data is None:
        raise ValueError("model over 2 GB must be run from a file")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


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
