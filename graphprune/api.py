"""The Python API: `analyze(model)` and `prune(model, ratio=...)`."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

from . import __version__
from .core import progress
from .analysis import Analysis, AnalysisOptions
from .analysis import analyze as _analyze
from .errors import ModelError, UsageError, first_line
from .core.graph import GraphView
from .core.io import load_model, load_model_for_pruning, materialize
from .passes.normalize import unshare_uniform_constants
from .options import AnalyzeOptions, PruneOptions
from .analysis.plan import Plan, fingerprint
from .report import Report, stats


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    plan: Plan
    analysis: Analysis


def analyze(model, options: AnalyzeOptions | None = None, **kwargs) -> Analysis:
    """Groups of coupled channels of a model (path or ModelProto). Options as an AnalyzeOptions or as its
    fields' keywords (exclude=, input_shapes=, prune_head_dim=, prune_hidden=); the analysis reads only these
    (ratio, importance, seed and calib are what `graphprune analyze` shows on top of it)."""
    if options is None:
        options = AnalyzeOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise UsageError("pass either options or keyword arguments, not both")
    elif not isinstance(options, AnalyzeOptions):
        raise UsageError(f"options must be an AnalyzeOptions, not {type(options).__name__}")
    else:
        options.check()
    m = load_model(model)
    _check_input_shapes(m, options.input_shapes)
    opts = AnalysisOptions(options.exclude, options.prune_head_dim, options.prune_hidden, dict(options.input_shapes))
    m, _ = unshare_uniform_constants(m)
    with progress.step("analyzing channel groups"):
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


@functools.lru_cache(maxsize=1)
def _runtime_support() -> tuple[int, frozenset | None]:
    """The newest ai.onnx opset ONNX Runtime loads, and the (domain, op) pairs it has CPU kernels for
    (None when this build does not list them)."""
    import onnxruntime as ort

    def loads(v: int) -> bool:
        vi = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [vi],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", v)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.log_severity_level = 4
        try:
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return True
        except Exception:  # noqa: BLE001
            return False

    newest = onnx.defs.onnx_opset_version()
    while newest > 7 and not loads(newest):
        newest -= 1
    try:
        from onnxruntime.capi import _pybind_state

        kernels = frozenset((k.domain, k.op_name) for k in _pybind_state.get_all_opkernel_def())
    except Exception:  # noqa: BLE001 - a build without the listing: ORT itself will say it later
        kernels = None
    return newest, kernels


def _check_runnable(m: onnx.ModelProto, where: str) -> None:
    """Validation runs the model in ONNX Runtime: refuse up front, naming the opset or the node, what it
    cannot run (instead of a long runtime message about the pruned model after all the work)."""
    import onnxruntime as ort

    newest, kernels = _runtime_support()
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 7:
            raise ModelError(f"{where}: opset {o.version} is older than ONNX Runtime runs (7 and newer), and "
                             "validation needs it; convert the model with onnx.version_converter")
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise ModelError(f"{where}: opset {o.version} is newer than ONNX Runtime {ort.__version__} runs "
                             f"(up to {newest}), and validation needs it; convert the model to opset {newest} "
                             "with onnx.version_converter")
    if kernels is None:
        return
    local = {(f.domain, f.name) for f in m.functions}
    for i, n in enumerate(m.graph.node):
        key = (n.domain, n.op_type)
        if n.domain not in ("", "ai.onnx") and key not in kernels and key not in local:
            name = n.name or f"{n.op_type}_{i}"
            raise ModelError(f"{where}: node '{name}' uses op {n.domain}::{n.op_type}, which ONNX Runtime "
                             f"{ort.__version__} cannot run, and validation needs it")


def _is_torch_module(obj) -> bool:
    """A torch.nn.Module, recognised without importing torch (it stays an optional dependency)."""
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(obj).__mro__)


def from_torch(module, example_inputs, opset: int = 17) -> onnx.ModelProto:
    """Export a torch.nn.Module to ONNX (TorchScript exporter, eval mode, constants folded) in memory."""
    try:
        import torch
    except ImportError:
        raise UsageError("prune() got a torch.nn.Module, but torch cannot be imported (pip install torch); "
                         "or export the model to ONNX first") from None
    if example_inputs is None:
        raise UsageError("a torch.nn.Module needs example_inputs=(tensor, ...) to be exported to ONNX")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not example_inputs:
        raise UsageError("example_inputs is empty: give one example tensor per forward() argument")
    import io as _io
    import warnings

    names = ["input"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    buf = _io.BytesIO()
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, buf, dynamo=False, opset_version=opset,
                              input_names=names, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ModelError(f"torch.onnx.export of {type(module).__name__} failed: {first_line(exc, 1000)}") from None
    finally:
        module.train(training)
    return onnx.load_from_string(buf.getvalue())


def prune(model, options: PruneOptions | None = None, *, plan: Plan | None = None, example_inputs=None,
          **kwargs) -> PruneResult:
    """Prune a model (path, ModelProto, or a torch.nn.Module with `example_inputs`, exported first) and
    return the validated result; nothing is written."""
    if _is_torch_module(model):
        model = from_torch(model, example_inputs)
    elif example_inputs is not None:
        raise UsageError("example_inputs is only for a torch.nn.Module model")
    elif not isinstance(model, (str, bytes, os.PathLike, onnx.ModelProto)):
        raise UsageError(f"model must be a path, an onnx.ModelProto or a torch.nn.Module, "
                         f"not {type(model).__name__}")
    from graphprune.passes import allocation, calibration, compensation, rewrite, scoring, validate

    if options is None:
        options = PruneOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise UsageError("pass either options or keyword arguments, not both")
    else:
        options.check()
    t0 = time.perf_counter()
    timings = {}
    m, spilled = load_model_for_pruning(model)  # a large inline model is pruned memory-mapped
    _check_input_shapes(m, options.input_shapes)
    if options.validate:
        _check_runnable(m, "model" if isinstance(model, onnx.ModelProto) else os.fspath(model))
    timings["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    original = m
    m, _ = unshare_uniform_constants(m)  # the work copy; `original` is what the user gave us
    view = GraphView(m, options.input_shapes)
    aopts = AnalysisOptions(options.exclude, options.prune_head_dim, options.prune_hidden, options.input_shapes)
    with progress.step("analyzing channel groups"):
        analysis = _analyze(view, aopts)
    timings["analyze"] = time.perf_counter() - t
    fp = fingerprint(original)
    calib = None
    if options.calib is not None:
        t = time.perf_counter()
        calib = calibration.prepare(calibration.load(options.calib, m, options.calib_samples), m)
        timings["calibration"] = time.perf_counter() - t
    quality: dict = {}
    if calib is not None:
        quality["calibration"] = calib.describe()
    t = time.perf_counter()
    estimates = None
    if plan is None:
        scores, estimates = _score(m, analysis, options, calib, quality)
        alloc = allocation.allocate(analysis, scores, fp, ratio=options.ratio, ratio_for=options.ratio_for,
                                    target=options.target, global_pruning=options.global_pruning,
                                    max_ratio=options.max_ratio, round_to=options.round_to,
                                    min_keep=options.min_keep, normalize=options.normalize,
                                    options=options.to_dict())
        plan = alloc.plan
        quality["allocation"] = alloc.info
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
        with progress.step("validating: checker, shape inference, ONNX Runtime, oracle"):
            validation = validate.validate(pruned, m, analysis, removed, options.input_shapes,
                                           check_oracle=not hidden_cut, seed=options.seed)
    timings["validate"] = time.perf_counter() - t
    if calib is None and estimates is None and len(removed) and options.compensate in ("auto", "bias"):
        estimates = scoring.batchnorm_estimates(analysis, _consumer_layers(m, analysis)) or None
    mode = compensation.resolve(options.compensate, calib is not None, estimates is not None)
    if mode != "none" and len(removed):
        t = time.perf_counter()
        pruned, quality["compensation"] = compensation.compensate(
            m, pruned, analysis, removed, calib, mode, options.ridge, estimates, options.seed)
        timings["compensate"] = time.perf_counter() - t
        if options.validate:
            # The oracle proved the structural rewrite above; compensated weights differ from it by design,
            # so the compensated model gets every other check (checker, shape inference, ONNX Runtime).
            t = time.perf_counter()
            checked = validate.validate(pruned, m, analysis, removed, options.input_shapes, check_oracle=False,
                                        seed=options.seed)
            checked.oracle_max_abs_diff = validation.oracle_max_abs_diff
            checked.notes.append(f"oracle checked on the structural rewrite, before compensation ({mode})")
            validation = checked
            timings["validate"] += time.perf_counter() - t
    fid = {}
    if calib is not None or options.atol is not None or options.rtol is not None:
        t = time.perf_counter()
        if calib is not None:
            feeds, held = (calib.held_out, True) if calib.held_out else (calib.train, False)
        else:
            from .core.runtime import synthetic_inputs

            feeds, held = synthetic_inputs(m, options.input_shapes, seed=options.seed), False
        fid = compensation.fidelity(m, pruned, feeds, options.atol, options.rtol, held, calib)
        if calib is None:
            fid["inputs"] = "synthetic"
        timings["fidelity"] = time.perf_counter() - t
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
        quality=quality,
        fidelity=fid,
    )
    if spilled:  # the caller gave an inline model and gets one back
        pruned = materialize(pruned)
    return PruneResult(pruned, report, plan, analysis)


def _consumer_layers(m: onnx.ModelProto, analysis: Analysis) -> dict:
    """Linear layers that read a prunable group's channels (where statistics matter), by output name."""
    from graphprune.passes.calibration import linear_layers

    view = analysis.view
    spaces = {s for g in analysis.prunable for s in g.spaces}
    wanted = {view.nodes[r.node].output[0] for r in analysis.roles
              if r.kind == "consumer" and r.weight and r.space in spaces}
    shapes = {n.input[0]: view.shape(n.input[0]) for n in view.nodes if n.input and n.output[0] in wanted}
    return {y: layer for y, layer in linear_layers(m, shapes).items() if y in wanted}


