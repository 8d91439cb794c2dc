"""The op-rule table: one rule per op family, registered by (domain, op_type).

A rule's `analyze(ctx)` says, for every axis of the node's inputs and outputs, how channels are tied
(identity or an index map), which axes are fixed (never pruned) and why, and which weight axes produce or
consume channels. Its optional `rewrite(rctx)` updates attributes and shape constants once the kept
channels are known. Anything a rule does not describe is frozen: the tool never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Rule:
    family: str
    ops: tuple[str, ...]
    analyze: Callable
    rewrite: Callable | None = None
    domain: str = ""
    doc: str = ""
    notes: dict = field(default_factory=dict)


RULES: dict[tuple[str, str], Rule] = {}


def register(family: str, *ops: str, domain: str = "", rewrite: Callable | None = None):
    """Decorator: register `fn` as the analyze function of `ops` (the docstring documents the rule)."""

    def deco(fn):
        r = Rule(family=family, ops=tuple(ops), analyze=fn, rewrite=rewrite, domain=domain,
                 doc=(fn.__doc__ or "").strip().split("\n")[0])
        for op in ops:
            RULES[(domain, op)] = r
        return fn

    return deco


def lookup(domain: str, op: str) -> Rule | None:
    if domain == "ai.onnx":
        domain = ""
    return RULES.get((domain, op))


def supported_ops() -> list[tuple[str, str, str, str]]:
    """(family, domain, op, doc) rows for the README table."""
    rows = [(r.family, d, op, r.doc) for (d, op), r in RULES.items()]
    return sorted(rows)
