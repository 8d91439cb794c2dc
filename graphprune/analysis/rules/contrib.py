"""ONNX Runtime contrib ops (com.microsoft) written by its transformer optimizer.

Fused attention keeps whole heads together through the packed QKV weight and its output, and its
`num_heads` attribute follows the cut; fused norms behave like LayerNormalization; fused GELUs are
elementwise with a per-channel bias. Ops whose layout we do not describe freeze what they touch.
"""

from __future__ import annotations

import numpy as np

from ..reasons import BY_DESIGN
from ..registry import register
from .norm import layer_norm

MS = "com.microsoft"


def _head_ties(ctx, tensor, axis, heads, head_size, offset=0, anchor=None):
    """Tie elements offset + h*head_size + d of (tensor, axis) to head h of `anchor` (tensor, axis, size)."""
    idx = offset + np.arange(heads * head_size)
    head = np.arange(heads * head_size) // head_size
    a_t, a_ax, a_size = anchor
    a_head = head * (a_size // heads)
    ctx.tie(tensor, axis, a_t, a_ax, idx, a_head)


def _tie_within_heads(ctx, t, ax, heads):
    sp = ctx.space(t, ax)
    if sp is None:
        return
    per = sp.size // heads
    idx = np.arange(sp.size)
    ctx.tie(t, ax, t, ax, idx, (idx // per) * per)


def _freeze_heads_for_extras(ctx, y, axis, past_inputs, bias_input):
    """KV caches (past inputs, present outputs) and a per-head attention bias are [.., num_heads, ..]:
    their layouts are not cut, so they keep every head (freezing the output's head axis freezes the
    whole head group through its ties). A bias broadcast over heads (head dim 1) constrains nothing."""
    for k in past_inputs:
        if ctx.input(k):
            ctx.fix(y, axis, f"{ctx.op} '{ctx.name}' reads a KV cache ('{ctx.input(k)}') laid out by head")
    for o in ctx.outputs[1:]:
        if o:
            ctx.fix(y, axis, f"{ctx.op} '{ctx.name}' returns a KV cache ('{o}') laid out by head")
    bias = ctx.input(bias_input)
    sb = ctx.shape(bias)
    if bias and (sb is None or len(sb) != 4 or sb[1] != 1):
        ctx.fix(y, axis, f"{ctx.op} '{ctx.name}': attention bias '{bias}' has a head axis")


def rewrite_attention(rctx):
    node = rctx.node
    out = node.output[0]
    old = rctx.old_shape(out)[-1]
    new = rctx.new_dim(out, len(rctx.old_shape(out)) - 1)
    if new == old:
        return
    heads = rctx.attr("num_heads")
    kept_heads = heads * new // old
    rctx.set_attr("num_heads", int(kept_heads))
    sizes = rctx.attr("qkv_hidden_sizes")
    if sizes:
        rctx.set_attr("qkv_hidden_sizes", [int(s) * kept_heads // heads for s in sizes])


@register("contrib", "Attention", domain=MS, rewrite=rewrite_attention)
def ms_attention(ctx):
    """com.microsoft Attention: packed QKV weight [in, q+k+v]; whole heads are cut, num_heads follows."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.output(0)
    sx, sw, sy = ctx.shape(x), ctx.shape(w), ctx.shape(y)
    heads = ctx.attr("num_heads")
    if sx is None or sw is None or sy is None or not ctx.is_weight(w) or not heads:
        ctx.freeze_node(f"Attention '{ctx.name}': weights or shapes unknown")
        return
    for extra in ctx.inputs[3:]:
        if extra:
            for ax in ctx.axes(extra):
                ctx.free(extra, ax)
    for extra in ctx.outputs[1:]:
        if extra:
            ctx.fix_tensor(extra, f"Attention '{ctx.name}' returns a KV cache")
    for ax in range(len(sx) - 1):
        ctx.tie(x, ax, y, ax)
    ctx.tie(x, len(sx) - 1, w, 0)
    ctx.role("consumer", w, 0)
    sizes = ctx.attr("qkv_hidden_sizes") or [sw[1] // 3] * 3
    ry = len(sy)
    anchor = (y, ry - 1, sy[-1])
    _tie_within_heads(ctx, y, ry - 1, heads)
    ctx.mark(y, ry - 1, "head")
    offset = 0
    for size in sizes:
        _head_ties(ctx, w, 1, heads, size // heads, offset, anchor)
        if b:
            _head_ties(ctx, b, 0, heads, size // heads, offset, anchor)
        offset += size
    ctx.role("producer", w, 1)
    _freeze_heads_for_extras(ctx, y, ry - 1, past_inputs=(4,), bias_input=5)


def rewrite_mha(rctx):
    node = rctx.node
    q = node.input[0]
    shp = rctx.old_shape(q)
    old, new = shp[-1], rctx.new_dim(q, len(shp) - 1)
    if new != old:
        rctx.set_attr("num_heads", int(rctx.attr("num_heads") * new // old))


@register("contrib", "MultiHeadAttention", domain=MS, rewrite=rewrite_mha)
def ms_mha(ctx):
    """com.microsoft MultiHeadAttention on projected q/k/v [B, S, H*D]: heads tie q, k, v and the output."""
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    y = ctx.output(0)
    heads = ctx.attr("num_heads")
    sq, sy = ctx.shape(q), ctx.shape(y)
    if sq is None or sy is None or len(sq) != 3 or not k or not v or ctx.rank(k) != 3 or ctx.rank(v) != 3:
        ctx.freeze_node(f"MultiHeadAttention '{ctx.name}': only separate 3-D q, k, v are described")
        return
    anchor = (y, 2, sy[2])
    _tie_within_heads(ctx, y, 2, heads)
    ctx.mark(y, 2, "head")
    for t in (q, k, v):
        st = ctx.shape(t)
        _head_ties(ctx, t, 2, heads, st[2] // heads, 0, anchor)
        ctx.tie(t, 0, y, 0)
    ctx.tie(q, 1, y, 1)
    ctx.role("consumer", q, 2)
    bias = ctx.input(3)
    if bias:  # packed [q | k | v] bias, each part laid out by head like its projection
        offset = 0
        for t in (q, k, v):
            size = ctx.shape(t)[2]
            _head_ties(ctx, bias, 0, heads, size // heads, offset, anchor)
            offset += size
    for extra in ctx.inputs[4:]:
        if extra:
            for ax in ctx.axes(extra):
                ctx.free(extra, ax)
    for extra in ctx.outputs[1:]:
        if extra:
            ctx.fix_tensor(extra, f"MultiHeadAttention '{ctx.name}' returns a KV cache")
    _freeze_heads_for_extras(ctx, y, 2, past_inputs=(6, 7), bias_input=5)


@register("contrib", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def ms_skip_layer_norm(ctx):
    """com.microsoft Skip(Simplified)LayerNormalization: residual add + norm over the hidden axis."""
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    data = [t for t in ctx.inputs[:2] if t]
    params = [t for t in ctx.inputs[2:] if t]
    outs = [t for t in ctx.outputs if t]
    y = ctx.output(0)
    ctx.elementwise(data, y)
    for p in params:
        ctx.tie(p, ctx.rank(p) - 1, y, r - 1)
    for o in outs[1:]:
        ro = ctx.rank(o)
        if ro == r and ctx.shape(o)[-1] == ctx.shape(y)[-1]:
            ctx.elementwise([y], o)
        elif ro is not None:
            ctx.fix_tensor(o, f"{ctx.op} '{ctx.name}' returns normalisation statistics", BY_DESIGN)
    ctx.mark(x, r - 1, "hidden")
    if not ctx.options.prune_hidden:
        ctx.fix(x, r - 1, f"{ctx.op} '{ctx.name}' normalises over this axis (hidden-size pruning changes its "
                          f"statistics; opt in with --prune-hidden)", BY_DESIGN)


@register("contrib", "SimplifiedLayerNormalization", "LayerNormalization", domain=MS)
def ms_layer_norm(ctx):
    """com.microsoft (Simplified)LayerNormalization (RMSNorm): like LayerNormalization."""
    layer_norm(ctx)


@register("contrib", "FastGelu", "BiasGelu", "Gelu", "QuickGelu", "BiasAdd", "BiasSplitGelu", domain=MS)
def ms_gelu(ctx):
    """com.microsoft fused GELU variants: elementwise, an optional per-channel bias on the last axis."""
    if ctx.op == "BiasSplitGelu":
        ctx.freeze_node(f"BiasSplitGelu '{ctx.name}': split halves not described")
        return
    ctx.elementwise([t for t in ctx.inputs if t], ctx.output(0))


@register("contrib", "EmbedLayerNormalization", "GroupQueryAttention", "RotaryEmbedding", "PackedAttention",
          "DecoderMaskedMultiHeadAttention", "DecoderAttention", "LongformerAttention", "QAttention",
          "QOrderedAttention", "SparseAttention", "PagedAttention", domain=MS)
def ms_unsupported(ctx):
    """Other fused transformer ops: their packed layouts are not described, so they freeze what they touch."""
    ctx.freeze_node(f"com.microsoft {ctx.op} (node '{ctx.name}') has a packed layout graphprune does not rewrite")
