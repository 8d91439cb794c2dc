"""graphprune CNN model zoo: PyTorch architectures exported to ONNX on demand.

>>> from models import ZOO, CNN_MODELS, get_model
>>> path = get_model("resnet18")                         # TorchScript export, BN folded
>>> path = get_model("densenet", exporter="dynamo", keep_bn=True)

Weights are random but deterministic (``seed``); BatchNorm layers get non-trivial
statistics (see :func:`models.layers.calibrate_batchnorm`), so folding BN is never a no-op.
No pretrained weights are used anywhere.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import cnn
from .layers import calibrate_batchnorm, has_batchnorm, randomize_batchnorm

__all__ = [
    "ZooEntry",
    "ZOO",
    "CNN_MODELS",
    "FULL_MODELS",
    "EXPORTERS",
    "get_entry",
    "get_model",
    "default_cache_dir",
    "cache_key",
    "export_model",
]

EXPORTERS = ("torchscript", "dynamo")

Builder = Callable[..., tuple[nn.Module, tuple[torch.Tensor, ...]]]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    ``builder(batch=1)`` returns ``(module, example_inputs)``; use :meth:`build` to get a
    seeded, BN-randomised module in eval mode together with its example inputs.
    """

    name: str
    builder: Builder = field(repr=False)
    description: str
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("logits",)
    task: str = "classification"  # classification | segmentation | detection | recognition (CTC)
    full_size: bool = False  # large config (benchmarks only; not in CNN_MODELS)

    def build(
        self, seed: int = 0, batch: int = 1, calibration_batch: int = 8
    ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """Deterministically build the model (eval mode) and its example inputs.

        Weights come from ``torch.manual_seed(seed)``; the example inputs are drawn after
        the module, so weights do not depend on ``batch``. BN layers get random affine
        parameters and statistics calibrated on ``calibration_batch`` random inputs.
        """
        torch.manual_seed(seed)
        module, inputs = self.builder(batch=batch)
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        if has_batchnorm(module):
            randomize_batchnorm(module, gen)
            calib = tuple(
                torch.randn((calibration_batch,) + tuple(t.shape[1:]), generator=gen) for t in inputs
            )
            calibrate_batchnorm(module, calib, gen)
        module.eval()
        return module, tuple(inputs)

    @property
    def has_batchnorm(self) -> bool:
        torch_state = torch.get_rng_state()
        try:
            module, _ = self.builder(batch=1)
        finally:
            torch.set_rng_state(torch_state)
        return has_batchnorm(module)


def _entry(name: str, description: str, **kw) -> ZooEntry:
    return ZooEntry(name=name, builder=cnn.BUILDERS[name], description=description, **kw)


_ENTRIES = [
    _entry("resnet18", "ResNet-18 (basic blocks, 2-2-2-2), widths 16-128, 3x32x32, 10 classes"),
    _entry("resnet50", "ResNet-50-style bottlenecks (x4 expansion, 2-2-2-2), widths 16-128, 3x32x32"),
    _entry("resnext", "ResNeXt bottlenecks, 3x3 group conv groups=4 (8-64 ch/group), 3x32x32"),
    _entry("mobilenetv2", "MobileNetV2 inverted residuals, depthwise 3x3, ReLU6, 3x32x32"),
    _entry("mobilenetv3", "MobileNetV3 blocks, hard-swish, SE gates x*hardsigmoid(.), 3x64x64"),
    _entry("efficientnet_b0", "EfficientNet-B0 (width 0.5, depth 0.5), MBConv, SiLU, SE sigmoid, 3x64x64"),
    _entry("densenet", "DenseNet (growth 8, blocks 3-3-3), pre-activation BN-ReLU-Conv, concat, 3x32x32"),
    _entry("squeezenet", "SqueezeNet 1.1-style fire modules (squeeze 1x1, expand 1x1|3x3 concat), no BN"),
    _entry("inception", "GoogLeNet-style inception blocks (4 branches incl. max/avg pool branch), 3x32x32"),
    _entry(
        "shufflenetv2",
        "ShuffleNetV2 units (chunk split, concat, channel shuffle), stride 1 and 2, 3x32x32",
    ),
    _entry(
        "unet",
        "U-Net, 4 levels, skip concat, ConvTranspose2d + bilinear/nearest Resize upsampling, 3x64x64",
        output_names=("mask",),
        task="segmentation",
    ),
    _entry(
        "yolo_c2f",
        "YOLOv8-style detector: C2f (chunk/split), SPPF, PAN neck, 3-level detect head, 3x64x64",
        output_names=("p3", "p4", "p5"),
        task="detection",
    ),
    _entry("vgg", "VGG-BN conv stack + max-pools, flatten -> Linear -> ReLU -> Dropout -> Linear -> Linear"),
    _entry("conv1d", "1-D conv net with residual blocks on [N, 4, 128] sequences, BN, ReLU, GAP, Linear"),
    _entry("conv3d", "3-D conv net on [N, 3, 8, 32, 32] volumes, BN, ReLU, 3-D max-pool, residual, Linear"),
    _entry(
        "crnn",
        "CRNN text recogniser: conv-BN-ReLU-pool to height 1, squeeze, 2-layer BiLSTM, Linear, CTC log-probs, 1x16x64",
        output_names=("log_probs",),
        task="recognition",
    ),
    _entry(
        "crnn_gru",
        "CRNN with a 2-layer BiGRU, sequence made by a run-time-shape reshape, CTC log-probs, 1x16x64",
        output_names=("log_probs",),
        task="recognition",
    ),
    # full-size configurations (benchmarks)
    _entry("resnet50_full", "ResNet-50, ImageNet config, 3x224x224, 1000 classes", full_size=True),
    _entry("resnext50_full", "ResNeXt-50 32x4d, ImageNet config, 3x224x224", full_size=True),
    _entry("mobilenetv2_full", "MobileNetV2 1.0, ImageNet config, 3x224x224", full_size=True),
    _entry("mobilenetv3_full", "MobileNetV3-Large 1.0, ImageNet config, 3x224x224", full_size=True),
    _entry("efficientnet_b0_full", "EfficientNet-B0, ImageNet config, 3x224x224", full_size=True),
    _entry("shufflenetv2_full", "ShuffleNetV2 1.0x, ImageNet config, 3x224x224", full_size=True),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
CNN_MODELS: list[str] = [e.name for e in _ENTRIES if not e.full_size]
FULL_MODELS: list[str] = [e.name for e in _ENTRIES if e.full_size]


def get_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


# --------------------------------------------------------------------------- cache

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def default_cache_dir() -> pathlib.Path:
    """``$GRAPHPRUNE_ZOO_CACHE`` if set, else ``<repo>/.cache/zoo``."""
    env = os.environ.get("GRAPHPRUNE_ZOO_CACHE")
    return pathlib.Path(env) if env else _REPO_ROOT / ".cache" / "zoo"


# Sources that determine a CNN export (other modules of the package, e.g. the transformer
# zoo, have their own cache keys and must not invalidate these files).
_CNN_SOURCES = (
    "__init__.py",
    "layers.py",
    "export.py",
    "cnn.py",
    "cnn_classic.py",
    "cnn_mobile.py",
    "cnn_dense.py",
    "cnn_recurrent.py",
)


def _source_digest() -> str:
    h = hashlib.sha256()
    here = pathlib.Path(__file__).parent
    for name in _CNN_SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def cache_key() -> str:
    """Hash of the torch version (and exporter stack + zoo source): changes invalidate the cache."""
    parts = [f"torch={torch.__version__}"]
    for mod in ("onnx", "onnxscript"):
        try:
            parts.append(f"{mod}={__import__(mod).__version__}")
        except Exception:  # pragma: no cover - optional
            parts.append(f"{mod}=none")
    parts.append(f"src={_source_digest()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def get_model(
    name: str,
    exporter: str = "torchscript",
    keep_bn: bool = False,
    cache_dir: str | os.PathLike | None = None,
    *,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> pathlib.Path:
    """Path of the exported ONNX model, exporting it into the cache on first use."""
    get_entry(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = [name, exporter, "bn" if keep_bn else "fold"]
    if dynamic_batch:
        parts.append("dynbatch")
    if seed:
        parts.append(f"seed{seed}")
    path = root / f"{'__'.join(parts)}__{cache_key()}.onnx"
    if not path.is_file():
        export_model(name, path, exporter=exporter, keep_bn=keep_bn, dynamic_batch=dynamic_batch, seed=seed)
    return path


from .export import export_model  # noqa: E402  (export imports ZOO lazily)
