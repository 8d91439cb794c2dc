"""One MiniLM prune with given options, measured as benchmarks/transformer_quality.py measures a row (same
model, sentences, shapes), for trying a change before it becomes a row. Prints one JSON line and appends it to
.cache/transformer_quality/trials.jsonl.

    python benchmarks/minilm_trials.py 0.3 '{"allocation": "sensitivity"}' TAG

Knobs for what has no option (environment): NCAL (calibration sentences, default 64), DAMP (the OBS score's
damping, scoring.augmented_gram), SENS_N (samples the sensitivity curves use), AUG (e.g. "0.5,0.75": each
calibration sentence also cut to those fractions of its tokens through the attention mask).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import minilm  # noqa: E402
from benchmarks.transformer_quality import SHAPES, model_path  # noqa: E402


def _knobs() -> None:
    from graphprune.passes import scoring, sensitivity

    if os.environ.get("DAMP"):
        scoring.augmented_gram.__defaults__ = (float(os.environ["DAMP"]),)
    if os.environ.get("SENS_N"):
        d = list(sensitivity.measure.__defaults__)
        d[0] = int(os.environ["SENS_N"])
        sensitivity.measure.__defaults__ = tuple(d)


def _prefixes(calib: dict, fractions: list[float]) -> dict:
    """The calibration sentences, and each one again cut to `fractions` of its tokens (mask set to 0 after)."""
    ids, masks = [calib["input_ids"]], [calib["attention_mask"]]
    lengths = calib["attention_mask"].sum(1)
    for f in fractions:
        m = calib["attention_mask"].copy()
        for i, n in enumerate(lengths):
            m[i, max(2, int(round(n * f))):] = 0
        ids.append(calib["input_ids"])
        masks.append(m)
    return {"input_ids": np.concatenate(ids), "attention_mask": np.concatenate(masks)}


def main(argv=None) -> int:
    import graphprune

    argv = sys.argv[1:] if argv is None else argv
    ratio, options, tag = float(argv[0]), json.loads(argv[1]), argv[2] if len(argv) > 2 else ""
    _knobs()
    model = onnx.load(str(model_path("torchscript")))
    calib, ev = minilm.data(int(os.environ.get("NCAL", 64)))
    if os.environ.get("AUG"):
        calib = _prefixes(calib, [float(f) for f in os.environ["AUG"].split(",")])
    ref = minilm.embed(model, ev)
    t = time.perf_counter()
    r = graphprune.prune(model, ratio=ratio, input_shapes=SHAPES, calib=calib, **options)
    seconds = time.perf_counter() - t
    row = dict(tag=tag, ratio=ratio, options=options, **minilm.embedding_agreement(ref, minilm.embed(r.model, ev)),
               params=r.report.ratio("params"), seconds=round(seconds),
               heads=[k["kept"] for k in r.report.kept if k["kind"] == "head"],
               mlp=[k["kept"] for k in r.report.kept if k["kind"] == "mlp"],
               ridge=r.report.quality.get("compensation", {}).get("ridge", {}))
    print(json.dumps(row))
    minilm.CACHE.mkdir(parents=True, exist_ok=True)
    with open(minilm.CACHE / "trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
