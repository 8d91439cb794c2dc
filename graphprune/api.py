"""The Python API: `analyze(model)` and `prune(model, ratio=...)`, both run by the pipeline's runner."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from . import pipeline
from .analysis import Analysis
from .analysis.plan import Plan
from .core.io import materialize
from .core.torch_export import from_torch, is_torch_module
from .errors import UsageError
from .interop import from_graphsurgeon, is_graphsurgeon_graph, to_graphsurgeon
from .options import AnalyzeOptions, PruneOptions
from .report import Report


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    plan: Plan
    analysis: Analysis

    def to_graphsurgeon(self):
        """The pruned model as an onnx_graphsurgeon.Graph (for NVIDIA/TensorRT pipelines that edit graphs)."""
        return to_graphsurgeon(self.model)


def _model_source(model, example_inputs):
    """What the load stage reads: a path or a ModelProto (a torch.nn.Module is exported first, an
    onnx_graphsurgeon.Graph converted)."""
    if is_graphsurgeon_graph(model):
        return from_graphsurgeon(model)
    if is_torch_module(model):
        return from_torch(model, example_inputs)
    if example_inputs is not None:
        raise UsageError("example_inputs is only for a torch.nn.Module model")
    if not isinstance(model, (str, bytes, os.PathLike, onnx.ModelProto)):
        raise UsageError(f"model must be a path, an onnx.ModelProto or a torch.nn.Module, "
                         f"not {type(model).__name__}")
    return model


def analyze(model, options: AnalyzeOptions | None = None, **kwargs) -> Analysis:
    """Groups of coupled channels of a model (path, ModelProto or onnx_graphsurgeon.Graph). Options as an
    AnalyzeOptions or as its fields' keywords (exclude=, input_shapes=, prune_head_dim=, prune_hidden=,
    debug=); the analysis reads only these (ratio, importance, seed and calib are what `graphprune analyze`
    shows on top of it). Runs the pipeline's first stages (load, normalize, analyze)."""
    if options is None:
        options = AnalyzeOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise UsageError("pass either options or keyword arguments, not both")
    elif not isinstance(options, AnalyzeOptions):
        raise UsageError(f"options must be an AnalyzeOptions, not {type(options).__name__}")
    else:
        options.check()
    stage_options = PruneOptions(exclude=options.exclude, input_shapes=options.input_shapes,
                                 prune_head_dim=options.prune_head_dim, prune_hidden=options.prune_hidden,
                                 validate=False, debug=options.debug).check()
    state = pipeline.run(pipeline.ANALYZE_STAGES, pipeline.PruneState(_model_source(model, None), stage_options))
    return state.analysis


def prune(model, options: PruneOptions | None = None, *, plan: Plan | None = None, example_inputs=None,
          **kwargs) -> PruneResult:
    """Prune a model (path, ModelProto, or a torch.nn.Module with `example_inputs`, exported first) and
    return the validated result; nothing is written."""
    source = _model_source(model, example_inputs)
    if options is None:
        options = PruneOptions.from_kwargs(**kwargs)
    elif kwargs:
        raise UsageError("pass either options or keyword arguments, not both")
    else:
        options.check()
    state = pipeline.run(pipeline.PRUNE_STAGES, pipeline.PruneState(source, options, given_plan=plan))
    pruned = materialize(state.pruned) if state.spilled else state.pruned  # an inline model in, one out
    return PruneResult(pruned, state.report, state.plan, state.analysis)


__all__ = ["PruneResult", "analyze", "prune"]
