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

The dynamo exporter always runs with ``optimize=False`` and the optimisation is applied
here; the unoptimised translation is memoised in-process (see ``_MEMO``), so the folded
and the keep_bn variant of a model cost one ``torch.export`` between them.

Files are written atomically (temporary file in the target directory, then ``os.replace``)
with all weights embedded (no external ``.data`` file), checked with
``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pathlib
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import onnx
import torch

from .layers import has_batchnorm

__all__ = ["export_model", "TORCHSCRIPT_DEFAULT_OPSET", "count_ops", "clear_memo"]

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
    (opset 20 with torch 2.13) for dynamo; dynamo rejects ``opset < 18``.
    ``dynamic_batch`` makes dim 0 of every input and output symbolic ("batch"); the
    example batch is then 2 (torch.export specialises size-1 dims). ``check`` runs
    ``onnx.checker.check_model(full_check=True)`` before the file is moved into place.
    Returns the path written.
    """
    from . import EXPORTERS, get_entry

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and opset is not None and opset < 18:
        # torch.onnx would warn, try a down-conversion that fails for most CNNs, and keep 18
        raise ValueError(f"the dynamo exporter targets opset >= 18 (got opset={opset})")
    entry = get_entry(name)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    module, inputs = entry.build(seed=seed, batch=2 if dynamic_batch else 1)
    has_bn = has_batchnorm(module)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        with torch.no_grad():
            if exporter == "torchscript":
                _export_torchscript(module, inputs, tmp, entry, keep_bn, opset, dynamic_batch)
            else:
                memo_key = (name, seed, dynamic_batch, opset)
                _export_dynamo(module, inputs, tmp, entry, keep_bn, opset, dynamic_batch, memo_key)
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    memo_key: tuple | None = None,
) -> None:
    from onnxscript import ir

    model = _memo_get(memo_key)
    if model is None:
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
                optimize=False,  # optimised below, with or without the BN-fusion rules
                external_data=False,
                verbose=False,
            )
        assert program is not None
        model = program.model
        _memo_put(memo_key, ir.serde.serialize_model(model).SerializeToString())
    program = torch.onnx.ONNXProgram(model, None)
    with _OPTIMIZER_LOCK:
        if keep_bn:
            with _without_bn_fusion():
                program.optimize()
        else:
            program.optimize()
    program.save(os.fspath(path), external_data=False)


# In-process memo of *unoptimised* dynamo translations (serialised ModelProto bytes), so
# exporting the keep_bn and the folded variant of one model runs torch.export only once.
# Keyed by (name, seed, dynamic_batch, opset); bounded by size (LRU).
_MEMO: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
_MEMO_MAX_BYTES = 256 << 20
_MEMO_MAX_ENTRY = 32 << 20


def _memo_get(key: tuple | None) -> Any:
    if key is None or key not in _MEMO:
        return None
    from onnxscript import ir

    _MEMO.move_to_end(key)
    return ir.serde.deserialize_model(onnx.ModelProto.FromString(_MEMO[key]))


def _memo_put(key: tuple | None, data: bytes) -> None:
    if key is None or len(data) > _MEMO_MAX_ENTRY:
        return
    _MEMO[key] = data
    while sum(len(v) for v in _MEMO.values()) > _MEMO_MAX_BYTES:
        _MEMO.popitem(last=False)


def clear_memo() -> None:
    """Forget the in-process dynamo translations (see ``_MEMO``)."""
    _MEMO.clear()


@contextlib.contextmanager
def _quiet_dynamo_exporter() -> Iterator[None]:
    """Silence known-harmless noise: the op registry's "torchvision is not installed"
    warnings, a torch-internal pytree FutureWarning and the recurrent modules' flat-weights notice."""
    reg_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg_logger.level
    reg_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            # nn.LSTM / nn.GRU re-assign their flat weight list while torch.export traces them
            warnings.filterwarnings("ignore", category=UserWarning, message=".*were assigned during export.*")
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
