"""Validation pass: nothing is written unless the pruned model passes all of these.

1. `onnx.checker.check_model(full_check=True)`; 2. strict shape inference; 3. an ONNX Runtime session
runs on synthetic inputs; 4. the pruned outputs equal the oracle's (the original with the removed channels
masked at their consumers), which proves the rewrite cut exactly what the plan said.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune import oracle, runtime
from graphprune.errors import ValidationError


@dataclass
class Validation:
    checker: bool = False
    shape_inference: bool = False
    runtime: bool = False
    oracle_max_abs_diff: float | None = None
    output_max_abs_diff: float | None = None  # pruned vs original (how far outputs moved)
    output_cosine: float | None = None
    notes: list[str] = field(default_factory=list)


def _compare(ref, got):
    worst = 0.0
    for a, b in zip(ref, got):
        if a.shape != b.shape:
            raise ValidationError(f"output shape changed from {a.shape} to {b.shape}")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def _cosine(ref, got):
    a = np.concatenate([r.astype(np.float64).ravel() for r in ref])
    b = np.concatenate([g.astype(np.float64).ravel() for g in got])
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 1.0


def validate(pruned: onnx.ModelProto, original: onnx.ModelProto, analysis, removed_roots,
             input_shapes: dict | None = None, check_oracle: bool = True, rtol: float = 1e-3,
             atol: float = 1e-4) -> Validation:
    v = Validation()
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"pruned model fails onnx.checker: {_first_line(exc)}") from None
    v.checker = True
    try:
        onnx.shape_inference.infer_shapes(pruned, strict_mode=True)
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"pruned model fails shape inference: {_first_line(exc)}") from None
    v.shape_inference = True
    feeds = runtime.synthetic_inputs(original, input_shapes)
    try:
        got = runtime.run(pruned, feeds)
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"pruned model fails in ONNX Runtime: {_first_line(exc)}") from None
    v.runtime = True
    try:
        ref = runtime.run(original, feeds)
    except Exception as exc:  # noqa: BLE001
        v.notes.append(f"original model could not be run for comparison: {_first_line(exc)}")
        return v
    v.output_max_abs_diff = _compare(ref, got)
    v.output_cosine = _cosine(ref, got)
    if check_oracle:
        masked = oracle.masked_model(original, analysis, removed_roots)
        want = runtime.run(masked, feeds)
        diff = _compare(want, got)
        v.oracle_max_abs_diff = diff
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0 for w in want) if want else 0.0
        if diff > atol + rtol * scale:
            raise ValidationError(f"pruned model differs from the masked original by {diff:.3g} "
                                  f"(output scale {scale:.3g}): the rewrite is wrong for this model")
    return v


def _first_line(exc) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else type(exc).__name__
