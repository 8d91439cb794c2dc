"""Calibration pass: read calibration samples and accumulate what linear layers see, with ONNX Runtime.

Requires a model and calibration data in any form passes/calib_sources.py reads (an `.npz`, a folder of
`.npz`/`.npy` samples, a `loader.py[:function]` data loader, a folder of images, or from Python a dict of arrays
or an iterable of feed dicts). `load` matches it to the graph inputs: per-sample inputs are stacked on axis 0,
and an input given in the exact shape of one feed that cannot be a stack of the samples (a 0-d sample rate, an
initial recurrent state) is fed unchanged to every batch (`Calibration.constants`). Ensures, per linear layer
(Conv, Gemm or MatMul with a constant weight): per-channel sums, sums of squares and zero counts of its data
input, and, when asked, the Gram matrix of the rows the layer multiplies by its weight (the unfolded patches
of a convolution). The model runs batch by batch (a copy with the tensors as extra outputs) and only these
sums are kept, so memory is bounded by the batch and the Gram sizes, never by the number of samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx

from graphprune.core import progress as _progress
from graphprune.core.graph import GraphView, find_weight
from graphprune.core.io import tensor_array
from graphprune.core.runtime import session, with_outputs
from graphprune.errors import UsageError, first_line

from . import calib_sources, tokens
from .calib_sources import Given, InputSpec

DEFAULT_SAMPLES = 256  # calibration samples used when --calib-samples is not given
HELD_OUT_MAX = 256  # samples beyond the calibration ones kept aside for the fidelity report
ROWS_BUDGET = 1 << 16  # Gram rows per layer over the whole run (spatial positions are sampled beyond it)
BATCH_BYTES = 128 << 20  # activation bytes per batch
MAX_GRAM_DIM = 4096  # features of one Gram matrix (a wider layer gets channel statistics only)
GRAM_BUDGET = 1 << 30  # bytes of Gram matrices held at once (more layers: more passes over the samples)


# ---- calibration data ------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Calibration samples split into the ones statistics are taken on and the held-out ones, and the
    inputs fed unchanged to every batch (a scalar such as a sample rate, an initial recurrent state)."""

    train: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray] | None
    batch: int | None = None  # fixed batch size: the model's static axis 0, or 1 (sample by sample)
    rebatch: bool = False  # the model is fixed to a batch of 1 but runs batched with a free batch axis
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # fed as they are with every batch
    source: str = ""  # what was read, for the report
    token_mask: str | None = None  # the padding-mask input: statistics and re-fits skip padded rows (tokens.py)

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_held_out(self) -> int:
        return len(next(iter(self.held_out.values()))) if self.held_out else 0

    def describe(self) -> dict:
        d = {"samples": self.n_train, "held_out": self.n_held_out,
             "inputs": {k: list(v.shape[1:]) for k, v in self.train.items()}}
        if self.constants:
            d["constants"] = {k: list(v.shape) for k, v in self.constants.items()}
        if self.batch:
            d["batch"] = self.batch
        if self.source:
            d["source"] = self.source
        if self.token_mask:
            d["rows"] = f"real tokens only ({self.token_mask} = 1)"
        return d


