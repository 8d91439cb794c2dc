"""Layout ops: index maps between the channel axes of inputs and outputs.

Concat/Split/Slice map channels through offsets; Transpose/Squeeze/Unsqueeze move axes; Reshape and
Flatten merge or split axes, and then exactly one of the merged axes carries channels (the one that is
channel-like; NCHW or NHWC flatten, attention heads, channel shuffle); DepthToSpace/SpaceToDepth map
channels to blocks.
"""

from __future__ import annotations

import numpy as np

from ...core.shape_values import (
    ConstEntry,
    DimEntry,
    OtherEntry,
    QuotientDimEntry,
    ScaledDimEntry,
    shape_entries,
)
from ..reasons import BY_DESIGN
from ..registry import register
from ..spaces import connected_components, sorted_unique

# ---------------------------------------------------------------------------------------------- helpers


def factor_groups(a: list, b: list):
    """Pair runs of input axes with runs of output axes of equal product (None = unknown dim).

    Returns (groups, unmatched_in, unmatched_out): groups from the left, then from the right, with what
    could not be paired in the middle."""
    left, i, j = _factor(a, b)
    if i == len(a) and j == len(b):
        return left, [], []
    ra, rb = a[i:][::-1], b[j:][::-1]
    right, ri, rj = _factor(ra, rb)
    na, nb = len(a), len(b)
    right = [([na - 1 - x for x in I][::-1], [nb - 1 - y for y in J][::-1]) for I, J in right]
    mid_in = list(range(i, na - ri))
    mid_out = list(range(j, nb - rj))
    return left + right[::-1], mid_in, mid_out


def _factor(a, b):
    groups = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1 and (j >= len(b) or b[j] != 1):
            groups.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1 and (i >= len(a) or a[i] != 1):
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            break
        if a[i] is None or b[j] is None:
            if a[i] is None and b[j] is None:
                groups.append(([i], [j]))
                i += 1
                j += 1
                continue
            break
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        ii, jj = i + 1, j + 1
        ok = True
        while pa != pb:
            if pa < pb:
                if ii >= len(a) or a[ii] is None:
                    ok = False
                    break
                pa *= a[ii]
                gi.append(ii)
                ii += 1
            else:
                if jj >= len(b) or b[jj] is None:
                    ok = False
                    break
                pb *= b[jj]
                gj.append(jj)
                jj += 1
        if not ok:
            break
        groups.append((gi, gj))
        i, j = ii, jj
    return groups, i, j


def _big(shape, axes):
    return [ax for ax in axes if shape[ax] is not None and shape[ax] > 1]


def _pick_carrier(ctx, tensor, axes, shape, lookahead_perm=None):
    """Which of several merged/split axes carries the channels.

    Attention axes decide first (RuleContext.attention_role): whole heads by default, the dimension inside
    heads with --prune-head-dim, whatever else reaches a weight (multi-query attention's shared K/V, a
    per-head-dim linear layer). An axis that keeps every channel anyway (RuleContext.always_kept: batch,
    sequence) carries only if all do: its channels are all kept, and so would be those of the merged axis.
    Otherwise the channel-like axis, else the first (NCHW and NHWC flatten), or the last of two with
    --prune-head-dim."""
    roles = {ax: ctx.attention_role(tensor, ax) for ax in axes}
    want = _wanted_role(ctx)
    marked = [ax for ax in axes if roles[ax] == want]
    if len(marked) == 1:
        return marked[0]
    if not ctx.options.prune_head_dim:
        axes = [ax for ax in axes if roles[ax] != "head_dim"] or axes
    axes = [ax for ax in axes if not ctx.always_kept(tensor, ax)] or axes
    like = [ax for ax in axes if ctx.channel_like(tensor, ax)]
    if len(like) == 1:
        return like[0]
    cands = like or axes
    last = ctx.options.prune_head_dim and len(cands) == 2 and not like
    if lookahead_perm is not None:
        # Pick the axis the merge after the Transpose will pick (its first, or its last with head-dim pruning).
        return (max if last else min)(cands, key=lambda ax: lookahead_perm.index(ax))
    if last:
        return cands[-1]
    return cands[0]


