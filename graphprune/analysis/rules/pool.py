"""Spatial ops (pooling, Resize, Pad) keep channels; reductions keep the axes they do not reduce."""

from __future__ import annotations

import numpy as np

from ..reasons import BY_DESIGN
from ..registry import register


@register("pool", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
          "MaxUnpool")
def pool(ctx):
    """Pooling: batch and channel axes pass through, spatial axes are not channels."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    ctx.tie(x, 0, y, 0)
    ctx.tie(x, 1, y, 1)
    for ax in range(2, r):
        ctx.fix(x, ax)
        ctx.fix(y, ax)
    for extra in ctx.inputs[1:]:
        if extra:
            ctx.fix_tensor(extra, f"{ctx.op} '{ctx.name}' reads indices that encode channel offsets", BY_DESIGN)
    if len(ctx.outputs) > 1 and ctx.output(1):
        # MaxPool indices are flat offsets into the whole tensor: they change with the channel count.
        ctx.fix_tensor(ctx.output(1), f"MaxPool '{ctx.name}' returns indices that encode channel offsets", BY_DESIGN)
        ctx.fix(x, 1, f"MaxPool '{ctx.name}' returns indices that encode channel offsets", BY_DESIGN)


def _dims_equal_ties(ctx, x, y, what):
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None or len(sx) != len(sy):
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': shapes unknown")
        return
    for ax, (a, b) in enumerate(zip(sx, sy)):
        if a is not None and a == b:
            ctx.tie(x, ax, y, ax)
        else:
            ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' {what} axis {ax}")
            ctx.fix(y, ax, f"{ctx.op} '{ctx.name}' {what} axis {ax}")


def rewrite_resize(rctx):
    node = rctx.node
    sizes = node.input[3] if len(node.input) > 3 else ""
    if sizes and rctx.const(sizes) is not None:
        old = rctx.const(sizes)
        axes = rctx.attr("axes", None)  # opset 18: sizes lists only these axes
        r = len(rctx.old_shape(node.output[0]))
        axes = range(len(old)) if axes is None else [a % r for a in axes]
        new = np.array([rctx.new_dim(node.output[0], ax) for ax in axes], dtype=old.dtype)
        if not np.array_equal(old, new):
            rctx.set_input_const(3, new)


@register("pool", "Resize", "Upsample", rewrite=rewrite_resize)
def resize(ctx):
    """Resize/Upsample: axes with scale 1 pass through; scaled (spatial) axes are not channels."""
    x, y = ctx.input(0), ctx.output(0)
    for t in ctx.inputs[1:]:
        if t:
            ctx.fix_tensor(t)
    sizes = ctx.input(3) if len(ctx.inputs) > 3 else ""
    if sizes and ctx.const(sizes) is None:
        # Run-time sizes: only safe when they do not carry the channel count.
        sx = ctx.shape(x)
        for ax in range(len(sx or [])):
            ctx.fix(x, ax, f"Resize '{ctx.name}' takes its sizes at run time")
            ctx.fix(y, ax, f"Resize '{ctx.name}' takes its sizes at run time")
        return
    _dims_equal_ties(ctx, x, y, "resizes")


@register("pool", "Pad")
def pad(ctx):
    """Pad: axes with zero padding pass through; padded axes are not channels."""
    x, y = ctx.input(0), ctx.output(0)
    for t in ctx.inputs[1:]:
        if t:
            ctx.fix_tensor(t)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"Pad '{ctx.name}': input shape unknown")
        return
    if len(ctx.inputs) > 1 and ctx.input(1):
        pads = ctx.const(ctx.input(1))
        axes = ctx.const(ctx.input(3)) if len(ctx.inputs) > 3 and ctx.input(3) else None
    else:
        pads = np.array(ctx.attr("pads", [0] * (2 * r)))
        axes = None
    if pads is None:
        ctx.freeze_node(f"Pad '{ctx.name}': pads are computed at run time")
        return
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    n = len(axes)
    padded = {axes[i] for i in range(n) if pads[i] != 0 or pads[i + n] != 0}
    for ax in range(r):
        if ax in padded:
            ctx.fix(x, ax, f"Pad '{ctx.name}' pads axis {ax}")
            ctx.fix(y, ax, f"Pad '{ctx.name}' pads axis {ax}")
        else:
            ctx.tie(x, ax, y, ax)


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _reduce_axes(ctx, r):
    axes = ctx.attr("axes", None)
    if axes is None and len(ctx.inputs) > 1 and ctx.input(1):
        v = ctx.const(ctx.input(1))
        if v is None:
            return None
        axes = [int(a) for a in np.atleast_1d(v)]
        ctx.fix_tensor(ctx.input(1))
    if axes is None or len(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        return list(range(r))
    return sorted(a % r for a in axes)


_NORM_REDUCES = ("ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceSum")


@register("pool", *REDUCE, "ArgMax", "ArgMin")
def reduce(ctx):
    """Reduce*/ArgMax/ArgMin: reduced axes mix values; the others pass through (keepdims or not)."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    if ctx.op in ("ArgMax", "ArgMin"):
        axes = [ctx.attr("axis", 0) % r]
    else:
        axes = _reduce_axes(ctx, r)
        if axes is None:
            ctx.freeze_node(f"{ctx.op} '{ctx.name}': axes are computed at run time")
            return
    keep = ctx.attr("keepdims", 1)
    # A decomposed LayerNorm/RMSNorm reduces over the last (hidden) axis; --prune-hidden accepts that
    # cutting it changes the statistics, as for LayerNormalization itself.
    norm_like = ctx.op in _NORM_REDUCES and axes == [r - 1] and keep and r >= 2
    if norm_like:
        ctx.mark(x, r - 1, "hidden")
    oy = 0
    for ax in range(r):
        if ax in axes and norm_like and ctx.options.prune_hidden:
            ctx.free(x, ax)
            ctx.fix(y, oy)
            oy += 1
        elif ax in axes:
            why = (f"{ctx.op} '{ctx.name}' normalises over axis {ax} (a decomposed LayerNorm/RMSNorm, or a norm "
                   "across channels such as ConvNeXtV2's GRN: hidden-size pruning changes its statistics; opt in "
                   "with --prune-hidden)") if norm_like else f"{ctx.op} '{ctx.name}' reduces over axis {ax}"
            ctx.fix(x, ax, why, BY_DESIGN)
            if keep:
                ctx.fix(y, oy)
                oy += 1
        else:
            ctx.tie(x, ax, y, oy)
            oy += 1


@register("pool", "TopK")
def topk(ctx):
    """TopK: selects along its axis; the other axes pass through."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"TopK '{ctx.name}': input shape unknown")
        return
    axis = ctx.attr("axis", -1) % r
    ctx.fix_tensor(ctx.input(1))
    for y in ctx.outputs:
        for ax in range(r):
            if ax == axis:
                ctx.fix(x, ax, f"TopK '{ctx.name}' selects along axis {ax}", BY_DESIGN)
                ctx.fix(y, ax)
            else:
                ctx.tie(x, ax, y, ax)