def load(source, model: onnx.ModelProto, samples: int | None = None, *, images=None, preprocess: str | None = None,
         read_at_most: int | None = None) -> Calibration:
    """Read calibration data (`source`, and/or `images` with a `preprocess` spec for the model's image input)
    and check it against the model's graph inputs (names, shapes, dtypes); `samples` of them are used for
    statistics, up to HELD_OUT_MAX more are held out. `read_at_most` caps the samples read and used."""
    if samples is not None and samples < 1:
        raise UsageError(f"--calib-samples must be a positive integer, got {samples}")
    specs = calib_sources.input_specs(model)
    limit = read_at_most or (samples or DEFAULT_SAMPLES) + HELD_OUT_MAX
    given, read = {}, []
    if source is not None:
        got, what = calib_sources.read(source, specs, limit)
        given.update(got)
        read.append(what)
    if images is not None:
        got, what = calib_sources.from_images(images, preprocess, specs, limit)
        if set(got) & set(given):
            raise UsageError(f"--calib gives '{next(iter(got))}', the input --calib-images fills")
        given.update(got)
        read.append(what)
    try:
        _check_names(given, specs, images is not None)
        role, n = _roles(given, specs)
        constants = {k: _cast(k, given[k].one, specs[k]) for k in specs if role[k] == "constant"}
        sampled = [k for k in specs if role[k] == "samples"]
        if read_at_most is not None:
            n = min(n, read_at_most)
        out = {k: _cast(k, given[k].stacked[:n], specs[k]) for k in sampled}
    except UsageError as exc:  # say which source did not fit, as the command line wrote it
        where = " with ".join(([f"--calib {source}"] if isinstance(source, str) else [])
                              + ([f"--calib-images {images}"] if images is not None else []))
        raise UsageError(f"{where}: {exc}" if where else str(exc)) from None
    fixed_batch = next((specs[k].dims[0] for k in sampled if specs[k].dims and specs[k].dims[0] is not None), None)
    if n == 0:
        raise UsageError("calibration data has no samples")
    if samples is not None and samples > n:
        raise UsageError(f"--calib-samples {samples} asks for more samples than the calibration "
                         f"data has ({n})")
    use = samples if samples is not None else min(n, DEFAULT_SAMPLES)
    if fixed_batch is not None and fixed_batch > 1:
        use = max(fixed_batch, use - use % fixed_batch)
        if use > n:
            raise UsageError(f"the model's batch size is fixed to {fixed_batch}; the calibration data has "
                             f"only {n} samples")
    train = {k: v[:use] for k, v in out.items()}
    rest = n - use
    if fixed_batch is not None and fixed_batch > 1:
        rest -= rest % fixed_batch
    held = {k: v[use:use + min(rest, HELD_OUT_MAX)] for k, v in out.items()} if rest > 0 else None
    return Calibration(train, held, fixed_batch, constants=constants, source="; ".join(map(str, read)),
                       token_mask=tokens.mask_input(train))


def _check_names(given: dict[str, Given], specs: dict[str, InputSpec], images: bool) -> None:
    missing = [s for name, s in specs.items() if name not in given]
    if missing:
        s = missing[0]
        hint = ("; --calib-images fills one input: give the others with --calib (e.g. an .npz of values fed "
                "unchanged to every batch)") if images else ""
        raise UsageError(f"calibration data has no array for graph input '{s.name}' ({s.shown}; given: "
                         f"{', '.join(sorted(given)) or 'nothing'}){hint}")
    extra = [k for k in given if k not in specs]
    if extra:
        raise UsageError(f"calibration array '{extra[0]}' is not a graph input (given {given[extra[0]].shown}; "
                         f"the model's inputs: {', '.join(specs)})")


def _fits(shape, dims) -> bool:
    return len(shape) == len(dims) and all(d is None or d == s for d, s in zip(dims, shape))


def _roles(given: dict[str, Given], specs: dict[str, InputSpec]) -> tuple[dict[str, str], int]:
    """Per input: 'samples' (stacked on axis 0) or 'constant' (fed unchanged to every batch), and the number
    of samples. A value in the exact shape of one feed is a constant when it cannot be the stack of the
    samples: a 0-d input, or a leading size other than the sample count. The count comes from the inputs
    that can only be samples, else from those with a dynamic axis 0 (where one has a leading 1 and others
    more, that one is a single feed), else from the first input."""
    role = {}
    for name, spec in specs.items():
        g, dims = given[name], spec.dims
        if dims == []:  # a scalar input takes one value for every batch
            if g.one is None or g.one.ndim != 0:
                raise UsageError(_scalar_message(spec, g))
            role[name] = "constant"
            continue
        stacks = g.stacked is not None and (dims is None or (
            g.stacked.ndim == len(dims) and _fits(g.stacked.shape[1:], dims[1:])))
        as_is = g.one is not None and (g.one.ndim == 0 if dims is None else _fits(g.one.shape, dims))
        if not stacks and not as_is:
            raise UsageError(_shape_message(spec, g))
        role[name] = "either" if stacks and as_is else ("samples" if stacks else "constant")
    counts = {k: len(given[k].stacked) for k, r in role.items() if r == "samples"}
    if not counts:
        either = [k for k, r in role.items() if r == "either"]
        free = [k for k in either if specs[k].dims is None or specs[k].dims[0] is None]
        counts = {k: len(given[k].stacked) for k in (free or either[:1])}
        if len(set(counts.values())) > 1:  # one feed of a free-batch input (a state [1, ...]) next to samples
            most = max(counts.values())
            counts = {k: v for k, v in counts.items() if v != 1 or most == 1}
    if not counts:
        raise UsageError("calibration data has no per-sample input: every input is fed unchanged to every batch "
                         f"({', '.join(specs)}); give the samples of at least one on axis 0")
    if len(set(counts.values())) > 1:
        raise UsageError("calibration inputs have different sample counts ("
                         + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "); an input given in the model's "
                         "exact shape, the same in every feed, is fed unchanged to every batch instead")
    n = next(iter(counts.values()))
    for k, r in role.items():
        if r == "either":
            role[k] = "samples" if len(given[k].stacked) == n else "constant"
    return role, n