def _merge_split_ties(ctx, x, y, groups, mid_in, mid_out):
    """Ties for the factor groups of a reshape-like op (shared by Reshape, Flatten)."""
    sx, sy = ctx.shape(x), ctx.shape(y)
    for ax in mid_in:
        ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' regroups axis {ax} in a way no rule describes")
    for ax in mid_out:
        ctx.fix(y, ax, f"{ctx.op} '{ctx.name}' regroups axis {ax} in a way no rule describes")
    perm = _single_transpose_consumer(ctx, y)
    for I, J in groups:
        bi, bj = _big(sx, I), _big(sy, J)
        for ax in I:
            ctx.free(x, ax)
        for ax in J:
            ctx.free(y, ax)
        if not bi and not bj:
            continue
        if len(bi) == 1 and len(bj) == 1:
            ctx.tie(x, bi[0], y, bj[0])
            continue
        if ctx.pass_name == "A":
            continue  # merge/split ties wait until channel-like axes are known
        if len(bi) > 1 and len(bj) > 1:
            _regroup_ties(ctx, x, y, bi, bj, sx, sy)
            continue
        if len(bi) > 1:  # merge: x axes bi -> y axis bj[0]
            dims = [sx[ax] for ax in bi]
            c = _pick_carrier(ctx, x, bi, sx)
            coords = np.indices(dims).reshape(len(dims), -1)[bi.index(c)]
            ctx.tie(y, bj[0], x, c, np.arange(len(coords)), coords)
            for ax in bi:
                if ax != c:
                    ctx.fix(x, ax, _non_carrier_reason(ctx, x, ax))
        else:  # split: x axis bi[0] -> y axes bj
            dims = [sy[ax] for ax in bj]
            c = _pick_carrier(ctx, y, bj, sy, perm)
            coords = np.indices(dims).reshape(len(dims), -1)[bj.index(c)]
            ctx.tie(x, bi[0], y, c, np.arange(len(coords)), coords)
            for ax in bj:
                if ax != c:
                    ctx.fix(y, ax, _non_carrier_reason(ctx, y, ax))


_REGROUP_LIMIT = 1 << 22  # elements of a regrouped block we are willing to enumerate


def _regroup_ties(ctx, x, y, bi, bj, sx, sy):
    """Axes regrouped many-to-many (MobileViT's unfold: [C, H] -> [C*nH, ph]; multi-head attention that
    folds heads into the batch: [B, H*D] -> [B*H, D], and back). The channel axis c on one side (the
    channel-like one, else the one marked as heads) is tied to an axis b on the other side, each value of c
    to every value of b it shares an element of the block with: a unit (connected values of c and b) then
    covers the same block elements on both sides, so cutting it removes whole slices of c and of b, in the
    same order. b is an axis that splits c into more than one unit: attention heads first (the dimension
    inside heads only under --prune-head-dim), never an axis pass A already keeps whole, then the one with
    the fewest, widest units."""
    din = [sx[a] for a in bi]
    dout = [sy[b] for b in bj]
    size = int(np.prod(din))
    why = f"{ctx.op} '{ctx.name}' regroups axes {bi} into {bj}"
    carrier = _regroup_carrier(ctx, x, y, bi, bj)
    if size > _REGROUP_LIMIT or carrier is None:
        for a in bi:
            ctx.fix(x, a, why)
        for b in bj:
            ctx.fix(y, b, why)
        return
    flat = np.arange(size)
    cin = np.stack(np.unravel_index(flat, din))
    cout = np.stack(np.unravel_index(flat, dout))
    c_side, c = carrier
    if c_side == x:
        c_axes, c_coords, o_side, o_axes, o_coords = bi, cin, y, bj, cout
    else:
        c_axes, c_coords, o_side, o_axes, o_coords = bj, cout, x, bi, cin
    cc = c_coords[c_axes.index(c)]
    n_c = sx[c] if c_side == x else sy[c]
    options, inside_heads = [], False
    for k, b in enumerate(o_axes):
        oc = o_coords[k]
        n_o = sy[b] if o_side == y else sx[b]
        pairs = sorted_unique(cc * n_o + oc)
        pc, pb = pairs // n_o, pairs % n_o
        units = len(sorted_unique(connected_components(n_c + n_o, pc, n_c + pb)))
        if units < 2 or ctx.always_kept(o_side, b):
            continue  # nothing to cut along b, or b keeps everything it is tied to
        if ctx.attention_role(o_side, b) == "head_dim" and not ctx.options.prune_head_dim:
            inside_heads = True
            continue
        options.append((ctx.attention_role(o_side, b) != _wanted_role(ctx), units, k, b, pc, pb))
    tied = None
    if options:
        *_, tied, pc, pb = min(options, key=lambda o: o[:3])
        ctx.tie(c_side, c, o_side, tied, pc, pb)
    else:
        ctx.fix(c_side, c, f"{why}: only the dimension inside attention heads follows its channels (cut with "
                           "--prune-head-dim)" if inside_heads else why, BY_DESIGN if inside_heads else None)
    for a in c_axes:
        if a != c:
            ctx.fix(c_side, a, _non_carrier_reason(ctx, c_side, a))
    for b in o_axes:
        if b != tied:
            ctx.fix(o_side, b, why if tied is None else _non_carrier_reason(ctx, o_side, b))


def _wanted_role(ctx) -> str:
    """The attention axis channels follow: whole heads, or the dimension inside them with --prune-head-dim."""
    return "head_dim" if ctx.options.prune_head_dim else "head"


def _regroup_carrier(ctx, x, y, bi, bj):
    """(tensor, axis) of a regroup's channel axis: the one channel-like axis, else the one head axis of those
    pass A does not keep whole (a batch axis tied to Q·Kᵀ's is marked too)."""
    def head(t, ax):
        return ctx.attention_role(t, ax) == _wanted_role(ctx) and not ctx.always_kept(t, ax)

    for test in (ctx.channel_like, head):
        hits = [(t, a) for t, axes in ((x, bi), (y, bj)) for a in axes if test(t, a)]
        if hits:
            return hits[0] if len(hits) == 1 else None
    return None


