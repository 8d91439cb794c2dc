"""CNN architectures of the zoo and the configurations the registry exposes.

The architectures live in :mod:`models.cnn_classic`, :mod:`models.cnn_mobile`,
:mod:`models.cnn_dense` and :mod:`models.cnn_recurrent` (re-exported here). This module holds the *builders*: functions
``build_<name>(batch=1) -> (module, example_inputs)`` with the small default configurations
(fast to export and to run in ONNX Runtime) and the full-size ``*_full`` ones.

A builder constructs the module first and the example inputs second, both from the
global torch RNG; :meth:`models.ZooEntry.build` seeds it, so weights do not depend on
``batch``.
"""

from __future__ import annotations

import torch
from torch import nn

from .cnn_classic import (
    VGG,
    BasicBlock,
    Bottleneck,
    Conv1dNet,
    Conv3dNet,
    DenseNet,
    Fire,
    Inception,
    InceptionNet,
    ResNet,
    SqueezeNet,
)
from .cnn_dense import SPPF, C2f, Detect, DoubleConv, UNet, YoloBottleneck, YoloC2f
from .cnn_mobile import (
    EFFNET_B0_SETTINGS,
    MBV2_FULL_SETTINGS,
    MBV3_LARGE_SETTINGS,
    EfficientNet,
    InvertedResidual,
    MBConv,
    MBV3Block,
    MobileNetV2,
    MobileNetV3,
    ShuffleNetV2,
    ShuffleUnit,
    channel_shuffle,
)
from .cnn_recurrent import CRNN

__all__ = [
    # architectures
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "VGG",
    "DenseNet",
    "Fire",
    "SqueezeNet",
    "Inception",
    "InceptionNet",
    "Conv1dNet",
    "Conv3dNet",
    "InvertedResidual",
    "MobileNetV2",
    "MBV3Block",
    "MobileNetV3",
    "MBConv",
    "EfficientNet",
    "channel_shuffle",
    "ShuffleUnit",
    "ShuffleNetV2",
    "DoubleConv",
    "UNet",
    "YoloBottleneck",
    "C2f",
    "SPPF",
    "Detect",
    "YoloC2f",
    "CRNN",
    # builders
    "BUILDERS",
]

Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


def _img(batch: int, size: int, channels: int = 3) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, channels, size, size),)


# --------------------------------------------------------------------------- small configs


def build_resnet18(batch: int = 1) -> Built:
    m = ResNet(BasicBlock, (2, 2, 2, 2), widths=(16, 32, 64, 128), num_classes=10, stem="cifar")
    return m, _img(batch, 32)


def build_resnet50(batch: int = 1) -> Built:
    # bottleneck widths 16..128 -> block outputs 64..512
    m = ResNet(Bottleneck, (2, 2, 2, 2), widths=(16, 32, 64, 128), num_classes=10, stem="cifar")
    return m, _img(batch, 32)


def build_resnext(batch: int = 1) -> Built:
    # groups=4, group width = planes * 32 / 64 = 8, 16, 32, 64 channels per group
    m = ResNet(
        Bottleneck,
        (1, 2, 2, 1),
        widths=(16, 32, 64, 128),
        num_classes=10,
        stem="cifar",
        groups=4,
        base_width=32,
    )
    return m, _img(batch, 32)


def build_mobilenetv2(batch: int = 1) -> Built:
    settings = [(1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 2, 2), (6, 48, 2, 1)]
    m = MobileNetV2(settings, stem_channels=16, stem_stride=1, last_channel=128, num_classes=10)
    return m, _img(batch, 32)


def build_mobilenetv3(batch: int = 1) -> Built:
    settings = [
        (3, 16, 16, True, "RE", 2),
        (3, 48, 24, False, "RE", 2),
        (3, 64, 24, False, "RE", 1),
        (5, 72, 40, True, "HS", 2),
        (5, 120, 40, True, "HS", 1),
        (3, 120, 48, True, "HS", 1),
    ]
    m = MobileNetV3(settings, stem_channels=16, last_conv=144, last_channel=256, num_classes=10)
    return m, _img(batch, 64)


def build_efficientnet_b0(batch: int = 1) -> Built:
    m = EfficientNet(width_mult=0.5, depth_mult=0.5, last_channel=256, num_classes=10)
    return m, _img(batch, 64)


