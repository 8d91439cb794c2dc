"""A tiny CNN exported with torch for the user-facing tests (CLI, API constraints, io).

It has the structures a user's model has: conv-bn-relu, a residual add, a depthwise conv, a grouped
conv, and a flatten -> linear head. Exported once per width and copied into each test's folder.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

_CACHE: dict[int, Path] = {}


def export_tinynet(path: Path, width: int = 16) -> Path:
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = nn.Conv2d(w, w, 3, padding=1)
            self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w)
            self.conv3 = nn.Conv2d(w, 2 * w, 1)
            self.gconv = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Linear(2 * w, 24)
            self.fc2 = nn.Linear(24, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = x + torch.relu(self.conv2(x))
            x = torch.relu(self.dw(x))
            x = torch.relu(self.conv3(x))
            x = torch.relu(self.gconv(x))
            x = torch.flatten(self.pool(x), 1)
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    m = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics so BN slicing is visible in the outputs
        m.bn1.running_mean.uniform_(-1, 1)
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-1, 1)
    # do_constant_folding=False keeps the BatchNormalization node instead of folding it into the conv.
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(m, torch.randn(1, 3, 16, 16), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"])
    return path


def tinynet(dest: Path, tmp_path_factory, width: int = 16) -> Path:
    """A copy of the exported model at `dest` (exported once per session and width)."""
    if width not in _CACHE:
        folder = tmp_path_factory.mktemp(f"tinynet{width}")
        _CACHE[width] = export_tinynet(folder / "tinynet.onnx", width)
    shutil.copyfile(_CACHE[width], dest)
    return dest
