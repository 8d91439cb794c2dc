"""What a rule sees and says: shapes and constants of its node, and the tie/fix/role vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .reasons import BY_DESIGN, UNSUPPORTED, Refusal, qualified_op


@dataclass(frozen=True)
class Role:
    """A weight (or data) axis that produces or consumes channels, at one input of one node."""

    kind: str  # "producer" | "consumer"
    space: int
    node: int
    input_index: int  # -1 for outputs
    axis: int
    weight: bool  # the tensor is a constant (a weight), not an activation


class RuleContext:
    """Per-node view handed to a rule's analyze function."""

    def __init__(self, analyzer, node_index: int):
        self._a = analyzer
        self.view = analyzer.view
        self.options = analyzer.options
        self.index = node_index
        self.node: onnx.NodeProto = self.view.nodes[node_index]
        self.name = self.view.names[node_index]
        self.op = self.node.op_type
        self.qualified_op = qualified_op(self.node)
        self.touched: set[tuple[str, int]] = set()

    # ---- reading ------------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    def input(self, k: int) -> str:
        return self.node.input[k] if k < len(self.node.input) else ""

    def output(self, k: int = 0) -> str:
        return self.node.output[k] if k < len(self.node.output) else ""

    def attr(self, name: str, default=None):
        return self.view.attr(self.node, name, default)

    def shape(self, tensor: str) -> list | None:
        return self.view.shape(tensor) if tensor else None

    def rank(self, tensor: str) -> int | None:
        s = self.shape(tensor)
        return None if s is None else len(s)

    def const(self, tensor: str) -> np.ndarray | None:
        return self.view.const_value(tensor) if tensor else None

    def is_weight(self, tensor: str) -> bool:
        return bool(tensor) and self.view.is_constant(tensor)

    def space(self, tensor: str, axis: int):
        return self._a.spaces.get(tensor, axis)

    def axes(self, tensor: str) -> list[int]:
        r = self.rank(tensor)
        return list(range(r)) if r is not None else []

    def channel_like(self, tensor: str, axis: int) -> bool:
        """True when this axis reaches a weight's channel axis without crossing a reshape (pass B only)."""
        return self._a.is_channel_like(tensor, axis)

    def always_kept(self, tensor: str, axis: int) -> bool:
        """True when, even without crossing a reshape, this axis is tied to one that keeps every channel (a
        graph input's batch or sequence axis, an axis Softmax mixes or Tile repeats; pass B only)."""
        return self._a.is_kept_in_a(tensor, axis)

    def attention_role(self, tensor: str, axis: int) -> str | None:
        """"head" when this axis reaches, without crossing a reshape, an axis marked as attention heads (a
        batch axis of Q·Kᵀ or softmax·V), "head_dim" for one marked as the dimension inside a head (what Q·Kᵀ
        contracts, what softmax·V keeps), else None (pass B only)."""
        return self._a.attention_role(tensor, axis)

    # ---- saying -------------------------------------------------------------------------------------
    def refusal(self, why, tensor: str | None = None, axis: int | None = None, kind: str = UNSUPPORTED) -> Refusal:
        """A Refusal said by this node (`why` may already be one: it keeps its own fields)."""
        if isinstance(why, Refusal):
            return why
        return Refusal(why, node=self.name, op=self.qualified_op, tensor=tensor, axis=axis, kind=kind)

    def tie(self, t1: str, a1: int, t2: str, a2: int, idx1=None, idx2=None) -> None:
        """Tie elements idx1[k] of (t1, a1) to idx2[k] of (t2, a2); None means all, in order."""
        self.touched.add((t1, a1))
        self.touched.add((t2, a2))
        s1, s2 = self.space(t1, a1), self.space(t2, a2)
        d1 = _dim(self.shape(t1), a1)
        d2 = _dim(self.shape(t2), a2)
        if s1 is None and s2 is None:
            return
        if s1 is None or s2 is None:
            # One side is size 1 (nothing to tie) or of unknown size (cannot be followed).
            known, other, d_other = (s1, t2, d2) if s2 is None else (s2, t1, d1)
            if d_other == 1 and idx1 is None and idx2 is None:
                return
            ta, aa = (t1, a1) if s2 is None else (t2, a2)
            self._a.freeze(known.id, self.refusal(f"{self.op} '{self.name}': size of axis of '{other}' is unknown",
                                                  ta, aa))
            return
        if idx1 is None and idx2 is None:
            if s1.size != s2.size:
                why = f"{self.op} '{self.name}': axis sizes {s1.size} and {s2.size} differ"
                self._a.freeze(s1.id, self.refusal(why, t1, a1))
                self._a.freeze(s2.id, self.refusal(why, t2, a2))
                return
        e1 = s1.elements(idx1)
        e2 = s2.elements(idx2)
        if len(e1) != len(e2):
            raise ValueError(f"tie of {t1}:{a1} and {t2}:{a2} with maps of different lengths")
        self._a.add_tie(e1, e2)

    def tie_all(self, pairs) -> None:
        for p in pairs:
            self.tie(*p)

    def fix(self, tensor: str, axis: int, reason=None, kind: str | None = None) -> None:
        """This axis can never lose channels. `reason` None: not a channel axis (reported only if it is tied
        to one; by design). `kind` (reasons.KINDS) defaults to "unsupported": an idiom no rule handles yet."""
        self.touched.add((tensor, axis))
        sp = self.space(tensor, axis)
        if sp is not None:
            silent = reason is None
            why = reason or f"axis {axis} of '{tensor}' is not a channel axis of {self.op} '{self.name}'"
            kind = kind or (BY_DESIGN if silent else UNSUPPORTED)
            self._a.freeze(sp.id, self.refusal(why, tensor, axis, kind), silent=silent)

    def fix_elements(self, tensor: str, axis: int, idx, reason, kind: str = UNSUPPORTED) -> None:
        """These elements of the axis must be kept (e.g. a Concat input of size 1 lives there)."""
        sp = self.space(tensor, axis)
        if sp is not None:
            self._a.freeze_elements(sp.elements(idx), self.refusal(reason, tensor, axis, kind))

    def fix_tensor(self, tensor: str, reason=None, kind: str | None = None) -> None:
        for ax in self.axes(tensor):
            self.fix(tensor, ax, reason, kind)

    def free(self, tensor: str, axis: int) -> None:
        """This node puts no constraint on the axis (it only observes it, e.g. Shape)."""
        self.touched.add((tensor, axis))

    def role(self, kind: str, tensor: str, axis: int) -> None:
        sp = self.space(tensor, axis)
        if sp is None:
            return
        k = -1
        for i, t in enumerate(self.node.input):
            if t == tensor:
                k = i
                break
        self._a.roles.append(Role(kind, sp.id, self.index, k, axis, self.is_weight(tensor)))

    def role_at(self, node_index: int, kind: str, input_index: int, axis: int) -> None:
        """A role of another node's input: a Gather that picks whole expert matrices from a weight table is
        where the table is read, but the MatMul reading the matrices decides which axes produce channels."""
        tensor = self.view.nodes[node_index].input[input_index]
        sp = self.space(tensor, axis)
        if sp is not None:
            self._a.roles.append(Role(kind, sp.id, node_index, input_index, axis, self.is_weight(tensor)))

    def mark(self, tensor: str, axis: int, what: str) -> None:
        """Label a space: "hidden" (a normalised axis, cut under --prune-hidden), "head" / "head_dim" (attention
        axes: reshapes pick heads by them, and groups holding them are heads)."""
        sp = self.space(tensor, axis)
        if sp is not None:
            self._a.mark(sp.id, what)

    def freeze_node(self, reason, kind: str = UNSUPPORTED) -> None:
        """Freeze every axis of every input and output of this node (a Refusal `reason` keeps its fields)."""
        for t in list(self.node.input) + list(self.node.output):
            if t:
                for ax in self.axes(t):
                    self.fix(t, ax, reason, kind)

    def elementwise(self, tensors: list[str], out: str) -> None:
        """Numpy-broadcast ties: each input axis aligned from the right with the output axis."""
        ro = self.rank(out)
        if ro is None:
            self.freeze_node(f"{self.op} '{self.name}': output rank unknown")
            return
        for t in tensors:
            if not t:
                continue
            r = self.rank(t)
            if r is None:
                self.freeze_node(f"{self.op} '{self.name}': shape of '{t}' unknown")
                return
            for ax in range(r):
                self.tie(t, ax, out, ro - r + ax)
        for ax in range(ro):
            self.touched.add((out, ax))


def _dim(shape, axis):
    if shape is None or axis >= len(shape):
        return None
    return shape[axis]
