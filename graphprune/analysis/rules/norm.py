"""Normalisations. Per-channel ones (BatchNorm, InstanceNorm) slice their parameters; GroupNorm cuts whole
groups; norms whose statistics run over the channel axis (LayerNorm, LpNorm, LRN, GroupNorm with one group,
also as torch exports it: Reshape to [N, 1, -1] -> InstanceNormalization) freeze it."""

from __future__ import annotations

import numpy as np

from ..reasons import BY_DESIGN
from ..registry import register


def _identity_all(ctx, x, y, skip=()):
    for ax in ctx.axes(x):
        if ax not in skip:
            ctx.tie(x, ax, y, ax)


def _one_group_norm(ctx, x) -> bool:
    """True when x is [N, 1, ...] made by a Reshape: torch's export of GroupNorm(1, C), which reshapes
    [N, C, ...] to [N, 1, -1] so that one InstanceNormalization normalises all channels together."""
    sx = ctx.shape(x)
    p = ctx.view.producer.get(x)
    return sx is not None and len(sx) >= 3 and sx[1] == 1 and p is not None and ctx.view.nodes[p].op_type == "Reshape"


def _instance_norm_axes(ctx, x) -> None:
    """InstanceNormalization's statistics run over axes 2.. of every (sample, channel): those axes mix
    values. In a CNN they are spatial (never cut anyway). Torch's GroupNorm export reshapes [N, C, ...]
    to [N, G, -1] first: with G > 1 whole groups are cut through axis 1, but with G = 1 every channel
    lives on the normalised axis, and cutting one changes the statistics of all the others."""
    one_group = _one_group_norm(ctx, x)
    for ax in range(2, ctx.rank(x)):
        if one_group:
            ctx.mark(x, ax, "hidden")
            if ctx.options.prune_hidden:
                continue
            why = (f"GroupNorm with one group ('{ctx.name}', exported as Reshape to [N, 1, -1] and "
                   f"InstanceNormalization) normalises over all channels at once: cutting channels changes "
                   f"its statistics (opt in with --prune-hidden)")
        else:
            why = f"{ctx.op} '{ctx.name}' normalises over axis {ax} (its statistics mix the values along it)"
        ctx.fix(x, ax, why, BY_DESIGN)


@register("norm", "BatchNormalization", "InstanceNormalization")
def per_channel_norm(ctx):
    """BatchNormalization / InstanceNormalization: channel-wise, parameters indexed by axis 1."""
    x, y = ctx.input(0), ctx.output(0)
    if ctx.rank(x) is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    _identity_all(ctx, x, y)
    if ctx.op == "InstanceNormalization":
        _instance_norm_axes(ctx, x)
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
    if new_c != old_c and groups > 1:  # one group (cut under --prune-hidden) stays one group
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
    if g == 1:
        # One group: the statistics run over every channel, like LayerNorm over a hidden axis.
        ctx.mark(x, 1, "hidden")
        if not ctx.options.prune_hidden:
            ctx.fix(x, 1, f"GroupNorm with one group ('{ctx.name}') normalises over all channels at once: "
                          f"cutting channels changes its statistics (opt in with --prune-hidden)", BY_DESIGN)
        for p in (scale, bias):
            if p and ctx.shape(p)[0] == c:
                ctx.tie(p, 0, y, 1)
            elif p:
                ctx.fix_tensor(p)  # opset 18: one value for the one group
        return
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
