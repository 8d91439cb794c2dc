"""The correctness oracle: the original model with removed channels masked out where they are consumed.

Removing a set of channels must give exactly the outputs of the original model in which those channels
can no longer reach anything. Every path a channel can leave its group by is a consumer (the input
axis of a conv/linear weight, or a contraction between activations), so multiplying each consumer's input
by a 0/1 mask on that axis builds the reference the pruned model is compared against.

`unit_mask_model` builds the same masks from a graph input instead of constants (one keep value per unit),
so one ONNX Runtime session evaluates any removal: the sensitivity pass measures many cuts with it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.analysis import registry


def masked_model(model: onnx.ModelProto, cut) -> onnx.ModelProto:
    """A copy of `model` in which every consumer of a unit of `cut` (an analysis.Cut) reads it as zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    analysis = cut.analysis
    view = analysis.view
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    done = set()
    for n, role in enumerate(analysis.roles):
        if role.kind != "consumer" or role.input_index < 0:
            continue
        sp = analysis.spaces.spaces[role.space]
        keep = cut.kept(sp)
        if keep.all() or (role.node, role.input_index, role.axis) in done:
            continue
        done.add((role.node, role.input_index, role.axis))  # a weight contracted on two axes gets two masks
        node = g.node[role.node]
        # Integer (quantized) weights cannot be multiplied by a mask; their rule gives the masked weight.
        rule = registry.lookup(node.domain, node.op_type)
        masker = rule.masked_weight if rule is not None else None
        value = masker(view, role.node, role.input_index, role.axis, keep) if masker else None
        if value is not None:
            name = f"__oracle_masked_{n}"
            g.initializer.append(numpy_helper.from_array(value, name))
            node.input[role.input_index] = name
            continue
        src = node.input[role.input_index]  # already masked on another axis, or the original tensor
        original = model.graph.node[role.node].input[role.input_index]
        shape = [1] * len(view.shape(original))
        shape[role.axis] = sp.size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(view.dtype(original) or onnx.TensorProto.FLOAT)
        mask_name = f"__oracle_mask_{n}"
        g.initializer.append(numpy_helper.from_array(keep.astype(dtype).reshape(shape), mask_name))
        masked = f"__oracle_masked_{n}"
        new_nodes.setdefault(role.node, []).append(helper.make_node("Mul", [src, mask_name], [masked],
                                                                    name=f"__oracle_mul_{n}"))
        node.input[role.input_index] = masked
    if new_nodes:
        nodes = list(g.node)
        del g.node[:]
        for i, node in enumerate(nodes):
            g.node.extend(new_nodes.get(i, []))
            g.node.append(node)
    return out


KEEP_INPUT = "graphprune_unit_keep"  # unit_mask_model's input: one keep value (1 kept, 0 removed) per unit


