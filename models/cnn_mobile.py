"""Mobile CNN families: MobileNetV2, MobileNetV3, EfficientNet-B0, ShuffleNetV2.

Depthwise convolutions, inverted residuals, squeeze-excitation gates (sigmoid and
hard-sigmoid), ReLU6 / hard-swish / SiLU activations, channel split + shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNAct, SqueezeExcite, StochasticDepth, make_divisible

__all__ = [
    "InvertedResidual",
    "MobileNetV2",
    "MBV3Block",
    "MobileNetV3",
    "MBConv",
    "EfficientNet",
    "channel_shuffle",
    "ShuffleUnit",
    "ShuffleNetV2",
    "MBV2_FULL_SETTINGS",
    "MBV3_LARGE_SETTINGS",
    "EFFNET_B0_SETTINGS",
]

# --------------------------------------------------------------------------- MobileNetV2

# (expand ratio t, output channels c, repeats n, first stride s)
MBV2_FULL_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """[1x1 expand -> ReLU6] -> 3x3 depthwise -> ReLU6 -> 1x1 linear projection (+ residual)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            ConvBNAct(hidden, oup, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        settings: Sequence[tuple[int, int, int, int]] = MBV2_FULL_SETTINGS,
        width_mult: float = 1.0,
        stem_channels: int = 32,
        stem_stride: int = 2,
        last_channel: int = 1280,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c = make_divisible(stem_channels * width_mult)
        last = make_divisible(last_channel * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_channels, c, 3, stem_stride, act=nn.ReLU6)]
        for t, ch, n, s in settings:
            out = make_divisible(ch * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        layers.append(ConvBNAct(c, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- MobileNetV3

# (kernel, expanded channels, output channels, use SE, activation "RE"|"HS", stride)
MBV3_LARGE_SETTINGS: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]


def _act(name: str) -> type[nn.Module]:
    return {"RE": nn.ReLU, "HS": nn.Hardswish}[name]


class MBV3Block(nn.Module):
    """[1x1 expand -> act] -> kxk depthwise -> act -> [SE: x * hardsigmoid(...)] -> 1x1 project."""

    def __init__(
        self, inp: int, kernel: int, exp: int, out: int, use_se: bool, act: str, stride: int
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and inp == out
        a = _act(act)
        layers: list[nn.Module] = []
        if exp != inp:
            layers.append(ConvBNAct(inp, exp, 1, act=a))
        layers.append(ConvBNAct(exp, exp, kernel, stride, groups=exp, act=a))
        if use_se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4, 8), nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvBNAct(exp, out, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    def __init__(
        self,
        settings: Sequence[tuple[int, int, int, bool, str, int]] = MBV3_LARGE_SETTINGS,
        width_mult: float = 1.0,
        stem_channels: int = 16,
        stem_stride: int = 2,
        last_conv: int | None = None,
        last_channel: int = 1280,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c = make_divisible(stem_channels * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, c, 3, stem_stride, act=nn.Hardswish)]
        for k, exp, out, se, act, s in settings:
            exp_c = make_divisible(exp * width_mult)
            out_c = make_divisible(out * width_mult)
            layers.append(MBV3Block(c, k, exp_c, out_c, se, act, s))
            c = out_c
        last_conv = 6 * c if last_conv is None else last_conv
        layers.append(ConvBNAct(c, last_conv, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- EfficientNet

# (expand ratio, kernel, first stride, input channels, output channels, repeats)
EFFNET_B0_SETTINGS: list[tuple[int, int, int, int, int, int]] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


class MBConv(nn.Module):
    """EfficientNet block: [1x1 expand -> SiLU] -> kxk depthwise -> SiLU ->
    SE (sigmoid gate, squeeze = in/4) -> 1x1 project (+ stochastic depth + residual)."""

    def __init__(
        self, inp: int, out: int, expand: int, kernel: int, stride: int, drop: float
    ) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(inp, hidden, 1, act=nn.SiLU))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(1, inp // 4), nn.SiLU, nn.Sigmoid),
            ConvBNAct(hidden, out, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res:
            y = self.stochastic_depth(y) + x
        return y


class EfficientNet(nn.Module):
    def __init__(
        self,
        settings: Sequence[tuple[int, int, int, int, int, int]] = EFFNET_B0_SETTINGS,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stem_channels: int = 32,
        last_channel: int | None = None,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        stochastic_depth: float = 0.2,
    ) -> None:
        super().__init__()

        def rf(c: int) -> int:
            return make_divisible(c * width_mult, 8)

        def rr(n: int) -> int:
            return int(math.ceil(n * depth_mult))

        c = rf(stem_channels)
        layers: list[nn.Module] = [ConvBNAct(in_channels, c, 3, 2, act=nn.SiLU)]
        total = sum(rr(s[5]) for s in settings)
        idx = 0
        for expand, k, s, _cin, cout, n in settings:
            out = rf(cout)
            stage = []
            for i in range(rr(n)):
                stage.append(MBConv(c, out, expand, k, s if i == 0 else 1, stochastic_depth * idx / total))
                c = out
                idx += 1
            layers.append(nn.Sequential(*stage))
        last = rf(1280) if last_channel is None else last_channel
        layers.append(ConvBNAct(c, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2)
    return x.reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit.

    stride 1: split channels in half (``torch.chunk``), identity on the first half,
    1x1 -> 3x3 dw -> 1x1 on the second half, concat, shuffle.
    stride 2: both branches see the full input (branch1: 3x3 dw/2 -> 1x1), concat, shuffle.
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features * 2:
            raise ValueError("stride-1 unit needs inp == oup")
        if stride > 1:
            self.branch1: nn.Module = nn.Sequential(
                ConvBNAct(inp, inp, 3, stride, groups=inp, act=None),
                ConvBNAct(inp, branch_features, 1),
            )
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            ConvBNAct(inp if stride > 1 else branch_features, branch_features, 1),
            ConvBNAct(branch_features, branch_features, 3, stride, groups=branch_features, act=None),
            ConvBNAct(branch_features, branch_features, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self,
        stages_repeats: Sequence[int] = (4, 8, 4),
        stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024),
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if len(stages_out_channels) != len(stages_repeats) + 2:
            raise ValueError("need stem + one per stage + final conv channels")
        c = stages_out_channels[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(ConvBNAct(in_channels, c, 3, 2), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(ConvBNAct(in_channels, c, 3, 1))
        stages = []
        for n, out in zip(stages_repeats, stages_out_channels[1:-1]):
            units = [ShuffleUnit(c, out, 2)] + [ShuffleUnit(out, out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            c = out
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvBNAct(c, stages_out_channels[-1], 1)
        self.fc = nn.Linear(stages_out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.stem(x)))
        x = x.mean([2, 3])  # global average pool (ReduceMean)
        return self.fc(x)
