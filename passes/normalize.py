"""Model clean-ups that make channel groups independent where the graph only pretends they are tied."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.core.io import is_lazy, tensor_array


def unshare_uniform_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give each consumer its own copy of a shared initializer whose values are all equal.

    Exporters deduplicate identical initializers (the TorchScript exporter does: every zero bias of a
    freshly initialised transformer becomes one tensor read through Identity nodes). Sharing then ties
    unrelated layers' channels together. Slicing a uniform tensor differently per consumer is always
    exact, so untying it loses nothing. Returns (model, copies made); the input is not modified.
    """
    consumers: dict[str, list[tuple[int, int]]] = {}
    for i, node in enumerate(model.graph.node):
        for k, t in enumerate(node.input):
            if t:
                consumers.setdefault(t, []).append((i, k))
    outputs = {o.name for o in model.graph.output}
    todo = []
    for t in model.graph.initializer:
        uses = consumers.get(t.name, [])
        if len(uses) < 2 or t.name in outputs:
            continue
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if size < 2 or size > 1 << 20 or (t.data_location == onnx.TensorProto.EXTERNAL and not is_lazy(t)):
            continue
        v = np.asarray(tensor_array(t))  # lazy (memory-mapped) weights are read too
        flat = v.reshape(-1)
        if not np.all(flat == flat[0]):
            continue
        todo.append((t, v, uses))
    if not todo:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {t.name for t in out.graph.initializer}
    made = 0
    for t, v, uses in todo:
        for n, (i, k) in enumerate(uses[1:], start=1):
            name = f"{t.name}__copy{n}"
            while name in names:
                name += "_"
            names.add(name)
            copy = numpy_helper.from_array(v, name)
            copy.data_type = t.data_type
            out.graph.initializer.append(copy)
            out.graph.node[i].input[k] = name
            made += 1
    return out, made
