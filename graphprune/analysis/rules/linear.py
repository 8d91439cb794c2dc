"""Gemm and MatMul: the contraction axes of both operands are tied; the other axes pass to the output.

When an operand is a constant (a weight, possibly seen through Transpose/Cast/Identity), its contraction
axis consumes channels and its other matrix axis produces them. Two activations (attention's Q·Kᵀ and
P·V) are handled by the same ties, and their axes are marked: the batch axes are attention heads, the axis
Q·Kᵀ contracts and the axis P·V keeps from V are the dimension inside a head. Reshapes read these marks to
cut whole heads (or, with --prune-head-dim, head dimensions), and groups holding them are of kind "head".
An operand gathered from a constant table of matrices by run-time indices (MoE experts run batched) is a
weight read where the Gather reads the table: its axes produce and consume channels like a weight's.
"""

from __future__ import annotations

import math

from ..reasons import BY_DESIGN
from ..registry import register
from .elementwise import BROADCAST, UNARY

_PASS_THROUGH = frozenset(UNARY) | frozenset(BROADCAST)  # ops between a Softmax and P·V (Cast, Dropout, Where)


def _roles(ctx, operand, k_axis, n_axis):
    if ctx.is_weight(operand):
        ctx.role("consumer", operand, k_axis)
        if n_axis is not None:
            ctx.role("producer", operand, n_axis)
    else:
        ctx.role("consumer", operand, k_axis)



def gemm_macs(view, node):
    """Each output element sums over the inner dimension K of A (axis 0 with transA, else 1)."""
    a, y = view.shape(node.input[0]), view.shape(node.output[0])
    k_axis = 0 if view.attr(node, "transA", 0) else 1
    out = node.output[0]
    return math.prod(y) * int(a[k_axis]), [(out, ax) for ax in range(len(y or []))] + [(node.input[0], k_axis)]


def matmul_macs(view, node):
    """Each output element sums over A's last axis."""
    a, y = view.shape(node.input[0]), view.shape(node.output[0])
    if None in y or a[-1] is None:
        return 0, []
    out = node.output[0]
    return math.prod(y) * int(a[-1]), [(out, ax) for ax in range(len(y))] + [(node.input[0], len(a) - 1)]


@register("linear", "Gemm", macs=gemm_macs)
def gemm(ctx):
    """Gemm (transA/transB): Y[M, N] = A[M, K] · B[K, N] + C."""
    a, b, c, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    if ctx.rank(a) != 2 or ctx.rank(b) != 2:
        ctx.freeze_node(f"Gemm '{ctx.name}': operand shapes unknown")
        return
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a_m, a_k = (1, 0) if ta else (0, 1)
    b_k, b_n = (1, 0) if tb else (0, 1)
    ctx.tie(a, a_m, y, 0)
    ctx.tie(a, a_k, b, b_k)
    ctx.tie(b, b_n, y, 1)
    if c:
        ctx.elementwise([c], y)
    if ctx.is_weight(b):
        _roles(ctx, b, b_k, b_n)
    elif ctx.is_weight(a):
        _roles(ctx, a, a_k, a_m)
    else:
        ctx.role("consumer", a, a_k)


def _from_softmax(ctx, tensor, depth: int = 6) -> bool:
    """Is `tensor` a softmax's output, seen through elementwise ops (Cast, Dropout, sdpa's Where(IsNaN))."""
    view = ctx.view
    todo, seen = [tensor], set()
    while todo and depth > 0:
        depth -= 1
        nxt = []
        for t in todo:
            p = view.producer.get(t)
            if p is None or t in seen:
                continue
            seen.add(t)
            node = view.nodes[p]
            if node.op_type in ("Softmax", "LogSoftmax"):
                return True
            if node.op_type in _PASS_THROUGH:
                nxt += [i for i in node.input if i and not view.is_constant(i)]
        todo = nxt
    return False


def _mark_attention(ctx, a, a_k, b, b_k, b_n, y, y_n, n_batch):
    """Q·Kᵀ or P·V (two activations with batch axes): the batch axes are heads; the head dimension is what
    Q·Kᵀ contracts, or what P·V keeps from V (P·V's contraction is the key sequence, not a channel)."""
    for ax in range(n_batch):
        ctx.mark(y, ax, "head")
    if _from_softmax(ctx, a):
        dims = [(b, b_n), (y, y_n)] if b_n is not None else []
    else:
        dims = [(a, a_k), (b, b_k)]
    _head_dims(ctx, dims, n_batch)


