"""A Plan says which units (channels) of which group are removed. Scoring decides it, rewriting executes it.

Groups are keyed by their anchor space ("tensor:axis") and units by their position in the anchor, so a
plan is plain JSON that can be saved, read back and applied again to the same model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import UsageError


@dataclass
class GroupCut:
    key: str
    size: int
    removed: list[int]


@dataclass
class Plan:
    fingerprint: str
    cuts: dict[str, GroupCut] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def removed_roots(self, analysis) -> np.ndarray:
        out = []
        for key, cut in self.cuts.items():
            try:
                g = analysis.group(key)
            except KeyError:
                raise UsageError(f"plan names group '{key}', which this model does not have") from None
            if g.size != cut.size:
                raise UsageError(f"plan group '{key}' has {cut.size} channels, the model has {g.size}")
            # A hand-edited plan must not reach the rewrite with indices it cannot execute: negative
            # ones would wrap around, and cutting every channel or a frozen group breaks the model.
            bad = [i for i in cut.removed if not 0 <= i < g.size]
            if bad:
                raise UsageError(f"plan group '{key}' removes channel {bad[0]}, outside 0..{g.size - 1}")
            if len(set(cut.removed)) != len(cut.removed):
                raise UsageError(f"plan group '{key}' lists a removed channel twice")
            if cut.removed and len(cut.removed) >= g.size:
                raise UsageError(f"plan group '{key}' removes all {g.size} channels (at least one must stay)")
            if cut.removed and g.frozen:
                why = g.reasons[0] if g.reasons else "frozen"
                raise UsageError(f"plan cuts group '{key}', which is frozen in this model ({why})")
            if cut.removed:
                out.append(g.units[np.asarray(cut.removed, dtype=np.int64)])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    @property
    def n_removed(self) -> int:
        return sum(len(c.removed) for c in self.cuts.values())

    def to_json(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "options": self.options,
                           "cuts": [asdict(c) for c in self.cuts.values()]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        cuts = {c["key"]: GroupCut(c["key"], int(c["size"]), [int(i) for i in c["removed"]]) for c in d["cuts"]}
        return cls(d["fingerprint"], cuts, d.get("options", {}))


def fingerprint(model: onnx.ModelProto) -> str:
    """A cheap identity of a model's structure: node ops/names/io and initializer shapes."""
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(f"{n.op_type}|{n.name}|{','.join(n.input)}|{','.join(n.output)}\n".encode())
    for t in model.graph.initializer:
        h.update(f"{t.name}:{list(t.dims)}:{t.data_type}\n".encode())
    return h.hexdigest()[:16]


def layer_label(nodes: list[str]) -> str:
    """A readable name for the layer a group belongs to: the common path prefix of its member nodes (the
    TorchScript exporter names them after the module path, `/bert/encoder/layer.0/attention/...`), else the
    first member."""
    if not nodes:
        return ""
    parts = [n.split("/") for n in nodes]
    common = []
    for segs in zip(*parts):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    label = "/".join(common).rstrip("/")
    return label if label and len(common) > 1 else nodes[0]


def kept_table(plan: Plan, analysis) -> list[dict]:
    """Per prunable group, what the plan keeps: its kind and layer, units kept of its size, and for attention
    heads the channels per head (head_dim) and the attention width kept (heads x head_dim)."""
    rows = []
    for g in analysis.prunable:
        cut = plan.cuts.get(g.key)
        kept = g.size - (len(cut.removed) if cut else 0)
        row = {"group": g.key, "kind": g.kind, "layer": layer_label(g.nodes), "size": g.size, "kept": kept}
        if g.kind == "head":  # a projection weight's axis holds every channel of every head
            widest = max((sp.size for sp in (analysis.spaces.spaces[i] for i in g.spaces) if sp.constant),
                         default=g.size)
            row["head_dim"] = max(1, widest // g.size)
            row["width"] = kept * row["head_dim"]
        rows.append(row)
    return rows


def attention_summary(rows: list[dict]) -> dict:
    """num_heads and attention width per attention block (the head groups of `kept_table`), and whether one
    num_heads describes them all: fused attention kernels and optimizers that take a single num_heads
    (onnxruntime.transformers.optimizer when it cannot read the count from the graph, TensorRT's plugins)
    need every block to keep the same count (--uniform-heads)."""
    blocks = [{"layer": r["layer"], "group": r["group"], "num_heads": r["kept"], "head_dim": r["head_dim"],
               "width": r["width"]} for r in rows if r["kind"] == "head"]
    if not blocks:
        return {}
    counts = sorted({b["num_heads"] for b in blocks})
    out = {"blocks": blocks, "uniform": len(counts) == 1}
    if len(counts) == 1:
        out["num_heads"] = counts[0]
    else:
        out["note"] = (f"attention blocks keep different head counts ({', '.join(map(str, counts))}): no single "
                       "num_heads describes the model; runtimes that take one (a fused attention plugin, ONNX "
                       "Runtime's transformer optimizer where the graph does not state it) need --uniform-heads")
    return out
