"""Command line: `graphprune MODEL --ratio R [-o OUT]` and `graphprune analyze MODEL`.

Every failure ends in one line on stderr and a non-zero exit code (2 for usage errors); nothing is
written unless the pruned model validated, and the input file is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .core import progress
from .errors import GraphpruneError, OptionError, UsageError, first_line
from .options import AnalyzeOptions, PruneOptions, add_options, cli_name, from_args, parse_input_shapes
from .version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        raise UsageError(message)


# The option flags come from the fields of PruneOptions / AnalyzeOptions (options.py); the flags written out
# here are the CLI's own I/O. The lists of field names only fix where each flag appears in --help.
def _common(p: argparse.ArgumentParser, options) -> None:
    p.add_argument("model", help="input ONNX model")
    add_options(p, options, ["exclude", "input_shapes", "prune_head_dim", "prune_hidden"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    add_options(p, options, ["debug"])


def prune_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphprune", description="Structured pruning of ONNX models. "
                "Also: `graphprune analyze MODEL` lists the channel groups; "
                "`graphprune bench ORIGINAL PRUNED` measures their ONNX Runtime latency.")
    _common(p, PruneOptions)
    add_options(p, PruneOptions, ["ratio"])
    p.add_argument("-o", "--output", help="output path (default: MODEL.pruned.onnx next to the input)")
    p.add_argument("--report", metavar="PATH", help="write the report as JSON")
    add_options(p, PruneOptions, ["round_to", "head_ratio", "mlp_ratio", "max_ratio", "importance", "reduction",
                                  "normalize", "global_pruning", "allocation", "uniform_heads", "target", "strict_target", "min_keep", "calib",
                                  "calib_images", "preprocess", "calib_samples", "compensate", "ridge", "atol", "rtol",
                                  "max_error", "metric", "seed"])
    p.add_argument("--save-plan", metavar="PATH", help="write the plan (which channels were cut) as JSON")
    p.add_argument("--plan", metavar="PATH", help="apply a saved plan instead of scoring")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be cut; write no model (--report and --save-plan are still written)")
    p.add_argument("--overwrite", action="store_true", help="allow -o to be the input path")
    add_options(p, PruneOptions)  # the rest (--no-validate, hidden)
    p.add_argument("--version", action="version", version=f"graphprune {__version__}")
    return p


def analyze_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphprune analyze", description="List the groups of coupled channels of a model.")
    _common(p, AnalyzeOptions)
    p.add_argument("--summary", action="store_true", help="counts and frozen reasons only")
    add_options(p, AnalyzeOptions, ["ratio", "importance", "seed"])
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML page: the groups table and "
                   "a per-layer chart of channels (kept and removed with --ratio)")
    p.add_argument("--graph", metavar="PATH", help="write the channel-dependency graph (ops, tensors, channel "
                   "axes, groups): .graphml, .gexf or .dot/.gv by extension")
    add_options(p, AnalyzeOptions)  # the rest (--calib)
    return p


def bench_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphprune bench", description="ONNX Runtime CPU latency of two models, measured "
                "interleaved (ABBA) on the same synthetic inputs: medians and the speedup.")
    p.add_argument("original", help="the original ONNX model")
    p.add_argument("pruned", help="the pruned ONNX model")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS",
                   help="fix an input's dims, e.g. input:8,3,224,224 (repeatable)")
    p.add_argument("--batch", type=int, default=None, help="size of a dynamic batch axis (axis 0)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default: the number of cores)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs of each model")
    p.add_argument("--repeat", type=int, default=10, help="rounds: each runs a block of each model (ABBA order)")
    p.add_argument("--block", type=int, default=3,
                   help="runs per block; the first of a block (the switch from the other model) is not counted")
    p.add_argument("--ops", action="store_true", help="also count ops in ONNX Runtime's optimized graphs")
    p.add_argument("--seed", type=int, default=0, help="seed for the synthetic inputs")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        if not debug:  # numpy/onnx/torch warnings are not for users: one line on stderr, or nothing
            warnings.simplefilter("ignore")
        return _main(argv, debug)


def _main(argv: list[str], debug: bool) -> int:
    try:
        if argv[:1] == ["--version"]:
            print(f"graphprune {__version__}")
            return 0
        if argv[:1] == ["analyze"]:
            return _analyze(analyze_parser().parse_args(argv[1:]))
        if argv[:1] == ["bench"]:
            return _bench(bench_parser().parse_args(argv[1:]))
        return _prune(prune_parser().parse_args(argv))
    except GraphpruneError as exc:
        if debug:
            raise
        # Option errors name options as Python does (ratio=); here they name the flags (--ratio).
        message = exc.render(cli_name) if isinstance(exc, OptionError) else str(exc)
        print(f"graphprune: error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `graphprune ... | head`: the reader left; not an error worth a message. Point stdout at devnull
        # so the interpreter's final flush does not raise again; exit 1 as rich's console does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for users
        if debug:
            raise
        msg = first_line(exc, limit=1000)
        print(f"graphprune: internal error: {type(exc).__name__}: {msg} (rerun with --debug)", file=sys.stderr)
        return 1


def _default_output(model: str) -> Path:
    p = Path(model)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".pruned.onnx")


def _prune(args) -> int:
    from .analysis.plan import Plan
    from .api import prune
    from .core.io import save_model
    from .render import print_prune

    opts = from_args(PruneOptions, args)
    progress.enable(not (args.quiet or args.json))
    out = Path(args.output) if args.output else _default_output(args.model)
    if not args.dry_run:
        if out.resolve() == Path(args.model).resolve() and not args.overwrite:
            raise UsageError(f"{out}: output would overwrite the input (pass --overwrite to allow it)")
        if not out.parent.exists():
            raise UsageError(f"{out.parent}: output folder does not exist")
        if out.is_dir():
            raise UsageError(f"{out}: is a directory; -o takes a file path")
    # Check the side outputs before the work, so a bad --report path never leaves a half-done run.
    _check_side_outputs(args.model, (("--report", args.report), ("--save-plan", args.save_plan)),
                        None if args.dry_run else out)
    plan = None
    if args.plan:
        try:
            plan = Plan.from_json(Path(args.plan).read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.plan}: not a readable plan ({exc})") from None
    result = prune(args.model, opts, plan=plan)  # --strict-target: a missed target raises here, before any write
    report = result.report.to_dict()
    report["input"] = os.fspath(args.model)
    report["warnings"] = result.report.warning_lines(cli_name)  # the options as flags
    if not result.analysis.prunable:
        return _nothing_to_prune(args, result, report)
    failed = result.report.fidelity.get("passed") is False
    report["output"] = None if args.dry_run or failed else os.fspath(out)
    if not args.dry_run and not failed:
        with progress.file_step(f"saving {out.name}", result.report.after.size_bytes):
            save_model(result.model, out)
    _emit(args, result, report, lambda: print_prune(result, report))
    if failed:
        raise GraphpruneError(f"fidelity check FAILED (--atol {opts.atol}, --rtol {opts.rtol}); "
                              "no model written")
    return 0


def _nothing_to_prune(args, result, report: dict) -> int:
    """Every channel group is frozen: say why, write no model, exit 0 (README: "Nothing to prune")."""
    from .render import print_nothing_to_prune

    report["output"] = None
    report["nothing_to_prune"] = True
    _emit(args, result, report, lambda: print_nothing_to_prune(result.analysis))
    return 0


def _emit(args, result, report: dict, show) -> None:
    """The plan and report files asked for, then the report as JSON, or `show()` for people, or nothing."""
    if args.save_plan:
        _write_text(args.save_plan, result.plan.to_json())
    if args.report:
        _write_text(args.report, json.dumps(report, indent=1, default=str))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    elif not args.quiet:
        show()


def _write_text(path: str, text: str) -> None:
    from .core.io import write_text_atomic

    write_text_atomic(path, text)


def _check_side_outputs(model: str, sides, out: Path | None = None) -> None:
    """Report, plan, page and graph paths are checked before the work, so a bad one never leaves a half-done
    run: the folder exists, the path is no directory, and it is neither the input nor the output model."""
    for flag, side in sides:
        if not side:
            continue
        path = Path(side)
        if not path.parent.exists():
            raise UsageError(f"{flag} {side}: folder does not exist")
        if path.is_dir():
            raise UsageError(f"{flag} {side}: is a directory")
        if path.resolve() == Path(model).resolve():
            raise UsageError(f"{flag} {side}: would overwrite the input model")
        if out is not None and path.resolve() == out.resolve():
            raise UsageError(f"{flag} {side}: would overwrite the output model")


def _analyze(args) -> int:
    from .api import analyze, prune
    from .render import analysis_json, print_analysis

    _check_side_outputs(args.model, (("--html", args.html), ("--graph", args.graph)))
    if args.graph:
        from .analysis.depgraph import check_graph_path

        check_graph_path(args.graph, "--graph")
    aopts = from_args(AnalyzeOptions, args)
    progress.enable(not (args.quiet or args.json))
    plan = None
    opts = aopts.plan_options()  # the plan a prune would make, without validating or writing anything
    if opts is not None:
        res = prune(args.model, opts)
        a, plan = res.analysis, res.plan
    else:
        a = analyze(args.model, aopts)
    sens = None
    if aopts.calib is not None or aopts.calib_images is not None:
        from .html_report import read_calibration, sensitivity

        calib = read_calibration(aopts.calib, a.view.model, aopts.calib_images, aopts.preprocess)
        with progress.step("sensitivity: one group at a time"):
            sens = sensitivity(a, calib)
    if args.html:
        from .html_report import write_html

        write_html(a, args.html, plan, title=Path(args.model).name, sensitivity_rows=sens)
    if args.graph:
        from .analysis.depgraph import write_graph

        write_graph(a, args.graph)
    if args.json:
        d = analysis_json(a)
        if sens is not None:
            d["sensitivity"] = sens
        if plan is not None:
            d["plan"] = {"ratio": opts.ratio, "channels_removed": plan.n_removed,
                         "cuts": {k: c.removed for k, c in plan.cuts.items()}}
        print(json.dumps(d, indent=1))
    elif not args.quiet:
        print_analysis(a, summary=args.summary)
        if plan is not None:
            total = sum(g.size for g in a.prunable)
            print(f"at --ratio {opts.ratio}: {plan.n_removed} of {total} prunable channels removed in "
                  f"{sum(1 for c in plan.cuts.values() if c.removed)} groups (analysis only; no model written)")
        for row in sens or []:
            curve = ", ".join(f"{p['ratio']:g}: {p['relative_error']:.3g}" for p in row["points"][1:])
            print(f"sensitivity of {row['key']} (output relative error at ratio {curve})")
        for side in (args.html, args.graph):
            if side:
                print(f"wrote {side}")
    return 0


def _bench(args) -> int:
    from .bench import bench, format_result

    res = bench(args.original, args.pruned, input_shapes=parse_input_shapes(args.input_shape), batch=args.batch,
                threads=args.threads or None, warmup=args.warmup, repeat=args.repeat, seed=args.seed, ops=args.ops,
                block=args.block)
    print(json.dumps(res.to_dict(), indent=1) if args.json else format_result(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