def _scalar_message(spec: InputSpec, g: Given) -> str:
    head = f"calibration input '{spec.name}' is a scalar in the model ({spec.shown}), fed unchanged to every batch"
    if g.one is None:
        return f"{head}, but the feeds give different values (shapes {g.shown})"
    return f"{head}; give one value (shape []), got shape {g.shown}"


def _shape_message(spec: InputSpec, g: Given) -> str:
    """Why a value is neither the samples of an input nor one feed of it (dims is known here)."""
    name, dims = spec.name, spec.dims
    if g.stacked is None and g.feeds:
        return (f"calibration feeds of input '{name}' have different shapes ({g.shown}), the model expects "
                f"{spec.shown}")
    a = g.stacked if g.stacked is not None else g.one
    rank = len(g.shapes[0])
    if a.ndim != len(dims):
        return (f"calibration input '{name}' has shape {g.shown}, of rank {rank}, the model expects rank "
                f"{len(dims)}: {spec.shown} (samples on axis 0)")
    ax = next(i for i in range(1, len(dims)) if dims[i] is not None and a.shape[i] != dims[i])
    where = f"dim {ax}" if not g.feeds or rank == len(dims) else f"dim {ax - 1}"
    return (f"calibration input '{name}' has shape {g.shown}: {where} is {a.shape[ax]}, the model expects "
            f"{dims[ax]} ({spec.shown}; samples on axis 0, or one value of that shape for every batch)")


def _cast(name: str, a: np.ndarray, spec: InputSpec) -> np.ndarray:
    want = spec.dtype
    kind = "f" if want.kind in "fV" else ("b" if want.kind == "b" else "i")
    have = "f" if a.dtype.kind == "f" else ("b" if a.dtype.kind == "b" else ("i" if a.dtype.kind in "iu" else "?"))
    if have != kind:
        raise UsageError(f"calibration input '{name}' is {a.dtype}, the model expects {want} (input {spec.shown}, "
                         f"given {a.dtype} {list(a.shape)})")
    if kind == "f" and not np.all(np.isfinite(a)):
        raise UsageError(f"calibration input '{name}' contains NaN or infinite values")
    return a.astype(want, order="C", copy=False)  # (np.ascontiguousarray would make a 0-d array 1-d)


def batches(data: dict[str, np.ndarray], size: int, constants: dict[str, np.ndarray] | None = None):
    """Feeds of `size` samples of `data` each, with the inputs fed unchanged to every batch (`constants`)."""
    n = len(next(iter(data.values())))
    extra = constants or {}
    for s in range(0, n, size):
        yield {**{k: v[s:s + size] for k, v in data.items()}, **extra}


