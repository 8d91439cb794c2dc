"""The correctness oracle: the original model with removed channels masked out where they are consumed.

Removing a set of channels must give exactly the outputs of the original model in which those channels
can no longer reach anything. Every path a channel can leave its group by is a consumer (the input
axis of a conv/linear weight, or a contraction between activations), so multiplying each consumer's input
by a 0/1 mask on that axis builds the reference the pruned model is compared against.
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