def _head_dims(ctx, dims, n_batch):
    """Mark the dimension inside heads; with batch and head axes both there (multi-head attention), keep it
    whole unless --prune-head-dim: default options cut whole heads only."""
    for t, ax in dims:
        ctx.mark(t, ax, "head_dim")
        if n_batch >= 2 and not ctx.options.prune_head_dim:
            ctx.fix(t, ax, f"{ctx.op} '{ctx.name}' reads axis {ax} of '{t}' as the dimension inside attention "
                           "heads: it is cut only with --prune-head-dim", BY_DESIGN)


def _expert_table(ctx, tensor):
    """(gather node, axis offset) when `tensor` is whole matrices picked from a constant table by run-time
    indices along axis 0 (MoE experts run batched: ``gate_up_proj[expert_ids]``, one matrix per token; a
    Gather on axis 0, or dynamo's GatherND with indices [..., 1]), else None. Axis j of `tensor` is axis
    j - offset of the table (the gather rules tie them)."""
    p = ctx.view.producer.get(tensor)
    if p is None:
        return None
    node = ctx.view.nodes[p]
    if node.op_type not in ("Gather", "GatherND") or len(node.input) < 2:
        return None
    table, ind = node.input[0], node.input[1]
    rt, si = ctx.rank(table), ctx.shape(ind)
    if not ctx.is_weight(table) or ctx.is_weight(ind) or rt is None or si is None or rt < 3:
        return None
    if node.op_type == "Gather" and ctx.view.attr(node, "axis", 0) == 0:
        return p, len(si) - 1
    if node.op_type == "GatherND" and ctx.view.attr(node, "batch_dims", 0) == 0 and si and si[-1] == 1:
        return p, len(si) - 2
    return None


def _expert_roles(ctx, experts) -> None:
    """Batched experts: each gathered operand's contraction axis consumes channels and its other matrix axis
    produces them, as for a weight, with the roles on the table where the Gather reads it."""
    for k, n, (gather, off) in experts:
        if k - off >= 1:
            ctx.role_at(gather, "consumer", 0, k - off)
        if n is not None and n - off >= 1:
            ctx.role_at(gather, "producer", 0, n - off)


@register("linear", "MatMul", macs=matmul_macs)
def matmul(ctx):
    """MatMul with numpy semantics: [..., M, K] · [..., K, N], batch axes broadcast."""
    a, b, y = ctx.input(0), ctx.input(1), ctx.output(0)
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra is None or rb is None or ry is None:
        ctx.freeze_node(f"MatMul '{ctx.name}': operand shapes unknown")
        return
    if ra == 1 and rb == 1:
        ctx.tie(a, 0, b, 0)
        ctx.role("consumer", a, 0)
        return
    a_k = ra - 1
    b_k = 0 if rb == 1 else rb - 2
    ctx.tie(a, a_k, b, b_k)
    a_m = ra - 2 if ra >= 2 else None
    b_n = rb - 1 if rb >= 2 else None
    # Output layout: batch..., [M if a is 2-D+], [N if b is 2-D+].
    y_n = ry - 1 if b_n is not None else None
    y_m = (ry - 2 if b_n is not None else ry - 1) if a_m is not None else None
    if a_m is not None:
        ctx.tie(a, a_m, y, y_m)
    if b_n is not None:
        ctx.tie(b, b_n, y, y_n)
    nb_y = ry - (a_m is not None) - (b_n is not None)
    for t, r, nmat in ((a, ra, 2 if ra >= 2 else 1), (b, rb, 2 if rb >= 2 else 1)):
        nb = r - nmat
        for ax in range(nb):
            ctx.tie(t, ax, y, nb_y - nb + ax)
    experts = [(k, n, e) for t, k, n in ((a, a_k, a_m), (b, b_k, b_n)) if (e := _expert_table(ctx, t))]
    if ctx.is_weight(b):
        _roles(ctx, b, b_k, b_n)
    elif ctx.is_weight(a):
        _roles(ctx, a, a_k, a_m)
    elif experts:  # one matrix per token, not attention: its batch axis is the tokens
        _expert_roles(ctx, experts)
    else:
        ctx.role("consumer", a, a_k)
        if nb_y > 0:
            _mark_attention(ctx, a, a_k, b, b_k, b_n, y, y_n, nb_y)


# ---------------------------------------------------------------------------------------------- Einsum


