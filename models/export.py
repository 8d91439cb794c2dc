"""Export zoo models to ONNX with the TorchScript or the dynamo (torch.export) exporter.

BatchNorm handling (model always in eval mode):

* torchscript, ``keep_bn=False``: ``training=EVAL`` + ``do_constant_folding=True`` runs
  the exporter's eval peephole pass, which folds every Conv -> BatchNormalization pair
  into the Conv. BN nodes that do not follow a conv (e.g. DenseNet pre-activation BN on a
  Concat) survive as BatchNormalization.
* torchscript, ``keep_bn=True``: ``training=PRESERVE`` (model is in eval mode, so the
  graph is still inference semantics: no Dropout, BN uses running stats). The peephole
  pass that fuses Conv+BN only runs for ``training=EVAL``, while constant folding
  (``do_constant_folding=True``) still runs for the rest of the graph.
* dynamo, ``keep_bn=False``: the exporter's default ONNX optimisation (onnxscript
  optimizer) which, among other rewrites, fuses BatchNormalization into Conv /
  ConvTranspose / Gemm.
* dynamo, ``keep_bn=True``: export with ``optimize=False`` then run the same onnxscript
  optimisation with the three BN-fusion rewrite rules taken out of its default rule set.

Files are written atomically (temporary file in the target directory, then ``os.replace``)
with all weights embedded (no external ``.data`` file), checked with
``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import tempfile
import threading
import warnings
from typing import Any, Iterator

import onnx
import torch

__all__ = ["export_model", "TORCHSCRIPT_DEFAULT_OPSET", "count_ops"]

TORCHSCRIPT_DEFAULT_OPSET = 17

_OPTIMIZER_LOCK = threading.Lock()


def count_ops(model: onnx.ModelProto | str | os.PathLike) -> dict[str, int]:
    """op_type -> number of nodes in the main graph."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def export_model(
    name: str,
    path: str | os.PathLike,
    exporter: str = "torchscript",
    keep_bn: bool = False,
    opset: int | None = None,
    dynamic_batch: bool = False,
    seed: int = 0,
    check: bool = True,
) -> pathlib.Path:
    """Build zoo model ``name`` (eval mode, seeded) and export it to ``path``.

    ``opset=None`` means 17 for TorchScript and the dynamo exporter's own default
    (opset 20 with torch 2.13) for dynamo. ``dynamic_batch`` makes dim 0 of every input
    and output symbolic ("batch"); the example batch is then 2 (torch.export specialises
    size-1 dims). Returns the path written.
    """
    from . import EXPORTERS, get_entry

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    entry = get_entry(name)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    module, inputs = entry.build(seed=seed, batch=2 if dynamic_batch else 1)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        with torch.no_grad():
            if exporter == "torchscript":
                _export_torchscript(module, inputs, tmp, entry, keep_bn, opset, dynamic_batch)
            else:
                _export_dynamo(module, inputs, tmp, entry, keep_bn, opset, dynamic_batch)
        model = onnx.load(os.fspath(tmp))
        _check_no_external_data(model)
        if keep_bn and has_bn and not any(n.op_type == "BatchNormalization" for n in model.graph.node):
            raise RuntimeError(f"{name}: keep_bn=True but the {exporter} export has no BatchNormalization")
        model.doc_string = entry.description
        meta = {
            "graphprune.zoo.name": name,
            "graphprune.zoo.exporter": exporter,
            "graphprune.zoo.keep_bn": str(bool(keep_bn)).lower(),
            "graphprune.zoo.dynamic_batch": str(bool(dynamic_batch)).lower(),
            "graphprune.zoo.seed": str(seed),
            "graphprune.zoo.torch": torch.__version__,
        }
        existing = {p.key for p in model.metadata_props}
        for k, v in meta.items():
            if k not in existing:
                model.metadata_props.add(key=k, value=v)
        if check:
            onnx.checker.check_model(model, full_check=True)
        onnx.save(model, os.fspath(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_no_external_data(model: onnx.ModelProto) -> None:
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise RuntimeError(f"initializer {init.name!r} was saved as external data")


def _export_torchscript(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    entry: Any,
    keep_bn: bool,
    opset: int | None,
    dynamic_batch: bool,
) -> None:
    names = list(entry.input_names) + list(entry.output_names)
    dynamic_axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    training = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        # PRESERVE + constant folding warns about *training-mode* models; ours is in eval mode.
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            inputs,
            os.fspath(path),
            dynamo=False,
            opset_version=TORCHSCRIPT_DEFAULT_OPSET if opset is None else opset,
            input_names=list(entry.input_names),
            output_names=list(entry.output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            training=training,
        )


def _export_dynamo(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: pathlib.Path,
    entry: Any,
    keep_bn: bool,
    opset: int | None,
    dynamic_batch: bool,
) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    with _quiet_dynamo_exporter():
        program = torch.onnx.export(
            module,
            inputs,
            None,  # serialise ourselves, after optimisation, with external_data=False
            dynamo=True,
            opset_version=opset,
            input_names=list(entry.input_names),
            output_names=list(entry.output_names),
            dynamic_shapes=dynamic_shapes,
            optimize=False,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    with _OPTIMIZER_LOCK:
        if keep_bn:
            with _without_bn_fusion():
                program.optimize()
        else:
            program.optimize()
    program.save(os.fspath(path), external_data=False)


@contextlib.contextmanager
def _quiet_dynamo_exporter() -> Iterator[None]:
    """Silence known-harmless noise: the op registry's "torchvision is not installed"
    warnings and a torch-internal pytree FutureWarning."""
    reg_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg_logger.level
    reg_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        reg_logger.setLevel(level)


@contextlib.contextmanager
def _without_bn_fusion() -> Iterator[None]:
    """Temporarily drop onnxscript's BatchNormalization-fusion rules from its default
    rewrite rule set (used by ``ONNXProgram.optimize()``), keeping every other rewrite."""
    from onnxscript import rewriter
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    bn_rules = (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )
    original = rewriter._DEFAULT_REWRITE_RULES
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in original if not any(r is b for b in bn_rules)
    )
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = original