def _non_carrier_reason(ctx, t, ax):
    """Why an axis merged or split beside the carrier keeps its channels (None: it has none to cut)."""
    if ctx.attention_role(t, ax) == "head_dim" and not ctx.options.prune_head_dim and ctx.channel_like(t, ax):
        return ctx.refusal(f"{ctx.op} '{ctx.name}' keeps axis {ax} of '{t}', the dimension inside attention heads, "
                           "whole (cut it with --prune-head-dim)", t, ax, BY_DESIGN)
    if ctx.channel_like(t, ax):
        return (f"{ctx.op} '{ctx.name}' merges axis {ax} of '{t}' with another channel axis; only one of them "
                f"can be cut")
    return None


def _single_transpose_consumer(ctx, y):
    cons = ctx.view.consumers.get(y, [])
    if len(cons) == 1:
        node = ctx.view.nodes[cons[0][0]]
        if node.op_type == "Transpose":
            r = ctx.rank(y)
            perm = ctx.view.attr(node, "perm", list(range(r - 1, -1, -1)) if r else None)
            return list(perm) if perm is not None else None
    return None


def _check_shape_input(ctx, y, shape_input_index, allow_zero_from=None, broadcast=False):
    """Make sure every output axis that may be cut has a shape entry the rewrite can follow. `broadcast`
    (Expand): an entry that folds to 1 keeps the input's dim, whatever the cut."""
    shp = ctx.input(shape_input_index)
    for ax in ctx.axes(shp):
        ctx.fix(shp, ax)
    entries = shape_entries(ctx.view, shp, ctx.index, shape_input_index)
    _quotients_ok(ctx, entries, "shape entry")
    for ax in ctx.axes(y):
        e = entries[ax] if entries is not None and ax < len(entries) else None
        if ctx.space(y, ax) is None:
            continue
        if isinstance(e, ConstEntry):
            if e.value == 0 and not (allow_zero_from and allow_zero_from(ax)):
                ctx.fix(y, ax, f"{ctx.op} '{ctx.name}' copies axis {ax} from its input with a 0 entry")
            continue
        if isinstance(e, DimEntry):
            if ctx.space(e.tensor, e.axis) is not None:
                ctx.tie(y, ax, e.tensor, e.axis)
            continue
        if broadcast and isinstance(e, OtherEntry) and e.value == 1:
            continue  # e.g. ConstantOfShape(1): the axis is the input's, tied by the rule
        if isinstance(e, ScaledDimEntry) and e.value == ctx.space(y, ax).size and e.factor > 0:
            if ctx.space(e.tensor, e.axis) is not None:
                # The entry is factor * (a dim read at run time): each of those channels owns `factor`
                # consecutive elements here, so the computed size follows the cut by construction.
                n = ctx.space(y, ax).size
                ctx.tie(y, ax, e.tensor, e.axis, np.arange(n), np.arange(n) // e.factor)
                continue
            if e.value == e.factor and e.factor_tensor:
                continue  # batch * num_heads at batch 1: the rewrite sets the factor to the kept count
        if isinstance(e, ScaledDimEntry):
            ctx.fix(y, ax, f"{ctx.op} '{ctx.name}': shape entry {ax} is {e.factor} times a dim read at run time")
            continue
        ctx.fix(y, ax, f"{ctx.op} '{ctx.name}': shape entry {ax} is computed at run time")


def _quotients_ok(ctx, entries, what: str) -> None:
    """An entry (channels // divisor) read at run time (Bloom's and DeBERTa's batch = (B*H) // H) stays
    right only where it is 1 at analysis (batch 1): the rewrite then sets the divisor to the kept count.
    Elsewhere the axis it reads keeps its channels."""
    for ax, e in enumerate(entries or []):
        if isinstance(e, QuotientDimEntry) and ctx.space(e.tensor, e.axis) is not None and e.value != 1:
            ctx.fix(e.tensor, e.axis, f"{ctx.op} '{ctx.name}': {what} {ax} divides this axis by {e.divisor}")


def _rewrite_quotients(rctx, entries) -> None:
    for e in entries or []:
        if isinstance(e, QuotientDimEntry) and e.value == 1:
            new = rctx.new_dim(e.tensor, e.axis)  # (B*H') // H' is B again
            if new is not None and new != e.divisor:
                old = np.asarray(rctx.const(e.divisor_tensor))
                rctx.set_const(e.divisor_tensor, e.divisor_reader, e.divisor_input, np.full(old.shape, new, old.dtype))


def rewrite_shape_input(rctx, shape_input_index: int, out: str) -> None:
    """Rewrite constant shape entries (direct or Concat pieces) to the new output dims."""
    entries = shape_entries(rctx.view, rctx.node.input[shape_input_index], rctx.index, shape_input_index)
    if entries is None:
        return
    _rewrite_quotients(rctx, entries)
    changes: dict[tuple, dict[int, int]] = {}
    for ax, e in enumerate(entries):
        if isinstance(e, QuotientDimEntry):
            continue  # _rewrite_quotients
        if isinstance(e, ScaledDimEntry) and e.factor_tensor and e.value == e.factor:
            new = rctx.new_dim(out, ax)  # the dim read at run time was 1 here: the factor is the channel count
            if new is not None and new != e.factor:
                old = np.asarray(rctx.const(e.factor_tensor))
                rctx.set_const(e.factor_tensor, e.factor_reader, e.factor_input, np.full(old.shape, new, old.dtype))
            continue
        if not isinstance(e, ConstEntry) or e.value <= 1:
            continue
        new = rctx.new_dim(out, ax)
        if new != e.value and new is not None:
            changes.setdefault((e.tensor, e.reader, e.reader_input), {})[e.index] = new
    for (tensor, reader, reader_input), edits in changes.items():
        value = np.array(rctx.const(tensor))
        flat = value.reshape(-1)
        for i, v in edits.items():
            flat[i] = v
        rctx.set_const(tensor, reader, reader_input, flat.reshape(value.shape))


# ---------------------------------------------------------------------------------------------- rules


@register("layout", "Constant")
def constant(ctx):
    """Constant: its value is sliced like an initializer wherever its axes are tied."""
    for ax in ctx.axes(ctx.output(0)):
        ctx.free(ctx.output(0), ax)


@register("layout", "Shape", "Size")
def shape_op(ctx):
    """Shape/Size: only observe the input; a shape read later follows the pruned sizes."""
    for ax in ctx.axes(ctx.input(0)):
        ctx.free(ctx.input(0), ax)
    ctx.fix_tensor(ctx.output(0))


@register("layout", "ConstantOfShape")
def constant_of_shape(ctx):
    """ConstantOfShape: a tensor built from a run-time shape."""
    ctx.fix_tensor(ctx.input(0))
    for ax in ctx.axes(ctx.output(0)):
        ctx.fix(ctx.output(0), ax, f"ConstantOfShape '{ctx.name}' builds this axis from a run-time shape")


@register("layout", "Transpose")
def transpose(ctx):
    """Transpose: output axis i is input axis perm[i]."""
    x, y = ctx.input(0), ctx.output(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"Transpose '{ctx.name}': input rank unknown")
        return
    perm = ctx.attr("perm", list(range(r - 1, -1, -1)))
    for i, p in enumerate(perm):
        ctx.tie(x, p, y, i)


def _axes_arg(ctx, k):
    axes = ctx.attr("axes", None)
    if axes is None and len(ctx.inputs) > k and ctx.input(k):
        v = ctx.const(ctx.input(k))
        ctx.fix_tensor(ctx.input(k))
        if v is None:
            return "dynamic"
        axes = [int(a) for a in np.ravel(v)]
    return axes


@register("layout", "Squeeze", "Unsqueeze")
def squeeze(ctx):
    """Squeeze/Unsqueeze: remove or insert size-1 axes; the others keep their order."""
    x, y = ctx.input(0), ctx.output(0)
    rx, ry = ctx.rank(x), ctx.rank(y)
    axes = _axes_arg(ctx, 1)
    if rx is None or ry is None or axes == "dynamic":
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': axes or ranks unknown")
        return
    if ctx.op == "Unsqueeze":
        ins = {a % ry for a in axes}
        kept_out = [a for a in range(ry) if a not in ins]
        pairs = zip(range(rx), kept_out)
    else:
        sx = ctx.shape(x)
        rem = {a % rx for a in axes} if axes else {a for a in range(rx) if sx[a] == 1}
        pairs = zip([a for a in range(rx) if a not in rem], range(ry))
    for a, b in pairs:
        ctx.tie(x, a, y, b)


@register("layout", "Flatten")
def flatten(ctx):
    """Flatten: axes [0, axis) and [axis, r) each merge into one (a channel becomes a block of features)."""
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None:
        ctx.freeze_node(f"Flatten '{ctx.name}': shapes unknown")
        return
    axis = ctx.attr("axis", 1)
    axis = min(max(axis + len(sx) if axis < 0 else axis, 0), len(sx))  # axis == rank is legal: [n, 1]
    groups = [(list(range(0, axis)), [0]), (list(range(axis, len(sx))), [1])]
    if any(sx[a] is None for a in range(axis, len(sx))):
        for ax in range(axis, len(sx)):
            ctx.fix(x, ax, f"Flatten '{ctx.name}': dynamic dims in the flattened axes")
        ctx.fix(y, 1, f"Flatten '{ctx.name}': dynamic dims in the flattened axes")
        groups = groups[:1]
    if any(sx[a] is None for a in range(0, axis)) and axis > 1:
        for ax in range(0, axis):
            ctx.fix(x, ax)
        ctx.fix(y, 0)
        groups = groups[1:]
    _merge_split_ties(ctx, x, y, groups, [], [])


def rewrite_reshape(rctx):
    rewrite_shape_input(rctx, 1, rctx.node.output[0])


@register("layout", "Reshape", rewrite=rewrite_reshape)
def reshape(ctx):
    """Reshape: factor groups of equal product; merges/splits cut only their channel-carrying axis."""
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None:
        ctx.freeze_node(f"Reshape '{ctx.name}': shapes unknown")
        return
    groups, mid_in, mid_out = factor_groups(sx, sy)
    _merge_split_ties(ctx, x, y, groups, mid_in, mid_out)
    one_to_one = {J[0]: I[0] for I, J in groups if len(I) == 1 and len(J) == 1}
    _check_shape_input(ctx, y, 1, allow_zero_from=lambda ax: one_to_one.get(ax) == ax)


@register("layout", "Concat")
def concat(ctx):
    """Concat: input k fills output channels [offset_k, offset_k + size_k)."""
    y = ctx.output(0)
    ry = ctx.rank(y)
    if ry is None:
        ctx.freeze_node(f"Concat '{ctx.name}': output rank unknown")
        return
    axis = ctx.attr("axis") % ry
    offset = 0
    for t in ctx.inputs:
        if not t:
            continue
        st = ctx.shape(t)
        d = st[axis] if st is not None else None
        if d is None:
            ctx.freeze_node(f"Concat '{ctx.name}': size of '{t}' along axis {axis} unknown")
            return
        for ax in range(ry):
            if ax != axis:
                ctx.tie(t, ax, y, ax)
        if d == 1:
            ctx.fix_elements(y, axis, [offset], f"Concat '{ctx.name}' input '{t}' has a single channel",
                             BY_DESIGN)
        else:
            ctx.tie(t, axis, y, axis, None, offset + np.arange(d))
        ctx.free(t, axis)
        offset += d
    ctx.free(y, axis)


def _split_sizes(ctx, axis_dim):
    if len(ctx.inputs) > 1 and ctx.input(1):
        v = ctx.const(ctx.input(1))
        return None if v is None else [int(s) for s in v]
    split = ctx.attr("split", None)
    if split is not None:
        return list(split)
    n = len(ctx.outputs)
    if axis_dim is None:
        return None
    per = -(-axis_dim // n)
    return [min(per, axis_dim - per * k) for k in range(n)]


def rewrite_split(rctx):
    node = rctx.node
    x = node.input[0]
    axis = rctx.attr("axis", 0) % len(rctx.old_shape(x))
    old = [rctx.old_shape(o)[axis] for o in node.output]
    new = [rctx.new_dim(o, axis) for o in node.output]
    if old == new:
        return
    arr = np.array(new, dtype=np.int64)
    if len(node.input) > 1 and node.input[1]:
        rctx.set_input_const(1, arr)
    elif rctx.attr("split", None) is not None:
        rctx.set_attr("split", new)
    elif rctx.view.opset() >= 13:
        rctx.remove_attr("num_outputs")
        rctx.set_input_const(1, arr)
    else:
        rctx.set_attr("split", new)


@register("layout", "Split", rewrite=rewrite_split)
def split(ctx):
    """Split: output k takes input channels [offset_k, offset_k + size_k)."""
    x = ctx.input(0)
    sx = ctx.shape(x)
    if sx is None:
        ctx.freeze_node(f"Split '{ctx.name}': input shape unknown")
        return
    r = len(sx)
    axis = ctx.attr("axis", 0) % r
    if len(ctx.inputs) > 1 and ctx.input(1):
        ctx.fix_tensor(ctx.input(1))
    sizes = _split_sizes(ctx, sx[axis])
    if sizes is None:
        ctx.freeze_node(f"Split '{ctx.name}': split sizes computed at run time")
        return
    offset = 0
    for y, d in zip(ctx.outputs, sizes):
        for ax in range(r):
            if ax != axis:
                ctx.tie(x, ax, y, ax)
        if d == 1:
            ctx.fix_elements(x, axis, [offset], f"Split '{ctx.name}' output '{y}' has a single channel",
                             BY_DESIGN)
        elif d > 1:
            ctx.tie(y, axis, x, axis, None, offset + np.arange(d))
        ctx.free(y, axis)
        offset += d
    ctx.free(x, axis)


def _slice_params(ctx):
    x = ctx.input(0)
    r = ctx.rank(x)
    if ctx.view.opset() < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    vals = []
    for k in range(1, 5):
        t = ctx.input(k)
        if not t:
            vals.append(None)
            continue
        v = ctx.const(t)
        ctx.fix_tensor(t)
        if v is None:
            return None
        vals.append([int(a) for a in np.ravel(v)])
    starts, ends, axes, steps = vals
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return starts, ends, [a % r for a in axes], steps


def _norm_range(s, e, d):
    s = s + d if s < 0 else s
    e = e + d if e < 0 else e
    return max(0, min(s, d)), max(0, min(e, d))


def rewrite_slice(rctx):
    node = rctx.node
    x, y = node.input[0], node.output[0]
    r = len(rctx.old_shape(x))
    starts = [int(a) for a in np.ravel(rctx.const(node.input[1]))]
    ends = [int(a) for a in np.ravel(rctx.const(node.input[2]))]
    axes = ([int(a) % r for a in np.ravel(rctx.const(node.input[3]))]
            if len(node.input) > 3 and node.input[3] else list(range(len(starts))))
    changed = False
    for k, ax in enumerate(axes):
        kept = rctx.kept(x, ax)
        if kept is None:
            continue
        s, e = _norm_range(starts[k], ends[k], rctx.old_shape(x)[ax])
        new_s = int(np.searchsorted(kept, s))
        starts[k], ends[k] = new_s, new_s + rctx.new_dim(y, ax)
        changed = True
    if changed:
        rctx.set_input_const(1, np.array(starts, dtype=np.int64))
        rctx.set_input_const(2, np.array(ends, dtype=np.int64))


@register("layout", "Slice", rewrite=rewrite_slice)
def slice_op(ctx):
    """Slice with step 1: output channel k is input channel start + k."""
    x, y = ctx.input(0), ctx.output(0)
    sx = ctx.shape(x)
    params = _slice_params(ctx) if sx is not None else None
    if params is None:
        ctx.freeze_node(f"Slice '{ctx.name}': bounds computed at run time or shapes unknown")
        return
    starts, ends, axes, steps = params
    sliced = dict(zip(axes, zip(starts, ends, steps)))
    opset_attr = ctx.view.opset() < 10
    for ax in range(len(sx)):
        if ax not in sliced:
            ctx.tie(x, ax, y, ax)
            continue
        s, e, st = sliced[ax]
        d = sx[ax]
        if d is None:
            ctx.fix(y, ax)
            continue
        if st != 1 or opset_attr:
            ctx.fix(x, ax, f"Slice '{ctx.name}' uses step {st} on axis {ax}")
            ctx.fix(y, ax, f"Slice '{ctx.name}' uses step {st} on axis {ax}")
            continue
        s, e = _norm_range(s, e, d)
        n = max(e - s, 0)
        ctx.free(x, ax)
        ctx.free(y, ax)
        if n == 1:
            ctx.fix_elements(x, ax, [s], f"Slice '{ctx.name}' keeps a single channel", BY_DESIGN)
        elif n > 1:
            ctx.tie(y, ax, x, ax, None, s + np.arange(n))


def rewrite_gather(rctx):
    node = rctx.node
    x = node.input[0]
    axis = rctx.attr("axis", 0) % len(rctx.old_shape(x))
    kept = rctx.kept(x, axis)
    if kept is None:
        return
    idx = np.array(rctx.const(node.input[1]))
    d = rctx.old_shape(x)[axis]
    idx = np.where(idx < 0, idx + d, idx)
    big = [k for k, n in enumerate(idx.shape) if n > 1]
    if len(big) == 1:  # one axis of indices selects channels (others are size 1)
        kept_out = rctx.kept(node.output[0], axis + big[0])
        if kept_out is not None:  # selected channels that were cut leave the index list too
            idx = np.take(idx, kept_out, axis=big[0])
    rctx.set_input_const(1, np.searchsorted(kept, idx).astype(idx.dtype))


@register("layout", "Gather", rewrite=rewrite_gather)
def gather(ctx):
    """Gather: constant indices select channels (an index map); data axes around it pass through."""
    x, ind, y = ctx.input(0), ctx.input(1), ctx.output(0)
    sx, si = ctx.shape(x), ctx.shape(ind)
    if sx is None or si is None:
        ctx.freeze_node(f"Gather '{ctx.name}': shapes unknown")
        return
    r, ri = len(sx), len(si)
    axis = ctx.attr("axis", 0) % r
    for ax in range(axis):
        ctx.tie(x, ax, y, ax)
    for ax in range(axis + 1, r):
        ctx.tie(x, ax, y, ax - 1 + ri)
    idx = ctx.const(ind)
    if ctx.is_weight(x) and not ctx.is_weight(ind):
        # Embedding lookup: the table's row axis is a vocabulary, not channels.
        ctx.fix(x, axis, f"Gather '{ctx.name}' looks up rows of '{x}'")
        for ax in range(ri):
            ctx.tie(ind, ax, y, axis + ax)
        return
    if idx is None:
        ctx.fix(x, axis, f"Gather '{ctx.name}' selects along axis {axis} with run-time indices")
        for ax in range(ri):
            ctx.tie(ind, ax, y, axis + ax)
        return
    ctx.fix_tensor(ind)
    d = sx[axis]
    flat = np.ravel(idx).astype(np.int64)
    flat = np.where(flat < 0, flat + (d or 0), flat)
    ctx.free(x, axis)
    if flat.size == 1:  # a scalar index, or a list of one (Falcon's fused_qkv[..., [-2], :])
        ctx.fix_elements(x, axis, flat, f"Gather '{ctx.name}' reads a single channel", BY_DESIGN)
    elif sum(n > 1 for n in si) == 1 and np.all(np.diff(flat) > 0):
        # indices of shape [1, n, 1] etc.: one output axis carries the selected channels, in order
        k = next(k for k, n in enumerate(si) if n > 1)
        ctx.tie(y, axis + k, x, axis, None, flat)
    else:
        ctx.fix(x, axis, f"Gather '{ctx.name}' repeats or reorders channels")
        for ax in range(ri):
            ctx.fix(y, axis + ax)


def _nd_params(ctx):
    """(batch_dims, k = indices' last dim, data rank, indices rank) of a GatherND, or None if unknown."""
    sx, si = ctx.shape(ctx.input(0)), ctx.shape(ctx.input(1))
    if sx is None or si is None or not si or si[-1] is None:
        return None
    return ctx.attr("batch_dims", 0), int(si[-1]), len(sx), len(si)


def rewrite_gather_nd(rctx):
    """Constant single-axis indices (k = 1) into a cut axis 0 are renumbered, and dropped where the output
    axis they fill lost channels, as for Gather."""
    node = rctx.node
    x, y = node.input[0], node.output[0]
    kept = rctx.kept(x, 0)
    if kept is None or rctx.attr("batch_dims", 0) != 0:
        return
    idx = np.array(rctx.const(node.input[1]))
    if idx.shape[-1] != 1:
        return
    d = rctx.old_shape(x)[0]
    idx = np.where(idx < 0, idx + d, idx)
    big = [k for k, n in enumerate(idx.shape[:-1]) if n > 1]
    if len(big) == 1:
        kept_out = rctx.kept(y, big[0])
        if kept_out is not None:
            idx = np.take(idx, kept_out, axis=big[0])
    rctx.set_input_const(1, np.searchsorted(kept, idx).astype(idx.dtype))


@register("layout", "GatherND", rewrite=rewrite_gather_nd)
def gather_nd(ctx):
    """GatherND: batch axes and the data axes after the indexed ones pass through; constant indices into
    one axis select channels like Gather's; an axis indexed otherwise (or with repeats) is not a channel."""
    x, ind, y = ctx.input(0), ctx.input(1), ctx.output(0)
    params = _nd_params(ctx)
    if params is None or ctx.rank(y) is None:
        ctx.freeze_node(f"GatherND '{ctx.name}': shapes unknown")
        return
    b, k, r, q = params
    for ax in range(b):  # batch axes: data, indices and output share them
        ctx.tie(x, ax, y, ax)
        ctx.tie(ind, ax, y, ax)
    for ax in range(b + k, r):  # trailing data axes: the slices copied whole
        ctx.tie(x, ax, y, q - 1 + ax - b - k)
    for ax in range(b, q - 1):
        ctx.tie(ind, ax, y, ax)
    ctx.fix(ind, q - 1)
    idx = ctx.const(ind)
    d = ctx.shape(x)[b] if k == 1 else None
    if idx is None or k != 1 or b != 0 or d is None:
        for ax in range(b, b + k):
            ctx.fix(x, ax, f"GatherND '{ctx.name}' indexes axis {ax} of '{x}'"
                    + (" with run-time indices" if idx is None else ""))
        return
    flat = np.ravel(idx).astype(np.int64)
    flat = np.where(flat < 0, flat + d, flat)
    si = ctx.shape(ind)[:-1]
    ctx.free(x, 0)
    big = [a for a, n in enumerate(si) if n > 1]
    if not big:
        ctx.fix_elements(x, 0, flat, f"GatherND '{ctx.name}' reads a single channel", BY_DESIGN)
    elif len(big) == 1 and np.all(np.diff(flat) > 0):
        ctx.tie(y, big[0], x, 0, None, flat)
    else:
        ctx.fix(x, 0, f"GatherND '{ctx.name}' repeats or reorders the rows of '{x}'")
        for a in range(q - 1):
            ctx.fix(y, a)


@register("layout", "ScatterND")
def scatter_nd(ctx):
    """ScatterND: slices of the updates overwrite the data; the data axes after the indexed ones pass through.

    Updates are indices[:-1] + data[k:]: the trailing axes are copied whole, so they carry channels."""
    x, ind, u, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    sx, si = ctx.shape(x), ctx.shape(ind)
    if sx is None or si is None or not si or si[-1] is None or ctx.rank(u) != len(si) - 1 + len(sx) - si[-1]:
        ctx.freeze_node(f"ScatterND '{ctx.name}': shapes unknown")
        return
    k, r, q = int(si[-1]), len(sx), len(si)
    for ax in range(r):
        ctx.tie(x, ax, y, ax)
    for ax in range(k, r):
        ctx.tie(x, ax, u, q - 1 + ax - k)
    for ax in range(q - 1):  # one update slice per index tuple
        ctx.tie(ind, ax, u, ax)
    ctx.fix(ind, q - 1)
    for ax in range(k):
        ctx.fix(x, ax, f"ScatterND '{ctx.name}' writes along axis {ax} of '{x}' by index")


@register("layout", "GatherElements")
def gather_elements(ctx):
    """GatherElements: the output has the indices' shape; along `axis` it picks data elements (not a
    channel axis), on the other axes element i comes from data element i (a prefix when indices are shorter)."""
    x, ind, y = ctx.input(0), ctx.input(1), ctx.output(0)
    sx, si = ctx.shape(x), ctx.shape(ind)
    if sx is None or si is None or len(sx) != len(si):
        ctx.freeze_node(f"GatherElements '{ctx.name}': shapes unknown")
        return
    axis = ctx.attr("axis", 0) % len(sx)
    for ax in range(len(sx)):
        ctx.tie(ind, ax, y, ax)
        if ax == axis:
            ctx.fix(x, ax, f"GatherElements '{ctx.name}' picks elements along axis {ax}", BY_DESIGN)
        elif sx[ax] is not None and sx[ax] == si[ax]:
            ctx.tie(x, ax, y, ax)
        else:
            ctx.fix(x, ax, f"GatherElements '{ctx.name}' reads only the first {si[ax]} of axis {ax}")


def rewrite_expand(rctx):
    rewrite_shape_input(rctx, 1, rctx.node.output[0])


@register("layout", "Expand", rewrite=rewrite_expand)
def expand(ctx):
    """Expand: axes of equal size pass through; broadcast axes take the channels of whoever uses them."""
    x, y = ctx.input(0), ctx.output(0)
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None:
        ctx.freeze_node(f"Expand '{ctx.name}': shapes unknown")
        return
    ry, rx = len(sy), len(sx)
    for ax in range(rx):
        ctx.tie(x, ax, y, ry - rx + ax)
    for ax in range(ry):
        ctx.free(y, ax)
    _check_shape_input(ctx, y, 1, allow_zero_from=None, broadcast=True)


def rewrite_tile(rctx):
    _rewrite_quotients(rctx, shape_entries(rctx.view, rctx.node.input[1], rctx.index, 1))


@register("layout", "Tile", rewrite=rewrite_tile)
def tile(ctx):
    """Tile: output element i of a repeated axis is input element i mod n (DeBERTa tiles per-head position
    projections over the batch of a [B*H, ...] layout): cutting a channel removes all its copies. A size-1
    axis repeated is not a channel (its copies would need new repeats)."""
    x, y = ctx.input(0), ctx.output(0)
    reps = ctx.const(ctx.input(1))
    ctx.fix_tensor(ctx.input(1))
    r = ctx.rank(x)
    if reps is None or r is None:
        ctx.freeze_node(f"Tile '{ctx.name}': repeats computed at run time")
        return
    _quotients_ok(ctx, shape_entries(ctx.view, ctx.input(1), ctx.index, 1), "repeat count")
    sx = ctx.shape(x)
    for ax in range(r):
        n, k = sx[ax], int(reps[ax])
        if k == 1:
            ctx.tie(x, ax, y, ax)
        elif n is not None and n > 1:
            ctx.tie(y, ax, x, ax, np.arange(n * k), np.arange(n * k) % n)
        else:
            ctx.fix(x, ax, f"Tile '{ctx.name}' repeats axis {ax}")
            ctx.fix(y, ax, f"Tile '{ctx.name}' repeats axis {ax}")


def _block_map(ctx, blocks_first: bool, to_depth: bool):
    """Channel maps for DepthToSpace (DCR/CRD) and SpaceToDepth."""
    x, y = ctx.input(0), ctx.output(0)
    sx = ctx.shape(x)
    if sx is None or ctx.rank(x) != 4:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    b = ctx.attr("blocksize")
    ctx.tie(x, 0, y, 0)
    for ax in (2, 3):
        ctx.fix(x, ax)
        ctx.fix(y, ax)
    small, big = (x, y) if to_depth else (y, x)
    c_small = ctx.shape(small)[1]
    if c_small is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': channel count unknown")
        return
    k = np.arange(b * b)
    c = np.arange(c_small)
    if blocks_first:  # big channel = k * C + c
        big_idx = (k[:, None] * c_small + c[None, :]).ravel()
        small_idx = np.tile(c, b * b)
    else:  # big channel = c * b*b + k
        big_idx = (c[:, None] * b * b + k[None, :]).ravel()
        small_idx = np.repeat(c, b * b)
    ctx.tie(big, 1, small, 1, big_idx, small_idx)


@register("layout", "DepthToSpace")
def depth_to_space(ctx):
    """DepthToSpace: each output channel gathers blocksize² input channels (DCR or CRD order)."""
    _block_map(ctx, blocks_first=ctx.attr("mode", b"DCR") in (b"DCR", "DCR"), to_depth=False)


@register("layout", "SpaceToDepth")
def space_to_depth(ctx):
    """SpaceToDepth: each input channel spreads over blocksize² output channels."""
    _block_map(ctx, blocks_first=True, to_depth=True)
