"""Real inputs for benchmarks, built from what is installed (nothing downloaded): photos, English words,
TrueType fonts, rendered text lines with their ground-truth strings, and photos with text pasted on.

- photos: scikit-learn's two bundled sample photos (`load_sample_images`: china.jpg and flower.jpg, 427x640);
  crops of them at random positions and scales.
- words: the Zen of Python (the `this` module), CPython's LICENSE.txt and the docstrings of a few standard
  library modules; ASCII words only, in a fixed order.
- fonts: TrueType fonts listed by `fc-list`, else matplotlib's bundled DejaVu fonts, else Pillow's default
  font; `font_names()` says which were used.

Every function is deterministic in its `seed`. Images are uint8 RGB arrays [H, W, 3]; model-specific
preprocessing (BGR order, normalisation, padding) belongs to the benchmark that feeds a model.
Needs Pillow and scikit-learn (the bench extra).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np

# Standard-library modules whose docstrings add English prose when LICENSE.txt is missing (some distributions
# strip it).
_DOC_MODULES = ("textwrap", "argparse", "difflib", "heapq", "bisect", "functools", "itertools", "json", "csv",
                "random", "statistics", "string", "calendar", "decimal", "fractions", "pathlib", "shutil")


# ---- photos ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's bundled sample photos (uint8 RGB, 427x640 each)."""
    from sklearn.datasets import load_sample_images

    return tuple(np.ascontiguousarray(im, dtype=np.uint8) for im in load_sample_images().images)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def photo_crops(n: int, size: int | tuple[int, int], seed: int = 0, scale: tuple[float, float] = (0.4, 1.0)
                ) -> np.ndarray:
    """`n` crops of the photos resized to `size` (square side, or (height, width)): uint8 [n, H, W, 3]. A
    crop covers `scale` (a random fraction in that range) of the photo's shorter side, at a random place."""
    h_out, w_out = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    pics = photos()
    out = np.empty((n, h_out, w_out, 3), dtype=np.uint8)
    for i in range(n):
        pic = pics[int(rng.integers(len(pics)))]
        ph, pw = pic.shape[:2]
        side = rng.uniform(*scale) * min(ph, pw)
        ch, cw = (int(side), int(side * w_out / h_out)) if w_out <= h_out else (int(side * h_out / w_out), int(side))
        ch, cw = max(8, min(ch, ph)), max(8, min(cw, pw))
        y, x = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
        out[i] = _resize(pic[y:y + ch, x:x + cw], w_out, h_out)
    return out


# ---- words -----------------------------------------------------------------------------------------
def _zen() -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        import this  # noqa: F401 - printing the Zen of Python is what importing it does
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _texts() -> tuple[tuple[str, str], ...]:
    """(source, text) pairs: the Zen of Python, CPython's LICENSE.txt, standard-library docstrings."""
    out = [("the Zen of Python (`this`)", _zen())]
    lic = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if lic.is_file():
        out.append(("CPython LICENSE.txt", lic.read_text(errors="ignore")))
    import importlib

    docs = []
    for name in _DOC_MODULES:
        with contextlib.suppress(ImportError):
            docs.append(importlib.import_module(name).__doc__ or "")
    out.append((f"docstrings of {len(docs)} standard-library modules", "\n".join(docs)))
    return tuple(out)


def text_sources() -> list[str]:
    return [src for src, _ in _texts()]


@functools.lru_cache(maxsize=4)
def words(min_len: int = 2, max_len: int = 10) -> tuple[str, ...]:
    """Distinct ASCII words (letters and digits, first occurrence order) of the installed texts."""
    seen: dict[str, None] = {}
    for _, text in _texts():
        for w in re.findall(r"[A-Za-z0-9]+", text):
            if min_len <= len(w) <= max_len:
                seen.setdefault(w, None)
    return tuple(seen)


def text_lines(n: int, seed: int = 0, max_chars: int = 16, max_words: int = 3, alphabet: set | None = None
               ) -> list[str]:
    """`n` lines of 1..max_words words joined by single spaces, at most `max_chars` characters, using only
    characters in `alphabet` when given (a recogniser's dictionary)."""
    pool = [w for w in words() if alphabet is None or set(w) <= alphabet]
    if not pool:
        raise ValueError("no installed word fits the alphabet")
    rng = np.random.default_rng(seed)
    lines = []
    while len(lines) < n:
        k = int(rng.integers(1, max_words + 1))
        line = " ".join(pool[int(i)] for i in rng.integers(len(pool), size=k))
        while len(line) > max_chars and " " in line:
            line = line.rsplit(" ", 1)[0]
        if len(line) <= max_chars:
            lines.append(line)
    return lines


