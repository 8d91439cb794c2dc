"""Recurrent layers (LSTM, GRU, RNN): the input features are consumed by W, the hidden size is a group.

W[D, G*H, I], R[D, G*H, H] and B[D, 2*G*H] hold G gate blocks of H rows each (LSTM i, o, f, c; GRU z, r,
h; RNN one), for D directions. Hidden unit h owns row h of every gate block of W, R and B (both halves of
B), column h of R, entry h of every peephole block of P[D, 3*H], and entry h of the hidden axis of Y,
Y_h, Y_c, initial_h and initial_c. The directions are tied: one `hidden_size` attribute serves both and
Y stacks them into one rectangular tensor, so hidden unit h is cut in both directions at once (the usual
Transpose + Reshape after a bidirectional layer then maps features d*H + h to unit h). GRU's
linear_before_reset only moves where R's h block is multiplied by the reset gate: the slicing is the same.
An initial state that is all zeros by construction (exporters build the default one from the run-time batch
size) is not tied: the rewrite drops it, which ONNX defines as the same zero state.
The sequence axis is mixed by the recurrence and the direction axis is not a channel: both keep every
element.
"""

from __future__ import annotations

import numpy as np
from onnx.numpy_helper import to_array as onnx_numpy

from ..registry import register

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _axes(layout: int) -> dict[str, tuple[int, int, int]]:
    """(sequence or -1, direction or -1, batch) axes of X, Y and the state tensors, per layout."""
    if layout:
        return {"x": (1, -1, 0), "y": (1, 2, 0), "state": (-1, 1, 0)}
    return {"x": (0, -1, 1), "y": (0, 1, 2), "state": (-1, 0, 1)}


def _tensors(ctx):
    """The node's tensors by role (empty name when absent); GRU and RNN have no initial_c, Y_c, P."""
    lstm = ctx.op == "LSTM"
    return {
        "x": ctx.input(0), "w": ctx.input(1), "r": ctx.input(2), "b": ctx.input(3), "seq_lens": ctx.input(4),
        "h0": ctx.input(5), "c0": ctx.input(6) if lstm else "", "p": ctx.input(7) if lstm else "",
        "y": ctx.output(0), "yh": ctx.output(1), "yc": ctx.output(2) if lstm else "",
    }


# Ops that only move, copy or select the values of their first input: zeros stay zeros.
_VALUE_PRESERVING = ("Slice", "Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast", "Transpose", "Tile",
                     "Gather", "Flatten")


def zero_state(view, tensor: str, depth: int = 0) -> bool:
    """True when an initial state is all zeros by construction (a zero constant, or ConstantOfShape /
    Expand / Slice ... of one, as exporters build the default state from the run-time batch size). Such a
    state is the same as no state, so it need not follow the hidden cut: the rewrite drops it instead."""
    if not tensor or depth > 12:
        return False
    v = view.const_value(tensor) if view.is_constant(tensor) else None
    if v is not None:
        return v.size > 0 and not np.any(v)
    p = view.producer.get(tensor)
    if p is None:
        return False
    node = view.nodes[p]
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "ConstantOfShape":
        value = view.attr(node, "value")
        return value is None or not np.any(np.asarray(onnx_numpy(value)))
    if node.op_type in _VALUE_PRESERVING:
        return zero_state(view, node.input[0], depth + 1)
    if node.op_type == "Concat":
        return all(zero_state(view, t, depth + 1) for t in node.input if t)
    return False


def _blocks(ctx, tensor, axis, n_blocks, h, hidden_ref):
    """Tie element k of a gate-blocked axis (n_blocks blocks of h) to hidden unit k % h."""
    idx = np.arange(n_blocks * h)
    ctx.tie(tensor, axis, hidden_ref, 2, idx, idx % h)


