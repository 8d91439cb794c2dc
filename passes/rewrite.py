"""Rewrite pass: execute a plan on a copy of the model.

Every stored constant (initializer or Constant node) whose axes lose channels is sliced once, in its own
dtype; then each node's rule updates attributes and shape constants (conv `group`, Reshape targets,
Split sizes, Slice bounds); finally recorded shapes of changed tensors are updated.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.analysis import registry
from graphprune.core.io import SpillFile, is_lazy


class RewriteContext:
    """What a rule's rewrite hook sees: old shapes/constants, new sizes, and editing helpers."""

    def __init__(self, state, index: int):
        self._s = state
        self.view = state.view
        self.index = index
        self.node = state.new_nodes[index]

    def attr(self, name, default=None):
        return self.view.attr(self.view.nodes[self.index], name, default)

    def old_shape(self, tensor):
        return self.view.shape(tensor)

    def const(self, tensor):
        return self.view.const_value(tensor)

    def kept(self, tensor, axis):
        """Kept indices of an axis, or None when the axis is unchanged."""
        return self._s.kept.get((tensor, axis))

    def new_dim(self, tensor, axis):
        k = self.kept(tensor, axis)
        if k is not None:
            return len(k)
        shp = self.old_shape(tensor)
        return shp[axis] if shp is not None else None

    def set_attr(self, name, value):
        for a in self.node.attribute:
            if a.name == name:
                self.node.attribute.remove(a)
                break
        self.node.attribute.append(onnx.helper.make_attribute(name, value))

    def remove_attr(self, name):
        for a in self.node.attribute:
            if a.name == name:
                self.node.attribute.remove(a)
                return

    def drop_input(self, k: int):
        """Omit optional input k (trailing omitted inputs are removed); what only fed it is removed too."""
        self.node.input[k] = ""
        while self.node.input and not self.node.input[-1]:
            self.node.input.pop()
        self._s.rewired = True

    def set_input_const(self, k: int, value: np.ndarray):
        name = self.node.input[k] if k < len(self.node.input) else ""
        self._s.set_const(name, self.index, k, value)

    def set_const(self, tensor, reader, reader_input, value):
        self._s.set_const(tensor, reader, reader_input, value)


class _State:
    def __init__(self, model, cut):
        self.view = cut.analysis.view
        self.model = model
        self.new_nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.kept: dict[tuple[str, int], np.ndarray] = cut.shrunk()
        self._counter = 0
        self.rewired = False
        self._spill = None

    def spill_file(self):
        if self._spill is None:
            self._spill = SpillFile()
        return self._spill

    def set_const(self, tensor, reader, reader_input, value):
        view = self.view
        old = view.const_value(tensor) if tensor else None
        if old is not None:
            value = np.asarray(value).astype(old.dtype)
        # A tensor an If/Loop/Scan body also reads has readers the consumer index does not list.
        single = (tensor and len(view.consumers.get(tensor, [])) == 1 and tensor not in view.output_names
                  and tensor not in view.subgraph_captures)
        if single and view.is_stored_constant(tensor):
            self.replace_value(tensor, value)
            return
        self._counter += 1
        base = tensor or f"{self.view.names[reader]}_input{reader_input}"
        name = f"{base}__graphprune{self._counter}"
        while name in self.inits:
            self._counter += 1
            name = f"{base}__graphprune{self._counter}"
        t = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(t)
        self.inits[name] = t
        node = self.new_nodes[reader]
        while len(node.input) <= reader_input:
            node.input.append("")
        node.input[reader_input] = name
        self.rewired = True

    def replace_value(self, tensor, value):
        if tensor in self.inits:
            t = self.inits[tensor]
            value = np.asarray(value)
            if is_lazy(t):  # a memory-mapped weight: its slice goes to the spill file, not into memory
                if value.dtype != onnx.helper.tensor_dtype_to_np_dtype(t.data_type):
                    raise ValueError(f"dtype of '{tensor}' would change")
                t.CopyFrom(self.spill_file().add(value, tensor, t.data_type))
                return
            new = numpy_helper.from_array(value, tensor)
            if new.data_type != t.data_type:
                raise ValueError(f"dtype of '{tensor}' would change")
            t.CopyFrom(new)
            return
        node = self.new_nodes[self.view.producer[tensor]]
        for a in node.attribute:
            if a.name == "value":
                a.t.CopyFrom(numpy_helper.from_array(np.asarray(value), a.t.name))
                return
        # value_float(s)/value_int(s): turn into a tensor attribute
        for a in list(node.attribute):
            node.attribute.remove(a)
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(np.asarray(value))))


def apply(model: onnx.ModelProto, cut) -> onnx.ModelProto:
    """Return a copy of `model` with the units of `cut` (an analysis.Cut) removed; the input is not modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    st = _State(out, cut)
    if not st.kept:
        return out
    view = cut.analysis.view
    # 1. slice stored constants along every shrunk axis
    by_tensor: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (tensor, axis), kept in st.kept.items():
        by_tensor.setdefault(tensor, []).append((axis, kept))
    for tensor, cuts in by_tensor.items():
        if not view.is_stored_constant(tensor):
            continue
        value = view.const_value(tensor)
        for axis, kept in cuts:
            value = np.take(value, kept, axis=axis)
        st.replace_value(tensor, np.ascontiguousarray(value))
    # 2. attributes and shape constants
    for i, node in enumerate(view.nodes):
        rule = registry.lookup(node.domain, node.op_type)
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(RewriteContext(st, i))
    if st.rewired:
        _remove_dead_nodes(out, view)
    if st._spill is not None:
        # The lazy weights left alone join the slices in the spill file: the pruned model's weights then
        # live in one folder, which ONNX Runtime memory-maps instead of copying (runtime.session).
        for t in out.graph.initializer:
            if is_lazy(t) and not st._spill.contains(t):
                st._spill.add_copy(t)
    # 3. recorded shapes
    for vi in list(out.graph.value_info) + list(out.graph.output) + list(out.graph.input):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        for ax, d in enumerate(dims):
            k = st.kept.get((vi.name, ax))
            if k is not None:
                d.Clear()
                d.dim_value = len(k)
    return out


def _remove_dead_nodes(model: onnx.ModelProto, view) -> None:
    """Drop nodes that only fed inputs we replaced by constants (e.g. a Shape->Gather->Div chain that
    computed a Slice bound). Nodes that were already unused in the original are left alone."""
    was_live = set()
    for i, node in enumerate(view.nodes):
        if any(o in view.consumers or o in view.output_names for o in node.output if o):
            was_live.add(i)
    g = model.graph
    graph_outputs = {o.name for o in g.output} | set(view.subgraph_captures)  # subgraph bodies read these too
    alive = list(range(len(g.node)))
    while True:
        used = {t for i in alive for t in g.node[i].input} | graph_outputs
        dead = [i for i in alive if i in was_live and not any(o in used for o in g.node[i].output if o)]
        if not dead:
            break
        dead_set = set(dead)
        alive = [i for i in alive if i not in dead_set]
    if len(alive) == len(g.node):
        return
    keep = [g.node[i] for i in alive]
    kept_copy = [onnx.NodeProto() for _ in keep]
    for dst, src in zip(kept_copy, keep):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(kept_copy)
    used = {t for n in g.node for t in n.input}
    dead_inits = [t for t in g.initializer if t.name not in used and t.name.count("__graphprune")]
    for t in dead_inits:
        g.initializer.remove(t)
