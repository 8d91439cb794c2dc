"""Compiler speed and memory: how long graphprune takes, and how much memory it needs, as models grow.

    python benchmarks/scale.py                    # every model, writes results/scale.md
    python benchmarks/scale.py --models resnet50 --no-write
    python benchmarks/scale.py --stages llama_1b  # one in-process run, time and memory after each stage

For every model, in fresh subprocesses (so each gets its own peak resident memory from wait4):
- end-to-end: the CLI, `graphprune MODEL --ratio 0.5 -o OUT --json` (load, analyze, score, rewrite, validate,
  save), wall time, CPU time (user + sys) and peak RSS;
- core: analyze (GraphView with shape inference, then the dependency analysis) + rewrite alone, timed in-process.
Models: ResNet-50 (zoo), BERT-base, ViT-B/16, LLaMA-style decoders of ~100M / ~350M / ~1.1B parameters, and a
fixed-width depth series (hidden 768 with 8, 16, 32 and 64 decoder layers) for time against node count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_models  # noqa: E402
from results_io import cpu_name, kept_section, load_raw, save_raw  # noqa: E402

MODELS = ["resnet50", "bert_base", "vit_base", "llama_100m", "llama_350m", "llama_1b",
          "llama_768x8", "llama_768x16", "llama_768x32", "llama_768x64"]
LABELS = {"resnet50": "ResNet-50", "bert_base": "BERT-base", "vit_base": "ViT-B/16", "llama_100m": "LLaMA ~100M",
          "llama_350m": "LLaMA ~350M", "llama_1b": "LLaMA ~1.1B", "llama_768x8": "LLaMA 768x8",
          "llama_768x16": "LLaMA 768x16",
          "llama_768x32": "LLaMA 768x32", "llama_768x64": "LLaMA 768x64"}
DEPTH_SERIES = ["llama_768x8", "llama_768x16", "llama_768x32", "llama_768x64"]  # hidden 768: 8/16/32/64 layers
RAW = bench_models.CACHE / "scale_raw.json"
PY = sys.executable


def model_path(label: str) -> Path:
    if label == "resnet50":
        from models import get_model

        return get_model("resnet50_full")
    return bench_models.get(label)


def _popen_rusage(cmd: list[str]) -> dict:
    """Like _run, but reaps the child with wait4 itself so rusage is exact for that child."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        return {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "rc": p.returncode,
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")[-2000:]}


# The CLI, run so that it reports its own peak RSS at exit (VmHWM of its address space): a child's wait4
# ru_maxrss starts from the parent's high-water mark at fork (Linux keeps it across exec), so a benchmark
# process that has loaded a model or imported torch would lend every child its own peak.
_CLI = r"""
import runpy, sys
sys.argv = ["graphprune"] + sys.argv[1:]
try:
    runpy.run_module("graphprune.cli", run_name="__main__", alter_sys=True)
finally:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\nGRAPHPRUNE_VMHWM_KB=" + line.split()[1] + "\n")
"""


