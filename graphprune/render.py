"""Terminal output (rich tables) and JSON views of analyses and prune results."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table


def human(n: float, digits: int = 4) -> str:
    """A count with a K/M/G/T suffix and `digits` significant digits (tables, the HTML page)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.{digits}g}{unit}"
        n /= 1000
    return f"{n:.{digits}g}P"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.4g} {unit}"
        n /= 1024
    return f"{n:.4g} TiB"


def group_rows(analysis):
    for i, g in enumerate(analysis.channel_groups):
        yield {
            "id": i, "group": g.key, "kind": g.kind, "channels": g.size, "prunable": not g.frozen,
            "nodes": g.nodes, "reasons": g.reasons,
        }


def analysis_json(analysis) -> dict:
    rows = list(group_rows(analysis))
    return {
        "groups": rows,
        "prunable_groups": sum(r["prunable"] for r in rows),
        "frozen_groups": sum(not r["prunable"] for r in rows),
        "prunable_channels": sum(r["channels"] for r in rows if r["prunable"]),
        "internal_errors": [r.to_dict() for r in analysis.internal_errors],
    }


def internal_errors_warning(whys: list[str]) -> str | None:
    """One line when an op rule raised (its nodes were frozen): a bug in graphprune, not in the model."""
    if not whys:
        return None
    more = f" (and {len(whys) - 1} more)" if len(whys) > 1 else ""
    return f"warning: {len(whys)} internal error(s) in graphprune's op rules froze their nodes: {whys[0]}{more}"


def _print_warning(console: Console, line: str | None) -> None:
    if line:
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)


