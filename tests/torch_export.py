"""Export a small torch module in memory with either torch exporter, for rule tests of exported idioms."""

from __future__ import annotations

import io
import logging
import warnings

import onnx

EXPORTERS = ("torchscript", "dynamo")


def export(module, example_inputs: tuple, exporter: str = "torchscript", opset: int | None = None) -> onnx.ModelProto:
    """The module (in eval mode, no grad) as an ONNX model: TorchScript at opset 17 unless told, or dynamo
    (torch.export) with its optimiser at its default opset unless told."""
    import torch

    module.eval()
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(module, example_inputs, None, dynamo=True, verbose=False,
                                            opset_version=opset)
                return program.model_proto
            buf = io.BytesIO()
            torch.onnx.export(module, example_inputs, buf, dynamo=False, opset_version=opset or 17)
            return onnx.load_from_string(buf.getvalue())
    finally:
        logger.setLevel(level)
