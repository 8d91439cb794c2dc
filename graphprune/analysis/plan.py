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
