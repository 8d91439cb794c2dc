"""onnx-graphsurgeon interop: prune an `onnx_graphsurgeon.Graph` (NVIDIA/TensorRT pipelines) and hand one back.

The conversions are onnx-graphsurgeon's own `import_onnx` / `export_onnx`; what this adds is the promise
that no weight changes dtype on the way. onnx-graphsurgeon warns that bf16 values are cast to float32 when
read; with onnx-graphsurgeon 0.6.1, onnx 1.23 and ml_dtypes that no longer happens (unread weights are
passed through as their original TensorProto, read ones become ml_dtypes.bfloat16 arrays), but other
versions differ, so every weight's dtype is checked and a conversion that would change one is refused
with a ModelError naming the tensor. The model's opset imports and IR version come through unchanged.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx

from .errors import ModelError, UsageError, first_line

_HALF = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def is_graphsurgeon_graph(obj) -> bool:
    """An onnx_graphsurgeon.Graph, recognised without importing onnx_graphsurgeon."""
    return any(c.__name__ == "Graph" and c.__module__.startswith("onnx_graphsurgeon") for c in type(obj).__mro__)


def from_graphsurgeon(graph) -> onnx.ModelProto:
    """The ONNX model of an onnx-graphsurgeon Graph (its `export_onnx`), every weight in its own dtype."""
    if not is_graphsurgeon_graph(graph):
        raise UsageError(f"expected an onnx_graphsurgeon.Graph, not {type(graph).__name__}")
    gs = _graphsurgeon()
    try:
        with _quiet(gs):
            model = gs.export_onnx(graph)
    except Exception as exc:  # noqa: BLE001 - onnx-graphsurgeon raises its own and onnx's errors
        raise ModelError(f"onnx-graphsurgeon cannot export the graph: {first_line(exc)}") from None
    if graph.ir_version is None:  # built by hand, not imported: the oldest IR that has its opsets
        model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    exported = _model_constants(model)
    for name, const in _graph_constants(gs, graph):
        want, got = _gs_dtype(const), exported.get(name)
        if want is not None and got is not None and want != got.data_type:
            raise ModelError(f"onnx-graphsurgeon {_version(gs)} exports tensor '{name}' ({_dtype_name(want)}) "
                             f"as {_dtype_name(got.data_type)}: its values would not be kept exactly")
    return model


def to_graphsurgeon(model: onnx.ModelProto, copy: bool = True):
    """An onnx-graphsurgeon Graph of `model` (its `import_onnx`), every weight in its own dtype.

    The graph is made from a copy of the model: onnx-graphsurgeon keeps unread weights as the model's own
    TensorProtos and writes names into them on export. `copy=False` spares the memory for a large model.
    """
    if not isinstance(model, onnx.ModelProto):
        raise UsageError(f"to_graphsurgeon takes an onnx.ModelProto, not {type(model).__name__}")
    gs = _graphsurgeon()
    if copy:
        model = _copied(model)
    try:
        with _quiet(gs):
            graph = gs.import_onnx(model)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"onnx-graphsurgeon cannot import the model: {first_line(exc)}") from None
    imported = dict(_graph_constants(gs, graph))
    for name, t in _model_constants(model).items():
        const = imported.get(name)
        got = _gs_dtype(const) if const is not None else None
        if got is not None and got != t.data_type:
            raise ModelError(f"onnx-graphsurgeon {_version(gs)} imports tensor '{name}' ({_dtype_name(t.data_type)}) "
                             f"as {_dtype_name(got)}: its values would not be kept exactly")
        read = _np_to_onnx(_np_dtype_or_none(t.data_type)) if t.data_type in _HALF else t.data_type
        if read != t.data_type:  # reading .values (constant folding, edits) would cast it
            raise ModelError(f"tensor '{name}' ({_dtype_name(t.data_type)}): onnx {onnx.__version__} reads its "
                             f"values as {_dtype_name(read) if read else 'another dtype'}, so onnx-graphsurgeon "
                             "would not keep them exactly; upgrade onnx (ml_dtypes) or keep the ModelProto")
    return graph


# ---- helpers ----------------------------------------------------------------------------------------
def _graphsurgeon():
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        raise UsageError("onnx_graphsurgeon cannot be imported (pip install onnx-graphsurgeon)") from None
    return gs


@contextlib.contextmanager
def _quiet(gs):
    """onnx-graphsurgeon's warnings (a bf16 'will be cast' notice that no longer applies) stay off the
    user's terminal while graphprune converts; its errors still raise."""
    with gs.logger.G_LOGGER.suppress(gs.logger.G_LOGGER.ERROR):
        yield


def _copied(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _graph_constants(gs, graph):
    """(name, gs.Constant) of the main graph's weights: initializers, and Constant nodes by output name."""
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant):
            yield name, t
    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Constant" else None
        if isinstance(value, gs.Constant) and node.outputs:
            yield node.outputs[0].name, value


def _model_constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def _gs_dtype(const) -> int | None:
    """The ONNX dtype onnx-graphsurgeon will write for a Constant (None: one this onnx cannot name)."""
    d = const.export_dtype
    return int(d) if isinstance(d, (int, np.integer)) else _np_to_onnx(d)


def _np_to_onnx(d) -> int | None:
    if d is None:
        return None
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(d)))
    except (TypeError, KeyError, ValueError):
        return None


def _np_dtype_or_none(data_type: int):
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (TypeError, KeyError, ValueError):
        return None


def _dtype_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return str(data_type)


def _version(gs) -> str:
    return getattr(gs, "__version__", "")


__all__ = ["from_graphsurgeon", "is_graphsurgeon_graph", "to_graphsurgeon"]
