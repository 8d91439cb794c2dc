"""Concrete input shapes for dynamic models: analysis and validation run at these sizes.

Dynamic batch becomes 1; other dynamic dims take the smallest of a few odd sizes at which the original
model actually runs in ONNX Runtime (a speech encoder's waveform needs thousands of samples, a text model
is happy with 7 tokens). The user's `--input-shape` always wins.
"""

from __future__ import annotations

import onnx

from .graph import concrete_input_shapes
from .io import model_nbytes

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
        from .runtime import random_feeds, session

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
