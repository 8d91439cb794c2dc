"""torch.nn.Module -> ONNX with the TorchScript exporter, the one way graphprune exports from torch.

torch is imported inside the functions: it stays an optional dependency (graphprune runs on ONNX Runtime;
only `prune(torch_module)`, the model zoo and the benchmarks need torch).
"""

from __future__ import annotations

import io
import warnings

import onnx

from ..errors import ModelError, UsageError, first_line


def is_torch_module(obj) -> bool:
    """A torch.nn.Module, recognised without importing torch."""
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(obj).__mro__)


def export_torchscript(module, example_inputs: tuple, f, *, input_names=None, output_names=None,
                       dynamic_axes=None, opset: int = 17) -> None:
    """Export in eval mode with constants folded to `f` (a path or a binary file); the module's training
    flag is restored afterwards. Exporter warnings are silenced."""
    import torch

    training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, f, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    finally:
        module.train(training)


def from_torch(module, example_inputs, opset: int = 17) -> onnx.ModelProto:
    """Export a torch.nn.Module to an in-memory ONNX model (inputs named `input`, or `input_0`, ...)."""
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
    names = ["input"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    buf = io.BytesIO()
    try:
        export_torchscript(module, example_inputs, buf, input_names=names, opset=opset)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
        raise ModelError(f"torch.onnx.export of {type(module).__name__} failed: {first_line(exc, 1000)}") from None
    return onnx.load_from_string(buf.getvalue())
