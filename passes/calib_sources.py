"""Where calibration data comes from, read into one value per graph input (`Given`).

The forms: an `.npz` of arrays keyed by input name (samples on axis 0); a folder of `.npz` / `.npy` files,
one sample each, sorted by file name (`.npy` only for a single-input model); a Python data loader in
polygraphy's convention, `loader.py` (its `load_data()`) or `loader.py:function`, returning an iterable of
feed dicts; a folder of images (passes/images.py); and, from Python, a dict of arrays, an iterable of feed
dicts or a function returning either. calibration.load matches what is read to the model's inputs (samples
or values fed unchanged to every batch). At most `limit` feeds, files or images are read, so an endless
generator or a huge folder costs only what calibration uses.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from graphprune.errors import UsageError, first_line

from . import images

LOADER_FUNCTION = "load_data"  # polygraphy's default data-loader function name


@dataclass(frozen=True)
class InputSpec:
    """A graph input: dtype, dims (None where dynamic; None for an unknown rank) and its shape as text."""

    name: str
    dtype: np.dtype
    dims: list | None
    shown: str  # e.g. float32 [N, 3, 224, 224]


def input_specs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """The model's graph inputs that are not initializers, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        dims, text = None, "[unknown shape]"
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
            text = "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                                   else (d.dim_param or "?") for d in tt.shape.dim) + "]"
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        specs[vi.name] = InputSpec(vi.name, dtype, dims, f"{dtype} {text}")
    return specs


@dataclass
class Given:
    """What a source gave for one input: the samples stacked on axis 0 (None when the feeds' values do not
    stack), and the value as one feed (the array given, or the value every feed gave alike; else None)."""

    stacked: np.ndarray | None
    one: np.ndarray | None
    shapes: tuple  # the distinct shapes given, for messages
    feeds: int = 0  # how many feed dicts it came from (0: one array of samples)

    @property
    def shown(self) -> str:
        text = " and ".join(str(list(s)) for s in self.shapes[:2]) + (" ..." if len(self.shapes) > 2 else "")
        return text + (" in each feed" if self.feeds and len(self.shapes) == 1 else "")


def read(source, specs: dict[str, InputSpec], limit: int) -> tuple[dict[str, Given], str]:
    """The values `source` gives per input name, and a line saying what was read."""
    what = source if isinstance(source, str) else ("dict of arrays" if isinstance(source, dict) else
                                                   f"{type(source).__name__} of feed dicts")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        loader = _loader_target(source)
        if loader is not None:
            data = _call_loader(source, *loader)
            return _from_python(data, specs, limit, f"--calib {source}"), f"data loader {source}"
        path = Path(source)
        if path.is_dir():
            return _folder(path, specs, limit)
        if not path.is_file():
            raise UsageError(f"--calib {source}: no such file or folder")
        if path.suffix.lower() == ".npy":
            raise UsageError(f"--calib {source}: a single .npy file is not a calibration source; use an .npz "
                             "(samples on axis 0) or a folder of .npy files (one sample each)")
        return _arrays(_npz(path, f"--calib {source}"), "--calib"), f"{source}"
    return _from_python(source, specs, limit, "calib"), what


def from_images(folder, spec: str | None, specs: dict[str, InputSpec], limit: int) -> tuple[dict[str, Given], str]:
    """`--calib-images DIR`: the samples of the model's one image input (a 4-D float input)."""
    pre = images.parse_preprocess(spec)
    target = [s for s in specs.values() if s.dims is not None and len(s.dims) == 4 and s.dtype.kind == "f"]
    if len(target) != 1:
        found = ", ".join(f"'{s.name}' {s.shown}" for s in specs.values())
        raise UsageError(f"--calib-images needs exactly one 4-D float input to fill, the model has "
                         f"{len(target)} (inputs: {found})")
    t = target[0]
    a, what = images.read_images(folder, pre, t.name, t.dims, t.shown, limit)
    return {t.name: Given(a, a, (a.shape,))}, what


# ---- files ----------------------------------------------------------------------------------------------
def _npz(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise UsageError(f"{where}: not an .npz archive (save it with numpy.savez)")
            return {k: z[k] for k in z.files}
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"{where}: not a readable .npz archive ({type(exc).__name__})") from None


def _folder(path: Path, specs: dict[str, InputSpec], limit: int) -> tuple[dict[str, Given], str]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".npz", ".npy"))
    if not files:
        raise UsageError(f"--calib {path}: no .npz or .npy files in it (one sample each)")
    others = sum(1 for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) - len(files)
    feeds = []
    for f in files[:limit]:
        where = f"--calib {path}: {f.name}"
        if f.suffix.lower() == ".npz":
            feeds.append(_npz(f, where))
            continue
        if len(specs) != 1:
            raise UsageError(f"{where} is a bare array, which only a single-input model takes (inputs: "
                             f"{', '.join(specs)}); save .npz files keyed by input name")
        try:
            feeds.append({next(iter(specs)): np.load(f, allow_pickle=False)})
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"{where}: not a readable .npy file ({type(exc).__name__})") from None
    what = f"{len(feeds)} of {len(files)} files in {path}" + (f" ({others} other files ignored)" if others > 0 else "")
    return _feeds(feeds, specs, f"--calib {path}"), what