def _score(m: onnx.ModelProto, analysis: Analysis, options: PruneOptions, calib, quality: dict):
    """Scores per group, with calibration statistics or BatchNorm estimates where the score reads them."""
    from graphprune.passes import calibration, scoring

    importance = options.importance
    stats = estimates = None
    if importance in scoring.DATA_AWARE or importance == "auto":
        layers = _consumer_layers(m, analysis)
        if calib is not None and layers:
            resolved = scoring.resolve(importance, True, False)
            gram = set(layers) if resolved == "reconstruction" else set()
            shapes = {layer.x: analysis.view.shape(layer.x) for layer in layers.values()}
            stats = calibration.collect(m, layers, calib, gram, shapes, options.seed)
        elif layers:
            estimates = scoring.batchnorm_estimates(analysis, layers) or None
        if importance != "auto" and not (stats or estimates):
            raise UsageError(f"--importance {importance} needs calibration data (--calib)"
                             + ("" if layers else ": no prunable channel is read by a Conv/Gemm/MatMul"))
    info: dict = {}
    scores = scoring.score(analysis, importance, options.seed, stats or estimates, options.reduction, info)
    if estimates and not stats:
        info["statistics"] = "BatchNorm estimates"
    elif stats:
        info["statistics"] = "calibration"
    quality["scoring"] = info
    return scores, estimates


def removed_fraction(result: PruneResult) -> float:
    return result.plan.n_removed / max(result.report.channels_total, 1)


__all__ = ["PruneResult", "analyze", "prune", "np"]