def rewrite_recurrent(rctx):
    """`hidden_size` follows the kept columns of R; an all-zero initial state (not tied to the cut) is
    dropped, which means the same."""
    node = rctx.node
    new = rctx.new_dim(node.input[2], 2)
    if new == rctx.old_shape(node.input[2])[2]:
        return
    rctx.set_attr("hidden_size", int(new))
    for k in (5, 6) if node.op_type == "LSTM" else (5,):
        if k < len(node.input) and zero_state(rctx.view, node.input[k]):
            rctx.drop_input(k)


def recurrent_macs(view, node):
    """Per step, batch row and direction: G*H*I for the input and G*H*H for the recurrence (two terms:
    the first scales with the kept inputs and hidden units, the second with the hidden units twice)."""
    x, w, r = node.input[0], node.input[1], node.input[2]
    sx, sw, sr = view.shape(x), view.shape(w), view.shape(r)
    steps = sx[0] * sx[1]  # sequence x batch, in either layout
    d, gh, i = sw
    hh = sr[2]
    return [(steps * d * gh * i, [(w, 1), (w, 2)]), (steps * d * gh * hh, [(r, 1), (r, 2)])]


@register("recurrent", "LSTM", "GRU", "RNN", rewrite=rewrite_recurrent, macs=recurrent_macs)
def recurrent(ctx):
    """LSTM / GRU / RNN (both directions, both layouts): W[D, G*H, I], R[D, G*H, H], B[D, 2*G*H]."""
    t = _tensors(ctx)
    x, w, r = t["x"], t["w"], t["r"]
    sx, sw, sr = ctx.shape(x), ctx.shape(w), ctx.shape(r)
    if not (ctx.is_weight(w) and ctx.is_weight(r)) or sx is None or sw is None or sr is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': W or R is not a constant, or shapes are unknown")
        return
    g = GATES[ctx.op]
    h = int(ctx.attr("hidden_size", sr[2]))
    d = sw[0]
    if len(sx) != 3 or sw[1:] != [g * h, sx[2]] or sr != [d, g * h, h]:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': W {sw} and R {sr} do not match hidden_size {h} and "
                        f"input {sx}")
        return
    axes = _axes(int(ctx.attr("layout", 0)))
    # Input features: consumed by W's last axis.
    ctx.tie(x, 2, w, 2)
    ctx.role("consumer", w, 2)
    # Hidden units: every gate block of W, R, B and P, the columns of R, and the hidden axis of the states.
    _blocks(ctx, w, 1, g, h, r)
    _blocks(ctx, r, 1, g, h, r)
    ctx.role("producer", w, 1)
    ctx.role("producer", r, 1)
    ctx.role("consumer", r, 2)
    if t["b"]:
        _blocks(ctx, t["b"], 1, 2 * g, h, r)
    if t["p"]:
        _blocks(ctx, t["p"], 1, 3, h, r)
    for k in ("y", "yh", "yc", "h0", "c0"):
        if t[k] and ctx.rank(t[k]) is not None and not (k in ("h0", "c0") and zero_state(ctx.view, t[k])):
            ctx.tie(t[k], ctx.rank(t[k]) - 1, r, 2)
    # Direction axes are not channels; the sequence axis is mixed by the recurrence.
    for k in ("w", "r", "b", "p"):
        if t[k]:
            ctx.fix(t[k], 0)
    seq_x, _, batch_x = axes["x"]
    ctx.fix(x, seq_x)
    for k, key in (("y", "y"), ("yh", "state"), ("yc", "state"), ("h0", "state"), ("c0", "state")):
        if not t[k] or ctx.rank(t[k]) is None:
            continue
        if k in ("h0", "c0") and zero_state(ctx.view, t[k]):
            for ax in ctx.axes(t[k]):
                ctx.free(t[k], ax)  # a zero state is dropped by the rewrite when the hidden size shrinks
            continue
        seq, direction, batch = axes[key]
        if seq >= 0:
            ctx.fix(t[k], seq)
        ctx.fix(t[k], direction)
        ctx.tie(t[k], batch, x, batch_x)
    if t["seq_lens"]:
        ctx.tie(t["seq_lens"], 0, x, batch_x)
