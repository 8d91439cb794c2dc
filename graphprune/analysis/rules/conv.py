"""Convolutions: output channels are produced by weight axis 0, input channels consumed by weight axis 1.

Grouped convolutions come in two modes. When a group has one input or one output channel (depthwise and
its relatives) whole groups are cut: group g's inputs and outputs form one unit and `group` shrinks.
Otherwise (ResNeXt) the same local index is cut in every group, so each group keeps equal width and the
weight stays a plain slice.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import register


def _block_ties(ctx, x, y, groups, cin, cout):
    """Tie input block g and output block g of a grouped op into one unit."""
    a, m = cin // groups, cout // groups
    g_of_in = np.arange(cin) // a
    g_of_out = np.arange(cout) // m
    first_out = np.arange(groups) * m
    ctx.tie(x, 1, y, 1, np.arange(cin), first_out[g_of_in])
    ctx.tie(y, 1, y, 1, np.arange(cout), first_out[g_of_out])


def _same_local_ties(ctx, t, size, per_group):
    """Tie element g*per_group + i to element i for every group g (cut the same local index everywhere)."""
    idx = np.arange(size)
    ctx.tie(t, 1, t, 1, idx, idx % per_group)


def _groups_divide(ctx, cin, cout) -> bool:
    """A `group` that does not divide the channels makes an invalid model (ONNX Runtime refuses it);
    freeze the node instead of computing ties from it."""
    groups = ctx.attr("group", 1)
    if groups >= 1 and (cin is None or cin % groups == 0) and (cout is None or cout % groups == 0):
        return True
    ctx.freeze_node(f"{ctx.op} '{ctx.name}': group {groups} does not divide its {cin} input and {cout} "
                    "output channels")
    return False


def _conv_common(ctx, x, w, y):
    rx = ctx.rank(x)
    ctx.tie(x, 0, y, 0)
    for ax in range(2, rx):
        ctx.fix(x, ax)
        ctx.fix(y, ax)
        ctx.fix(w, ax)


def _all_axes(view, t):
    return [(t, ax) for ax in range(len(view.shape(t) or []))]


def conv_macs(view, node):
    """Each output element sums over one weight row (input channels per group x kernel)."""
    w, y = view.shape(node.input[1]), view.shape(node.output[0])
    if None in y:
        return 0, []
    return math.prod(y) * math.prod(w[1:]), _all_axes(view, node.output[0]) + [(node.input[1], 1)]


def conv_transpose_macs(view, node):
    """Each input element is spread over one weight row (output channels per group x kernel)."""
    x, w = view.shape(node.input[0]), view.shape(node.input[1])
    if None in x:
        return 0, []
    return math.prod(x) * math.prod(w[1:]), _all_axes(view, node.input[0]) + [(node.input[1], 1)]



def rewrite_conv(rctx):
    """`group` follows the kept input channels: group = C_in / (weight's input channels per group)."""
    node = rctx.node
    if rctx.attr("group", 1) == 1:
        return
    per_group = rctx.new_dim(node.input[1], 1)
    rctx.set_attr("group", rctx.new_dim(node.input[0], 1) // per_group)


@register("conv", "Conv", rewrite=rewrite_conv, macs=conv_macs)
def conv(ctx):
    """Conv 1-D/2-D/3-D, grouped and depthwise: W[out, in/group, k...]."""
    x, w, y = ctx.input(0), ctx.input(1), ctx.output(0)
    b = ctx.input(2)
    sx, sw = ctx.shape(x), ctx.shape(w)
    if sx is None or sw is None or not ctx.is_weight(w):
        ctx.freeze_node(f"Conv '{ctx.name}': weight is not a constant or shapes are unknown")
        return
    if not _groups_divide(ctx, sx[1], sw[0]):
        return
    _conv_common(ctx, x, w, y)
    groups = ctx.attr("group", 1)
    cin, cout = sx[1], sw[0]
    if b:
        ctx.tie(b, 0, y, 1)
    conv_weight_ties(ctx, x, w, y, groups, cin, cout)


def conv_weight_ties(ctx, x, w, y, groups, cin, cout):
    """Channel ties of a conv weight W[out, in/group, k...] (shared with the quantized convolutions)."""
    ctx.tie(w, 0, y, 1)
    ctx.role("producer", w, 0)
    if groups == 1:
        ctx.tie(x, 1, w, 1)
        ctx.role("consumer", w, 1)
        return
    if cin is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input channel count unknown")
        return
    if cin // groups == 1 or cout // groups == 1:
        _block_ties(ctx, x, y, groups, cin, cout)
        ctx.fix(w, 1)
    else:
        ctx.tie(x, 1, w, 1, np.arange(cin), np.arange(cin) % (cin // groups))
        ctx.role("consumer", w, 1)
        _same_local_ties(ctx, y, cout, cout // groups)


def rewrite_conv_transpose(rctx):
    node = rctx.node
    if rctx.attr("group", 1) == 1:
        return
    per_group = rctx.new_dim(node.input[1], 1)
    rctx.set_attr("group", rctx.new_dim(node.output[0], 1) // per_group)


@register("conv", "ConvTranspose", rewrite=rewrite_conv_transpose, macs=conv_transpose_macs)
def conv_transpose(ctx):
    """ConvTranspose: W[in, out/group, k...] (the input axis comes first)."""
    x, w, y = ctx.input(0), ctx.input(1), ctx.output(0)
    b = ctx.input(2)
    sx, sw = ctx.shape(x), ctx.shape(w)
    if sx is None or sw is None or not ctx.is_weight(w):
        ctx.freeze_node(f"ConvTranspose '{ctx.name}': weight is not a constant or shapes are unknown")
        return
    if not _groups_divide(ctx, sw[0], sw[1] * max(ctx.attr("group", 1), 1)):
        return
    _conv_common(ctx, x, w, y)
    groups = ctx.attr("group", 1)
    cin = sw[0]
    cout = sw[1] * groups
    if b:
        ctx.tie(b, 0, y, 1)
    ctx.tie(x, 1, w, 0)
    ctx.role("consumer", w, 0)
    if groups == 1:
        ctx.tie(w, 1, y, 1)
        ctx.role("producer", w, 1)
        return
    if cin // groups == 1 or cout // groups == 1:
        _block_ties(ctx, x, y, groups, cin, cout)
        ctx.fix(w, 1)
    else:
        _same_local_ties(ctx, x, cin, cin // groups)
        ctx.tie(y, 1, w, 1, np.arange(cout), np.arange(cout) % (cout // groups))
        ctx.role("producer", w, 1)