def end_to_end(label: str, ratio: float, outdir: Path) -> dict:
    src = model_path(label)
    out = outdir / f"{label}.pruned.onnx"
    res = _popen_rusage([PY, "-c", _CLI, str(src), "--ratio", str(ratio), "-o", str(out), "--json"])
    hwm = [line for line in res["stderr"].splitlines() if line.startswith("GRAPHPRUNE_VMHWM_KB=")]
    if hwm:
        res["peak_rss_mb"] = round(int(hwm[-1].split("=")[1]) / 1024, 1)
        res["stderr"] = res["stderr"].replace(hwm[-1], "").strip()
    if res["rc"] != 0:
        return {"error": res["stderr"].strip().splitlines()[-1] if res["stderr"].strip() else f"rc {res['rc']}",
                **{k: res[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}}
    rep = json.loads(res["stdout"])
    files = [out] + ([out.with_name(out.name + ".data")] if out.with_name(out.name + ".data").exists() else [])
    row = {k: res[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}
    row.update(stages=rep["timings"], out_bytes=sum(f.stat().st_size for f in files),
               external_data=len(files) > 1, params=rep["summary"]["params"],
               macs=rep["summary"]["macs"], oracle=rep["validation"].get("oracle_max_abs_diff"),
               notes=rep["validation"].get("notes", []))
    for f in files:
        f.unlink()
    return row


_STAGES = r"""
import json, os, sys, time, resource
import numpy as np

def rss():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = round(int(v.split()[0]) / 1024, 1)
    return d

path, ratio, full = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "full"
out = {}
t0 = time.perf_counter()
_cpu = [time.process_time()]
def mark(stage, t):
    c = time.process_time()
    out[stage] = {"s": round(time.perf_counter() - t, 4), "cpu_s": round(c - _cpu[0], 4), **rss()}
    _cpu[0] = c

t = time.perf_counter()
import graphprune
import onnxruntime
from graphprune import pipeline
from graphprune.core.io import save_model
from graphprune.core.runtime import SESSION_COUNTS
from graphprune.options import PruneOptions
mark("import", t)
# The pipeline itself, stage by stage (l2 scores, exact counts, no compensation; validation with "full").
opts = PruneOptions(ratio=ratio, importance="l2", round_to=1, compensate="none", validate=full)
state = pipeline.PruneState(path, opts)
clock = [time.perf_counter(), SESSION_COUNTS["session_s"]]
def after(stage, st):
    mark(stage.name, clock[0])
    out[stage.name]["ort_session_s"] = round(SESSION_COUNTS["session_s"] - clock[1], 4)
    clock[:] = [time.perf_counter(), SESSION_COUNTS["session_s"]]
stages = [s for s in pipeline.PRUNE_STAGES if s.name != "report"]
pipeline.run(stages, state, after)
a = state.analysis
out["nodes"] = len(state.model.graph.node)
out["elements"] = int(a.spaces.total)
out["groups"] = len(a.channel_groups)
if full:
    out["validation_notes"] = state.validation.notes
    import tempfile
    d = tempfile.mkdtemp()
    t = time.perf_counter(); save_model(state.pruned, os.path.join(d, "p.onnx")); mark("save", t)
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
out["total_s"] = round(time.perf_counter() - t0, 3)
print(json.dumps(out))
"""


def core(label: str, ratio: float, full: bool = False) -> dict:
    src = model_path(label)
    res = _popen_rusage([PY, "-c", _STAGES, str(src), str(ratio), "full" if full else "core"])
    if res["rc"] != 0:
        return {"error": res["stderr"].strip().splitlines()[-1] if res["stderr"].strip() else f"rc {res['rc']}"}
    d = json.loads(res["stdout"].strip().splitlines()[-1])
    core = ("normalize", "analyze", "rewrite")
    d["core_s"] = round(sum(d[k]["s"] for k in core), 4)
    d["core_ort_s"] = round(sum(d[k]["ort_session_s"] for k in core), 4)  # GraphView's probe of dynamic dims
    d["core_own_s"] = round(d["core_s"] - d["core_ort_s"], 4)  # without ORT's session start-up
    d["core_cpu_s"] = round(sum(d[k]["cpu_s"] for k in core), 4)
    d["wall_s"], d["cpu_s"], d["peak_rss_mb"] = res["wall_s"], res["cpu_s"], res["peak_rss_mb"]
    return d


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def measure(label: str, args, raw: dict) -> dict:
    if label in raw and not args.fresh:
        return raw[label]
    src = model_path(label)
    weights = bench_models.weight_bytes(src)
    reps = args.repeat if weights < (1 << 30) else 1
    outdir = Path(tempfile.mkdtemp(prefix="graphprune-scale-"))
    try:
        e2e = [end_to_end(label, args.ratio, outdir) for _ in range(reps)]
    finally:
        for f in outdir.iterdir():
            f.unlink()
        outdir.rmdir()
    cores = [core(label, args.ratio) for _ in range(reps)]
    ok_e2e = [r for r in e2e if "error" not in r] or e2e
    ok_core = [r for r in cores if "error" not in r] or cores
    best = sorted(ok_e2e, key=lambda r: r["wall_s"])[len(ok_e2e) // 2]
    row = {
        "model": label, "weights_bytes": weights, "repeat": reps,
        "e2e_wall_s": _median([r["wall_s"] for r in ok_e2e]), "e2e_cpu_s": _median([r["cpu_s"] for r in ok_e2e]),
        "e2e_peak_rss_mb": max(r["peak_rss_mb"] for r in ok_e2e), "e2e": best,
        "core_s": _median([r["core_s"] for r in ok_core]) if "core_s" in ok_core[0] else None,
        "analyze_s": _median([r["normalize"]["s"] + r["analyze"]["s"] for r in ok_core]) if "core_s" in ok_core[0]
        else None,
        "rewrite_s": _median([r["rewrite"]["s"] for r in ok_core]) if "core_s" in ok_core[0] else None,
        "core_ort_s": _median([r["core_ort_s"] for r in ok_core]) if "core_s" in ok_core[0] else None,
        "core_own_s": _median([r["core_own_s"] for r in ok_core]) if "core_s" in ok_core[0] else None,
        "core_detail": ok_core[len(ok_core) // 2],
        "loadavg": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    raw[label] = row
    save_raw(RAW, raw)
    print(f"{label:14s} nodes {row['core_detail'].get('nodes')}: e2e {row['e2e_wall_s']:.2f} s wall "
          f"({row['e2e_cpu_s']:.2f} s CPU), peak RSS {row['e2e_peak_rss_mb']:.0f} MB "
          f"({row['e2e_peak_rss_mb'] * 2**20 / weights:.2f}x weights), core {row['core_s']} s", flush=True)
    return row


def write_markdown(raw: dict, args, path: Path) -> None:
    L = ["# Scale: compiler time and memory\n"]
    L.append(f"Generated by `python benchmarks/scale.py` ({cpu_name()}, {os.cpu_count()} cores, "
             f"{_mem_gb():.0f} GB RAM, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}). "
             f"Ratio {args.ratio}, default options (L2 magnitude, uniform). Each number is the median of "
             "fresh processes (`runs`: 3 by default, `--repeat`; 1 for models with over 1 GiB of weights); "
             "peak RSS is the "
             "CLI process's own high-water mark (`VmHWM`, read at exit; file-backed pages of memory-mapped "
             "weights included; not wait4's `ru_maxrss`, which a child inherits from its parent). The "
             "machine is shared: the load average at measurement time is listed, and CPU time (user + sys, all "
             "threads) is given beside wall time because it is far less sensitive to other jobs.\n")
    L.append(kept_section(path, "summary"))
    L.append("## End to end (CLI) and core (analyze + rewrite)\n")
    L.append("| model | params | weights | nodes | runs | end-to-end wall | end-to-end CPU | peak RSS | RSS / weights | "
             "core (analyze + rewrite) | analyze | rewrite | output | load avg |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in MODELS:
        r = raw.get(label)
        if r is None:
            continue
        d = r["core_detail"]
        p = r["e2e"].get("params", {}).get("before")
        out = r["e2e"]
        outdesc = "error: " + out["error"] if "error" in out else (
            f"{out['out_bytes'] / 2**20:.0f} MiB" + (" + external data" if out.get("external_data") else ""))
        L.append(f"| {LABELS[label]} | {p / 1e6:.0f}M | {_gib(r['weights_bytes'])} | {d.get('nodes')} | {r['repeat']} | "
                 f"{r['e2e_wall_s']:.2f} s | {r['e2e_cpu_s']:.2f} s | {r['e2e_peak_rss_mb'] / 1024:.2f} GiB | "
                 f"{r['e2e_peak_rss_mb'] * 2**20 / r['weights_bytes']:.2f} | {r['core_s']:.3f} s | "
                 f"{r['analyze_s']:.3f} s | {r['rewrite_s']:.3f} s | {outdesc} | {r['loadavg'][0]:.1f} |")
    L.append("")
    L.append("Stage times of the end-to-end run (the CLI's report, seconds):\n")
    stages = ["load", "normalize", "analyze", "scoring", "allocation", "rewrite", "validate"]
    L.append("| model | " + " | ".join(stages) + " | save + startup (rest) | validation notes |")
    L.append("|---|" + "---|" * (len(stages) + 2))
    for label in MODELS:
        r = raw.get(label)
        if r is None or "stages" not in r["e2e"]:
            continue
        st = r["e2e"]["stages"]
        rest = r["e2e"]["wall_s"] - sum(st.get(s, 0) for s in st)
        L.append(f"| {LABELS[label]} | " + " | ".join(f"{st.get(s, 0):.2f}" for s in stages)
                 + f" | {rest:.2f} | {'; '.join(r['e2e'].get('notes') or []) or '—'} |")
    L.append("")
    L.append(_linearity(raw))
    L.append(kept_section(path, "findings"))
    path.write_text("\n".join(L) + "\n")


def _linearity(raw: dict) -> str:
    pts = [(raw[m]["core_detail"]["nodes"], raw[m]["core_s"], raw[m]["e2e_cpu_s"], m,
            raw[m].get("core_own_s"), raw[m].get("core_ort_s")) for m in DEPTH_SERIES if m in raw]
    if len(pts) < 2:
        return ""
    L = ["## Time against node count (hidden 768, 8 / 16 / 32 / 64 decoder layers)\n",
         "Core = graphprune's own work (analysis incl. shape inference, rewrite) + the ONNX Runtime session "
         "GraphView starts once to probe the dynamic sequence length (its start-up is ORT's, timed apart).\n",
         "| model | nodes | core s | of which ORT session start-up s | core without it s | µs / node | "
         "end-to-end CPU s |", "|---|---|---|---|---|---|---|"]
    for n, c, e, m, own, ort_s in pts:
        L.append(f"| {LABELS[m]} | {n} | {c:.3f} | {ort_s if ort_s is not None else float('nan'):.3f} | "
                 f"{own if own is not None else float('nan'):.3f} | "
                 f"{1e6 * (own if own is not None else c) / n:.0f} | {e:.2f} |")
    import numpy as np

    x = np.array([p[0] for p in pts], float)
    series = [("core", np.array([p[1] for p in pts]))]
    if all(p[4] is not None for p in pts):
        series.append(("core without ORT start-up", np.array([p[4] for p in pts])))
    series.append(("end-to-end CPU", np.array([p[2] for p in pts])))
    for name, y in series:
        b, a = np.polyfit(x, y, 1)
        r2 = 1 - ((y - (a + b * x)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        # exponent of a power law fit: 1.0 is linear
        k = np.polyfit(np.log(x), np.log(y), 1)[0]
        L.append(f"\n{name}: least-squares line t = {a:.3f} s + {1e6 * b:.0f} µs × nodes (R² = {r2:.4f}); "
                 f"power-law exponent {k:.2f} (1.00 = linear).")
    return "\n".join(L) + "\n"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--stages", choices=MODELS, help="one in-process run with per-stage time and memory")
    args = p.parse_args(argv)
    if args.stages:
        print(json.dumps(core(args.stages, args.ratio, full=True), indent=1))
        return 0
    raw = load_raw(RAW)
    for label in args.models:
        measure(label, args, raw)
    if not args.no_write:
        write_markdown(raw, args, HERE / "results" / "scale.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
