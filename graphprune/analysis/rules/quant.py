"""Quantized operators: QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger.

They are Conv and MatMul on integers, with a scale and a zero point per operand. The weight's per-output-
channel scale and zero point (and QLinearConv's int32 bias) are indexed by the output channels, so they are
tied to them and sliced with the weight, each in its own dtype. The activations' scales and zero points are
per tensor (scalars) in every layout we cut; a per-channel one on a consumed axis freezes the node.

A removed input channel must contribute nothing: in the integer domain that means a weight equal to its zero
point, not 0. The oracle (`graphprune.oracle`) asks the rule for that masked weight (`masked_weight` below)
instead of multiplying activations by a 0/1 mask, which integer tensors do not support.
"""

from __future__ import annotations

import numpy as np

from ..registry import RULES, register
from .conv import _groups_divide, conv_weight_ties


def _size(ctx, t) -> int:
    s = ctx.shape(t) if t else None
    if s is None:
        return -1
    n = 1
    for d in s:
        if d is None:
            return -1
        n *= d
    return n


def _per_tensor(ctx, tensors, what) -> bool:
    """Scalar (or one-element) quantization parameters; anything else freezes the node."""
    for t in tensors:
        if t and _size(ctx, t) != 1:
            ctx.freeze_node(f"{ctx.op} '{ctx.name}': per-channel {what} ('{t}') is not supported")
            return False
        if t:
            ctx.fix_tensor(t)
    return True


def _per_channel(ctx, tensors, y, axis, n):
    """Parameters with one value per output channel follow them; scalars tie nothing."""
    for t in tensors:
        if not t:
            continue
        size = _size(ctx, t)
        if ctx.rank(t) == 1 and size == n and n > 1:
            ctx.tie(t, 0, y, axis)
        elif size == 1:
            ctx.fix_tensor(t)
        else:
            ctx.freeze_node(f"{ctx.op} '{ctx.name}': quantization parameter '{t}' of shape {ctx.shape(t)} "
                            f"matches neither a scalar nor the {n} output channels")
            return False
    return True


def _conv_like(ctx, x, w, y, bias, x_params, w_params, y_params):
    sx, sw = ctx.shape(x), ctx.shape(w)
    if sx is None or sw is None or not ctx.is_weight(w) or ctx.rank(y) is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': weight is not a constant or shapes are unknown")
        return
    if not _groups_divide(ctx, sx[1], sw[0]) or not _per_tensor(ctx, x_params, "input scale or zero point"):
        return
    cout = sw[0]
    if not _per_channel(ctx, list(w_params) + list(y_params) + [bias], y, 1, cout):
        return
    ctx.tie(x, 0, y, 0)
    for ax in range(2, len(sx)):
        ctx.fix(x, ax)
        ctx.fix(y, ax)
        ctx.fix(w, ax)
    conv_weight_ties(ctx, x, w, y, ctx.attr("group", 1), sx[1], cout)


def _rewrite_group(weight_input: int):
    def rewrite(rctx):
        node = rctx.node
        if rctx.attr("group", 1) == 1:
            return
        per_group = rctx.new_dim(node.input[weight_input], 1)
        rctx.set_attr("group", rctx.new_dim(node.input[0], 1) // per_group)

    return rewrite


@register("quant", "QLinearConv", rewrite=_rewrite_group(3))
def qlinear_conv(ctx):
    """QLinearConv: Conv on int8/uint8; w scale, w zero point and int32 bias follow the output channels."""
    i = ctx.input
    _conv_like(ctx, i(0), i(3), ctx.output(0), i(8), (i(1), i(2)), (i(4), i(5)), (i(6), i(7)))


@register("quant", "ConvInteger", rewrite=_rewrite_group(1))
def conv_integer(ctx):
    """ConvInteger: Conv on integers to int32; a per-output-channel weight zero point follows the channels."""
    i = ctx.input
    _conv_like(ctx, i(0), i(1), ctx.output(0), "", (i(2),), (i(3),), ())


def _matmul_like(ctx, a, b, y, a_params, b_params, y_params):
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra is None or rb is None or ry is None or ra < 2 or rb != 2:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': operand shapes unknown or not [..., M, K] x [K, N]")
        return
    if not ctx.is_weight(b):
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': the second operand is not a constant weight (quantized "
                        "activations are not cut)")
        return
    if not _per_tensor(ctx, list(a_params) + list(y_params), "input or output scale or zero point"):
        return
    n = ctx.shape(b)[1]
    if not _per_channel(ctx, b_params, y, ry - 1, n):
        return
    ctx.tie(a, ra - 1, b, 0)
    ctx.tie(b, 1, y, ry - 1)
    for ax in range(ra - 1):
        ctx.tie(a, ax, y, ry - ra + ax)
    ctx.role("consumer", b, 0)
    ctx.role("producer", b, 1)


@register("quant", "QLinearMatMul")
def qlinear_matmul(ctx):
    """QLinearMatMul with a constant B[K, N]: per-column b scale and zero point follow the N outputs."""
    i = ctx.input
    _matmul_like(ctx, i(0), i(3), ctx.output(0), (i(1), i(2)), (i(4), i(5)), (i(6), i(7)))


@register("quant", "MatMulInteger")
def matmul_integer(ctx):
    """MatMulInteger with a constant B[K, N]: a per-column b zero point follows the N outputs."""
    i = ctx.input
    _matmul_like(ctx, i(0), i(1), ctx.output(0), (i(2),), (i(3),), ())


# ---- the oracle's masked weights ------------------------------------------------------------------------
# (weight input, its zero point input, the weight axis the zero point runs along)
_WEIGHT_ZERO_POINT = {"QLinearConv": (3, 5, 0), "ConvInteger": (1, 3, 0), "QLinearMatMul": (3, 5, 1),
                      "MatMulInteger": (1, 3, 1)}


def masked_weight(view, node_index: int, input_index: int, axis: int, keep: np.ndarray):
    """The node's constant weight with the removed slices along `axis` set to its zero point (so that
    they add nothing to the integer accumulation), or None when this input is not such a weight."""
    node = view.nodes[node_index]
    spec = _WEIGHT_ZERO_POINT.get(node.op_type)
    if spec is None or spec[0] != input_index:
        return None
    w = view.const_value(node.input[input_index])
    if w is None:
        return None
    zp_name = node.input[spec[1]] if len(node.input) > spec[1] else ""
    zp = view.const_value(zp_name) if zp_name else None
    zp = np.zeros((), dtype=w.dtype) if zp is None else zp.astype(w.dtype)
    if zp.size > 1:
        shape = [1] * w.ndim
        shape[spec[2]] = zp.size
        zp = zp.reshape(shape)
    shape = [1] * w.ndim
    shape[axis] = len(keep)
    return np.where(keep.reshape(shape), w, np.broadcast_to(zp, w.shape)).astype(w.dtype)


for _op in _WEIGHT_ZERO_POINT:
    RULES[("", _op)].masked_weight = masked_weight
