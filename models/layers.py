"""Small building blocks shared by the zoo architectures, plus weight initialisation helpers.

Nothing here is model-specific: conv/BN/activation stacks, squeeze-excitation gates,
stochastic depth, channel rounding, and the deterministic BatchNorm randomisation used
so that exported graphs carry non-trivial BN statistics (BN folding is never a no-op).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ConvBNAct",
    "SqueezeExcite",
    "StochasticDepth",
    "make_divisible",
    "conv_nd",
    "bn_nd",
    "randomize_batchnorm",
    "calibrate_batchnorm",
    "has_batchnorm",
]

ActFactory = Callable[[], nn.Module] | None

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (MobileNet/EfficientNet rule).

    Never rounds down by more than 10%.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def conv_nd(dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]


def bn_nd(dims: int) -> type[nn.Module]:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation, for 1-D/2-D/3-D inputs.

    ``padding=None`` means "same" padding for odd kernels ((k - 1) // 2 * dilation).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        act: ActFactory = nn.ReLU,
        dims: int = 2,
    ) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            conv_nd(dims)(
                in_ch,
                out_ch,
                kernel_size,
                stride=stride,
                padding=padding,
                groups=groups,
                dilation=dilation,
                bias=False,
            ),
            bn_nd(dims)(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
        self.out_channels = out_ch


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs.

    ``gate=nn.Sigmoid`` (EfficientNet) or ``gate=nn.Hardsigmoid`` (MobileNetV3).
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act: Callable[[], nn.Module] = nn.ReLU,
        gate: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * s


class StochasticDepth(nn.Module):
    """Drop-connect on a residual branch, row mode. Identity in eval mode (so never exported)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        mask.bernoulli_(keep)
        return x * mask / keep


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random affine parameters and random running statistics."""
    for m in model.modules():
        if not isinstance(m, _BN_TYPES):
            continue
        c = m.num_features
        if m.affine:
            m.weight.copy_(torch.rand(c, generator=generator) + 0.5)  # [0.5, 1.5)
            m.bias.copy_(torch.randn(c, generator=generator) * 0.2)
        if m.track_running_stats:
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)  # [0.5, 2.0)


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    generator: torch.Generator,
    jitter: float = 0.1,
) -> None:
    """Set BN running statistics from one forward pass, then perturb them slightly.

    Random weights with arbitrary BN statistics make activations explode or vanish with
    depth; computing the statistics on random data keeps every layer roughly normalised
    (well-conditioned numerics for the ORT-vs-torch comparisons) while the statistics stay
    non-trivial (mean != 0, var != 1), so folding BN into the preceding conv changes weights.
    Only the BN layers are put in training mode; dropout / stochastic depth stay in eval.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not bns:
        return
    was_training = model.training
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly the batch statistics after one pass
        m.train()
    try:
        model(*inputs)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    for m in bns:
        c = m.num_features
        std = m.running_var.clamp_min(1e-5).sqrt()
        m.running_mean.add_(torch.randn(c, generator=generator) * jitter * std)
        m.running_var.mul_(1.0 + jitter * (2 * torch.rand(c, generator=generator) - 1))
        m.num_batches_tracked.zero_()
