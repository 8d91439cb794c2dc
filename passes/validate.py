"""Validation pass: nothing is written unless the pruned model passes all of these.

1. `onnx.checker.check_model(full_check=True)`; 2. strict shape inference; 3. an ONNX Runtime session
runs on synthetic inputs; 4. the pruned outputs equal the oracle's (the original with the removed channels
masked at their consumers), which proves the rewrite cut exactly what the plan said.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.core import runtime
from graphprune.core.compare import cosine, max_abs_diff
from graphprune.core.io import light_copy
from graphprune.errors import ValidationError, first_line

from . import oracle


@dataclass
class Validation:
    checker: bool = False
    shape_inference: bool = False
    runtime: bool = False
    oracle_max_abs_diff: float | None = None
    output_max_abs_diff: float | None = None  # pruned vs original (how far outputs moved)
    output_cosine: float | None = None
    notes: list[str] = field(default_factory=list)


def validate(pruned: onnx.ModelProto, original: onnx.ModelProto, cut,
             input_shapes: dict | None = None, check_oracle: bool = True, rtol: float = 1e-3,
             atol: float = 1e-4, seed: int = 0) -> Validation:
    v = Validation()
    # Lazy (memory-mapped) weights and big in-memory ones become typed inputs: the checker then does not
    # serialize every weight (the rewrite wrote them with numpy_helper, so their sizes match their dims).
    checked = light_copy(pruned, min_bytes=1 << 20)
    try:
        onnx.checker.check_model(checked, full_check=True)
    except Exception as exc:  # noqa: BLE001
        _input_also_fails(original, "onnx.checker (full check)", lambda m: onnx.checker.check_model(m, full_check=True))
        raise ValidationError(f"pruned model fails onnx.checker: {first_line(exc)}") from None
    v.checker = True
    try:
        onnx.shape_inference.infer_shapes(checked, strict_mode=True)
    except Exception as exc:  # noqa: BLE001
        _input_also_fails(original, "strict shape inference",
                          lambda m: onnx.shape_inference.infer_shapes(m, strict_mode=True))
        raise ValidationError(f"pruned model fails shape inference: {first_line(exc)}") from None
    v.shape_inference = True
    feeds = runtime.synthetic_inputs(original, input_shapes, seed=seed)
    try:
        got = runtime.run(pruned, feeds)
    except Exception as exc:  # noqa: BLE001
        _check_original_runs(original, feeds)
        raise ValidationError(f"pruned model fails in ONNX Runtime: {first_line(exc)}") from None
    v.runtime = True
    masked = oracle.masked_model(original, cut) if check_oracle else None
    try:
        ref, want = _reference_runs(original, masked, feeds)
    except Exception as exc:  # noqa: BLE001
        v.notes.append(f"original model could not be run for comparison: {first_line(exc)}")
        return v
    try:
        v.output_max_abs_diff = max_abs_diff(ref, got)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    v.output_cosine = cosine(ref, got)
    if check_oracle:
        if want is None:
            want = runtime.run(masked, feeds)
        unquantized = oracle.without_activation_fake_quant(masked)
        if unquantized is not None:  # fake-quantized activations round last-bit differences: see there
            want = runtime.run(unquantized, feeds)
            got = runtime.run(oracle.without_activation_fake_quant(pruned), feeds)
        try:
            diff = max_abs_diff(want, got)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        v.oracle_max_abs_diff = diff
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0 for w in want) if want else 0.0
        if diff > atol + rtol * scale:
            raise ValidationError(f"pruned model differs from the masked original by {diff:.3g} "
                                  f"(output scale {scale:.3g}): the rewrite is wrong for this model")
    return v


_MASK = "__oracle_mask_"


def _reference_runs(original, masked, feeds):
    """Outputs of the original and of the oracle's masked model, from ONE session when the oracle only
    multiplies by masks: the masks become inputs, all ones for the original (x * 1 == x exactly), the
    oracle's 0/1 masks for the reference. That saves a session (and a serialization) of the full model,
    which is most of the validation time of a large one. Returns (ref, None) without an oracle."""
    if masked is None:
        return runtime.run(original, feeds), None
    names = {t.name for t in original.graph.initializer}
    added = [t for t in masked.graph.initializer if t.name not in names]
    readers = {t: n.op_type for n in masked.graph.node for t in n.input}
    if not added or any(not t.name.startswith(_MASK) or readers.get(t.name) != "Mul" for t in added):
        return runtime.run(original, feeds), None  # e.g. masked quantized weights: not a neutral mask
    # Turn the masks into inputs in place (no copy of the weights) and put them back afterwards.
    masks = {t.name: numpy_helper.to_array(t) for t in added}
    saved = [onnx.TensorProto() for _ in added]
    for dst, src in zip(saved, added):
        dst.CopyFrom(src)
    for i in reversed([i for i, t in enumerate(masked.graph.initializer) if t.name in masks]):
        del masked.graph.initializer[i]
    n_inputs = len(masked.graph.input)
    for t in saved:
        masked.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        # Masks on weights are multiplied at run time here (not folded into copies at session start): no
        # arena, so each product's memory is returned as soon as its consumer ran.
        sess = runtime.session(masked, arena=False)
    finally:
        del masked.graph.input[n_inputs:]
        masked.graph.initializer.extend(saved)
    ref = sess.run(None, {**feeds, **{k: np.ones_like(m) for k, m in masks.items()}})
    want = sess.run(None, {**feeds, **masks})
    return ref, want


def _input_also_fails(original: onnx.ModelProto, what: str, check) -> None:
    """The pruned model failed `check`: blame the input model when it fails the same way (the loader only
    runs the light checker, so a broken input can get this far)."""
    try:
        check(light_copy(original))
    except Exception as exc:  # noqa: BLE001
        raise ValidationError(f"the input model itself fails {what}: {first_line(exc)}") from None


def _check_original_runs(original: onnx.ModelProto, feeds: dict) -> None:
    """When the pruned model fails, say so if the input model fails too: the problem is then the model
    or the synthetic inputs (dynamic dims guessed wrong), not the pruning."""
    try:
        runtime.run(original, feeds)
    except Exception as exc:  # noqa: BLE001
        inits = {t.name for t in original.graph.initializer}
        dynamic = any(not d.HasField("dim_value") for vi in original.graph.input if vi.name not in inits
                      for d in vi.type.tensor_type.shape.dim)
        shapes = " ".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in feeds.items())
        hint = f" (dynamic dims were guessed as {shapes}; give the real ones with --input-shape)" if dynamic else ""
        raise ValidationError(f"the input model itself fails in ONNX Runtime{hint}: {first_line(exc)}") from None
