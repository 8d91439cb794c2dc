"""The Python API: `analyze(model)` and `prune(model, ratio=...)`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from . import __version__
from .analysis import Analysis, AnalysisOptions
from .analysis import analyze as _analyze
from .errors import UsageError
from .graph import GraphView
from .io import load_model
from .normalize import unshare_uniform_constants
from .options import PruneOptions
from .plan import Plan, fingerprint
from .report import Report, stats


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    plan: Plan
    analysis: Analysis


def analyze(model, *, exclude=(), input_shapes=None, prune_head_dim=False, prune_hidden=False) -> Analysis:
    """Groups of coupled channels of a model (path or ModelProto)."""
    m = load_model(model)
    _check_input_shapes(m, input_shapes or {})
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)  # one glob, not one per character
    opts = AnalysisOptions(exclude, prune_head_dim, prune_hidden, dict(input_shapes or {}))
    m, _ = unshare_uniform_constants(m)
    return _analyze(GraphView(m, opts.input_shapes), opts)


def _check_input_shapes(m: onnx.ModelProto, input_shapes: dict) -> None:
    """--input-shape fixes dynamic dims; a name, rank or static dim the model contradicts is a usage error
    (otherwise it surfaces later as a confusing "pruned model fails in ONNX Runtime")."""
    inits = {t.name for t in m.graph.initializer}
    inputs = {vi.name: vi for vi in m.graph.input if vi.name not in inits}
    for name, dims in input_shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names '{name}', which is not a graph input "
                             f"(inputs: {', '.join(inputs) or 'none'})")
        tt = inputs[name].type.tensor_type
        if not tt.HasField("shape"):
            continue
        have = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(have) != len(dims):
            raise UsageError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(have)}")
        for axis, (h, d) in enumerate(zip(have, dims)):
            if h is not None and h != d:
                raise UsageError(f"--input-shape {name}: dim {axis} is fixed to {h} in the model, got {d}")


def prune(model, options: PruneOptions | None = None, *, plan: Plan | None = None, **kwargs) -> PruneResult:
    """Prune a model (path or ModelProto) and return the validated result; nothing is written."""
    from graphprune.passes import allocation, rewrite, scoring, validate

    if options is None:
        options = PruneOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise UsageError("pass either options or keyword arguments, not both")
    else:
        options.check()
    t0 = time.perf_counter()
    timings = {}
    m = load_model(model)
    _check_input_shapes(m, options.input_shapes)
    timings["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    original = m
    m, _ = unshare_uniform_constants(m)  # the work copy; `original` is what the user gave us
    view = GraphView(m, options.input_shapes)
    aopts = AnalysisOptions(options.exclude, options.prune_head_dim, options.prune_hidden, options.input_shapes)
    analysis = _analyze(view, aopts)
    timings["analyze"] = time.perf_counter() - t
    fp = fingerprint(original)
    t = time.perf_counter()
    if plan is None:
        scores = scoring.score(analysis, options.importance, options.seed)
        plan = allocation.allocate_uniform(analysis, scores, options.ratio_for, fp, options.max_ratio,
                                           options.round_to, options.to_dict())
    elif plan.fingerprint != fp:
        raise UsageError("the plan was made for a different model (fingerprint mismatch)")
    timings["score+allocate"] = time.perf_counter() - t
    removed = plan.removed_roots(analysis)
    t = time.perf_counter()
    pruned = rewrite.apply(m, analysis, removed)
    timings["rewrite"] = time.perf_counter() - t
    t = time.perf_counter()
    validation = None
    if options.validate:
        # Cutting a normalised (hidden) axis changes the norm's statistics: the oracle does not apply there.
        hidden_cut = any(analysis.group(k).kind == "hidden" for k, c in plan.cuts.items() if c.removed)
        validation = validate.validate(pruned, m, analysis, removed, options.input_shapes,
                                       check_oracle=not hidden_cut)
    timings["validate"] = time.perf_counter() - t
    # Count both on the same input shapes (--input-shape), or a dynamic model's before/after ratio is off.
    before = stats(m, view) if m is original else stats(original, GraphView(original, options.input_shapes))
    after = stats(pruned, GraphView(pruned, options.input_shapes))
    report = Report(
        before=before, after=after,
        groups_total=len(analysis.channel_groups),
        groups_pruned=sum(1 for c in plan.cuts.values() if c.removed),
        groups_frozen=[{"group": g.key, "size": g.size, "nodes": g.nodes[:4], "reasons": g.reasons}
                       for g in analysis.frozen],
        channels_removed=int(plan.n_removed),
        channels_total=int(sum(g.size for g in analysis.prunable)),
        validation=validation.__dict__ if validation else {},
        options=options.to_dict(),
        timings={k: round(v, 4) for k, v in timings.items()},
        version=__version__,
    )
    return PruneResult(pruned, report, plan, analysis)


def removed_fraction(result: PruneResult) -> float:
    return result.plan.n_removed / max(result.report.channels_total, 1)


__all__ = ["PruneResult", "analyze", "prune", "np"]
