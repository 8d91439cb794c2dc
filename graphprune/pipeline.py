"""The prune pipeline: a declared list of stages and the one runner that executes them.

Each stage names the state it needs (`requires`) and the state it provides (`provides`), runs one pass and
returns a `StageResult(value, info)` (passes/base.py). The runner checks preconditions, times every stage,
counts the ONNX Runtime sessions it created, and files each stage's info in the state, from which the report
is made. `api.prune` is `run(PRUNE_STAGES, state)`; `api.analyze` runs the first three stages.

    load -> normalize -> analyze -> [calibration] -> [statistics] -> scoring -> [sensitivity]
         -> allocation | check_plan
         -> rewrite -> [validate] -> [compensation -> revalidate] -> [fidelity] -> report

The oracle (inside validate) proves the structural rewrite; compensation changes weights on purpose, so the
compensated model is validated again without the oracle (revalidate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from .analysis import Analysis, AnalysisOptions
from .analysis import analyze as analyze_groups
from .analysis.costs import model_stats
from .analysis.plan import Plan, attention_summary, fingerprint, kept_table
from .core import progress
from .core.graph import GraphView
from .core.io import load_model_for_pruning
from .core.runtime import SESSION_COUNTS, check_input_shapes, check_runnable, synthetic_inputs
from .errors import UsageError
from .options import PruneOptions
from .passes import allocation, calibration, compensation, fidelity, rewrite, scoring, sensitivity, validate
from .passes.base import PreconditionError, StageResult
from .passes.normalize import unshare_uniform_constants
from .report import Report
from .version import __version__


@dataclass
class PruneState:
    """What the stages read and write. `source` and `options` are given; the rest is made by the stages."""

    source: Any
    options: PruneOptions
    given_plan: Plan | None = None  # --plan: applied instead of scoring and allocation
    plan: Plan | None = None  # the given plan, or the one allocation made
    original: onnx.ModelProto | None = None  # the model as loaded (never modified)
    spilled: bool = False  # a large inline model, pruned memory-mapped: the result is read back inline
    model: onnx.ModelProto | None = None  # the work copy the analysis indexes
    analysis: Analysis | None = None
    calib: calibration.Calibration | None = None
    statistics: tuple | None = None  # (calibration statistics, BatchNorm estimates), either may be None
    scores: dict | None = None
    curves: dict | None = None  # --allocation sensitivity: each group's measured cost curve
    cut: Any = None  # analysis.Cut of the plan
    pruned: onnx.ModelProto | None = None
    validation: validate.Validation | None = None
    fidelity: dict | None = None
    report: Report | None = None
    timings: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict)  # ONNX Runtime sessions created per stage
    info: dict = field(default_factory=dict)  # each stage's StageResult.info, by stage name


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[PruneState], StageResult]
    provides: tuple[str, ...] = ()  # state fields set from the result's value (a tuple when several)
    requires: tuple[str, ...] = ()
    when: Callable[[PruneState], bool] = lambda s: True
    doc: str = ""


def run(stages, state: PruneState, after: Callable[[Stage, PruneState], None] | None = None) -> PruneState:
    """Run the stages in order (those whose `when` holds), timing each and collecting its info; `after(stage,
    state)`, when given, is called after each stage that ran (benchmarks/scale.py measures memory there)."""
    for stage in stages:
        if not stage.when(state):
            continue
        missing = [r for r in stage.requires if getattr(state, r) is None]
        if missing:
            raise PreconditionError(f"stage '{stage.name}' needs {', '.join(missing)}, which no earlier stage made")
        t0, s0 = time.perf_counter(), SESSION_COUNTS["sessions"]
        result = stage.run(state)
        state.timings[stage.name] = state.timings.get(stage.name, 0.0) + time.perf_counter() - t0
        state.sessions[stage.name] = state.sessions.get(stage.name, 0) + SESSION_COUNTS["sessions"] - s0
        values = result.value if len(stage.provides) > 1 else (result.value,)
        for name, value in zip(stage.provides, values):
            setattr(state, name, value)
        if result.info:
            state.info[stage.name] = result.info
        if after is not None:
            after(stage, state)
    return state


# ---- the stages ---------------------------------------------------------------------------------------------
def _load(s: PruneState) -> StageResult:
    """Read the model (a large inline one is spilled to a memory-mapped file); check --input-shape and that
    ONNX Runtime can run it (validation needs that)."""
    model, spilled = load_model_for_pruning(s.source)
    check_input_shapes(model, s.options.input_shapes)
    if s.options.validate:
        check_runnable(model, "model" if isinstance(s.source, onnx.ModelProto) else os.fspath(s.source))
    return StageResult((model, spilled))


def _normalize(s: PruneState) -> StageResult:
    work, copies = unshare_uniform_constants(s.original)  # the work copy; `original` is what the user gave
    return StageResult(work, {"unshared_constants": copies} if copies else {})


def _analyze(s: PruneState) -> StageResult:
    o = s.options
    opts = AnalysisOptions(o.exclude, o.prune_head_dim, o.prune_hidden, o.input_shapes, debug=o.debug)
    with progress.step("analyzing channel groups"):
        return StageResult(analyze_groups(GraphView(s.model, o.input_shapes), opts))


def _calibration(s: PruneState) -> StageResult:
    o = s.options
    calib = calibration.load(o.calib, s.model, o.calib_samples, images=o.calib_images, preprocess=o.preprocess)
    calib = calibration.prepare(calib, s.model)
    return StageResult(calib, calib.describe())


def _needs_statistics(s: PruneState) -> bool:
    imp = s.options.importance
    return s.given_plan is None and (imp in scoring.DATA_AWARE or imp == "auto")


def _statistics(s: PruneState) -> StageResult:
    """What the data-aware scores read about each consumer layer's input: calibration statistics, or
    BatchNorm estimates without data."""
    o, analysis = s.options, s.analysis
    unread: dict[str, str] = {}
    layers = calibration.consumer_layers(analysis, unread)
    stats = estimates = None
    if s.calib is not None and layers:
        gram = set(layers) if scoring.resolve(o.importance, True, False) == "reconstruction" else set()
        shapes = {layer.x: analysis.view.shape(layer.x) for layer in layers.values()}
        stats = calibration.collect(s.model, layers, s.calib, gram, shapes, o.seed)
    elif layers:
        estimates = scoring.batchnorm_estimates(analysis, layers) or None
    if o.importance != "auto" and not (stats or estimates):
        raise PreconditionError(f"--importance {o.importance} needs calibration data (--calib)"
                                + ("" if layers else ": no prunable channel is read by a Conv/Gemm/MatMul"))
    return StageResult((stats, estimates), {"layers": len(layers), "unread": unread} if unread else {})


def _scoring(s: PruneState) -> StageResult:
    stats, estimates = s.statistics or (None, None)
    res = scoring.score(s.analysis, s.options.importance, s.options.seed, stats or estimates, s.options.reduction)
    if estimates and not stats:
        res.info["statistics"] = "BatchNorm estimates"
    elif stats:
        res.info["statistics"] = "calibration"
    unread = s.info.get("statistics", {}).get("unread")
    if unread and res.info.get("magnitude_fallback"):
        res.info["layers_without_statistics"] = unread  # why those groups fell back to magnitude
    return res


def _wants_sensitivity(s: PruneState) -> bool:
    return s.given_plan is None and sensitivity.resolve(s.options.allocation, s.calib is not None) == "sensitivity"


def _sensitivity(s: PruneState) -> StageResult:
    """Cost curves; a removed channel reads as its calibration mean where the statistics stage measured it
    (bias compensation folds that mean in), unless compensation is off."""
    stats = (s.statistics or (None, None))[0] if s.options.compensate != "none" else None
    return sensitivity.measure(s.analysis, s.scores, s.calib, fill=sensitivity.fill_values(stats))


def _allocation(s: PruneState) -> StageResult:
    o = s.options
    return allocation.allocate(s.analysis, s.scores, fingerprint(s.original), ratio=o.ratio,
                               ratio_for=o.ratio_for, target=o.target, global_pruning=o.global_pruning,
                               max_ratio=o.max_ratio, round_to=o.round_to, min_keep=o.min_keep,
                               normalize=o.normalize, options=o.to_dict(), strict_target=o.strict_target,
                               costs=s.curves, uniform_heads=o.uniform_heads)


def _check_plan(s: PruneState) -> StageResult:
    if s.given_plan.fingerprint != fingerprint(s.original):
        raise UsageError("the plan was made for a different model (fingerprint mismatch)")
    return StageResult(s.given_plan)


def _rewrite(s: PruneState) -> StageResult:
    cut = s.analysis.cut(s.plan.removed_roots(s.analysis))
    return StageResult((cut, rewrite.apply(s.model, cut)))


def _hidden_cut(s: PruneState) -> bool:
    """Cutting a normalised (hidden) axis changes the norm's statistics: the oracle does not apply there."""
    return any(s.analysis.group(k).kind == "hidden" for k, c in s.plan.cuts.items() if c.removed)


