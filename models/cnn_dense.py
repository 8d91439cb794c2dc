"""Dense-prediction CNNs: a U-Net segmenter and a YOLOv8-style (C2f) detector.

These are not classifiers: their graph outputs are conv feature maps (segmentation
logits; per-level box/class maps), whose channels are fixed by the task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNAct

__all__ = ["UNet", "DoubleConv", "C2f", "SPPF", "YoloBottleneck", "Detect", "YoloC2f"]


# --------------------------------------------------------------------------- U-Net


class DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3))


class _Up(nn.Module):
    """Upsample x2, concat the encoder skip, DoubleConv.

    mode "transpose": ConvTranspose2d(k=2, s=2) halving channels.
    mode "bilinear":  nn.Upsample(bilinear) (ONNX Resize, linear), channels unchanged.
    mode "nearest":   F.interpolate(nearest) in forward (ONNX Resize, nearest), channels unchanged.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, 2)
            up_ch = in_ch // 2
        elif mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_ch = in_ch
        elif mode == "nearest":
            self.up = nn.Identity()
            up_ch = in_ch
        else:
            raise ValueError(f"unknown upsampling mode {mode!r}")
        self.conv = DoubleConv(up_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Encoder (DoubleConv + max-pool per level) / bottleneck / decoder with skip concats.

    ``up_modes[i]`` is the upsampling used when leaving the i-th deepest level.
    Output: ``num_classes``-channel segmentation logits at input resolution (1x1 conv).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512),
        bottleneck: int | None = None,
        up_modes: Sequence[str] = ("transpose", "bilinear", "transpose", "nearest"),
    ) -> None:
        super().__init__()
        if len(up_modes) != len(widths):
            raise ValueError("one up mode per level")
        self.encoders = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoders.append(DoubleConv(c, w))
            c = w
        self.pool = nn.MaxPool2d(2)
        bottleneck = 2 * widths[-1] if bottleneck is None else bottleneck
        self.bottleneck = DoubleConv(c, bottleneck)
        c = bottleneck
        self.decoders = nn.ModuleList()
        for w, mode in zip(reversed(widths), up_modes):
            self.decoders.append(_Up(c, w, w, mode))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(x, skip)
        return self.head(x)


# --------------------------------------------------------------------------- YOLOv8-style


def _conv(c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1) -> ConvBNAct:
    """Ultralytics ``Conv``: conv (same padding) -> BN -> SiLU."""
    return ConvBNAct(c1, c2, k, s, groups=g, act=nn.SiLU)


class YoloBottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = _conv(c1, c_, 3)
        self.cv2 = _conv(c_, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 (1x1, 2c) -> split into two halves -> chain of n bottlenecks on the last piece,
    every intermediate output appended -> concat (2 + n) * c -> cv2 (1x1).

    ``split="chunk"`` uses ``Tensor.chunk(2, 1)`` (ultralytics ``forward``), ``split="split"``
    uses ``torch.split(y, (c, c), 1)`` (ultralytics ``forward_split``).
    """

    def __init__(
        self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5, split: str = "chunk"
    ) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.split = split
        self.cv1 = _conv(c1, 2 * self.c, 1)
        self.cv2 = _conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.cv1(x)
        if self.split == "chunk":
            y = list(y0.chunk(2, 1))
        else:
            y = list(torch.split(y0, (self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """cv1 -> three chained 5x5/1 max-pools -> concat of all four -> cv2."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = _conv(c1, c_, 1)
        self.cv2 = _conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled head per level: box branch (3x3, 3x3, 1x1 -> 4 * reg_max) and class
    branch (3x3, 3x3, 1x1 -> nc), concatenated along channels. Raw maps, no decoding."""

    def __init__(self, nc: int, ch: Sequence[int], reg_max: int = 16) -> None:
        super().__init__()
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(_conv(c, c2, 3), _conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch
        )
        self.cls = nn.ModuleList(
            nn.Sequential(_conv(c, c3, 3), _conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch
        )

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat([b(x), c(x)], 1) for x, b, c in zip(xs, self.box, self.cls))


class YoloC2f(nn.Module):
    """YOLOv8-style detector: Conv/C2f backbone with SPPF, PAN neck (nearest upsample +
    concat, strided conv + concat), 3-level decoupled Detect head (strides 8, 16, 32).

    ``widths`` = channels at strides 2, 4, 8, 16, 32 (yolov8n: 16, 32, 64, 128, 256).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 2, 1),
        num_classes: int = 80,
        reg_max: int = 16,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        n1, n2, n3, n4 = depths
        # backbone (alternate chunk / split so both ONNX forms appear)
        self.b0 = _conv(in_channels, w0, 3, 2)
        self.b1 = _conv(w0, w1, 3, 2)
        self.b2 = C2f(w1, w1, n1, True, split="chunk")
        self.b3 = _conv(w1, w2, 3, 2)
        self.b4 = C2f(w2, w2, n2, True, split="split")  # P3
        self.b5 = _conv(w2, w3, 3, 2)
        self.b6 = C2f(w3, w3, n3, True, split="chunk")  # P4
        self.b7 = _conv(w3, w4, 3, 2)
        self.b8 = C2f(w4, w4, n4, True, split="split")
        self.b9 = SPPF(w4, w4)  # P5
        # neck
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(w4 + w3, w3, 1, split="chunk")
        self.n2 = C2f(w3 + w2, w2, 1, split="split")  # out P3
        self.n3 = _conv(w2, w2, 3, 2)
        self.n4 = C2f(w2 + w3, w3, 1, split="chunk")  # out P4
        self.n5 = _conv(w3, w3, 3, 2)
        self.n6 = C2f(w3 + w4, w4, 1, split="split")  # out P5
        self.detect = Detect(num_classes, (w2, w3, w4), reg_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.b2(self.b1(self.b0(x)))
        p3 = self.b4(self.b3(x))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h4 = self.n1(torch.cat([self.up(p5), p4], 1))
        o3 = self.n2(torch.cat([self.up(h4), p3], 1))
        o4 = self.n4(torch.cat([self.n3(o3), h4], 1))
        o5 = self.n6(torch.cat([self.n5(o4), p5], 1))
        return self.detect([o3, o4, o5])
