"""A read-mostly index over an ONNX graph: producers, consumers, constants, shapes.

We index the ModelProto directly instead of converting it to another IR so that the rewrite can edit
weights in place (dtype-exact, bf16 and external data included) and everything it does not touch
survives byte for byte.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .io import has_lazy, model_nbytes, tensor_array
from .runtime import probe_input_shapes, session, synthetic_inputs, with_outputs
from .shape_values import ConstEntry, DimEntry, OtherEntry, shape_entries

# Ops whose output is a constant when all inputs are constants, and that numpy evaluates cheaply.
# Used to see weights through Transpose/Cast/Identity/DequantizeLinear and to read shape subgraphs.
_FOLDABLE = {
    "Identity", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Concat", "DequantizeLinear",
    "Gather", "Mul", "Add", "Sub", "Div", "Neg", "Slice", "Flatten", "Shape",
}


# Ops never folded: random, stateful, or whose output size is unbounded by their inputs.
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan", "SequenceConstruct", "SequenceAt", "SequenceInsert",
               "SplitToSequence", "ConcatFromSequence", "Dropout"}


def _eval_reference(node: onnx.NodeProto, ins: list, opset: int) -> np.ndarray | None:
    """Evaluate one node on small constant inputs with ONNX's reference implementation."""
    try:
        from onnx.reference import ReferenceEvaluator

        names = [f"in{k}" if t else "" for k, t in enumerate(node.input)]
        n = onnx.NodeProto()
        n.CopyFrom(node)
        del n.input[:]
        n.input.extend(names)
        del n.output[:]
        n.output.append("out")
        inputs = [onnx.helper.make_tensor_value_info(nm, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                  for nm, v in zip(names, ins) if nm]
        g = onnx.helper.make_graph([n], "fold", inputs, [onnx.helper.make_empty_tensor_value_info("out")])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", max(opset, 7))])
        feeds = {nm: v for nm, v in zip(names, ins) if nm}
        import warnings

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = ReferenceEvaluator(m).run(None, feeds)[0]
        out = np.asarray(out)
        return out if out.size <= 1 << 16 else None
    except Exception:  # noqa: BLE001 - not foldable
        return None


# Ops a weight may pass through between where it is stored and the layer that reads it (exporters put
# Transpose/Reshape/Cast between a stored weight and its MatMul/Conv; QDQ models put DequantizeLinear).
_WEIGHT_PATH = {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "DequantizeLinear"}


@dataclass
class StoredWeight:
    """Where the weight a layer reads as `tensor` is stored: an initializer or a Constant node (`constant_node`),
    and the ops it passes through on the way (`path`, stored end first). The one place that knows where
    weights live: calibration, scoring, compensation and the counters all read weights through it."""

    tensor: str
    stored: str
    constant_node: onnx.NodeProto | None
    path: tuple[onnx.NodeProto, ...]
    initializer: onnx.TensorProto | None = None

    @property
    def quantized(self) -> bool:
        return any(n.op_type == "DequantizeLinear" for n in self.path)

    def stored_array(self) -> np.ndarray:
        if self.initializer is not None:
            return np.asarray(tensor_array(self.initializer))  # lazy (memory-mapped) weights too
        return GraphView.const_value_of_constant_node(self.constant_node)

    def stored_dtype(self) -> int:
        if self.initializer is not None:
            return self.initializer.data_type
        for a in self.constant_node.attribute:
            if a.name == "value":
                return a.t.data_type
        return onnx.TensorProto.FLOAT if any(a.name.startswith("value_float") for a in self.constant_node.attribute) \
            else onnx.TensorProto.INT64

    def values(self, const: Callable[[str], np.ndarray | None]) -> list[np.ndarray]:
        """The value at each step, stored first, the layer's view last (`const` reads the side inputs:
        shapes, axes, scales)."""
        v = self.stored_array()
        out = [v]
        for node in self.path:
            ins = [v] + [const(t) if t else None for t in node.input[1:]]
            v = _eval_simple(node, ins)
            out.append(v)
        return out

    def invert(self, value: np.ndarray, steps: list[np.ndarray]) -> np.ndarray:
        """The stored tensor that gives `value` where the layer reads it (`steps` from `values`); the path
        must hold no DequantizeLinear (see `quantized`)."""
        v = np.asarray(value)
        for node, before in zip(reversed(self.path), reversed(steps[:-1])):
            if node.op_type == "Transpose":
                perm = _attr(node, "perm", None)
                v = np.transpose(v, np.argsort(perm) if perm is not None else None)
            elif node.op_type != "Identity" and node.op_type != "Cast":
                v = v.reshape(before.shape)
        return v.astype(onnx.helper.tensor_dtype_to_np_dtype(self.stored_dtype()))

    def write(self, stored_value: np.ndarray) -> None:
        """Replace the stored bytes (same name, same dtype) with `stored_value` (from `invert`)."""
        t = numpy_helper.from_array(np.ascontiguousarray(stored_value), self.stored)
        if self.initializer is not None:
            self.initializer.CopyFrom(t)
            return
        for a in list(self.constant_node.attribute):
            self.constant_node.attribute.remove(a)
        self.constant_node.attribute.append(onnx.helper.make_attribute("value", t))


def find_weight(tensor: str, producer: Callable[[str], onnx.NodeProto | None],
                initializers: dict[str, onnx.TensorProto]) -> StoredWeight | None:
    """The stored weight behind `tensor`, seen through the ops in _WEIGHT_PATH whose other inputs are
    stored constants; None when `tensor` is not such a weight (an activation, a computed value)."""
    path: list[onnx.NodeProto] = []
    name = tensor
    for _ in range(16):
        if name in initializers:
            return StoredWeight(tensor, name, None, tuple(reversed(path)), initializers[name])
        node = producer(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Constant":
            if GraphView.const_value_of_constant_node(node) is None:
                return None
            return StoredWeight(tensor, name, node, tuple(reversed(path)))
        if node.op_type not in _WEIGHT_PATH or not node.input:
            return None
        for side in node.input[1:]:
            p = producer(side) if side else None
            if side and side not in initializers and (p is None or p.op_type != "Constant"):
                return None
        path.append(node)
        name = node.input[0]
    return None


def node_display_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


class GraphView:
    """Index of the main graph of a model. Shapes come from ONNX shape inference run once here."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
        self.model = model
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.names = [node_display_name(n, i) for i, n in enumerate(self.nodes)]
        self.index_of = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, node in enumerate(self.nodes):
            for o in node.output:
                if o:
                    self.producer[o] = i
            for k, t in enumerate(node.input):
                if t:
                    self.consumers.setdefault(t, []).append((i, k))
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.input_names = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.output_names = [o.name for o in self.graph.output]
        self.subgraph_captures = self._subgraph_captures()
        self._const_cache: dict[str, np.ndarray | None] = {}
        self._weight_inits: dict[str, onnx.TensorProto] | None = None
        self.input_shapes = probe_input_shapes(model, input_shapes or {})
        self._infer_shapes(self.input_shapes)

    # ---- shapes -------------------------------------------------------------------------------------
    def _infer_shapes(self, input_shapes):
        """ONNX shape inference on a light copy (big weights become typed inputs), repeated after folding
        shape arithmetic (Shape -> Gather -> Add/Div ...) that ONNX's data propagation does not follow."""
        self._shapes, self._dtypes = {}, {}
        for name, t in self.initializers.items():
            self._shapes[name] = list(t.dims)
            self._dtypes[name] = t.data_type
        light = _light_model(self.model, input_shapes)
        folded: set[str] = set()
        self._sym: dict[str, list] = {}
        for _ in range(6):
            self._read_inferred(_infer(light))
            self._const_cache = {}
            new = self._foldable_unknowns(folded)
            hints = self._reshape_hints()
            if not new and not hints:
                break
            _replace_with_constants(light, {t: self.const_value(t) for t in new})
            folded |= new
            for name, dims in hints.items():
                light.graph.value_info.append(
                    onnx.helper.make_tensor_value_info(name, self._dtypes.get(name, 1), dims))
        self._runtime_shapes(input_shapes)
        for node in self.nodes:
            if node.op_type == "Constant" and node.output[0] not in self._shapes:
                v = self.const_value_of_constant_node(node)
                if v is not None:
                    self._shapes[node.output[0]] = list(v.shape)
        self._const_cache = {}
        return self._shapes, self._dtypes

    def _runtime_shapes(self, input_shapes) -> None:
        """Shapes ONNX inference could not give (contrib ops, custom domains ORT knows): run the model once
        in ONNX Runtime on synthetic inputs at the concrete input shapes and read them off."""
        missing = [o for n in self.nodes for o in n.output
                   if o and (self._shapes.get(o) is None or None in self._shapes[o])]
        if not missing:
            return
        if has_lazy(self.model) or model_nbytes(self.model) > (1 << 31) - (1 << 26):
            return  # a billion-parameter run to learn a few shapes: not worth its time and memory
        try:
            sess = session(with_outputs(self.model, missing))
            names = [o.name for o in sess.get_outputs()]
            values = sess.run(names, synthetic_inputs(self.model, input_shapes))
        except Exception:  # noqa: BLE001 - best effort: what stays unknown is frozen by the rules
            return
        for name, v in zip(names, values):
            if name in missing and hasattr(v, "shape"):
                self._shapes[name] = list(v.shape)
                self._dtypes.setdefault(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype))

    def _read_inferred(self, inferred) -> None:
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            self._dtypes.setdefault(vi.name, tt.elem_type)
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                old = self._shapes.get(vi.name)
                if old is None or sum(d is None for d in dims) < sum(d is None for d in old):
                    self._shapes[vi.name] = dims
                    self._sym[vi.name] = [d.dim_value if d.HasField("dim_value") else
                                          (d.dim_param or None) for d in tt.shape.dim]

    def _reshape_hints(self) -> dict[str, list]:
        """Output dims of Reshapes that ONNX inference left unknown, solved symbolically: a -1 entry is
        the input's size over the other entries, with symbolic batch/sequence dims cancelling."""
        hints = {}
        for i, node in enumerate(self.nodes):
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            out = node.output[0]
            cur = self._shapes.get(out)
            if cur is not None and None not in cur:
                continue
            xin = self._sym.get(node.input[0])
            entries = shape_entries(self, node.input[1], i, 1)
            if xin is None or entries is None:
                continue
            allowzero = self.attr(node, "allowzero", 0)
            dims = []
            for k, e in enumerate(entries):
                if isinstance(e, (ConstEntry, OtherEntry)) and e.value is not None:
                    v = e.value
                    dims.append(xin[k] if v == 0 and not allowzero and k < len(xin) else v)
                elif isinstance(e, DimEntry):
                    s = self._sym.get(e.tensor)
                    dims.append(s[e.axis] if s is not None and e.axis < len(s) else None)
                else:
                    dims.append(None)
            if dims.count(-1) == 1:
                solved = _solve_minus_one(xin, [d for d in dims if d != -1])
                dims = [solved if d == -1 else d for d in dims]
            if -1 in dims:
                continue
            known_new = sum(isinstance(d, int) for d in dims)
            known_cur = sum(isinstance(d, int) for d in (self._sym.get(out) or []))
            if known_new > known_cur:
                hints[out] = dims
        return hints

    def _foldable_unknowns(self, done: set[str]) -> set[str]:
        """Small integer tensors computable from constants and static shapes, feeding a node whose
        output shape is still unknown or partial."""
        out = set()
        for node in self.nodes:
            if node.op_type == "Constant":
                continue
            if all(self._shapes.get(o) is not None and None not in self._shapes[o] for o in node.output if o):
                continue
            for t in node.input:
                if not t or t in done or t in self.initializers:
                    continue
                p = self.producer.get(t)
                if p is None or self.nodes[p].op_type == "Constant":
                    continue
                v = self.const_value(t)
                if v is not None and v.size <= 64 and np.issubdtype(v.dtype, np.integer):
                    out.add(t)
        return out

    def shape(self, name: str) -> list | None:
        """Dims of a tensor (int or None for dynamic), or None when even the rank is unknown."""
        return self._shapes.get(name)

    def dtype(self, name: str) -> int | None:
        return self._dtypes.get(name)

    # ---- constants ----------------------------------------------------------------------------------
    @staticmethod
    def const_value_of_constant_node(node: onnx.NodeProto) -> np.ndarray | None:
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name == "value_float":
                return np.array(a.f, dtype=np.float32)
            if a.name == "value_floats":
                return np.array(list(a.floats), dtype=np.float32)
            if a.name == "value_int":
                return np.array(a.i, dtype=np.int64)
            if a.name == "value_ints":
                return np.array(list(a.ints), dtype=np.int64)
        return None

    def weight(self, name: str) -> StoredWeight | None:
        """Where the weight read as `name` is stored (StoredWeight), or None when it is not a stored weight."""
        def producer(t):
            p = self.producer.get(t)
            return None if p is None else self.nodes[p]
        if self._weight_inits is None:
            self._weight_inits = {k: v for k, v in self.initializers.items() if k not in self.input_names}
        return find_weight(name, producer, self._weight_inits)

    def is_stored_constant(self, name: str) -> bool:
        """True for initializers and Constant-node outputs: tensors whose bytes the rewrite can slice."""
        if name in self.initializers:
            return name not in self.input_names
        p = self.producer.get(name)
        return p is not None and self.nodes[p].op_type == "Constant"

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:  # without reading (or copying) the weight
            return name not in self.input_names
        return self.const_value(name) is not None

    def const_value(self, name: str) -> np.ndarray | None:
        """Value of a tensor computable from constants alone (weights seen through Transpose/Cast/...)."""
        if name in self._const_cache:
            return self._const_cache[name]
        self._const_cache[name] = None  # guards against cycles
        value = self._compute_const(name)
        if isinstance(value, np.memmap) and name in self.initializers:
            # A lazy weight: mapping it again is cheap, and not keeping the map lets the pages a reader
            # touched leave resident memory when it is done (a billion-parameter model is read once).
            del self._const_cache[name]
        else:
            self._const_cache[name] = value
        return value

    def _compute_const(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            if name in self.input_names:
                return None
            return tensor_array(self.initializers[name])  # lazy (external) weights: a read-only memory map
        p = self.producer.get(name)
        if p is None:
            return None
        node = self.nodes[p]
        if node.op_type == "Constant":
            return self.const_value_of_constant_node(node)
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
            return None
        if node.op_type == "Shape":
            shp = self.shape(node.input[0])
            if shp is None or any(d is None for d in shp):
                return None
            start = _attr(node, "start", 0)
            end = _attr(node, "end", None)
            return np.array(shp[start:end], dtype=np.int64)
        ins = []
        for t in node.input:
            if not t:
                ins.append(None)
                continue
            v = self.const_value(t)
            if v is None:
                return None
            ins.append(v)
        if node.op_type in _FOLDABLE:
            try:
                return _eval_simple(node, ins)
            except Exception:  # noqa: BLE001 - fall through to the reference evaluator
                pass
        if sum(v.size for v in ins if v is not None) > _SMALL_CONSTANT or len(node.output) != 1:
            return None
        return _eval_reference(node, ins, self.opset())

    # ---- misc ---------------------------------------------------------------------------------------
    def _subgraph_captures(self) -> dict[str, str]:
        """Outer-scope tensors read inside If/Loop/Scan bodies, mapped to the node that captures them."""
        captured: dict[str, str] = {}
        for i, node in enumerate(self.nodes):
            for a in node.attribute:
                subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for sg in subs:
                    for name in _free_names(sg):
                        captured.setdefault(name, node_display_name(node, i))
        return captured

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        return _attr(node, name, default)

    def opset(self, domain: str = "") -> int:
        for o in self.model.opset_import:
            if o.domain in (domain, "ai.onnx" if domain == "" else domain):
                return o.version
        return 0


def _solve_minus_one(xin: list, others: list):
    """Size of a -1 Reshape entry from input dims and the other entries (ints or symbol names)."""
    if any(d is None for d in xin) or any(d is None for d in others):
        return None
    num = 1
    den = 1
    syms = Counter()
    for d in xin:
        if isinstance(d, str):
            syms[d] += 1
        else:
            num *= d
    for d in others:
        if isinstance(d, str):
            syms[d] -= 1
        else:
            den *= d
    if any(v != 0 for v in syms.values()) or den == 0 or num % den:
        return None
    return num // den


_SMALL_CONSTANT = 4096  # elements; larger initializers are given to shape inference as typed inputs


def _light_model(model: onnx.ModelProto, input_shapes: dict) -> onnx.ModelProto:
    """A copy for shape inference without the big weights (they become graph inputs with their types)."""
    light = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(light, f, getattr(model, f))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    init_names = set()
    for t in src.initializer:
        init_names.add(t.name)
        n = 1
        for d in t.dims:
            n *= d
        if n <= _SMALL_CONSTANT and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        else:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for vi in src.input:
        if vi.name in init_names:
            continue
        new = g.input.add()
        new.CopyFrom(vi)
        if vi.name in input_shapes:
            dims = new.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = int(d)
    return light


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort; rules freeze what has no shape
        return model


def _replace_with_constants(model: onnx.ModelProto, values: dict) -> None:
    """Turn the producers of the given tensors into Constant nodes (in the light copy only)."""
    for i, node in enumerate(model.graph.node):
        outs = [o for o in node.output if o]
        if outs and all(o in values for o in outs) and len(outs) == 1:
            const = onnx.helper.make_node("Constant", [], outs, name=node.name,
                                          value=numpy_helper.from_array(np.asarray(values[outs[0]]), outs[0]))
            model.graph.node[i].CopyFrom(const)


def _free_names(g: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        used.update(x for x in n.input if x)
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sg in subs:
                used |= _free_names(sg)
        defined.update(n.output)
    return used - defined


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _eval_simple(node: onnx.NodeProto, ins: list) -> np.ndarray:
    op = node.op_type
    x = ins[0]
    if op == "Identity":
        return x
    if op == "Transpose":
        perm = _attr(node, "perm", None)
        return np.transpose(x, perm)
    if op == "Cast":
        to = _attr(node, "to")
        with np.errstate(all="ignore"):
            return x.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if op == "Reshape":
        shape = [int(s) for s in ins[1]]
        allowzero = _attr(node, "allowzero", 0)
        if not allowzero:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":
        axis = _attr(node, "axis", 1)
        axis = axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op in ("Squeeze", "Unsqueeze"):
        axes = ins[1] if len(ins) > 1 and ins[1] is not None else _attr(node, "axes", None)
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))
        out = x
        rank = x.ndim + len(axes)
        for a in sorted(int(a) % rank for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Concat":
        return np.concatenate(ins, axis=_attr(node, "axis"))
    if op == "DequantizeLinear":
        scale = ins[1]
        zp = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros((), dtype=x.dtype)
        axis = _attr(node, "axis", 1)
        if scale.ndim == 1 and x.ndim > 0 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp.ndim == 1 else zp
        return ((x.astype(np.float32) - zp.astype(np.float32)) * scale).astype(scale.dtype)
    if op == "Gather":
        axis = _attr(node, "axis", 0)
        return np.take(x, ins[1], axis=axis)
    if op == "Slice":
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            sl[int(a)] = slice(int(s), int(e), int(st))
        return x[tuple(sl)]
    binary = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract}
    if op in binary:
        return binary[op](x, ins[1]).astype(x.dtype)
    if op == "Div":
        if np.issubdtype(x.dtype, np.integer):
            return (x // ins[1]).astype(x.dtype)
        return (x / ins[1]).astype(x.dtype)
    if op == "Neg":
        return -x
    raise NotImplementedError(op)
