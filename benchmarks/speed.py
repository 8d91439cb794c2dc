"""Runtime speed of pruned models: ONNX Runtime CPU latency, original vs pruned, next to the MAC ratio.

    python benchmarks/speed.py                 # everything (about an hour on 2 cores), writes results/speed.md
    python benchmarks/speed.py --models resnet50 --ratios 0.5 --batches 8 --round-to 16 --no-write
    python benchmarks/speed.py --profile resnet50 --ratios 0.3 --round-to 1   # per-op-type time, ORT profiler

Models: ResNet-50 and MobileNetV2 (full ImageNet configs from models/, dynamic batch), BERT-base (sequence
128) and ViT-B/16 (224x224) built from transformers' default configs with random weights (bench_models.py).
Every (model, ratio, round-to, batch) pair of original and pruned is measured by `graphprune.bench.bench`:
intra-op threads = cores, warm-up runs, then the two models run interleaved (ABBA) and the medians compared.
Raw measurements are kept in .cache/bench/speed_raw.json so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_models  # noqa: E402
from results_io import cpu_name, kept_section, load_raw, save_raw  # noqa: E402

import graphprune  # noqa: E402
from graphprune.bench import bench, optimized_op_counts  # noqa: E402
from graphprune.core.io import save_model  # noqa: E402

MODELS = {  # label: (builder name, needs dynamic batch from the CNN zoo)
    "resnet50": "resnet50_full",
    "mobilenetv2": "mobilenetv2_full",
    "bert_base": "bert_base",
    "vit_base": "vit_base",
}
LABELS = {"resnet50": "ResNet-50", "mobilenetv2": "MobileNetV2", "bert_base": "BERT-base", "vit_base": "ViT-B/16"}
BARS = {("resnet50", None): 0.95, ("bert_base", None): 0.95, ("mobilenetv2", 8): 0.85}
DEFAULT_ROUND_TO = "auto"  # graphprune's default; the main table. See "Choosing --round-to" in results/speed.md
SWEEP = [1, 8, 16, 32, "auto"]
RAW = bench_models.CACHE / "speed_raw.json"
PRUNED = bench_models.CACHE / "pruned"
RESULTS = HERE / "results" / "speed.md"
MEASURED_NOW: set = set()  # raw keys measured by this invocation


def original_path(label: str) -> Path:
    name = MODELS[label]
    if name.endswith("_full"):
        from models import get_model

        return get_model(name, dynamic_batch=True)
    return bench_models.get(name)


def pruned_path(label: str, ratio: float, round_to: int) -> tuple[Path, dict]:
    """Prune (once, cached) and return the path and the report summary."""
    PRUNED.mkdir(parents=True, exist_ok=True)
    src = original_path(label)
    out = PRUNED / f"{label}__r{ratio}__rt{round_to}__{src.stem[-12:]}.onnx"
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if "sha256" in info:
            return out, info
    t = time.perf_counter()
    res = graphprune.prune(src, ratio=ratio, round_to=round_to)
    save_model(res.model, out)
    rep = res.report.to_dict()
    info = {"summary": rep["summary"], "timings": rep["timings"], "groups_pruned": rep["groups_pruned"],
            "oracle": rep["validation"].get("oracle_max_abs_diff"), "seconds": round(time.perf_counter() - t, 1),
            "sha256": _sha256(out)}
    meta.write_text(json.dumps(info, indent=1))
    return out, info


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def measure(label, ratio, round_to, batch, raw, args) -> dict:
    key = f"{label}|{ratio}|{round_to}|{batch}"
    if key in raw and not args.fresh:
        return raw[key]
    orig = original_path(label)
    pruned, info = pruned_path(label, ratio, round_to)
    for other in SWEEP:  # the same pruned model under another setting (measured in this run): measured once
        if other != round_to and f"{label}|{ratio}|{other}|{batch}" in MEASURED_NOW:
            _, other_info = pruned_path(label, ratio, other)
            if other_info["sha256"] == info["sha256"]:
                row = dict(raw[f"{label}|{ratio}|{other}|{batch}"], round_to=round_to, same_model_as=other)
                raw[key] = row
                MEASURED_NOW.add(key)
                save_raw(RAW, raw)
                print(f"{label:12s} r={ratio} rt={round_to!s:<4s} b={batch}: same model as round-to {other}")
                return row
    # Long models get fewer rounds: at least `repeat` rounds or `min_seconds`, whichever is more.
    res = bench(orig, pruned, batch=batch, warmup=args.warmup, repeat=args.repeat, min_seconds=args.min_seconds,
                block=args.block)
    macs = info["summary"]["macs"]
    ideal = macs["before"] / macs["after"]
    row = {"model": label, "ratio": ratio, "round_to": round_to, "batch": batch,
           "params_kept": info["summary"]["params"]["ratio"], "macs_kept": macs["ratio"], "ideal": round(ideal, 4),
           "orig_ms": res.original.median_ms, "pruned_ms": res.pruned.median_ms, "speedup": res.speedup,
           "paired_speedup": res.paired_speedup, "fraction": round(res.speedup / ideal, 4), "rounds": res.repeat,
           "orig_p10_p90": [res.original.p10_ms, res.original.p90_ms],
           "pruned_p10_p90": [res.pruned.p10_ms, res.pruned.p90_ms], "threads": res.threads,
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    raw[key] = row
    MEASURED_NOW.add(key)
    save_raw(RAW, raw)
    print(f"{label:12s} r={ratio} rt={round_to!s:<4s} b={batch}: {res.original.median_ms:9.2f} -> "
          f"{res.pruned.median_ms:9.2f} ms  speedup {res.speedup:.3f} (ideal {ideal:.3f}, "
          f"{res.speedup / ideal:.0%})", flush=True)
    return row


def op_counts(label: str, ratio: float, round_to: int, raw: dict, fresh: bool) -> dict:
    key = f"ops|{label}|{ratio}|{round_to}"
    if key in raw and not fresh:
        return raw[key]
    orig = original_path(label)
    pruned, _ = pruned_path(label, ratio, round_to)
    row = {"original": optimized_op_counts(os.fspath(orig)), "pruned": optimized_op_counts(os.fspath(pruned))}
    raw[key] = row
    save_raw(RAW, raw)
    return row


def profile(label: str, ratio: float, round_to: int, batch: int, runs: int = 10) -> None:
    """Per-op-type time of original and pruned with ORT's profiler (what does not shrink with the MACs)."""
    import tempfile

    import onnxruntime as ort

    from graphprune.bench import _feeds

    orig = original_path(label)
    pruned, info = pruned_path(label, ratio, round_to)
    feeds, _ = _feeds(os.fspath(orig), {}, batch, 0)
    totals = {}
    for tag, path in (("original", orig), ("pruned", pruned)):
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.intra_op_num_threads = os.cpu_count()
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "prof")
            s = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
            for _ in range(3):
                s.run(None, feeds)
            for _ in range(runs):
                s.run(None, feeds)
            prof = s.end_profiling()
            events = json.load(open(prof))
        c = Counter()
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                c[e["args"]["op_name"]] += e["dur"]
        totals[tag] = {k: v / (runs + 3) / 1e3 for k, v in c.items()}
    ops = sorted(set(totals["original"]) | set(totals["pruned"]), key=lambda o: -totals["original"].get(o, 0))
    print(f"{label} ratio {ratio} round-to {round_to} batch {batch}: MACs kept {info['summary']['macs']['ratio']}")
    print(f"{'op':28s} {'orig ms':>9s} {'pruned ms':>9s} {'speedup':>8s}")
    for o in ops:
        a, b = totals["original"].get(o, 0.0), totals["pruned"].get(o, 0.0)
        print(f"{o:28s} {a:9.3f} {b:9.3f} {a / b if b else float('inf'):8.2f}")
    a, b = sum(totals["original"].values()), sum(totals["pruned"].values())
    print(f"{'total (kernel time)':28s} {a:9.3f} {b:9.3f} {a / b:8.2f}")