# ---- fonts -----------------------------------------------------------------------------------------
_SKIP_FONTS = re.compile(r"math|light|symbol|emoji|dingbat|icon", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def fonts(limit: int = 6) -> tuple[str, ...]:
    """Paths of up to `limit` text TrueType fonts (fc-list, else matplotlib's bundled ones); empty when
    neither exists (Pillow's default font is used then)."""
    paths: list[str] = []
    if shutil.which("fc-list"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listing = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=30).stdout
            paths = sorted({ln.split(":")[0].strip() for ln in listing.splitlines() if ln.strip()})
    if not paths:
        with contextlib.suppress(ImportError):
            import matplotlib

            paths = sorted(str(p) for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))
    paths = [p for p in paths if p.lower().endswith(".ttf") and not _SKIP_FONTS.search(Path(p).stem)
             and Path(p).is_file()]
    # prefer variety: regular faces first, then the others, each in name order
    paths.sort(key=lambda p: (any(s in Path(p).stem for s in ("Bold", "Oblique", "Italic", "Condensed")), p))
    return tuple(paths[:limit])


def font_names() -> list[str]:
    return [Path(p).name for p in fonts()] or ["Pillow's default font"]


def _font(index: int, size: int):
    from PIL import ImageFont

    paths = fonts()
    if not paths:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(paths[index % len(paths)], size)


# ---- rendering -------------------------------------------------------------------------------------
def render_line(text: str, font: int = 0, size: int = 32, fg=(20, 20, 20), bg: np.ndarray | tuple = (245, 245, 245),
                pad: int = 6) -> np.ndarray:
    """The text drawn on a background (a colour, or an RGB image resized to fit): uint8 RGB, tight around the
    glyphs plus `pad` pixels on every side."""
    from PIL import Image, ImageDraw

    f = _font(font, size)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=f)
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    if isinstance(bg, np.ndarray):
        canvas = Image.fromarray(_resize(bg, w, h))
    else:
        canvas = Image.new("RGB", (w, h), tuple(int(c) for c in bg))
    ImageDraw.Draw(canvas).text((pad - x0, pad - y0), text, font=f, fill=tuple(int(c) for c in fg))
    return np.asarray(canvas, dtype=np.uint8)


def _light_background(rng, shape) -> np.ndarray:
    """A photo patch washed out towards white (a real texture that keeps dark text legible)."""
    patch = photo_crops(1, shape, seed=int(rng.integers(1 << 31)), scale=(0.1, 0.3))[0].astype(np.float32)
    return (0.3 * patch + 0.7 * 255).astype(np.uint8)


def line_images(texts: list[str], seed: int = 0, size: tuple[int, int] = (28, 36)) -> list[np.ndarray]:
    """One rendered image per text (dark text on a washed-out photo patch; font and size vary with the seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, text in enumerate(texts):
        fg = tuple(int(c) for c in rng.integers(0, 70, size=3))
        bg = _light_background(rng, (48, 256))
        out.append(render_line(text, font=int(rng.integers(1 << 16)) + i, size=int(rng.integers(*size)), fg=fg, bg=bg))
    return out


def text_scenes(n: int, size: int = 320, seed: int = 0, lines: tuple[int, int] = (1, 4),
                font_size: tuple[int, int] = (16, 30)) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Photo crops with text lines pasted on (dark text on a light label, or light text on a dark one): uint8
    images [n, size, size, 3], their ground-truth text masks [n, size, size] (the pasted labels' glyph boxes)
    and the strings of each image."""
    rng = np.random.default_rng(seed)
    images = photo_crops(n, size, seed=seed + 1)
    masks = np.zeros((n, size, size), dtype=bool)
    strings: list[list[str]] = []
    for i in range(n):
        k = int(rng.integers(lines[0], lines[1] + 1))
        texts = text_lines(k, seed=int(rng.integers(1 << 31)), max_chars=18)
        placed, kept = [], []
        for text in texts:
            dark = bool(rng.integers(2))
            fg, bg = ((235, 235, 235), tuple(rng.integers(0, 60, 3))) if dark else \
                (tuple(rng.integers(0, 60, 3)), tuple(rng.integers(200, 256, 3)))
            label = render_line(text, font=int(rng.integers(1 << 16)), size=int(rng.integers(*font_size)), fg=fg,
                                bg=bg, pad=4)
            h, w = label.shape[:2]
            if w > size - 8:
                continue
            for _ in range(20):  # a place that overlaps no earlier label
                y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                if all(y + h <= py or py + ph <= y or x + w <= px or px + pw <= x for py, px, ph, pw in placed):
                    break
            else:
                continue
            placed.append((y, x, h, w))
            kept.append(text)
            images[i, y:y + h, x:x + w] = label
            masks[i, y + 4:y + h - 4, x + 4:x + w - 4] = True
        strings.append(kept)
    return images, masks, strings


def describe() -> dict:
    """What the data was built from (for a results file)."""
    return {"photos": "scikit-learn load_sample_images (china.jpg, flower.jpg)", "text": text_sources(),
            "words": len(words()), "fonts": font_names()}


__all__ = ["describe", "font_names", "fonts", "line_images", "photo_crops", "photos", "render_line", "text_lines",
           "text_scenes", "text_sources", "words"]