def _validate(s: PruneState) -> StageResult:
    with progress.step("validating: checker, shape inference, ONNX Runtime, oracle"):
        return StageResult(validate.validate(s.pruned, s.model, s.cut, s.options.input_shapes,
                                             check_oracle=not _hidden_cut(s), seed=s.options.seed))


def _compensation_mode(s: PruneState) -> tuple[str, dict | None]:
    """The compensation `--compensate` resolves to here, and the BatchNorm estimates a data-free bias
    compensation reads (from the statistics stage, or computed now)."""
    estimates = (s.statistics or (None, None))[1]
    o = s.options
    if s.calib is None and estimates is None and len(s.cut) and o.compensate in ("auto", "bias"):
        estimates = scoring.batchnorm_estimates(s.analysis, calibration.consumer_layers(s.analysis)) or None
    return compensation.resolve(o.compensate, s.calib is not None, estimates is not None), estimates


def _compensation(s: PruneState) -> StageResult:
    mode, estimates = _compensation_mode(s)
    if mode == "none" or not len(s.cut):
        return StageResult(s.pruned)
    pruned, info = compensation.compensate(s.model, s.pruned, s.cut, s.calib, mode, s.options.ridge, estimates,
                                           s.options.seed)
    return StageResult(pruned, info)


def _revalidate(s: PruneState) -> StageResult:
    """The oracle proved the structural rewrite; compensated weights differ from it by design, so the
    compensated model gets every other check (checker, shape inference, ONNX Runtime)."""
    checked = validate.validate(s.pruned, s.model, s.cut, s.options.input_shapes, check_oracle=False,
                                seed=s.options.seed)
    checked.oracle_max_abs_diff = s.validation.oracle_max_abs_diff
    checked.notes.append(f"oracle checked on the structural rewrite, before compensation "
                         f"({s.info['compensation']['mode']})")
    return StageResult(checked)