def print_analysis(analysis, summary: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    rows = list(group_rows(analysis))
    n_frozen = sum(not r["prunable"] for r in rows)
    if not summary:
        t = Table(title="Channel groups", show_lines=False)
        for col in ("id", "group", "kind", "units", "status", "nodes"):
            t.add_column(col)
        for r in rows:
            status = "prunable" if r["prunable"] else "frozen: " + "; ".join(r["reasons"][:1])
            nodes = ", ".join(r["nodes"][:3]) + (f" (+{len(r['nodes']) - 3})" if len(r["nodes"]) > 3 else "")
            t.add_row(str(r["id"]), r["group"], r["kind"], str(r["channels"]), status, nodes)
        console.print(t)
    console.print(f"{len(rows)} channel groups: {len(rows) - n_frozen} prunable "
                  f"({sum(r['channels'] for r in rows if r['prunable'])} channels), {n_frozen} frozen")
    reasons = Counter(r["reasons"][0] for r in rows if not r["prunable"] and r["reasons"])
    for why, n in reasons.most_common(8):
        console.print(f"  frozen x{n}: {why}")
    _print_warning(console, internal_errors_warning([str(r) for r in analysis.internal_errors]))


def nothing_to_prune_message(analysis) -> str:
    groups = analysis.channel_groups
    if not groups:
        return "nothing to prune: the model has no channel group (no Conv/Gemm/MatMul weight to cut); no model written"
    reasons = Counter(g.reasons[0] for g in groups if g.reasons)
    top = "; ".join(f"{why} (x{n})" if n > 1 else why for why, n in reasons.most_common(3))
    return f"nothing to prune: all {len(groups)} channel groups are frozen ({top}); no model written"


def print_nothing_to_prune(analysis, console: Console | None = None) -> None:
    console = console or Console()
    console.print(nothing_to_prune_message(analysis), markup=False, highlight=False, soft_wrap=True)
    _print_warning(console, internal_errors_warning([str(r) for r in analysis.internal_errors]))


def print_prune(result, report: dict, console: Console | None = None) -> None:
    console = console or Console()
    rep = result.report
    t = Table(title="graphprune")
    for col in ("", "before", "after", "change"):
        t.add_column(col, justify="right")
    for label, attr, fmt in (("parameters", "params", human), ("MACs", "macs", human),
                             ("file size", "size_bytes", _bytes), ("nodes", "nodes", str)):
        b, a = getattr(rep.before, attr), getattr(rep.after, attr)
        change = f"{(a / b - 1) * 100:+.1f}%" if b else "-"
        t.add_row(label, fmt(b), fmt(a), change)
    console.print(t)
    ops = sorted(set(rep.before.op_counts) | set(rep.after.op_counts))
    changed = [(op, rep.before.op_counts.get(op, 0), rep.after.op_counts.get(op, 0)) for op in ops
               if rep.before.op_counts.get(op, 0) != rep.after.op_counts.get(op, 0)]
    for op, b, a in changed:
        console.print(f"  op {op}: {b} -> {a}")
    console.print(f"groups: {rep.groups_pruned} pruned of {rep.groups_total - len(rep.groups_frozen)} prunable, "
                  f"{len(rep.groups_frozen)} frozen; channels removed: {rep.channels_removed} of "
                  f"{rep.channels_total}")
    print_kept(rep, console)
    v = rep.validation
    if v:
        status = "passed" if v.get("runtime") else "not run"
        extra = ""
        if v.get("oracle_max_abs_diff") is not None:
            extra += f", equals masked original (max diff {v['oracle_max_abs_diff']:.2g})"
        if v.get("output_cosine") is not None:
            extra += f", output cosine vs original {v['output_cosine']:.4f}"
        console.print(f"validation {status}: checker, shape inference, ONNX Runtime{extra}")
    print_quality(rep, console)
    for line in report.get("warnings", rep.warnings):  # the CLI's copy names the options as flags
        _print_warning(console, f"warning: {line}")
    _print_warning(console, internal_errors_warning([r["why"] for r in rep.internal_errors]))
    if report.get("output"):
        console.print(f"wrote {report['output']}")
    elif rep.fidelity.get("passed") is False:
        console.print("fidelity check FAILED: nothing written")
    else:
        console.print("dry run: nothing written")


def print_kept(rep, console: Console) -> None:
    """Heads and MLP neurons kept per layer (transformers; every group is in the JSON report's `kept`), and
    the note when attention blocks keep different head counts."""
    rows = [r for r in rep.kept if r["kind"] in ("head", "mlp")]
    if rows:
        t = Table(title="kept per layer")
        for col in ("layer", "kind", "kept", "of", "width"):
            t.add_column(col, justify="left" if col in ("layer", "kind") else "right")
        for r in rows:
            t.add_row(r["layer"], "heads" if r["kind"] == "head" else "MLP neurons", str(r["kept"]), str(r["size"]),
                      str(r.get("width", "")))
        console.print(t)
    if rep.attention.get("note"):
        console.print(f"  note: {rep.attention['note']}", markup=False, highlight=False, soft_wrap=True)


def _by_reason(why_of: dict[str, str], noun: str) -> str:
    """'3 layers: reason a; 1 layer: reason b' from {item: reason}, the commonest reason first."""
    counts: dict[str, int] = {}
    for why in why_of.values():
        counts[why] = counts.get(why, 0) + 1
    return "; ".join(f"{n} {noun}{'s' if n != 1 else ''}: {why}"
                     for why, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _print_search(sr: dict, console: Console) -> None:
    """The --max-error curve: each ratio tried, the MACs it kept and its held-out error."""
    where = "held-out samples" if sr["held_out"] else "calibration samples (none held out)"
    t = Table(title=f"--max-error {sr['max_error']} ({sr['metric']} error on {where})")
    for col in ("ratio", "MACs kept", "params kept", "error", ""):
        t.add_column(col, justify="right")
    for pt in sr["curve"]:
        t.add_row(f"{pt['ratio']:.3f}", f"{pt['macs_kept']:.1%}", f"{pt['params_kept']:.1%}", f"{pt['error']:.4f}",
                  "ok" if pt["within"] else "over")
    console.print(t)
    console.print(f"chose ratio {sr['chosen_ratio']:.3f} (largest tried {sr['largest_tried']})")


def print_quality(rep, console: Console) -> None:
    """Scores, allocation and compensation used, and the fidelity table (pruned vs original outputs)."""
    q = rep.quality or {}
    parts = []
    if q.get("calibration"):
        c = q["calibration"]
        fed = f"; fed unchanged: {', '.join(c['constants'])}" if c.get("constants") else ""
        one = ", sample by sample" if c.get("batch") == 1 else ""
        parts.append(f"calibration: {c['samples']} samples ({c['held_out']} held out{one}{fed})")
    if q.get("scoring"):
        s = q["scoring"]
        stat = f" from {s['statistics']}" if s.get("statistics") else ""
        fb = f", magnitude for {len(s['magnitude_fallback'])} groups" if s.get("magnitude_fallback") else ""
        if s.get("layers_without_statistics"):
            fb += f"; no statistics for {_by_reason(s['layers_without_statistics'], 'layer')}"
        parts.append(f"scores: {s.get('importance')}{stat}{fb}")
    a = q.get("allocation")
    t = (a or {}).get("target") or {}
    if a and (a.get("mode") in ("global", "sensitivity") or t.get("what") != "channels" or not t.get("met", True)):
        parts.append(f"allocation: {a['mode']}, {t.get('what')} removed {a.get('achieved', 0):.1%} "
                     f"(asked {t.get('asked', a['ratio']):.1%})")
    if q.get("compensation"):
        c = q["compensation"]
        line = f"compensation: {c['mode']}, {len(c.get('layers', {}))} layers re-fit"
        if c.get("skipped"):
            line += f"; not re-fit: {_by_reason(c['skipped'], 'layer')}"
        if not c.get("layers") and c.get("notes"):
            line += f" ({'; '.join(c['notes'])})"
        parts.append(line)
    for p in parts:
        console.print(p)
    if q.get("search"):
        _print_search(q["search"], console)
    f = rep.fidelity
    if not f:
        return
    where = "held-out calibration samples" if f.get("held_out") else (
        "synthetic inputs" if f.get("inputs") == "synthetic" else "calibration samples (none held out)")
    t = Table(title=f"fidelity on {f['samples']} {where}")
    nn = any("nn_agreement" in row for row in f["outputs"].values())
    cols = ("output", "cosine", "min sample cos", "rel. error", "max abs diff", "top-1 agreement")
    for col in cols + (("NN agreement",) if nn else ()):
        t.add_column(col, justify="right")
    for name, row in f["outputs"].items():
        top1 = f"{row['top1_agreement']:.2%}" if "top1_agreement" in row else "-"
        cells = [name, f"{row['cosine']:.4f}", f"{row.get('min_sample_cosine', 1.0):.4f}",
                 f"{row['relative_error']:.4f}", f"{row['max_abs_diff']:.3g}", top1]
        if nn:
            cells.append(f"{row['nn_agreement']:.2%}" if "nn_agreement" in row else "-")
        t.add_row(*cells)
    console.print(t)
    if "passed" in f:
        verdict = "[green]PASSED[/green]" if f["passed"] else "[red]FAILED[/red]"
        console.print(f"fidelity {verdict} (atol {f.get('atol')}, rtol {f.get('rtol')})")
