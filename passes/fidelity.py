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


def _batch(feeds: dict[str, np.ndarray], calib: Calibration | None) -> int:
    n = len(next(iter(feeds.values())))
    return calib.batch if calib is not None and calib.batch else max(1, min(n, 64))


def _constants(calib: Calibration | None) -> dict | None:
    """Inputs fed unchanged with every batch (a sample rate, an initial state)."""
    return calib.constants if calib is not None else None


def reference_outputs(original: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      calib: Calibration | None = None) -> tuple[list[str], list[list[np.ndarray]]]:
    """The original's output names and its outputs per batch of `feeds`: computed once when several pruned
    candidates are compared to it (the --max-error search)."""
    so = session_for(original, calib)
    names = [o.name for o in so.get_outputs()]
    return names, [so.run(None, b) for b in batches(feeds, _batch(feeds, calib), _constants(calib))]


def fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray],
             atol: float | None = None, rtol: float | None = None, held_out: bool = True,
             calib: Calibration | None = None, reference: tuple | None = None) -> dict:
    """Outputs of the pruned model against the original's on the given samples: cosine similarity,
    relative error, max abs difference, top-1 agreement where an output looks like logits, and PASSED /
    FAILED against atol/rtol when given. `reference` is `reference_outputs(original, feeds, calib)` when
    already computed."""
    names, refs = reference if reference is not None else reference_outputs(original, feeds, calib)
    sp = session_for(pruned, calib)
    n = len(next(iter(feeds.values())))
    acc = {k: OutputAgreement(atol, rtol) for k in names}
    with progress("fidelity: held-out samples" if held_out else "fidelity: samples", n) as advance:
        for ref, b in zip(refs, batches(feeds, _batch(feeds, calib), _constants(calib))):
            for k, r, p in zip(names, ref, sp.run(None, b)):
                acc[k].add(r, p)
            advance(len(next(iter(b.values()))))
    out = {"samples": n, "held_out": held_out, "outputs": {k: a.summary() for k, a in acc.items()}}
    if atol is not None or rtol is not None:
        out["atol"], out["rtol"] = atol, rtol
        out["passed"] = all(a.ok for a in acc.values())
    return out


def error(fid: dict, metric: str) -> float:
    """The worst output's error under `metric` (passes/choices.METRICS): relative error, 1 - cosine, or
    1 - top-1 agreement (outputs that look like logits only); None when no output has that measure."""
    rows = fid["outputs"].values()
    if metric == "rel":
        vals = [r["relative_error"] for r in rows]
    elif metric == "cosine":
        vals = [1.0 - r["cosine"] for r in rows]
    else:
        vals = [1.0 - r["top1_agreement"] for r in rows if "top1_agreement" in r]
    return max(vals) if vals else None