def _equation(view, node) -> str:
    eq = view.attr(node, "equation", "")
    return (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")


def _einsum_terms(eq: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """One letter per axis of each operand and of the output ("..." spelled out as digits, numpy-aligned from
    the right), or None if the equation does not fit the ranks."""
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks) or not all(c.isalpha() or c in ".,->" for c in eq):
        return None
    n_ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    ell = "".join(str(k) for k in range(n_ell)) if n_ell <= 10 else None
    if ell is None:
        return None
    spelled = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            k = r - len(t.replace("...", ""))
            t = t.replace("...", ell[n_ell - k:] if k > 0 else "")
        if len(t) != r:
            return None
        spelled.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: the ellipsis, then the letters used once, sorted
        letters = "".join(spelled)
        out = ell + "".join(sorted(c for c in set(letters) if c.isalpha() and letters.count(c) == 1))
    return spelled, out


def einsum_macs(view, node):
    """Each output element sums over the contracted letters: one multiply-accumulate per letter combination."""
    shapes = [view.shape(t) for t in node.input]
    if len(shapes) != 2 or None in shapes:
        return 0, []
    parsed = _einsum_terms(_equation(view, node), [len(s) for s in shapes])
    if parsed is None:
        return 0, []
    terms, out = parsed
    sizes, where = {}, {}
    for t, letters, shape in zip(node.input, terms, shapes):
        for ax, (c, d) in enumerate(zip(letters, shape)):
            if d is None:
                return 0, []
            if d != 1:
                sizes[c] = d
            where.setdefault(c, (t, ax))
    for ax, c in enumerate(out):
        where[c] = (node.output[0], ax)
    return math.prod(sizes.values()), [where[c] for c in sizes]


@register("linear", "Einsum", macs=einsum_macs)
def einsum(ctx):
    """Einsum: axes named by one letter are tied across operands and output; weights consume contracted letters.

    A weight's contracted letters consume channels and the letters only it gives the output produce them
    (`bld,dh->blh`). Two activations are attention (`bhqd,bhkd->bhqk`, `bhqk,bhkd->bhqd`): the letters both
    keep are heads. A letter repeated in one term (a diagonal) is not followed."""
    eq = _equation(ctx.view, ctx.node)
    ranks = [ctx.rank(t) for t in ctx.inputs]
    y = ctx.output(0)
    parsed = None if None in ranks or ctx.rank(y) is None else _einsum_terms(eq, ranks)
    if parsed is None:
        ctx.freeze_node(f"Einsum '{ctx.name}': equation '{eq}' or operand shapes not understood")
        return
    terms, out = parsed
    anchor: dict[str, tuple[str, int]] = {}  # the first axis seen per letter, the output's first
    for ax, c in enumerate(out):
        anchor.setdefault(c, (y, ax))
    for t, letters in [(y, out)] + list(zip(ctx.inputs, terms)):
        for ax, c in enumerate(letters):
            if letters.count(c) > 1:
                ctx.fix(t, ax, f"Einsum '{ctx.name}' takes a diagonal over '{c}' ('{eq}')")
            elif ctx.shape(t)[ax] == 1:
                ctx.free(t, ax)  # broadcast: a size-1 axis carries nothing
            elif anchor.setdefault(c, (t, ax)) != (t, ax):
                ctx.tie(t, ax, *anchor[c])
            else:
                ctx.touched.add((t, ax))
    contracted = {c for letters in terms for c in letters if c not in out}
    weights = [k for k, t in enumerate(ctx.inputs) if ctx.is_weight(t)]
    for k in weights:
        others = "".join(terms[j] for j in range(len(terms)) if j != k)
        for ax, c in enumerate(terms[k]):
            if c in contracted:
                ctx.role("consumer", ctx.input(k), ax)
            elif c not in others:
                ctx.role("producer", ctx.input(k), ax)
    if weights or len(terms) != 2:
        return
    _mark_einsum_attention(ctx, terms, out, contracted)


def _mark_einsum_attention(ctx, terms, out, contracted):
    """Like MatMul's: letters both operands keep are heads; what Q·Kᵀ contracts, or what P·V keeps from V only,
    is the dimension inside a head."""
    a, b = ctx.inputs
    y = ctx.output(0)
    for ax, c in enumerate(terms[0]):
        if c in contracted:
            ctx.role("consumer", a, ax)
    if not contracted:
        return  # an outer or elementwise product, not attention
    batch = [ax for ax, c in enumerate(out) if c in terms[0] and c in terms[1]]
    for ax in batch:
        ctx.mark(y, ax, "head")
    if _from_softmax(ctx, a):
        dims = [(y, ax) for ax, c in enumerate(out) if c in terms[1] and c not in terms[0]]
        dims += [(b, ax) for ax, c in enumerate(terms[1]) if c in out and c not in terms[0]]
    else:
        dims = [(t, ax) for t, letters in ((a, terms[0]), (b, terms[1])) for ax, c in enumerate(letters)
                if c in contracted]
    _head_dims(ctx, dims, len(batch))
