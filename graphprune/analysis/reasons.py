"""Why channels are frozen, as data: what refused (node, op), where (tensor, axis), and of which kind.

A `Refusal` renders as the sentence users read (`str(refusal)`); its kind tells a refusal by design (graph
inputs/outputs, --exclude, control flow, an axis a norm or reduction mixes, a shape that cannot be cut)
from an op or idiom graphprune does not support yet, and from a rule that raised (a bug in graphprune).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import first_line

BY_DESIGN = "by_design"
UNSUPPORTED = "unsupported"
INTERNAL = "internal"
KINDS = (BY_DESIGN, UNSUPPORTED, INTERNAL)


@dataclass(frozen=True)
class Refusal:
    """One reason a channel space keeps every channel."""

    why: str  # the sentence users read, unchanged from the free-text reasons this replaces
    node: str | None = None  # the node whose rule refused (for a graph output: the node computing it)
    op: str | None = None  # its op type, "domain::op" outside the default domain
    tensor: str | None = None  # the frozen axis (None when a refusal covers a whole node, as internal errors do)
    axis: int | None = None
    kind: str = UNSUPPORTED

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"refusal kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def __str__(self) -> str:
        return self.why

    def to_dict(self) -> dict:
        return asdict(self)


def qualified_op(node) -> str:
    """A node's op type as refusals name it: "domain::op" outside the default ONNX domain."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def internal_error(op: str, node: str, exc: BaseException) -> Refusal:
    """The refusal for a rule that raised: a bug in graphprune, said as one, never as a model limitation."""
    why = (f"internal error in the rule for {op} '{node}': {type(exc).__name__}: {first_line(exc)} "
           "(please report; rerun with --debug)")
    return Refusal(why, node=node, op=op, kind=INTERNAL)


def distinct_by_text(refusals) -> list[Refusal]:
    """The first refusal of each rendered sentence, in order (a group shows each sentence once)."""
    seen: dict[str, Refusal] = {}
    for r in refusals:
        seen.setdefault(str(r), r)
    return list(seen.values())
