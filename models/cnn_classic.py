"""Classic CNN families: ResNet / ResNeXt, VGG, DenseNet, SqueezeNet, Inception, 1-D and 3-D nets.

All widths/depths are constructor arguments; the zoo registers small configurations
(fast export + ONNX Runtime checks) and a few full-size ones for benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNAct

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "VGG",
    "DenseNet",
    "SqueezeNet",
    "Fire",
    "Inception",
    "InceptionNet",
    "Conv1dNet",
    "Conv3dNet",
]


# --------------------------------------------------------------------------- ResNet / ResNeXt


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1, base_width=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (optionally grouped: ResNeXt) -> 1x1 expand (x4), stride on the 3x3."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet / ResNeXt.

    ``stem="imagenet"``: 7x7/2 conv + 3x3/2 max-pool (224x224 inputs);
    ``stem="cifar"``: 3x3/1 conv, no pool (32x32 inputs).
    ResNeXt = ``Bottleneck`` with ``groups > 1`` (group width = planes * base_width / 64).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        stem_width: int | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        stem_width = widths[0] if stem_width is None else stem_width
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}")
        inplanes = stem_width
        stages = []
        for i, (planes, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(inplanes, planes, stride, groups, base_width))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """Conv stack with max-pools (``"M"`` in ``cfg``), then flatten -> Linear -> ReLU ->
    Dropout -> Linear -> Linear.

    Without ``avgpool_size`` the flatten happens directly on the last pooled feature map,
    so the first Linear sees ``C * H * W`` features (each conv channel owns H*W columns).
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 1000,
        in_channels: int = 3,
        batch_norm: bool = True,
        input_size: int = 224,
        avgpool_size: int | None = None,
        hidden: Sequence[int] = (4096, 4096),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            else:
                assert isinstance(v, int)
                layers.append(nn.Conv2d(c, v, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU())
                c = v
        self.features = nn.Sequential(*layers)
        if avgpool_size is not None:
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d(avgpool_size)
            size = avgpool_size
        else:
            self.avgpool = nn.Identity()
        self.classifier = nn.Sequential(
            nn.Linear(c * size * size, hidden[0]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-Conv1x1 -> BN-ReLU-Conv3x3 (growth channels).

    The first BN reads a concatenation (cannot be folded into a conv); the second one
    follows a conv and is foldable.
    """

    def __init__(self, in_ch: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.ModuleList):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, num_init_features, 7, 2, 3, bias=False),
                nn.BatchNorm2d(num_init_features),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, num_init_features, 3, 1, 1, bias=False),
                nn.BatchNorm2d(num_init_features),
                nn.ReLU(),
            )
        blocks: list[nn.Module] = []
        c = num_init_features
        for i, n in enumerate(block_config):
            layers = [_DenseLayer(c + j * growth_rate, growth_rate, bn_size) for j in range(n)]
            blocks.append(_DenseBlock(layers))
            c += n * growth_rate
            if i != len(block_config) - 1:
                out = int(c * compression)
                blocks.append(_Transition(c, out))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.norm_final = nn.BatchNorm2d(c)
        self.relu_final = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.relu_final(self.norm_final(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
    """squeeze 1x1 -> ReLU -> [expand 1x1 -> ReLU, expand 3x3 -> ReLU] -> concat."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.squeeze_act = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_act = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_act(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_act(self.expand1x1(x)), self.expand3x3_act(self.expand3x3(x))], 1
        )


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 layout (no BatchNorm anywhere, conv biases, ceil-mode max-pools).

    ``fires`` is a list of (squeeze, expand1x1, expand3x3) or ``"M"`` for a max-pool.
    The original ends with a 1x1 conv classifier; here a 1x1 conv + ReLU + global pool
    is followed by a Linear head so that logits come from a Linear, like the other models.
    """

    def __init__(
        self,
        fires: Sequence[tuple[int, int, int] | str],
        stem_channels: int = 64,
        stem_kernel: int = 3,
        stem_stride: int = 2,
        final_conv: int = 512,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                stem_channels,
                stem_kernel,
                stem_stride,
                padding=stem_kernel // 2 if stem_stride == 1 else 0,
            ),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        c = stem_channels
        for f in fires:
            if f == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                s, e1, e3 = f  # type: ignore[misc]
                layers.append(Fire(c, s, e1, e3))
                c = e1 + e3
        self.features = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(c, final_conv, 1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(final_conv, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.features(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- Inception


class Inception(nn.Module):
    """GoogLeNet-style block: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | pool->1x1, concatenated.

    ``pool="max"`` uses a 3x3/1 max-pool (GoogLeNet), ``pool="avg"`` a 3x3/1 average pool
    (Inception-v3 style, count_include_pad=False).
    """

    def __init__(
        self,
        in_ch: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        pool: str = "max",
    ) -> None:
        super().__init__()
        self.branch1 = ConvBNAct(in_ch, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNAct(in_ch, ch3x3red, 1), ConvBNAct(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(
            ConvBNAct(in_ch, ch5x5red, 1), ConvBNAct(ch5x5red, ch5x5, 3), ConvBNAct(ch5x5, ch5x5, 3)
        )
        if pool == "max":
            pool_layer: nn.Module = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        elif pool == "avg":
            pool_layer = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        else:
            raise ValueError(pool)
        self.branch4 = nn.Sequential(pool_layer, ConvBNAct(in_ch, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionNet(nn.Module):
    """Stem -> inception blocks (``"M"`` = 3x3/2 max-pool) -> global pool -> dropout -> fc."""

    def __init__(
        self,
        blocks: Sequence[tuple | str],
        stem_channels: Sequence[int] = (32, 48),
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        c = in_channels
        for s in stem_channels:
            stem.append(ConvBNAct(c, s, 3))
            c = s
        stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        for b in blocks:
            if b == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                block = Inception(c, *b)  # type: ignore[misc]
                layers.append(block)
                c = block.out_channels
        self.blocks = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return self.fc(x)


# --------------------------------------------------------------------------- 1-D / 3-D


class _ResBlock1d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, kernel_size, stride, dims=1)
        self.conv2 = ConvBNAct(out_ch, out_ch, kernel_size, 1, act=None, dims=1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBNAct(in_ch, out_ch, 1, stride, act=None, dims=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Conv1dNet(nn.Module):
    """1-D conv net on [N, C, L]: stem conv -> residual stages -> max-pool -> conv ->
    global average pool -> Linear."""

    def __init__(
        self,
        in_channels: int = 4,
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 5,
    ) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, widths[0], 7, 2, dims=1)
        self.res1 = _ResBlock1d(widths[0], widths[0])
        self.res2 = _ResBlock1d(widths[0], widths[1], stride=2)
        self.pool = nn.MaxPool1d(2)
        self.conv = ConvBNAct(widths[1], widths[2], 3, dims=1)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res2(self.res1(self.stem(x)))
        x = self.conv(self.pool(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class Conv3dNet(nn.Module):
    """3-D conv net on [N, C, D, H, W]: conv-BN-ReLU stages with 3-D max-pools, a
    residual 3-D block, global average pool, Linear."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (8, 16, 32),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, widths[0], 3, dims=3)
        self.pool1 = nn.MaxPool3d((1, 2, 2))
        self.conv2 = ConvBNAct(widths[0], widths[1], 3, dims=3)
        self.pool2 = nn.MaxPool3d(2)
        self.conv3 = ConvBNAct(widths[1], widths[2], 3, dims=3)
        self.conv4 = ConvBNAct(widths[2], widths[2], 3, act=None, dims=3)
        self.act = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.conv3(x)
        x = self.act(self.conv4(x) + x)
        return self.fc(torch.flatten(self.gap(x), 1))