# ---- Python data loaders ----------------------------------------------------------------------------------
def _loader_target(text: str) -> tuple[str, str] | None:
    """(path, function) of `loader.py` or `loader.py:function`; None for any other path."""
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith(".py"):
        return head, tail
    if text.lower().endswith(".py"):
        return text, LOADER_FUNCTION
    return None


def _call_loader(text: str, path_text: str, function: str):
    """Import the loader file by its path and call `function()`; any failure is one UsageError line."""
    path = Path(path_text)
    if not function.isidentifier():
        raise UsageError(f"--calib {text}: '{function}' is not a function name (loader.py:function)")
    if not path.is_file():
        raise UsageError(f"--calib {text}: no such file {path_text}")
    name = f"graphprune_calib_loader_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--calib {text}: {path.name} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # a loader may import the modules next to it
    sys.modules[name] = module
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: its error, in one line
            raise UsageError(f"--calib {text}: importing {path.name} raised {_why(exc)}") from None
        fn = getattr(module, function, None)
        if fn is None:
            defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                             and getattr(v, "__module__", None) == name)
            raise UsageError(f"--calib {text}: {path.name} defines no '{function}' "
                             f"(its functions: {', '.join(defined) or 'none'})")
        if not callable(fn):
            raise UsageError(f"--calib {text}: '{function}' in {path.name} is a {type(fn).__name__}, not a function")
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"--calib {text}: {function}() raised {_why(exc)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


# ---- Python objects ---------------------------------------------------------------------------------------
def _from_python(data, specs: dict[str, InputSpec], limit: int, where: str) -> dict[str, Given]:
    if callable(data) and not isinstance(data, (dict, Iterable)):
        try:
            data = data()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"{where}: calling the data loader raised {_why(exc)}") from None
    if isinstance(data, dict):
        return _arrays(data, where)
    if isinstance(data, (str, bytes, np.ndarray)) or not isinstance(data, Iterable):
        raise UsageError(f"{where} must be an .npz path, a folder, a loader.py[:function], a dict of arrays or "
                         f"an iterable of feed dicts, got {type(data).__name__}")
    feeds, seen = [], 0
    try:
        for feed in data:
            if not isinstance(feed, dict):
                raise UsageError(f"{where}: the data must yield feed dicts ({{input name: array}}), got "
                                 f"{type(feed).__name__}")
            feeds.append(feed)
            seen += _samples_at_least(feed, specs)
            if seen >= limit:
                break
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a generator's own error
        raise UsageError(f"{where}: iterating the data raised {_why(exc)}") from None
    if not feeds:
        raise UsageError(f"{where}: the data yields no feed dicts")
    return _feeds(feeds, specs, where)


def _samples_at_least(feed: dict, specs: dict[str, InputSpec]) -> int:
    """A lower bound of the samples in one feed: the least over its inputs of 1 (given without the batch axis)
    or the leading size (an input fed unchanged may have any leading size). Reading stops once `limit`
    samples are certainly in, never before."""
    counts = []
    for k, v in feed.items():
        spec, shape = specs.get(k), np.shape(v)
        if spec is not None and spec.dims:
            counts.append(shape[0] if len(shape) == len(spec.dims) else 1)
    return max(1, min(counts, default=1))


def _array(where: str, name: str, value) -> np.ndarray:
    try:
        a = np.asarray(value)
    except Exception:  # noqa: BLE001
        a = None
    if a is None or a.dtype == object:
        raise UsageError(f"{where}: calibration input '{name}' is not an array ({type(value).__name__})")
    return a


def _arrays(data: dict, where: str) -> dict[str, Given]:
    out = {}
    for k, v in data.items():
        a = _array(where, k, v)
        out[k] = Given(a if a.ndim else None, a, (a.shape,))
    return out


def _feeds(feeds: list[dict], specs: dict[str, InputSpec], where: str) -> dict[str, Given]:
    """Feed dicts (one batch, or one sample without its batch axis, each) as one Given per input."""
    keys = list(feeds[0])
    for f in feeds[1:]:
        if set(f) != set(keys):
            raise UsageError("calibration feed dicts name different inputs "
                             f"({', '.join(sorted(keys))} vs {', '.join(sorted(f))})")
    out = {}
    for k in keys:
        parts = [_array(where, k, f[k]) for f in feeds]
        spec = specs.get(k)
        rank = None if spec is None or spec.dims is None else len(spec.dims)
        stack = [p[None] if rank is not None and p.ndim == rank - 1 else p for p in parts]
        stacked = None
        if all(p.ndim >= 1 for p in stack) and len({p.shape[1:] for p in stack}) == 1:
            stacked = stack[0] if len(stack) == 1 else np.concatenate(stack, axis=0)
        first = parts[0]
        same = all(p.shape == first.shape and np.array_equal(p, first) for p in parts[1:])
        shapes = tuple(dict.fromkeys(p.shape for p in parts))
        out[k] = Given(stacked, first if same else None, shapes, len(parts))
    return out


__all__ = ["Given", "InputSpec", "from_images", "input_specs", "read"]
