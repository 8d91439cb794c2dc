"""The op-rule table: one rule per op family, registered by (domain, op_type).

A rule's `analyze(ctx)` says, for every axis of the node's inputs and outputs, how channels are tied
(identity or an index map), which axes are fixed (never pruned) and why, and which weight axes produce or
consume channels. Its optional hooks hold the rest of what is known per op:
- `rewrite(rctx)` updates attributes and shape constants once the kept channels are known;
- `macs(view, node)` gives the node's multiply-accumulates and the channel axes they scale with, or a
  list of such terms where parts scale differently (analysis/costs.py, the one MAC counter);
- `masked_weight(view, node_index, input_index, axis, keep)` gives the oracle a weight with the removed
  channels masked, for weights a 0/1 multiplication cannot mask (integer, quantized).
Anything a rule does not describe is frozen: the tool never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Rule:
    family: str
    ops: tuple[str, ...]
    analyze: Callable
    rewrite: Callable | None = None
    domain: str = ""
    doc: str = ""
    macs: Callable | None = None
    masked_weight: Callable | None = None


RULES: dict[tuple[str, str], Rule] = {}


def register(family: str, *ops: str, domain: str = "", rewrite: Callable | None = None,
             macs: Callable | None = None, masked_weight: Callable | None = None):
    """Decorator: register `fn` as the analyze function of `ops` (the docstring documents the rule)."""

    def deco(fn):
        r = Rule(family=family, ops=tuple(ops), analyze=fn, rewrite=rewrite, domain=domain,
                 doc=(fn.__doc__ or "").strip().split("\n")[0], macs=macs, masked_weight=masked_weight)
        for op in ops:
            RULES[(domain, op)] = r
        return fn

    return deco


def lookup(domain: str, op: str) -> Rule | None:
    if domain == "ai.onnx":
        domain = ""
    return RULES.get((domain, op))


def rule_table() -> list[tuple[str, str, str]]:
    """(family, ops, doc) per registered rule, sorted: the README's supported-op table
    (scripts/gen_op_table.py). Ops of a custom domain are written domain::op."""
    by_rule: dict[int, list[tuple[str, str]]] = {}
    rules: dict[int, Rule] = {}
    for (domain, op), rule in RULES.items():
        by_rule.setdefault(id(rule), []).append((domain, op))
        rules[id(rule)] = rule
    rows = []
    for key, items in by_rule.items():
        ops = ", ".join(f"{d + '::' if d else ''}{op}" for d, op in sorted(items, key=lambda x: x[1]))
        rows.append((rules[key].family, ops, rules[key].doc))
    return sorted(rows)
