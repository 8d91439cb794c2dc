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


def masked_model(model: onnx.ModelProto, analysis, removed_roots: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    removed = np.zeros(len(analysis.roots) + 1, dtype=bool)
    removed[np.asarray(removed_roots, dtype=np.int64)] = True
    view = analysis.view
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    done = set()
    for n, role in enumerate(analysis.roles):
        if role.kind != "consumer" or role.input_index < 0:
            continue
        sp = analysis.spaces.spaces[role.space]
        keep = ~removed[analysis.roots[sp.offset:sp.offset + sp.size]]
        if keep.all() or (role.node, role.input_index) in done:
            continue
        done.add((role.node, role.input_index))
        node = g.node[role.node]
        src = node.input[role.input_index]
        rank = len(view.shape(src))
        shape = [1] * rank
        shape[role.axis] = sp.size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(view.dtype(src) or onnx.TensorProto.FLOAT)
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
