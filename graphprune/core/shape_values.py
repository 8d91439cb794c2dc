"""Where each entry of a shape tensor (Reshape target, Expand shape, Resize sizes) comes from.

Exporters write shape targets as constants, or build them at run time: Shape -> Gather -> Unsqueeze ->
Concat with constant pieces. The rewrite can change a constant piece, and a piece read from another
tensor's dimension follows that tensor automatically; anything else cannot be rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConstEntry:
    value: int
    tensor: str  # stored constant holding the value
    index: int  # flat index inside that constant
    reader: int  # node that reads the constant
    reader_input: int


@dataclass(frozen=True)
class DimEntry:
    value: int | None
    tensor: str  # the tensor whose dimension is read at run time
    axis: int


@dataclass(frozen=True)
class ScaledDimEntry:
    value: int | None
    tensor: str  # value = factor * dim(tensor, axis), computed at run time
    axis: int
    factor: int
    factor_tensor: str = ""  # the constant holding the factor (B * num_heads: the rewrite may change it)
    factor_reader: int = -1  # the Mul that reads it, and at which input
    factor_input: int = -1


@dataclass(frozen=True)
class QuotientDimEntry:
    value: int | None  # value = dim(tensor, axis) // divisor, computed at run time (Bloom: (B*H) // H = B)
    tensor: str
    axis: int
    divisor: int
    divisor_tensor: str  # the constant holding the divisor, the Div that reads it, and at which input
    divisor_reader: int
    divisor_input: int


@dataclass(frozen=True)
class OtherEntry:
    value: int | None  # known by constant folding but not rewritable


def shape_entries(view, tensor: str, reader: int, reader_input: int, depth: int = 0) -> list | None:
    """Per-position provenance of a 1-D int tensor, or None if even its length is unknown."""
    if depth > 12:
        return None
    if view.is_stored_constant(tensor):
        v = view.const_value(tensor)
        if v is None:
            return None
        return [ConstEntry(int(x), tensor, i, reader, reader_input) for i, x in enumerate(np.ravel(v))]
    p = view.producer.get(tensor)
    if p is None:
        return None
    node = view.nodes[p]
    op = node.op_type
    if op == "Concat":
        out = []
        for k, t in enumerate(node.input):
            part = shape_entries(view, t, p, k, depth + 1)
            if part is None:
                return None
            out.extend(part)
        return out
    if op in ("Unsqueeze", "Squeeze", "Identity", "Cast"):
        return shape_entries(view, node.input[0], p, 0, depth + 1)
    if op == "Reshape":
        shp = view.shape(tensor)
        if shp is not None and len(shp) == 1:
            return shape_entries(view, node.input[0], p, 0, depth + 1)
        return _folded(view, tensor)
    if op == "Where":
        cond = view.const_value(node.input[0])
        if cond is None:
            return _folded(view, tensor)
        a = shape_entries(view, node.input[1], p, 1, depth + 1)
        b = shape_entries(view, node.input[2], p, 2, depth + 1)
        n = view.shape(tensor)
        if a is None or b is None or n is None or len(n) != 1 or n[0] is None:
            return _folded(view, tensor)
        cond = np.broadcast_to(np.ravel(cond), (n[0],))
        a = a if len(a) == n[0] else a * n[0] if len(a) == 1 else None
        b = b if len(b) == n[0] else b * n[0] if len(b) == 1 else None
        if a is None or b is None:
            return _folded(view, tensor)
        return [a[i] if cond[i] else b[i] for i in range(n[0])]
    if op == "Mul":
        # dim * constant, as in GQA's repeat_kv: reshape(..., num_kv_heads * n_rep, ...)
        for k in (0, 1):
            c = view.const_value(node.input[1 - k])
            if c is None or c.size != 1 or not _shape_free(view, node.input[1 - k]):
                continue
            base = shape_entries(view, node.input[k], p, k, depth + 1)
            if base is not None and all(isinstance(e, DimEntry) for e in base):
                f = int(np.ravel(c)[0])
                return [ScaledDimEntry(None if e.value is None else e.value * f, e.tensor, e.axis, f,
                                       node.input[1 - k], p, 1 - k) for e in base]
        # dim * a dim of size 1, as in CRNN's reshape(n, c * h, w) with h == 1: the other dim, unchanged
        for k in (0, 1):
            one = shape_entries(view, node.input[1 - k], p, 1 - k, depth + 1)
            if one is None or len(one) != 1 or not isinstance(one[0], DimEntry) or one[0].value != 1:
                continue
            base = shape_entries(view, node.input[k], p, k, depth + 1)
            if base is not None and all(isinstance(e, DimEntry) for e in base):
                return base
        return _folded(view, tensor)
    if op == "Div":
        c = view.const_value(node.input[1])
        if c is not None and c.size == 1 and int(np.ravel(c)[0]) > 0 and _shape_free(view, node.input[1]):
            base = shape_entries(view, node.input[0], p, 0, depth + 1)
            if base is not None and all(isinstance(e, DimEntry) for e in base):
                d = int(np.ravel(c)[0])
                return [QuotientDimEntry(None if e.value is None else e.value // d, e.tensor, e.axis, d,
                                         node.input[1], p, 1) for e in base]
        return _folded(view, tensor)
    if op == "Shape":
        src = node.input[0]
        shp = view.shape(src)
        if shp is None:
            return None
        r = len(shp)
        start = view.attr(node, "start", 0)
        end = view.attr(node, "end", r)
        start, end = _clamp(start, r), _clamp(end, r)
        return [DimEntry(shp[a], src, a) for a in range(start, end)]
    if op == "Gather" and view.attr(node, "axis", 0) == 0:
        base = shape_entries(view, node.input[0], p, 0, depth + 1)
        idx = view.const_value(node.input[1])
        if base is None or idx is None:
            return _folded(view, tensor)
        return [base[int(i)] for i in np.ravel(idx)]
    if op == "Slice":
        base = shape_entries(view, node.input[0], p, 0, depth + 1)
        starts = view.const_value(node.input[1])
        ends = view.const_value(node.input[2])
        if base is None or starts is None or ends is None:
            return _folded(view, tensor)
        steps = view.const_value(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
        return base[int(starts[0]):_end(int(ends[0]), len(base)):int(steps[0])]
    return _folded(view, tensor)


def _shape_free(view, tensor: str, depth: int = 0) -> bool:
    """True when a constant does not depend on any tensor's run-time shape (a real constant)."""
    if view.is_stored_constant(tensor):
        return True
    p = view.producer.get(tensor)
    if p is None or depth > 8:
        return False
    node = view.nodes[p]
    if node.op_type in ("Shape", "Size"):
        return False
    return all(_shape_free(view, t, depth + 1) for t in node.input if t)


def _folded(view, tensor):
    v = view.const_value(tensor)
    if v is not None:
        return [OtherEntry(int(x)) for x in np.ravel(v)]
    shp = view.shape(tensor)
    if shp is not None and len(shp) <= 1 and shp and shp[0] is not None:
        return [OtherEntry(None) for _ in range(shp[0])]
    return None


def _clamp(a, r):
    a = a + r if a < 0 else a
    return max(0, min(a, r))


def _end(e, n):
    if e < 0:
        e += n
    return min(e, n)
