"""Fidelity pass: the pruned model's outputs against the original's on held-out samples.

Requires both models and samples (held-out calibration samples, or synthetic inputs); ensures nothing
about the model, and measures per output what graphprune.core.compare.OutputAgreement gives, with
PASSED / FAILED against --atol / --rtol when given.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphprune.core.compare import OutputAgreement

from .calibration import Calibration, batches, progress, session_for


def fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray],
             atol: float | None = None, rtol: float | None = None, held_out: bool = True,
             calib: Calibration | None = None) -> dict:
    """Outputs of the pruned model against the original's on the given samples: cosine similarity,
    relative error, max abs difference, top-1 agreement where an output looks like logits, and PASSED /
    FAILED against atol/rtol when given."""
    so, sp = session_for(original, calib), session_for(pruned, calib)
    names = [o.name for o in so.get_outputs()]
    n = len(next(iter(feeds.values())))
    bs = calib.batch if calib is not None and calib.batch else max(1, min(n, 64))
    acc = {k: OutputAgreement(atol, rtol) for k in names}
    with progress("fidelity: held-out samples" if held_out else "fidelity: samples", n) as advance:
        for b in batches(feeds, bs):
            for k, r, p in zip(names, so.run(None, b), sp.run(None, b)):
                acc[k].add(r, p)
            advance(len(next(iter(b.values()))))
    out = {"samples": n, "held_out": held_out, "outputs": {k: a.summary() for k, a in acc.items()}}
    if atol is not None or rtol is not None:
        out["atol"], out["rtol"] = atol, rtol
        out["passed"] = all(a.ok for a in acc.values())
    return out
