"""Robustness report: the bad-input corpus, random graphs against the oracle, and a mutation fuzz.

    python benchmarks/robustness.py [--cnn 150] [--mlp 100] [--mutants 600] [--out benchmarks/results/robustness.md]

1. Every case of tests/corpus.py through the CLI, checked as tests/test_bad_inputs.py checks it.
2. Random small CNNs and MLPs (tests/test_properties.py's hypothesis generators, a larger budget):
   checker, ONNX Runtime, prune + validate, the equivalence oracle on a random cut, ratio 0 identical.
3. Mutations of valid models (flipped bytes, truncation, removed initializers, renamed tensors, dropped
   nodes, bad dims, attributes, opsets, input types): every run must end in exit 0 with a valid model, or a
   one-line error; an internal error or a traceback is a failure.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

import graphprune  # noqa: E402
from tests import corpus  # noqa: E402


def run_corpus() -> list[dict]:
    rows = []
    for case in corpus.cases():
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            try:
                r = corpus.check_case(case, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a harness failure is a failed case
                r = {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"], "line": ""}
            r.update(name=case.name, family=case.family, expect=case.expect, seconds=time.perf_counter() - t,
                     code=case.code)
            rows.append(r)
            print(f"  {'ok ' if r['ok'] else 'FAIL'} {case.name}", file=sys.stderr)
    return rows


def run_random(kind: str, n: int) -> dict:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tests import test_properties as tp

    stats = {"examples": 0, "passed": 0, "with_prunable": 0, "failures": [], "nodes": [], "groups": 0,
             "prunable": 0, "ops": Counter()}
    strategy = tp.cnns() if kind == "cnn" else tp.mlps()

    @settings(max_examples=n, **tp.SETTINGS)
    @given(strategy, st.integers(0, 3))
    def check(m, seed):
        stats["examples"] += 1
        stats["ops"].update({node.op_type for node in m.graph.node})
        try:
            s = tp.check_random_model(m, seed)
        except Exception as exc:  # noqa: BLE001 - recorded, not shrunk: this is a census
            stats["failures"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return
        stats["passed"] += 1
        stats["with_prunable"] += bool(s["prunable"])
        stats["nodes"].append(s["nodes"])
        stats["groups"] += s["groups"]
        stats["prunable"] += s["prunable"]

    check()
    return stats


def run_fuzz(n: int, seed: int) -> list[dict]:
    from tests import test_properties as tp

    return tp.fuzz(n, seed)


def write_report(path: Path, corpus_rows, randoms, fuzz_rows, seconds) -> None:
    lines = ["# Robustness", "",
             f"Written by `python benchmarks/robustness.py` (graphprune {graphprune.__version__}, onnx "
             f"{onnx.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}; "
             f"{seconds:.0f} s).", ""]
    ok = sum(r["ok"] for r in corpus_rows)
    by_expect = Counter(r["expect"] for r in corpus_rows)
    lines += ["## Bad-input corpus", "",
              f"**{len(corpus_rows)} cases, {ok} pass** ({by_expect['error']} must fail with a one-line error, "
              f"{by_expect['pruned']} hard but legal models must prune and validate, {by_expect['nothing']} "
              "must say \"nothing to prune\"). Each error case is checked for: exit code (2 for usage errors), "
              "one line on stderr naming the problem, no traceback, no output file, the input unchanged "
              "(hashed). Cases are built by `tests/corpus.py` at run time; `tests/test_bad_inputs.py` runs "
              "them.", ""]
    if not corpus.has_calibration():
        lines += ["Calibration cases are skipped: this build has no `--calib`.", ""]
    fam = defaultdict(list)
    for r in corpus_rows:
        fam[r["family"]].append(r)
    lines += ["| family | cases | pass |", "|---|---|---|"]
    for f, rs in fam.items():
        lines.append(f"| {f} | {len(rs)} | {sum(r['ok'] for r in rs)} |")
    lines += ["", "| case | expected | result | what the user sees |", "|---|---|---|---|"]
    for r in corpus_rows:
        exp = f"error (exit {r['code']})" if r["expect"] == "error" else r["expect"]
        res = "pass" if r["ok"] else "**FAIL**: " + "; ".join(r["problems"])
        seen = r["line"].replace("|", "\\|").replace("graphprune: error: ", "")
        if len(seen) > 200:
            seen = seen[:197] + "..."
        lines.append(f"| {r['name']} | {exp} | {res} | {seen} |")
    lines += ["", "## Random graphs against the oracle", "",
              "Hypothesis draws small CNNs (conv 1x1/3x3, grouped, depthwise, BatchNorm, activations, residual "
              "Add, Concat, Split, Slice, pooling, an NHWC Transpose with a MatMul over channels, a per-channel "
              "Mul; heads: GlobalAveragePool/Flatten/Reshape into Gemm or MatMul, or a 1x1 conv) and MLPs "
              "([B, F] or [B, T, F]; Gemm/MatMul, residual, Concat, Split with a gate). Each must pass the full "
              "checker and run in ONNX Runtime; `graphprune.prune` at 0.5 must validate; where a group is "
              "prunable, a random cut must equal the masked original and ratio 0 must be bit-identical.", "",
              "| generator | examples | pass | with a prunable group | mean nodes | groups (prunable) |",
              "|---|---|---|---|---|---|"]
    for kind, s in randoms.items():
        mean = sum(s["nodes"]) / max(len(s["nodes"]), 1)
        lines.append(f"| {kind} | {s['examples']} | {s['passed']} | {s['with_prunable']} | {mean:.1f} | "
                     f"{s['groups']} ({s['prunable']}) |")
    for kind, s in randoms.items():
        for f in Counter(s["failures"]).most_common(10):
            lines.append(f"- {kind} failure x{f[1]}: `{f[0]}`")
    ops = sorted(set().union(*(s["ops"] for s in randoms.values())))
    lines += ["", f"Ops drawn: {', '.join(ops)}.", ""]
    outcomes = Counter(r["outcome"] for r in fuzz_rows)
    lines += ["## Mutation fuzz", "",
              f"**{len(fuzz_rows)} mutants** of 4 valid models (a CNN, a QDQ CNN, a model with an If, a "
              "QLinearConv chain), each handed to the CLI as a file: "
              + ", ".join(f"{v} {k}" for k, v in outcomes.most_common()) + ". An internal error, a traceback, "
              "a second stderr line or a changed input would be a failure.", "",
              "| mutation | mutants | clean error | pruned | nothing to prune | failures |", "|---|---|---|---|---|---|"]
    by_mut = defaultdict(Counter)
    for r in fuzz_rows:
        by_mut[r["mutation"]][r["outcome"]] += 1
    for mut, c in sorted(by_mut.items()):
        bad = c["internal error"] + c["unclean error"]
        lines.append(f"| {mut} | {sum(c.values())} | {c['clean error']} | {c['pruned']} | "
                     f"{c['nothing to prune']} | {bad} |")
    msgs = Counter()
    for r in fuzz_rows:
        if r["outcome"] == "clean error":
            text = r["stderr"].strip().replace("graphprune: error: ", "")
            text = text.split(": ", 1)[1] if text.startswith("/") else text  # drop the temp path
            msgs[text.split(":")[0][:90]] += 1
    lines += ["", "Most common error lines (up to the first colon):", ""]
    lines += [f"- x{n}: {m}" for m, n in msgs.most_common(12)]
    bad = [r for r in fuzz_rows if r["outcome"] in ("internal error", "unclean error") or not r["input_unchanged"]]
    for r in bad[:20]:
        lines.append(f"- FAILURE {r['model']}/{r['mutation']}#{r['index']}: `{r['stderr'].strip()[:200]}`")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cnn", type=int, default=150, help="random CNNs")
    p.add_argument("--mlp", type=int, default=100, help="random MLPs")
    p.add_argument("--mutants", type=int, default=600, help="mutated models")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutation fuzz")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robustness.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    print("corpus", file=sys.stderr)
    rows = run_corpus()
    randoms = {}
    for kind, n in (("cnn", args.cnn), ("mlp", args.mlp)):
        print(f"random {kind} x{n}", file=sys.stderr)
        try:
            randoms[kind] = run_random(kind, n)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            raise
    print(f"fuzz x{args.mutants}", file=sys.stderr)
    fuzz_rows = run_fuzz(args.mutants, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(out, rows, randoms, fuzz_rows, time.perf_counter() - t0)
    print(f"wrote {out}", file=sys.stderr)
    failed = (sum(not r["ok"] for r in rows) + sum(len(s["failures"]) for s in randoms.values())
              + sum(r["outcome"] in ("internal error", "unclean error") for r in fuzz_rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