def build_densenet(batch: int = 1) -> Built:
    m = DenseNet(
        growth_rate=8, block_config=(3, 3, 3), num_init_features=16, bn_size=4, num_classes=10, stem="cifar"
    )
    return m, _img(batch, 32)


def build_squeezenet(batch: int = 1) -> Built:
    fires = [
        (8, 16, 16),
        (8, 16, 16),
        "M",
        (16, 32, 32),
        (16, 32, 32),
        "M",
        (24, 48, 48),
        (32, 64, 64),
    ]
    m = SqueezeNet(fires, stem_channels=32, stem_kernel=3, stem_stride=1, final_conv=64, num_classes=10)
    return m, _img(batch, 32)


def build_inception(batch: int = 1) -> Built:
    blocks = [
        (16, 24, 32, 4, 8, 8, "max"),  # -> 64
        (32, 32, 48, 8, 24, 16, "max"),  # -> 120
        "M",
        (48, 24, 52, 4, 12, 16, "avg"),  # -> 128
        (40, 28, 56, 6, 16, 16, "max"),  # -> 128
    ]
    m = InceptionNet(blocks, stem_channels=(16, 32), num_classes=10)
    return m, _img(batch, 32)


def build_shufflenetv2(batch: int = 1) -> Built:
    m = ShuffleNetV2((2, 3, 2), (16, 32, 64, 128, 256), num_classes=10, stem="cifar")
    return m, _img(batch, 32)


def build_unet(batch: int = 1) -> Built:
    m = UNet(
        in_channels=3,
        num_classes=3,
        widths=(8, 16, 32, 64),
        up_modes=("transpose", "bilinear", "transpose", "nearest"),
    )
    return m, _img(batch, 64)


def build_yolo_c2f(batch: int = 1) -> Built:
    m = YoloC2f(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 1), num_classes=4, reg_max=4)
    return m, _img(batch, 64)


def build_vgg(batch: int = 1) -> Built:
    cfg = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M"]
    m = VGG(cfg, num_classes=10, batch_norm=True, input_size=32, hidden=(256, 128), dropout=0.5)
    return m, _img(batch, 32)


def build_conv1d(batch: int = 1) -> Built:
    m = Conv1dNet(in_channels=4, widths=(16, 32, 64), num_classes=5)
    return m, (torch.randn(batch, 4, 128),)


def build_conv3d(batch: int = 1) -> Built:
    m = Conv3dNet(in_channels=3, widths=(8, 16, 32), num_classes=10)
    return m, (torch.randn(batch, 3, 8, 32, 32),)


def build_crnn(batch: int = 1) -> Built:
    m = CRNN(in_channels=1, widths=(16, 32, 64, 64), hidden=48, num_classes=20, rnn="lstm")
    return m, (torch.randn(batch, 1, 16, 64),)


def build_crnn_gru(batch: int = 1) -> Built:
    m = CRNN(in_channels=1, widths=(16, 32, 64, 64), hidden=48, num_classes=20, rnn="gru", to_sequence="reshape")
    return m, (torch.randn(batch, 1, 16, 64),)


# --------------------------------------------------------------------------- full-size configs


def build_resnet50_full(batch: int = 1) -> Built:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=1000), _img(batch, 224)


def build_resnext50_full(batch: int = 1) -> Built:
    m = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=1000, groups=32, base_width=4)
    return m, _img(batch, 224)


def build_mobilenetv2_full(batch: int = 1) -> Built:
    return MobileNetV2(MBV2_FULL_SETTINGS), _img(batch, 224)


def build_mobilenetv3_full(batch: int = 1) -> Built:
    return MobileNetV3(MBV3_LARGE_SETTINGS), _img(batch, 224)


def build_efficientnet_b0_full(batch: int = 1) -> Built:
    return EfficientNet(EFFNET_B0_SETTINGS), _img(batch, 224)


def build_shufflenetv2_full(batch: int = 1) -> Built:
    return ShuffleNetV2(), _img(batch, 224)


BUILDERS = {
    name[len("build_") :]: fn
    for name, fn in sorted(globals().items())
    if name.startswith("build_") and callable(fn)
}