def batch_size(calib: Calibration, per_sample_bytes: int) -> int:
    if calib.batch:
        return calib.batch
    return int(max(1, min(256, BATCH_BYTES // max(per_sample_bytes, 1))))


# ---- running the model -----------------------------------------------------------------------------
def free_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose inputs and outputs fixed to a batch of 1 take any batch (recorded shapes dropped)."""
    inits = {t.name for t in model.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in inits or not vi.type.tensor_type.shape.dim:
            continue
        d = vi.type.tensor_type.shape.dim[0]
        if d.HasField("dim_value") and d.dim_value == 1:
            d.Clear()
            d.dim_param = "graphprune_batch"
    return m


def batches_agree(batched: onnx.ModelProto, single: onnx.ModelProto, calib: Calibration) -> bool:
    """`batched` run on two calibration samples at once gives what `single` gives on each alone (with the
    constant inputs as they are): then calibration may run batches of many samples. A model that does not
    run on one sample of the data is a UsageError naming the inputs fed unchanged."""
    two = {}
    for k, v in calib.train.items():
        v = v[:2]
        if v.dtype.kind == "f" and np.array_equal(v[0], v[1]):  # identical samples would hide batch mixing
            v = np.concatenate([v[:1], v[1:] * 0.5 + 0.25]).astype(v.dtype)
        two[k] = v
    try:
        one = session(single)
    except Exception:  # noqa: BLE001 - the runner that needs it reports a model ONNX Runtime cannot load
        return False
    try:
        refs = [one.run(None, {**{k: v[i:i + 1] for k, v in two.items()}, **calib.constants}) for i in range(2)]
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's many kinds
        fed = ", ".join(f"{k} {list(v.shape)}" for k, v in calib.constants.items())
        raise UsageError("the model does not run on one calibration sample" + (f" with {fed} fed unchanged" if fed
                         else "") + f": {first_line(exc)}") from None
    try:
        got = (one if batched is single else session(batched)).run(None, {**two, **calib.constants})
    except Exception:  # noqa: BLE001 - a batch-dependent graph: keep batches of one
        return False
    for r1, r2, g in zip(refs[0], refs[1], got):
        if g.shape != (2,) + r1.shape[1:] or r1.shape[:1] != (1,) or not (
                np.allclose(g[:1], r1, rtol=1e-4, atol=1e-5) and np.allclose(g[1:], r2, rtol=1e-4, atol=1e-5)):
            return False
    return True


def prepare(calib: Calibration, model: onnx.ModelProto) -> Calibration:
    """Batches larger than a model's fixed batch of 1 where the model allows it; batches of one (sample by
    sample, still one session per pass) where inputs fed unchanged keep a free-batch model from batching."""
    if calib.n_train < 2:
        return calib
    if calib.batch == 1 and batches_agree(free_batch(model), model, calib):
        calib.batch, calib.rebatch = None, True
    elif calib.batch is None and calib.constants and not batches_agree(model, model, calib):
        calib.batch = 1
    return calib


def session_for(model: onnx.ModelProto, calib: Calibration | None):
    return session(free_batch(model) if calib is not None and calib.rebatch else model)


class Probe:
    """An ONNX Runtime session of a copy of `model` that also returns the given intermediate tensors."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str], calib: Calibration | None = None):
        self.tensors = list(dict.fromkeys(tensors))
        self.sess = session_for(with_outputs(model, self.tensors), calib)

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        vals = self.sess.run(self.tensors, feeds)
        return dict(zip(self.tensors, vals))


def progress(description: str, total: int):
    """The CLI's progress bar (graphprune.progress: a terminal only, never the API); yields advance()."""
    return _progress.step(description, total)


# ---- linear layers ---------------------------------------------------------------------------------
def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class LinearLayer:
    """A node computing rows @ W + b: Conv (unfolded patches), Gemm or MatMul with a constant weight.

    `rows(x)` gives the rows it multiplies, [n, G, d] per convolution group; `wmat(W)` the weight as
    [G, d, o]; `targets(y)` the outputs as [n, G, o] on the same rows. Built from the node alone, so the
    same description reads the original and the pruned model.
    """

    op: str
    x: str
    w: str
    b: str
    y: str
    x_axis: int  # channel axis of x
    groups: int = 1
    kernel: tuple = ()
    strides: tuple = ()
    pads: tuple = ()
    dilations: tuple = ()
    auto_pad: str = "NOTSET"
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    w_shape: tuple = ()  # the weight's dims as the layer reads it

    @staticmethod
    def from_node(node: onnx.NodeProto, w_shape, x_rank) -> LinearLayer | None:
        layer = LinearLayer._from_node(node, w_shape, x_rank)
        return None if layer is None else dataclasses.replace(layer, w_shape=tuple(int(d) for d in w_shape))

    @staticmethod
    def _from_node(node: onnx.NodeProto, w_shape, x_rank) -> LinearLayer | None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or w_shape is None or x_rank is None:
            return None
        ins = list(node.input) + ["", "", ""]
        if op == "Conv":
            k = len(w_shape) - 2
            if k < 1 or x_rank != k + 2:
                return None
            return LinearLayer(
                "Conv", ins[0], ins[1], ins[2], node.output[0], 1, int(_attr(node, "group", 1)),
                tuple(int(v) for v in w_shape[2:]), tuple(_attr(node, "strides", None) or [1] * k),
                tuple(_attr(node, "pads", None) or [0] * (2 * k)),
                tuple(_attr(node, "dilations", None) or [1] * k),
                _as_str(_attr(node, "auto_pad", "NOTSET")))
        if op == "Gemm":
            if _attr(node, "transA", 0) or len(w_shape) != 2 or x_rank != 2:
                return None
            return LinearLayer("Gemm", ins[0], ins[1], ins[2], node.output[0], 1,
                               trans_b=bool(_attr(node, "transB", 0)), alpha=float(_attr(node, "alpha", 1.0)),
                               beta=float(_attr(node, "beta", 1.0)))
        if op == "MatMul":
            if len(w_shape) != 2 or x_rank < 2:
                return None
            return LinearLayer("MatMul", ins[0], ins[1], "", node.output[0], x_rank - 1)
        return None

    # -- weights --
    def wmat(self, w: np.ndarray) -> np.ndarray:
        """Weight as [G, d, o]."""
        if self.op == "Conv":
            g = self.groups
            o = w.shape[0] // g
            return np.stack([w[i * o:(i + 1) * o].reshape(o, -1).T for i in range(g)])
        m = w.T if self.trans_b else w
        return (m * self.alpha)[None]

    def from_wmat(self, m: np.ndarray, shape) -> np.ndarray:
        if self.op == "Conv":
            g = self.groups
            return np.concatenate([m[i].T.reshape((shape[0] // g,) + tuple(shape[1:])) for i in range(g)])
        w = m[0] / self.alpha
        return w.T if self.trans_b else w

    def in_features(self, w_shape) -> int:
        """Input channels per group (rows of wmat per channel: prod(kernel))."""
        if self.op == "Conv":
            return int(w_shape[1])
        return int(w_shape[1] if self.trans_b else w_shape[0])

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel)) if self.op == "Conv" else 1

    # -- activations --
    def _conv_geometry(self, x_shape):
        k = len(self.kernel)
        spatial = x_shape[2:]
        pads = list(self.pads)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * k)
            for i in range(k):
                out = -(-spatial[i] // self.strides[i])
                ext = (self.kernel[i] - 1) * self.dilations[i] + 1
                total = max(0, (out - 1) * self.strides[i] + ext - spatial[i])
                small, big = total // 2, total - total // 2
                pads[i], pads[i + k] = (small, big) if self.auto_pad == "SAME_UPPER" else (big, small)
        elif self.auto_pad == "VALID":
            pads = [0] * (2 * k)
        outs = [(spatial[i] + pads[i] + pads[i + k] - ((self.kernel[i] - 1) * self.dilations[i] + 1))
                // self.strides[i] + 1 for i in range(k)]
        return pads, outs

    def positions(self, x_shape) -> int:
        """Rows per sample."""
        if self.op == "Conv":
            return int(np.prod(self._conv_geometry(x_shape)[1]))
        return int(np.prod(x_shape[1:-1])) if len(x_shape) > 2 else 1

    def rows(self, x: np.ndarray, pick: np.ndarray | None = None) -> np.ndarray:
        """[n, G, d] rows (all positions, or the flat position indices `pick`)."""
        if self.op != "Conv":
            r = x.reshape(-1, x.shape[-1])
            return (r if pick is None else r[pick])[:, None, :]
        k = len(self.kernel)
        pads, outs = self._conv_geometry(x.shape)
        xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + k]) for i in range(k)])
        n_pos = int(np.prod(outs))
        flat = np.arange(x.shape[0] * n_pos) if pick is None else pick
        b = flat // n_pos
        coords = np.unravel_index(flat % n_pos, outs)
        taps = []
        for off in np.ndindex(*self.kernel):
            idx = tuple(coords[i] * self.strides[i] + off[i] * self.dilations[i] for i in range(k))
            taps.append(_gather(xp, b, idx))
        r = np.stack(taps, axis=-1)  # [n, C, K]
        c = x.shape[1]
        return r.reshape(len(flat), self.groups, (c // self.groups) * len(taps))

    def targets(self, y: np.ndarray, pick: np.ndarray | None = None) -> np.ndarray:
        """Outputs as [n, G, o] on the rows of `rows`."""
        if self.op == "Conv":
            yt = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        else:
            yt = y.reshape(-1, y.shape[-1])
        yt = yt if pick is None else yt[pick]
        return yt.reshape(len(yt), self.groups, -1)


def _gather(xp: np.ndarray, b: np.ndarray, idx: tuple) -> np.ndarray:
    """xp[b[i], :, idx[0][i], idx[1][i], ...] for every i, as [n, C]."""
    moved = np.moveaxis(xp, 1, -1)  # [B, *spatial, C]
    return moved[(b,) + idx]


def _as_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def linear_layers(model: onnx.ModelProto, shapes: dict[str, list],
                  skipped: dict[str, str] | None = None) -> dict[str, LinearLayer]:
    """Linear layers of a model by output name: Conv, Gemm and MatMul whose weight is stored (an initializer
    or a Constant node, seen through the ops core.graph.find_weight follows). Layers left out because their
    weight is computed at run time are filed in `skipped` (output name -> reason) when it is given."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output if o}
    out = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[0] in inits or find_weight(node.input[0], producer.get, inits) is not None:
            continue  # a constant times a weight-like input: not a layer of the model's activations
        w_shape = _weight_shape(node.input[1], inits, producer, shapes)
        if w_shape is None:
            if skipped is not None:
                skipped[node.output[0]] = "its weight is computed at run time, not stored"
            continue
        xs = shapes.get(node.input[0])
        layer = LinearLayer.from_node(node, w_shape, None if xs is None else len(xs))
        if layer is not None:
            out[node.output[0]] = layer
        elif skipped is not None:
            skipped[node.output[0]] = "its input rank or weight layout is not one the statistics read"
    return out


def _weight_shape(name: str, inits: dict, producer: dict, shapes: dict) -> list | None:
    """Dims of a stored weight as its layer reads it (through Transpose/Reshape/Cast/DequantizeLinear)."""
    if name in inits:
        return list(inits[name].dims)
    sw = find_weight(name, producer.get, inits)
    if sw is None:
        return None
    known = shapes.get(name)
    if known and all(isinstance(d, int) for d in known):
        return list(known)

    def const(t):
        if t in inits:
            return np.asarray(tensor_array(inits[t]))
        return GraphView.const_value_of_constant_node(producer[t])

    try:
        return list(sw.values(const)[-1].shape)
    except Exception:  # noqa: BLE001 - a path whose shapes do not fit (a broken model): not a weight we can read
        return None


def consumer_layers(analysis, skipped: dict[str, str] | None = None) -> dict[str, LinearLayer]:
    """Linear layers that read a prunable group's channels (where statistics matter), by output name; those
    whose statistics cannot be taken are filed in `skipped` with the reason, when it is given."""
    view = analysis.view
    spaces = {s for g in analysis.prunable for s in g.spaces}
    wanted = {view.nodes[r.node].output[0] for r in analysis.roles
              if r.kind == "consumer" and r.weight and r.space in spaces}
    shapes = {n.input[0]: view.shape(n.input[0]) for n in view.nodes if n.input and n.output[0] in wanted}
    shapes |= {n.input[1]: view.shape(n.input[1]) for n in view.nodes
               if len(n.input) > 1 and n.output[0] in wanted}
    found: dict[str, str] = {}
    layers = {y: layer for y, layer in linear_layers(view.model, shapes, found).items() if y in wanted}
    if skipped is not None:
        skipped.update({y: why for y, why in found.items() if y in wanted})
        for y in wanted:
            if y not in layers and y not in skipped:
                skipped[y] = "it is not a Conv, Gemm or MatMul the statistics read"
    return layers


# ---- statistics ------------------------------------------------------------------------------------
@dataclass
class InputStats:
    """What one linear layer reads over the calibration samples."""

    layer: LinearLayer
    channels: int
    count: int = 0  # values per channel seen
    sum: np.ndarray | None = None  # [C]
    sumsq: np.ndarray | None = None  # [C]
    zeros: np.ndarray | None = None  # [C] values with |x| <= 1e-7 (dead after ReLU)
    gram: np.ndarray | None = None  # [G, d, d] sum of rows^T rows
    rsum: np.ndarray | None = None  # [G, d] sum of rows
    rows: int = 0
    estimated: bool = False  # from BatchNorm statistics, not data
    _moments: Moments | None = field(default=None, repr=False)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def meansq(self) -> np.ndarray:
        return self.sumsq / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.meansq - self.mean ** 2, 0.0)

    @property
    def dead_rate(self) -> np.ndarray:
        return self.zeros / max(self.count, 1)

    def add(self, x: np.ndarray | None, rows: np.ndarray | None, valid: np.ndarray | None = None) -> None:
        """Add a batch: its values per channel (`valid`: only those rows of a last-axis channel input count) and
        its Gram rows."""
        if x is not None:
            if valid is not None and self.layer.x_axis == x.ndim - 1 and valid.size * x.shape[-1] == x.size:
                x = x.reshape(-1, x.shape[-1])[valid]
            self._add_channels(x)
        if rows is not None:
            if self._moments is None:
                self._moments = Moments()
            self._moments.add(rows)

    def finish(self) -> None:
        """Put the Gram sums accumulated by `add` into gram, rsum and rows."""
        m = self._moments
        if m is not None and m.n:
            self.gram, self.rsum, self.rows = m.xx(), m.sx, m.n

    def _add_channels(self, x: np.ndarray) -> None:
        ax = min(self.layer.x_axis, x.ndim - 1)
        red = tuple(i for i in range(x.ndim) if i != ax)
        # float64 sums without a float64 copy of the activation (numpy casts chunk by chunk)
        s, ss = x.sum(axis=red, dtype=np.float64), np.square(x).sum(axis=red, dtype=np.float64)
        z = (np.abs(x) <= 1e-7).sum(axis=red)
        if self.sum is None:
            self.sum, self.sumsq, self.zeros = s, ss, z.astype(np.float64)
        else:
            self.sum += s
            self.sumsq += ss
            self.zeros += z
        self.count += x.size // x.shape[ax]


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_n a[n, g, :]^T b[n, g, :] per group: [G, d, e] (batched BLAS, not einsum), in the inputs' dtype."""
    if a.shape[1] == 1:
        a2 = np.ascontiguousarray(a[:, 0])
        b2 = a2 if b is a else np.ascontiguousarray(b[:, 0])
        return (a2.T @ b2)[None]  # a2.T @ a2 is one BLAS syrk
    at = np.ascontiguousarray(a.transpose(1, 2, 0))  # matmul takes the BLAS path on contiguous stacks only
    bt = np.ascontiguousarray(b.transpose(1, 0, 2))
    return np.matmul(at, bt)


F32_MIN_MACS = 1 << 24  # batch products of at least this many multiply-adds run in float32


class Moments:
    """Sums over batches of rows x [n, G, d] and, when given, targets t [n, G, e]: sum x, sum t, x^T x and
    x^T t per group (float64).

    A large batch product runs in float32 (BLAS sgemm: twice the speed of float64) and is added to float64
    sums; both sides are shifted first by their first batch's mean, so that float32 rounds the centred
    products (the spread least squares and the OBS inverse read), not the means, and the shift is put back
    exactly from the float64 column sums. Products under F32_MIN_MACS multiply-adds stay in float64."""

    def __init__(self):
        self.n = 0
        self.sx = self.st = None  # [G, d], [G, e]
        self._xx = self._xt = None  # centred sums
        self._s = self._u = None  # the shifts (float32 values, held as float64)

    def add(self, x: np.ndarray, t: np.ndarray | None = None, w: np.ndarray | None = None) -> None:
        """Add rows x (and targets t), each row counted with weight w[i] (1 without w)."""
        if self._s is None:
            self._s = x.mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float64)
            if t is not None:
                self._u = t.mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float64)
        n, _, d = x.shape
        dt = np.float32 if n * d * max(d, t.shape[2] if t is not None else 0) >= F32_MIN_MACS else np.float64
        xc = x.astype(dt) - self._s.astype(dt)
        wc = None if w is None else np.asarray(w, dtype=np.float64)[:, None, None]
        root = None if w is None else np.sqrt(wc).astype(dt)  # sqrt(w) on both sides: x^T x stays one syrk
        xw = xc if w is None else xc * root
        self.sx = _plus(self.sx, (x if w is None else x * wc).sum(axis=0, dtype=np.float64))
        self._xx = _plus(self._xx, cross(xw, xw))
        if t is not None:
            tc = t.astype(dt) - self._u.astype(dt)
            self.st = _plus(self.st, (t if w is None else t * wc).sum(axis=0, dtype=np.float64))
            self._xt = _plus(self._xt, cross(xw, tc if w is None else tc * root))
        self.n += n if w is None else float(np.sum(w, dtype=np.float64))

    def xx(self) -> np.ndarray:
        """sum x^T x, [G, d, d]: sum (x-s)^T (x-s) + s^T sum x + (sum x)^T s - n s^T s."""
        s, sx = self._s, self.sx
        return self._xx + np.stack([s, sx], axis=2) @ np.stack([sx - self.n * s, s], axis=1)  # one rank-2 product

    def xt(self) -> np.ndarray:
        """sum x^T t, [G, d, e]."""
        s, u = self._s, self._u
        return self._xt + np.stack([s, self.sx - self.n * s], axis=2) @ np.stack([self.st, u], axis=1)


def _plus(total, value):
    """total + value in float64 (the first value is copied into a new float64 array)."""
    if total is None:
        return value.astype(np.float64)
    total += value
    return total


def row_pick(layer: LinearLayer, x_shape, n_total: int, rng: np.random.Generator,
             valid: np.ndarray | None = None) -> np.ndarray | None:
    """Rows to use for Gram statistics of one batch: all, or a random subset keeping the run within
    ROWS_BUDGET rows per layer; with `valid` (tokens.valid_rows) only those rows. (Fewer rows for narrow
    layers, 16 per Gram feature, saved 20 % of a YOLO prune's time but raised small CNNs' output error by
    3-12 % with 24 samples: not done.)"""
    per = layer.positions(x_shape)
    cap = max(16, ROWS_BUDGET // max(n_total, 1))
    if valid is not None:
        if valid.size != x_shape[0] * per:
            valid = None
        elif per <= cap:
            return np.flatnonzero(valid)
    if per <= cap:
        return None
    b = x_shape[0]
    picks = []
    for i in range(b):
        where = np.arange(per) if valid is None else np.flatnonzero(valid[i * per:(i + 1) * per])
        picks.append(i * per + (where if len(where) <= cap else rng.choice(where, cap, replace=False)))
    return np.sort(np.concatenate(picks))


def sample_bytes(layers: dict[str, LinearLayer], shapes: dict, gram, n_total: int, outputs: bool = False) -> int:
    """Bytes one sample adds to a batch: the layers' inputs (and, with `outputs`, their outputs) as float32,
    and the Gram rows of the largest layer in `gram` (rows are made one layer at a time: float32 rows and
    their centred copy). Shapes are the analysis' (batch 1); an unknown one counts as 4096 values."""
    tensors, rows = {}, 0
    for y, layer in layers.items():
        xs = shapes.get(layer.x)
        tensors[layer.x] = int(np.prod([d or 1 for d in xs[1:]])) if xs else 1 << 12
        if outputs:
            ys = shapes.get(y)
            tensors[y] = int(np.prod([d or 1 for d in ys[1:]])) if ys else 1 << 12
        if y in gram:
            if xs:
                one = [1] + [d or 1 for d in xs[1:]]
                per = min(layer.positions(one), max(16, ROWS_BUDGET // max(n_total, 1)))
                rows = max(rows, 8 * per * one[layer.x_axis] * layer.taps)
            else:
                rows = max(rows, 8 * layer.taps << 12)
    return 4 * sum(tensors.values()) + rows


def gram_fits(layer: LinearLayer, w_shape) -> bool:
    return layer.in_features(w_shape) * layer.taps <= MAX_GRAM_DIM


def gram_bytes(layer: LinearLayer, w_shape) -> int:
    """Bytes of a layer's Gram matrices (float64, all groups)."""
    d = layer.in_features(w_shape) * layer.taps + 1
    groups = layer.groups if layer.op == "Conv" else 1
    return 8 * d * d * groups


def by_budget(items: list, size, budget: int | None = None) -> list[list]:
    """Consecutive chunks of `items` whose sizes add up to at most `budget` (GRAM_BUDGET; one item at
    least)."""
    budget = GRAM_BUDGET if budget is None else budget
    out, cur, used = [], [], 0
    for it in items:
        b = size(it)
        if cur and used + b > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(it)
        used += b
    return out + ([cur] if cur else [])


def collect(model: onnx.ModelProto, layers: dict[str, LinearLayer], calib: Calibration,
            gram: set[str] | None = None, shapes: dict | None = None, seed: int = 0) -> dict[str, InputStats]:
    """InputStats for each layer (keyed by output name), with Gram matrices for the layers named in
    `gram`: one pass over the calibration samples, or more when the Gram matrices together would exceed
    GRAM_BUDGET (each pass then holds only some of them)."""
    gram = [y for y in layers if y in (gram or set()) and gram_fits(layers[y], list(layers[y].w_shape))]
    chunks = by_budget(gram, lambda y: gram_bytes(layers[y], list(layers[y].w_shape))) or [[]]
    stats: dict[str, InputStats] = {}
    for i, chunk in enumerate(chunks):
        todo = layers if i == 0 else {y: layers[y] for y in chunk}
        label = "calibration statistics: samples" + (f" (pass {i + 1} of {len(chunks)})" if len(chunks) > 1 else "")
        _collect_pass(model, todo, calib, set(chunk), shapes, seed, stats, i == 0, label)
    return stats


def _collect_pass(model, layers, calib, gram, shapes, seed, stats, channels: bool, label: str) -> None:
    tensors = sorted({layer.x for layer in layers.values()})
    if not tensors:
        return
    bs = batch_size(calib, sample_bytes(layers, shapes or {}, gram, calib.n_train))
    probe = Probe(model, tensors, calib)
    rng = np.random.default_rng(seed)
    n = calib.n_train
    with progress(label, n) as advance:
        for feeds in batches(calib.train, bs, calib.constants):
            acts = probe.run(feeds)
            for y, layer in layers.items():
                x = acts[layer.x]
                st = stats.get(y)
                if st is None:
                    st = stats[y] = InputStats(layer, x.shape[layer.x_axis])
                valid = tokens.valid_rows(x.shape, feeds, calib.token_mask)
                rows = layer.rows(x, row_pick(layer, x.shape, n, rng, valid)) if y in gram else None
                st.add(x if channels else None, rows, valid)
            advance(len(next(iter(feeds.values()))))
    for y in layers:
        stats[y].finish()


__all__ = ["Calibration", "InputStats", "LinearLayer", "Moments", "Probe", "batches", "collect", "linear_layers", "load",
           "progress"]