def _wants_fidelity(s: PruneState) -> bool:
    o = s.options
    return s.calib is not None or o.atol is not None or o.rtol is not None


def _fidelity(s: PruneState) -> StageResult:
    o, calib = s.options, s.calib
    if calib is not None:
        feeds, held = (calib.held_out, True) if calib.held_out else (calib.train, False)
    else:
        feeds, held = synthetic_inputs(s.model, o.input_shapes, seed=o.seed), False
    fid = fidelity.fidelity(s.model, s.pruned, feeds, o.atol, o.rtol, held, calib)
    if calib is None:
        fid["inputs"] = "synthetic"
    return StageResult(fid)


# ---- the accuracy guard (--max-error) --------------------------------------------------------------------
SEARCH_STEPS = 6  # bisection steps over the ratio after the first probe (resolution: max ratio / 64)


def _wants_search(s: PruneState) -> bool:
    return s.options.max_error is not None and s.given_plan is None


def _search(s: PruneState) -> StageResult:
    """The largest cut (global allocation under --target) whose held-out error (--metric) stays within
    --max-error: bisection over the ratio, each candidate allocated, rewritten, compensated and measured
    on the held-out samples; the statistics and scores are computed once and reused. Ensures the options
    the later stages read carry the chosen ratio (and global allocation)."""
    o, calib = s.options, s.calib
    feeds = calib.held_out or calib.train
    reference = fidelity.reference_outputs(s.model, feeds, calib)
    base = replace(o, global_pruning=True)
    curve: list[dict] = []

    def measure(ratio: float) -> float:
        trial = replace(s, options=replace(base, ratio=ratio), info={}, timings={},
                                    sessions={})
        trial.plan = _allocation(trial).value
        trial.cut, trial.pruned = _rewrite(trial).value
        if len(trial.cut):
            trial.pruned = _compensation(trial).value
        fid = fidelity.fidelity(s.model, trial.pruned, feeds, held_out=bool(calib.held_out), calib=calib,
                                reference=reference)
        err = fidelity.error(fid, o.metric)
        if err is None:
            raise UsageError(f"--metric {o.metric}: no model output looks like logits (a last axis of classes); "
                             "use --metric rel or cosine")
        after = model_stats(trial.pruned, GraphView(trial.pruned, o.input_shapes))
        curve.append({"ratio": round(ratio, 4), "macs_kept": after.macs / max(before.macs, 1),
                      "params_kept": after.params / max(before.params, 1), "error": err,
                      "within": err <= o.max_error})
        return err

    before = model_stats(s.model, s.analysis.view)
    lo, hi = 0.0, o.ratio
    with progress.step(f"--max-error {o.max_error}: searching the ratio on held-out samples"):
        if measure(hi) <= o.max_error:
            lo = hi
        else:
            for _ in range(SEARCH_STEPS):
                mid = (lo + hi) / 2
                if measure(mid) <= o.max_error:
                    lo = mid
                else:
                    hi = mid
    s.options = replace(base, ratio=lo)
    info = {"metric": o.metric, "max_error": o.max_error, "chosen_ratio": round(lo, 4), "largest_tried": o.ratio,
            "held_out": bool(calib.held_out), "curve": sorted(curve, key=lambda p: p["ratio"])}
    chosen = next((p for p in curve if p["ratio"] == round(lo, 4)), None)
    if chosen is None or (chosen["macs_kept"] >= 1.0 and chosen["params_kept"] >= 1.0):
        info["warning"] = (f"no cut keeps the {o.metric} error within {o.max_error}: nothing was pruned "
                           "(the model is written unpruned)")
    return StageResult(None, info)