# ---- report -------------------------------------------------------------------------------------------
def _bar(row) -> float | None:
    return BARS.get((row["model"], None), BARS.get((row["model"], row["batch"])))


def write_markdown(raw: dict, args, default_rt: int, path: Path) -> None:
    rows = [r for k, r in raw.items() if not k.startswith("ops|")]
    L = []
    L.append("# Speed: ONNX Runtime CPU latency, original vs pruned\n")
    L.append(f"Generated by `python benchmarks/speed.py` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores (`lscpu`: {cpu_name()}), onnxruntime {_ort_version()}, "
             f"{time.strftime('%Y-%m-%d')}. The machine is shared and noisy: only ratios measured in one "
             "interleaved run are compared. Each cell is one `graphprune.bench.bench` call (what "
             "`graphprune bench` runs): intra-op threads = cores, thread spinning off, "
             f"{args.warmup} warm-up runs, then original and pruned run alternately in blocks of {args.block} "
             f"(ABBA order of blocks; the first run of a block is not counted) for at least {args.repeat} rounds "
             "and a minimum time: 8 s for the sweep (`python benchmarks/speed.py --fresh`), 20 s for the main "
             "table's default setting (then `python benchmarks/speed.py --round-to auto --fresh --min-seconds "
             "20`); the speedup is the ratio of the medians. "
             "Ideal = MACs before / MACs after (graphprune's report, convolutions and matrix products); "
             "fraction = realized / ideal.\n")
    L.append(kept_section(RESULTS, "summary"))
    main_rows = sorted((r for r in rows if r["round_to"] == default_rt),
                       key=lambda r: (list(MODELS).index(r["model"]), r["ratio"], r["batch"]))
    L.append(f"## Realized vs ideal speedup (`--round-to {default_rt}`, graphprune's default)\n")
    L.append("| model | ratio | batch | params kept | MACs kept | original ms | pruned ms | speedup | ideal | "
             "fraction of ideal | bar |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in main_rows:
        bar = _bar(r)
        verdict = "" if bar is None else (f"≥ {bar} ✅" if r["fraction"] >= bar else f"≥ {bar} ❌")
        L.append(f"| {LABELS[r['model']]} | {r['ratio']} | {r['batch']} | {r['params_kept']:.3f} | "
                 f"{r['macs_kept']:.3f} | {r['orig_ms']:.2f} | {r['pruned_ms']:.2f} | {r['speedup']:.2f}x | "
                 f"{r['ideal']:.2f}x | {r['fraction']:.3f} | {verdict} |")
    L.append("")
    L.append("## `--round-to` sweep\n")
    L.append("Same measurement for kept channel counts rounded to multiples of 1, 8, 16 and 32, and `auto` "
             "(the default: 16, or 8 in groups of 16-31 channels): speedup and fraction of ideal; each cell is "
             "its own interleaved run, except where a setting gives the very same model as another (same "
             "bytes), which is measured once.\n")
    rts = [rt for rt in SWEEP if any(r["round_to"] == rt for r in rows)]
    L.append("| model | ratio | batch | " + " | ".join(f"round-to {rt}" for rt in rts) + " |")
    L.append("|---|---|---|" + "---|" * len(rts))
    combos = sorted({(r["model"], r["ratio"], r["batch"]) for r in rows},
                    key=lambda c: (list(MODELS).index(c[0]), c[1], c[2]))
    for m, ratio, b in combos:
        cells = []
        for rt in rts:
            r = raw.get(f"{m}|{ratio}|{rt}|{b}")
            same = f" (= round-to {r['same_model_as']})" if r and r.get("same_model_as") else ""
            cells.append("" if r is None else
                         f"{r['speedup']:.2f}x ({r['fraction']:.2f}), MACs {r['macs_kept']:.3f}{same}")
        L.append(f"| {LABELS[m]} | {ratio} | {b} | " + " | ".join(cells) + " |")
    L.append("")
    L.append(_round_to_choice(raw, rts, default_rt))
    L.append("## ONNX Runtime fusions are kept\n")
    L.append("Op counts of the graph ONNX Runtime actually runs (`SessionOptions.optimized_model_filepath`, "
             "ORT_ENABLE_ALL, CPU), original → pruned; `a→b` marks a count that changed:\n")
    for m in MODELS:
        for ratio in (0.3, 0.5):
            for rt in dict.fromkeys([1, default_rt]):
                o = raw.get(f"ops|{m}|{ratio}|{rt}")
                if o is None:
                    continue
                ops = sorted(set(o["original"]) | set(o["pruned"]))
                same = all(o["original"].get(k, 0) == o["pruned"].get(k, 0) for k in ops)
                L.append(f"- **{LABELS[m]}**, ratio {ratio}, round-to {rt} — "
                         f"{'identical op counts' if same else '**op counts differ**'}: " + ", ".join(
                             f"{k} {o['original'].get(k, 0)}" + (
                                 "" if o["original"].get(k, 0) == o["pruned"].get(k, 0)
                                 else f"→{o['pruned'].get(k, 0)}") for k in ops))
    L.append("")
    L.append(kept_section(RESULTS, "findings"))
    path.write_text("\n".join(L) + "\n")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _round_to_choice(raw, rts, default_rt) -> str:
    """Geometric mean of the fraction of ideal per round-to, over every (model, ratio, batch) measured at all."""
    import math

    combos = {(r["model"], r["ratio"], r["batch"]) for k, r in raw.items() if not k.startswith("ops|")}
    full = [c for c in combos if all(f"{c[0]}|{c[1]}|{rt}|{c[2]}" in raw for rt in rts)]
    if not full:
        return ""
    lines = ["Geometric mean over the rows above (every model, ratio and batch):\n",
             "| round-to | speedup | fraction of ideal | MACs kept |", "|---|---|---|---|"]
    for rt in rts:
        rs = [raw[f"{c[0]}|{c[1]}|{rt}|{c[2]}"] for c in full]
        g = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
        lines.append(f"| {rt}{' (default)' if rt == default_rt else ''} | {g([r['speedup'] for r in rs]):.3f}x | "
                     f"{g([r['fraction'] for r in rs]):.3f} | {g([r['macs_kept'] for r in rs]):.3f} |")
    return "\n".join(lines) + "\n"


def _rt(text: str):
    return text if text == "auto" else int(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--round-to", nargs="+", type=_rt, default=SWEEP, dest="round_to")
    p.add_argument("--default-round-to", type=_rt, default=None,
                   help=f"the round-to of the main table (default: {DEFAULT_ROUND_TO}, graphprune's default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=6, help="rounds (each a block of runs of each model)")
    p.add_argument("--block", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=8.0)
    p.add_argument("--fresh", action="store_true", help="measure again even where raw results exist")
    p.add_argument("--no-write", action="store_true", help="do not rewrite results/speed.md")
    p.add_argument("--profile", choices=list(MODELS), help="per-op-type ORT profile of one model instead")
    args = p.parse_args(argv)
    if args.profile:
        for ratio in args.ratios:
            for rt in args.round_to:
                for b in args.batches:
                    profile(args.profile, ratio, rt, b)
        return 0
    default_rt = args.default_round_to or DEFAULT_ROUND_TO
    raw = load_raw(RAW)
    if args.fresh:  # forget the selected cells' old rows (a stale row must not stand in for a new one)
        def selected(key):
            parts = key.removeprefix("ops|").split("|")
            return (parts[0] in args.models and float(parts[1]) in args.ratios
                    and _rt(parts[2]) in args.round_to and (len(parts) < 4 or int(parts[3]) in args.batches))
        raw = {k: v for k, v in raw.items() if not selected(k)}
    for label in args.models:
        for ratio in args.ratios:
            for rt in args.round_to:
                for b in args.batches:
                    measure(label, ratio, rt, b, raw, args)
            for rt in [rt for rt in dict.fromkeys([1, default_rt]) if rt in args.round_to]:
                op_counts(label, ratio, rt, raw, args.fresh)
    if not args.no_write:
        write_markdown(raw, args, default_rt, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
