"""Calibration images: the `--preprocess` spec and reading a folder of images into a model's image input.

`--calib-images DIR --preprocess "size=320x320,scale=1/255,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,layout=NCHW,rgb"`:
each image is converted to RGB (or BGR, or gray for a one-channel input), resized to `size` (width x height;
the model's own H, W when they are static), then `value = (pixel * scale - mean) / std` per channel, in the
model's layout. Pillow reads the images; it is imported only here, and only when images are read, so it is no
runtime dependency. This module loads neither onnx nor Pillow at import (options.py parses specs with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphprune.errors import OptionError, UsageError, first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
LAYOUTS = ("NCHW", "NHWC")
_KEYS = ("size", "scale", "mean", "std", "layout")
_FLAGS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocess:
    """A parsed `--preprocess` spec; None fields are taken from the model (size, layout)."""

    size: tuple[int, int] | None = None  # (width, height)
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    order: str = "rgb"


def _bad(spec: str, why: str) -> OptionError:
    return OptionError("{preprocess} {spec}: {why}", spec=repr(spec), why=why)


def _number(spec: str, key: str, text: str) -> float:
    try:
        if "/" in text:
            num, _, den = text.partition("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise _bad(spec, f"{key} takes numbers, got '{text}'") from None


def parse_preprocess(spec: str | None) -> Preprocess:
    """`key=value` items separated by commas (mean and std take one value per channel, also comma-separated),
    and the flags rgb / bgr. Keys: size=WxH (or one number for a square), scale (a number or a fraction like
    1/255), mean, std (one value, or one per channel), layout=NCHW|NHWC."""
    if spec is None:
        return Preprocess()
    if not isinstance(spec, str):
        raise OptionError("{preprocess} must be a spec string like 'size=224x224,scale=1/255', got {value}",
                          value=type(spec).__name__)
    values: dict[str, list[str]] = {}
    flags: list[str] = []
    key = None
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        if "=" in item:
            key, _, value = (s.strip() for s in item.partition("="))
            key = key.lower()
            if key not in _KEYS:
                raise _bad(spec, f"unknown key '{key}' (keys: {', '.join(_KEYS)}; flags: {', '.join(_FLAGS)})")
            if key in values:
                raise _bad(spec, f"{key} is given twice")
            values[key] = [value]
        elif key in ("mean", "std") and item.lower() not in _FLAGS:
            values[key].append(item)  # the next channel's value (checked to be a number below)
        elif item.lower() in _FLAGS:
            flags.append(item.lower())
            key = None
        else:
            raise _bad(spec, f"'{item}' is neither key=value nor a flag ({', '.join(_FLAGS)})")
    if len(set(flags)) > 1:
        raise _bad(spec, "rgb and bgr are both given")
    out = {"order": flags[0] if flags else "rgb"}
    if "size" in values:
        out["size"] = _size(spec, values["size"][0])
    if "scale" in values:
        out["scale"] = _number(spec, "scale", values["scale"][0])
        if not np.isfinite(out["scale"]) or out["scale"] == 0:
            raise _bad(spec, f"scale must be a finite non-zero number, got {values['scale'][0]}")
    for k in ("mean", "std"):
        if k in values:
            out[k] = tuple(_number(spec, k, v) for v in values[k])
            if not all(np.isfinite(out[k])):
                raise _bad(spec, f"{k} must be finite numbers")
    if any(s <= 0 for s in out.get("std", ())):
        raise _bad(spec, "std values must be positive")
    if "layout" in values:
        layout = values["layout"][0].upper()
        if layout not in LAYOUTS:
            raise _bad(spec, f"layout must be NCHW or NHWC, got '{values['layout'][0]}'")
        out["layout"] = layout
    return Preprocess(**out)


def _size(spec: str, text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or any(d <= 0 for d in dims):
        raise _bad(spec, f"size must be WIDTHxHEIGHT in pixels (e.g. 320x240) or one number, got '{text}'")
    return (dims[0], dims[-1])


# ---- reading ------------------------------------------------------------------------------------------
def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (subfolders included, e.g. one per class), sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def geometry(pre: Preprocess, name: str, dims: list | None, shown: str) -> tuple[str, int, int, int]:
    """(layout, channels, height, width) of the image input `name` of dims `dims` under `pre`; a
    UsageError names the input, the model's shape and the spec's value where they disagree."""
    if dims is None or len(dims) != 4:
        raise UsageError(f"--calib-images: input '{name}' is not 4-D ({shown}); images fill an NCHW or NHWC input")
    layout = pre.layout
    if layout is None:
        layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    c_ax, h_ax, w_ax = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = dims[c_ax] if dims[c_ax] is not None else 3
    if channels not in (1, 3):
        raise UsageError(f"--calib-images: input '{name}' {shown} has {channels} channels in layout {layout}; "
                         "images give 1 (gray) or 3 (rgb/bgr)" + ("" if pre.layout else " (set layout=)"))
    for k in ("mean", "std"):
        v = getattr(pre, k)
        if len(v) not in (1, channels):
            raise UsageError(f"--preprocess {k} has {len(v)} values; input '{name}' {shown} has {channels} "
                             "channel(s)")
    h, w = dims[h_ax], dims[w_ax]
    if pre.size is not None:
        if (w is not None and w != pre.size[0]) or (h is not None and h != pre.size[1]):
            raise UsageError(f"--preprocess size={pre.size[0]}x{pre.size[1]} (width x height), but input "
                             f"'{name}' {shown} takes {w or '?'}x{h or '?'} images")
        w, h = pre.size
    elif h is None or w is None:
        raise UsageError(f"--preprocess needs size=WIDTHxHEIGHT: input '{name}' {shown} has a dynamic height "
                         "or width")
    return layout, channels, h, w


def read_images(folder, pre: Preprocess, name: str, dims: list | None, shown: str, limit: int) -> tuple[np.ndarray, str]:
    """Up to `limit` images of `folder` as one float32 array of samples [n, ...] for the input `name`, and a
    line saying what was read."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("--calib-images needs Pillow to read images: pip install pillow") from None
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--calib-images {folder}: no such folder")
    layout, channels, h, w = geometry(pre, name, dims, shown)
    files = image_files(path)
    if not files:
        raise UsageError(f"--calib-images {folder}: no images in it ({', '.join(IMAGE_SUFFIXES)})")
    total = len(files)
    files = files[:limit]
    # (pixel * scale - mean) / std as one multiply-add per value, written straight into the samples array
    gain = np.float32(pre.scale) / np.asarray(pre.std, np.float32)
    shift = np.asarray(pre.mean, np.float32) / np.asarray(pre.std, np.float32)
    out = np.empty((len(files), channels, h, w) if layout == "NCHW" else (len(files), h, w, channels), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - Pillow's many kinds: the user's file to fix
            raise UsageError(f"--calib-images {folder}: cannot read {f.relative_to(path).as_posix()} as an image "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        a = a.reshape(h, w, channels)
        if pre.order == "bgr" and channels == 3:
            a = a[..., ::-1]
        a = a * gain - shift
        out[i] = np.moveaxis(a, -1, 0) if layout == "NCHW" else a
    what = (f"{len(out)} images of {total} in {folder} ({w}x{h}, {layout}, "
            f"{'gray' if channels == 1 else pre.order})")
    return out, what


__all__ = ["IMAGE_SUFFIXES", "Preprocess", "geometry", "image_files", "parse_preprocess", "read_images"]