QUALITY_STAGES = ("calibration", "scoring", "sensitivity", "search", "allocation", "compensation")  # report.quality


def _report(s: PruneState) -> StageResult:
    # Count both on the same input shapes (--input-shape), or a dynamic model's before/after ratio is off.
    o, analysis, plan = s.options, s.analysis, s.plan
    view = analysis.view if s.model is s.original else GraphView(s.original, o.input_shapes)
    before, after = model_stats(s.original, view), model_stats(s.pruned, GraphView(s.pruned, o.input_shapes))
    timings = {k: round(v, 4) for k, v in s.timings.items()}
    report = Report(
        before=before, after=after,
        groups_total=len(analysis.channel_groups),
        groups_pruned=sum(1 for c in plan.cuts.values() if c.removed),
        groups_frozen=[{"group": g.key, "size": g.size, "nodes": g.nodes[:4], "reasons": g.reasons,
                        "refusals": [r.to_dict() for r in g.refusals]} for g in analysis.frozen],
        channels_removed=int(plan.n_removed),
        channels_total=int(sum(g.size for g in analysis.prunable)),
        validation=s.validation.__dict__ if s.validation else {},
        options=o.to_dict(),
        timings=timings,
        sessions=dict(s.sessions),
        version=__version__,
        quality={k: s.info[k] for k in QUALITY_STAGES if k in s.info},
        fidelity=s.fidelity or {},
        internal_errors=[r.to_dict() for r in analysis.internal_errors],
        kept=kept_table(plan, analysis),
    )
    report.attention = attention_summary(report.kept)
    report.warnings = report.warning_lines()
    return StageResult(report)


def _compensated(s: PruneState) -> bool:
    return "compensation" in s.info and s.options.validate


ANALYZE_STAGES = (
    Stage("load", _load, ("original", "spilled"), doc="read and check the model"),
    Stage("normalize", _normalize, ("model",), ("original",), doc="untie exporter-shared uniform constants"),
    Stage("analyze", _analyze, ("analysis",), ("model",), doc="groups of coupled channels"),
)

PRUNE_STAGES = ANALYZE_STAGES + (
    Stage("calibration", _calibration, ("calib",), ("model",),
          when=lambda s: s.options.calib is not None or s.options.calib_images is not None,
          doc="read calibration samples, split off held-out ones"),
    Stage("statistics", _statistics, ("statistics",), ("analysis",), when=_needs_statistics,
          doc="calibration statistics or BatchNorm estimates of each consumer's input"),
    Stage("scoring", _scoring, ("scores",), ("analysis",), when=lambda s: s.given_plan is None,
          doc="an importance per unit of every prunable group"),
    Stage("sensitivity", _sensitivity, ("curves",), ("analysis", "scores", "calib"), when=_wants_sensitivity,
          doc="what cutting each group costs, measured on calibration samples"),
    Stage("search", _search, (), ("analysis", "scores", "calib"), when=_wants_search,
          doc="--max-error: the largest ratio whose held-out error stays within the bound"),
    Stage("allocation", _allocation, ("plan",), ("analysis", "scores"), when=lambda s: s.given_plan is None,
          doc="how many units each group loses, and which"),
    Stage("check_plan", _check_plan, ("plan",), ("given_plan", "original"),
          when=lambda s: s.given_plan is not None, doc="a saved plan must be for this model"),
    Stage("rewrite", _rewrite, ("cut", "pruned"), ("analysis", "plan"), doc="slice weights, fix attributes and shapes"),
    Stage("validate", _validate, ("validation",), ("pruned", "cut"), when=lambda s: s.options.validate,
          doc="checker, strict shape inference, ONNX Runtime, oracle"),
    Stage("compensation", _compensation, ("pruned",), ("pruned", "cut"), when=lambda s: len(s.cut) > 0,
          doc="re-fit kept weights to the original's outputs"),
    Stage("revalidate", _revalidate, ("validation",), ("pruned", "validation"), when=_compensated,
          doc="the compensated model passes every check but the oracle"),
    Stage("fidelity", _fidelity, ("fidelity",), ("pruned",), when=_wants_fidelity,
          doc="pruned vs original outputs on held-out samples"),
    Stage("report", _report, ("report",), ("analysis", "plan", "pruned"), doc="statistics before and after"),
)
