"""Normalisations. Per-channel ones (BatchNorm, InstanceNorm) slice their parameters; GroupNorm cuts whole
groups; norms whose statistics run over the channel axis (LayerNorm, LpNorm, LRN) freeze it."""

from __future__ import annotations

import numpy as np

from ..reasons import BY_DESIGN
from ..registry import register


def _identity_all(ctx, x, y, skip=()):
    for ax in ctx.axes(x):
        if ax not in skip:
            ctx.tie(x, ax, y, ax)


@register("norm", "BatchNormalization", "InstanceNormalization")
def per_channel_norm(ctx):
    """BatchNormalization / InstanceNormalization: channel-wise, parameters indexed by axis 1."""
    x, y = ctx.input(0), ctx.output(0)
    if ctx.rank(x) is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    _identity_all(ctx, x, y)
    for p in ctx.inputs[1:]:
        if p:
            ctx.tie(p, 0, y, 1)
    for extra in ctx.outputs[1:]:
        if extra:
            # Running statistics are per channel: tie them to the channels so the freeze reaches the group.
            if ctx.rank(extra) == 1:
                ctx.tie(extra, 0, y, 1)
            ctx.fix_tensor(extra, f"{ctx.op} '{ctx.name}' in training mode exposes running statistics", BY_DESIGN)


def rewrite_group_norm(rctx):
    node = rctx.node
    groups = rctx.attr("num_groups")
    old_c = rctx.old_shape(node.input[0])[1]
    new_c = rctx.new_dim(node.input[0], 1)
    if new_c != old_c:
        rctx.set_attr("num_groups", new_c // (old_c // groups))


@register("norm", "GroupNormalization", rewrite=rewrite_group_norm)
def group_norm(ctx):
    """GroupNormalization: statistics per group of channels, so only whole groups are cut."""
    x, scale, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    sx = ctx.shape(x)
    if sx is None or sx[1] is None:
        ctx.freeze_node(f"GroupNormalization '{ctx.name}': channel count unknown")
        return
    c, g = sx[1], ctx.attr("num_groups")
    per = c // g
    _identity_all(ctx, x, y)
    idx = np.arange(c)
    ctx.tie(x, 1, x, 1, idx, (idx // per) * per)
    for p in (scale, bias):
        if not p:
            continue
        n = ctx.shape(p)[0]
        if n == c:
            ctx.tie(p, 0, y, 1)
        else:  # opset 18: one value per group
            ctx.tie(p, 0, y, 1, np.arange(g), np.arange(g) * per)


@register("norm", "LayerNormalization")
def layer_norm(ctx):
    """LayerNormalization: the normalised axes mix channels (frozen unless hidden pruning is asked)."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"LayerNormalization '{ctx.name}': input shape unknown")
        return
    axis = ctx.attr("axis", -1) % r
    _identity_all(ctx, x, y)
    for p in ctx.inputs[1:]:
        if p:
            rp = ctx.rank(p)
            for ax in range(rp or 0):
                ctx.tie(p, ax, y, r - rp + ax)
    for ax in range(axis, r):
        ctx.mark(x, ax, "hidden")
        if not ctx.options.prune_hidden:
            ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' normalises over this axis (hidden-size pruning "
                           f"changes its statistics; opt in with --prune-hidden)", BY_DESIGN)
    for extra in ctx.outputs[1:]:
        if extra:
            for ax in ctx.axes(extra):
                if ax < axis:
                    ctx.tie(extra, ax, y, ax)
                else:
                    ctx.fix(extra, ax)


@register("norm", "LpNormalization", "LRN", "MeanVarianceNormalization")
def mixing_norm(ctx):
    """LpNormalization / LRN / MeanVarianceNormalization: the normalised axis mixes channels."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    if ctx.op == "LpNormalization":
        mixed = [ctx.attr("axis", -1) % r]
    elif ctx.op == "LRN":
        mixed = [1]
    else:
        mixed = [a % r for a in ctx.attr("axes", [0, 2, 3])]
    _identity_all(ctx, x, y)
    for ax in mixed:
        ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' mixes values across axis {ax}", BY_DESIGN)