def unit_mask_model(model: onnx.ModelProto, analysis, units: np.ndarray, fill: dict | None = None
                    ) -> tuple[onnx.ModelProto, set[int]]:
    """A copy of `model` with a float input KEEP_INPUT of len(units) values: every consumer of a space holding
    one of `units` multiplies its input by the keep value of each element's unit (units not listed stay 1).
    Feeding 0 for a set S gives the outputs of `masked_model(model, analysis.cut(S))`. `fill` maps a linear
    layer (its output name) to (data input, channel axis, a value per channel): there the data input is
    masked instead of the weight, and a removed channel reads as that value instead of 0 (its mean: what bias
    compensation folds into the layer). Also returns the units whose consumers a float mask
    cannot reach (integer or quantized weights, `Rule.masked_weight`): feeding 0 for them would not remove
    them."""
    units = np.asarray(units, dtype=np.int64)
    slot = np.full(analysis.id_count + 1, len(units), dtype=np.int64)  # the trailing slot is a constant 1
    slot[units] = np.arange(len(units))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    view = analysis.view
    g.input.append(helper.make_tensor_value_info(KEEP_INPUT, onnx.TensorProto.FLOAT, [len(units)]))
    one = "__oracle_keep_one"
    g.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), one))
    new_nodes: list[onnx.NodeProto] = [helper.make_node("Concat", [KEEP_INPUT, one], ["__oracle_keep_all"], axis=0,
                                                        name="__oracle_keep_concat")]
    unmaskable: set[int] = set()
    masks: dict[tuple, str] = {}  # (space, axis, rank, dtype) -> mask tensor
    inserted: dict[int, list[onnx.NodeProto]] = {}
    done = set()
    for n, role in enumerate(analysis.roles):
        if role.kind != "consumer" or role.input_index < 0 or (role.node, role.input_index) in done:
            continue
        sp = analysis.spaces.spaces[role.space]
        idx = slot[analysis.units_of(sp)]
        if (idx == len(units)).all():
            continue
        done.add((role.node, role.input_index))
        node = g.node[role.node]
        rule = registry.lookup(node.domain, node.op_type)
        masker = rule.masked_weight if rule is not None else None
        if masker is not None and masker(view, role.node, role.input_index, role.axis,
                                         np.ones(sp.size, dtype=bool)) is not None:
            unmaskable.update(int(u) for u in analysis.units_of(sp) if slot[u] < len(units))
            continue
        at, axis, value = role.input_index, role.axis, None
        spec = (fill or {}).get(node.output[0]) if role.weight and node.output else None
        if spec is not None:  # mask (and fill) the layer's data input instead of its weight: the same product
            x, x_axis, mean = spec
            xsp = analysis.space(x, x_axis)
            if xsp is not None and xsp.size == sp.size == len(mean) and x in node.input:
                at, axis, sp, value = list(node.input).index(x), x_axis, xsp, mean
                idx = slot[analysis.units_of(sp)]
        src = node.input[at]
        elem = view.dtype(src) or onnx.TensorProto.FLOAT
        key = (sp.id, axis, len(view.shape(src)), elem)
        mask = masks.get(key)
        if mask is None:
            shape = [1] * key[2]
            shape[axis] = sp.size
            idx_name, shape_name, mask = f"__oracle_keep_idx_{n}", f"__oracle_keep_shape_{n}", f"__oracle_keep_{n}"
            g.initializer.append(numpy_helper.from_array(idx, idx_name))
            g.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), shape_name))
            gathered = f"{mask}_flat"
            new_nodes.append(helper.make_node("Gather", ["__oracle_keep_all", idx_name], [gathered], axis=0,
                                              name=f"__oracle_keep_gather_{n}"))
            if elem != onnx.TensorProto.FLOAT:
                new_nodes.append(helper.make_node("Cast", [gathered], [f"{mask}_cast"], to=elem,
                                                  name=f"__oracle_keep_cast_{n}"))
                gathered = f"{mask}_cast"
            new_nodes.append(helper.make_node("Reshape", [gathered, shape_name], [mask], name=f"__oracle_keep_rs_{n}"))
            masks[key] = mask
        masked = f"__oracle_kept_{n}"
        mine = inserted.setdefault(role.node, [])
        if value is not None:  # x * keep + (1 - keep) * fill
            fill_name, one_name = f"__oracle_fill_{n}", f"__oracle_fill_one_{n}"
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            g.initializer.append(numpy_helper.from_array(
                np.asarray(value, dtype).reshape([sp.size if i == axis else 1 for i in range(key[2])]), fill_name))
            g.initializer.append(numpy_helper.from_array(np.ones(1, dtype), one_name))
            mine += [helper.make_node("Mul", [src, mask], [f"{masked}_x"], name=f"__oracle_keep_mul_{n}"),
                     helper.make_node("Sub", [one_name, mask], [f"{masked}_gone"], name=f"__oracle_fill_sub_{n}"),
                     helper.make_node("Mul", [f"{masked}_gone", fill_name], [f"{masked}_f"],
                                      name=f"__oracle_fill_mul_{n}"),
                     helper.make_node("Add", [f"{masked}_x", f"{masked}_f"], [masked], name=f"__oracle_fill_add_{n}")]
        else:
            mine.append(helper.make_node("Mul", [src, mask], [masked], name=f"__oracle_keep_mul_{n}"))
        node.input[at] = masked
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes)
    for i, node in enumerate(nodes):
        g.node.extend(inserted.get(i, []))
        g.node.append(node)
    return out, unmaskable


def without_activation_fake_quant(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy in which per-tensor QuantizeLinear -> DequantizeLinear pairs on activations are Identity, or
    None when there are none.

    Fake quantization rounds: a last-bit difference in a float sum (the pruned conv adds fewer terms than
    the masked one, in another order) moves a value across a rounding boundary, one quantization step
    that the next layers spread. Comparing the pruned and the masked model without these pairs checks the
    rewrite exactly; per-channel pairs (whose parameters the rewrite slices) are kept.
    """
    g = model.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    sizes = {t.name: int(np.prod(t.dims)) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            sizes[n.output[0]] = int(np.prod(n.attribute[0].t.dims))
    quants = [n for n in g.node if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")
              and n.input[0] not in consts and sizes.get(n.input[1], 0) == 1
              and n.output[0] not in {o.name for o in g.output}
              and readers.get(n.output[0]) and all(r.op_type == "DequantizeLinear"
                                                   for r in readers[n.output[0]])]
    if not quants:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    source = {q.output[0]: q.input[0] for q in quants}
    drop = set(source)
    nodes = []
    for n in out.graph.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in drop:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in source:
            n = helper.make_node("Identity", [source[n.input[0]]], [n.output[0]], name=n.name)
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
