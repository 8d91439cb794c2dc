"""Compensation pass: new weights for the pruned model so its layers reproduce the original's outputs.

Requires the original model, its structural rewrite (same tensor names, sliced weights), the removed units
and calibration samples. Ensures the pruned model's linear layers (Conv, Gemm, MatMul with a stored
weight) are re-fit, layer by layer in topological order, from what the *pruned* model feeds them to what
the *original* layer produced on the same samples:

- bias: the mean output difference goes into the layer's bias (the mean contribution of the removed
  channels; a bias input is added where the layer has none),
- lstsq: the kept weights and the bias are re-fit by ridge-regularised least squares (convolutions through
  the Gram matrix of their unfolded input patches), pulled toward the pruned weights with a strength chosen
  on held-out samples (passes/ridge.py); a layer whose output goes straight into a residual Add is fit to
  the original block output (the Add's), so it also takes up what earlier pruned layers left in the stream;
  where a LayerNorm reads that block output, each row (token) counts by 1 / its variance there, the weight
  the LayerNorm gives its error (MiniLM 30 %: embedding cosine 0.911 -> 0.913),
- stats: each output channel's mean and standard deviation are matched to the original's (what BatchNorm
  recalibration does, for layers whose BatchNorm was folded away).

`all` re-fits every layer whose inputs lost channels (lstsq), then every layer downstream of a change
(lstsq, grouped and depthwise convolutions per group). Layers are processed in waves: a wave holds the
layers whose inputs no longer change. Both models run forward step by step over fixed batches
(core/stepwise.py): a wave's step computes only the nodes its layers' inputs (pruned model) and outputs
(original) need that no earlier step ran, so every node runs once over the samples, not once per wave.
Without calibration data, `bias` uses the expected activations BatchNorm statistics give. With a padding mask
among the inputs, only the rows of real tokens are fit (passes/tokens.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.core.graph import GraphView, StoredWeight, find_weight
from graphprune.core.io import tensor_array
from graphprune.core.stepwise import Stepwise
from graphprune.errors import UsageError

from . import tokens
from .calibration import (
    Calibration,
    LinearLayer,
    Moments,
    batch_size,
    batches,
    by_budget,
    gram_bytes,
    gram_fits,
    linear_layers,
    progress,
    row_pick,
    sample_bytes,
    session_for,
)
from .choices import MODES  # noqa: F401 - the accepted values, re-exported
from .ridge import fit as ridge_fit

RIDGE = None  # None: chosen per layer on held-out samples (passes/ridge.py); a number: relative to the input variance
NORM_WEIGHTS = True  # rows of a block output that a LayerNorm reads count by 1 / their variance (what LN leaves)
LN_EPS = 1e-5
DRIFTED = "lstsq"  # what `all` does to a layer whose inputs changed but lost no channel: lstsq or stats
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def resolve(mode: str, have_data: bool, have_estimates: bool = False) -> str:
    """What `auto` stands for: `all` with calibration data; without it, `bias` from BatchNorm statistics
    where the model has them (data-free), else `none`."""
    if mode != "auto":
        return mode
    return "all" if have_data else ("bias" if have_estimates else "none")


class _Model:
    """Editing helpers over the pruned model: nodes by output, readers, and its weights wherever they are
    stored (initializers or Constant nodes, through the ops core.graph.find_weight follows)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.node_of = {n.output[0]: n for n in model.graph.node if n.output}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for t in n.input:
                if t:
                    self.readers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in model.graph.output}
        self.added = 0

    def weight(self, name: str) -> StoredWeight | None:
        return find_weight(name, self.producer.get, self.inits)

    def _const(self, name: str) -> np.ndarray:
        if name in self.inits:
            return np.asarray(tensor_array(self.inits[name]))
        return GraphView.const_value_of_constant_node(self.producer[name])

    def value(self, name: str) -> np.ndarray:
        """The weight as its layer reads it (lazy, memory-mapped initializers too)."""
        if name in self.inits:
            return np.asarray(tensor_array(self.inits[name]))
        return self.weight(name).values(self._const)[-1]

    def dims(self, name: str) -> list[int]:
        if name in self.inits:
            return list(self.inits[name].dims)
        return list(self.value(name).shape)

    def why_not_writable(self, name: str) -> str | None:
        """Why a re-fit value cannot be written where the weight `name` is stored (None: it can)."""
        sw = self.weight(name)
        if sw is None:
            return "its weight is computed at run time, not stored"
        if sw.quantized:
            return "its weight is quantized (DequantizeLinear); a re-fit would need re-quantizing"
        if sw.stored_dtype() not in _FLOAT_TYPES:
            return "its weight is not stored as float"
        try:
            self.value(name)
        except Exception:  # noqa: BLE001 - the stored value does not evaluate to what the layer reads
            return "its stored weight does not evaluate through the ops before the layer"
        chain = [sw.stored] + [n.output[0] for n in sw.path]
        if any(len(self.readers.get(t, [])) != 1 or t in self.outputs for t in chain):
            return "its weight is shared with another layer"
        return None

    def writable(self, name: str) -> bool:
        return self.why_not_writable(name) is None

    def write(self, name: str, value: np.ndarray) -> None:
        """Store `value` (as the layer reads it) back where the weight lives, in its stored dtype and layout."""
        if name in self.inits:
            t = self.inits[name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
            return
        sw = self.weight(name)
        sw.write(sw.invert(value, sw.values(self._const)))

    def new_init(self, base: str, value: np.ndarray) -> str:
        name = f"{base}__graphprune_bias"
        while name in self.inits:
            self.added += 1
            name = f"{base}__graphprune_bias{self.added}"
        t = numpy_helper.from_array(value, name)
        self.model.graph.initializer.append(t)
        self.inits[name] = self.model.graph.initializer[-1]
        self.readers.setdefault(name, [])
        return name


class _Bias:
    """Where a layer's bias lives (its own input, or the constant of the Add after a MatMul) and how to
    write it; `get()` is the bias the layer's output already includes (zero for a MatMul)."""

    def __init__(self, pm: _Model, node: onnx.NodeProto, layer: LinearLayer, n_out: int, dtype):
        self.pm, self.node, self.layer, self.n, self.dtype = pm, node, layer, n_out, dtype
        self.name, self.add = None, None
        self.ok = True
        if layer.op in ("Conv", "Gemm"):
            if len(node.input) > 2 and node.input[2]:
                b = node.input[2]
                self.ok = pm.writable(b) and pm.dims(b) in ([n_out],)
                self.name = b
        else:
            readers = pm.readers.get(node.output[0], [])
            if len(readers) == 1 and readers[0].op_type == "Add" and node.output[0] not in pm.outputs:
                add = readers[0]
                other = [t for t in add.input if t != node.output[0]]
                if len(other) == 1 and pm.writable(other[0]) and pm.dims(other[0]) == [n_out]:
                    self.name, self.add = other[0], add

    def get(self) -> np.ndarray:
        if self.layer.op == "MatMul" or self.name is None:
            return np.zeros(self.n)
        return self.pm.value(self.name).astype(np.float64) * self.layer.beta

    def set(self, b: np.ndarray) -> None:
        """Set the bias the layer's output includes (for a MatMul: the offset added after it)."""
        pm, node = self.pm, self.node
        if self.layer.op == "MatMul":
            if self.name is not None:
                pm.write(self.name, pm.value(self.name).astype(np.float64) + b)
                return
            y = node.output[0]
            inner = f"{y}__graphprune_mm"
            bname = pm.new_init(y, b.astype(self.dtype))
            node.output[0] = inner
            add = helper.make_node("Add", [inner, bname], [y], name=f"{node.name or y}__graphprune_bias")
            nodes = list(pm.model.graph.node)
            pos = next(i for i, n in enumerate(nodes) if n is node or (n.output and n.output[0] == inner))
            pm.model.graph.node.insert(pos + 1, add)
            self.name = bname
            return
        value = b / self.layer.beta
        if self.name is None:
            self.name = pm.new_init(node.output[0], value.astype(self.dtype))
            while len(node.input) < 2:
                node.input.append("")
            if len(node.input) == 2:
                node.input.append(self.name)
            else:
                node.input[2] = self.name
            return
        pm.write(self.name, value)


def _drift_sources(cut) -> set[int]:
    """Nodes whose output values change for the kept channels: readers of cut channels that mix them."""
    analysis = cut.analysis
    out = set()
    for role in analysis.roles:
        if role.kind == "consumer" and cut.touches(analysis.spaces.spaces[role.space]):
            out.add(role.node)
    hidden = {s for g in analysis.groups if g.kind == "hidden" and cut.removed[g.units].any() for s in g.spaces}
    if hidden:
        for i, node in enumerate(analysis.view.nodes):
            for t in node.input:
                if any(sp.id in hidden for sp in analysis.spaces.of_tensor(t)):
                    out.add(i)
    return out


def _skip_unfittable(cut, info: dict) -> None:
    """Layers whose weights read removed channels but that are no Conv, Gemm or MatMul (LSTM/GRU/RNN,
    quantized and fused ops): compensation cannot re-fit them, so they stay as pruned, and the report lists
    them with that reason (`skipped`)."""
    analysis = cut.analysis
    view = analysis.view
    for role in analysis.roles:
        if role.kind != "consumer" or not role.weight or not cut.touches(analysis.spaces.spaces[role.space]):
            continue
        node = view.nodes[role.node]
        if node.op_type not in ("Conv", "Gemm", "MatMul") and node.output and node.output[0]:
            info["skipped"].setdefault(node.output[0], f"{node.op_type} layers are not re-fit (only Conv, Gemm "
                                                       "and MatMul are); left as pruned")


def _downstream(view, sources: set[int]) -> set[str]:
    """Tensors whose values change downstream of the source nodes (their outputs included)."""
    changed: set[str] = set()
    for i, node in enumerate(view.nodes):
        if i in sources or any(t in changed for t in node.input if t):
            changed.update(o for o in node.output if o)
    return changed


def compensate(original: onnx.ModelProto, pruned: onnx.ModelProto, cut, calib: Calibration | None, mode: str,
               ridge: float = RIDGE, estimates: dict | None = None, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """Return a compensated copy of `pruned` (the rewrite of `original` by `cut`, an analysis.Cut) and what
    was done."""
    info = {"mode": mode, "layers": {}, "notes": [], "skipped": {}}  # skipped: layer -> why it was not re-fit
    if mode == "none" or len(cut) == 0:
        return pruned, info
    view = cut.analysis.view
    kept = cut.kept
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    pm = _Model(out)
    shapes = {t: view.shape(t) for t in view.producer} | {t: view.shape(t) for t in view.input_names}
    unread: dict[str, str] = {}
    orig_layers = linear_layers(original, shapes, unread)
    sources = _drift_sources(cut)
    _skip_unfittable(cut, info)
    changed = _downstream(view, sources)
    mixing = {view.nodes[i].output[0] for i in sources}  # layers whose kept outputs read removed channels
    plan: dict[str, tuple[str, LinearLayer, LinearLayer, np.ndarray]] = {}
    for y, why in unread.items():  # layers that needed a re-fit but whose weight is not a stored one
        if y in mixing or (mode == "all" and pm.node_of.get(y) is not None
                           and pm.node_of[y].input[0] in changed):
            info["skipped"][y] = why
    for y, layer in orig_layers.items():
        node = pm.node_of.get(y)
        if node is None or len(node.input) < 2:
            continue
        cut_in = y in mixing
        drifted = layer.x in changed
        if not (cut_in or (mode == "all" and drifted)):
            continue
        why = pm.why_not_writable(node.input[1])
        if why is not None:
            info["skipped"][y] = why
            continue
        w_shape = pm.dims(node.input[1])
        player = LinearLayer.from_node(node, w_shape, len(shapes.get(layer.x) or []))
        if player is None:
            info["skipped"][y] = "its pruned input rank or weight layout is not one the re-fit reads"
            continue
        ax_out = 1 if layer.op == "Conv" else len(shapes.get(y) or [0, 0]) - 1
        kout = kept(y, ax_out)
        kout = np.ones((view.shape(y) or [])[ax_out], dtype=bool) if kout is None else kout
        if mode == "bias":
            action = "bias"
        elif not gram_fits(player, w_shape):  # too wide for a Gram matrix: match the output statistics
            action = "stats" if mode == "all" else "bias"
        else:
            action = "lstsq" if cut_in else DRIFTED
        plan[y] = (action, layer, player, kout)
    if not plan:
        if not info["skipped"]:
            info["notes"].append("no Conv, Gemm or MatMul reads a removed channel or a changed input")
        return out, info
    if calib is None:
        if mode != "bias" or not estimates:
            raise UsageError(f"--compensate {mode} needs calibration data (--calib)")
        _bias_from_estimates(pm, plan, estimates, kept, view, info)
        return out, info
    def size(y):  # a wave's Gram matrices are held together: split it where they would not fit
        action, _, player, _ = plan[y]
        return gram_bytes(player, list(player.w_shape)) if action == "lstsq" else 0

    waves = _waves(out, set(plan))
    # one batch size for every wave: the layers' inputs and outputs, and one layer's Gram rows at a time
    layers = {y: p[2] for y, p in plan.items()}
    bs = batch_size(calib, sample_bytes(layers, shapes, {y for y, p in plan.items() if p[0] == "lstsq"},
                                        calib.n_train, outputs=True))
    feeds = list(batches(calib.train, bs, calib.constants))
    masks = [{calib.token_mask: f[calib.token_mask]} if calib.token_mask else {} for f in feeds]  # per batch
    residual = _residuals(pm, view, plan, waves)  # per wave: layer -> the residual it is fit together with
    pruned_run = Stepwise(feeds, lambda m: session_for(m, calib))
    orig_run = Stepwise(feeds, lambda m: session_for(m, calib))
    try:
        with progress(f"compensation ({mode}): waves", len(waves)) as advance:
            for k, wave in enumerate(waves):
                later = [y for w in waves[k + 1:] for y in w]
                res_now = list(residual[k].values())
                res_later = [r for rs in residual[k + 1:] for r in rs.values()]
                xs = pruned_run.step(pm.model, [plan[y][2].x for y in wave] + res_now,
                                     [plan[y][2].x for y in later] + res_later)
                ys = orig_run.step(original, wave + res_now, later + res_later)
                for part in by_budget(wave, size):
                    _fit(pm, {y: plan[y] for y in part}, xs, ys, calib.n_train, ridge, info, seed, residual[k],
                         masks)
                advance()
    finally:
        pruned_run.close()
        orig_run.close()
    info["waves"] = len(waves)
    return out, info


def _waves(model: onnx.ModelProto, layers: set[str]) -> list[list[str]]:
    level: dict[str, int] = {}
    wave_of: dict[str, int] = {}
    for node in model.graph.node:
        lv = max((level.get(t, 0) for t in node.input if t), default=0)
        y = node.output[0] if node.output else ""
        if y in layers:
            wave_of[y] = lv
            lv += 1
        for o in node.output:
            if o:
                level[o] = lv
    waves: dict[int, list[str]] = {}
    for y, w in wave_of.items():
        waves.setdefault(w, []).append(y)
    return [waves[k] for k in sorted(waves)]


def _residuals(pm: _Model, view, plan: dict, waves: list[list[str]]) -> list[dict[str, str]]:
    """Per wave, the layers fit to the original block output, and the residual each one's output is added to
    (`_residual`)."""
    node_of = {n.output[0]: i for i, n in enumerate(view.nodes) if n.output}
    out = []
    for k, wave in enumerate(waves):
        pending = _downstream(view, {node_of[y] for w in waves[k:] for y in w if y in node_of})
        out.append({y: r for y in wave if plan[y][0] in ("lstsq", "bias")
                    and (r := _residual(pm, view, y, pending)) is not None})
    return out


def _residual(pm: _Model, view, y: str, pending: set[str]) -> str | None:
    """The other input r of the residual Add that layer y's output reaches (through a constant bias Add), when
    y is its only way there and r is final (no layer still to be re-fit feeds it): fitting y to
    original(y) + original(r) - pruned(r) reproduces the original block output, so each layer also takes up
    the error the pruned layers before it left in the residual stream."""
    t = y
    for _ in range(2):
        readers = pm.readers.get(t, [])
        if len(readers) != 1 or t in pm.outputs or readers[0].op_type != "Add" or len(readers[0].input) != 2:
            return None
        other = readers[0].input[1] if readers[0].input[0] == t else readers[0].input[0]
        if pm.weight(other) is not None:  # the bias of a MatMul (an initializer or a Constant node)
            t = readers[0].output[0]
            continue
        if other in pending or view.shape(other) != view.shape(y) or \
                (other not in view.producer and other not in view.input_names):
            return None
        return other
    return None


def _layer_norm_after(pm: _Model, y: str, r: str):
    """When the residual Add of layer y's output (through its bias Add) and r feeds a LayerNormalization over
    the last axis: the bias between y and that Add (0 when none), what the block output adds to y's own
    output besides r; else None."""
    t, bias = y, 0.0
    for _ in range(2):
        readers = pm.readers.get(t, [])
        if len(readers) != 1 or readers[0].op_type != "Add":
            return None
        add = readers[0]
        other = add.input[1] if add.input[0] == t else add.input[0]
        if other == r:
            norms = [n for n in pm.readers.get(add.output[0], []) if n.op_type == "LayerNormalization"]
            axis = next((a.i for n in norms for a in n.attribute if a.name == "axis"), -1)
            return bias if norms and axis == -1 else None
        if pm.weight(other) is None:
            return None
        bias = pm.value(other).astype(np.float64)
        t = add.output[0]
    return None


def _folds(layer: LinearLayer, x_shape, pick, first: int) -> np.ndarray:
    """The fold (0 or 1) of each row of `layer.rows(x, pick)`: the parity of its sample's index (the rows of
    one sample stay in one fold, so the held-out fold tells how a fit does on samples it has not seen)."""
    per = layer.positions(x_shape)
    flat = np.arange(x_shape[0] * per) if pick is None else pick
    return (first + flat // per) % 2


def _fit(pm: _Model, plan: dict, xs: dict, ys: dict, n: int, ridge: float | None, info: dict, seed: int,
         residual: dict[str, str] | None = None, masks: list[dict] | None = None) -> None:
    """Accumulate what the layers of one wave need over the samples (what the pruned model feeds them: `xs`,
    what the original layers produced: `ys`, one array per batch) and write their new weights. A layer in
    `residual` is fit to the original block output: its target is original(y) + original(r) - pruned(r).
    `masks` (per batch, the padding-mask input) keep the fit to the rows of real tokens (tokens.py)."""
    acc: dict[str, dict] = {y: {} for y in plan}
    rng = np.random.default_rng(seed)
    weights = {y: pm.value(pm.node_of[y].input[1]) for y, p in plan.items() if p[0] == "stats"}
    residual = {y: r for y, r in (residual or {}).items() if y in plan}
    if residual:
        info["block_targets"] = info.get("block_targets", 0) + len(residual)
    normed = {y: c for y, r in residual.items() if (c := _layer_norm_after(pm, y, r)) is not None} \
        if NORM_WEIGHTS else {}
    if normed:
        info["norm_weighted"] = info.get("norm_weighted", 0) + len(normed)
    seen = {y: 0 for y in plan}  # samples before this batch, per layer (its rows' folds)
    for b in range(len(next(iter(ys.values())))):
        for y, (action, layer, player, kout) in plan.items():
            x, yo = xs[player.x][b], ys[y][b]
            mask = masks[b] if masks else {}
            pick = row_pick(player, x.shape, n, rng, tokens.valid_rows(x.shape, mask, next(iter(mask), None)))
            r = player.rows(x, pick)  # [n, G', d']
            yo = yo[:, kout] if layer.op == "Conv" else yo[..., kout]
            row_w = None
            if y in residual:  # the original block output, less what the pruned residual stream brings
                ro, rp = ys[residual[y]][b], xs[residual[y]][b]
                ro = ro[:, kout] if layer.op == "Conv" else ro[..., kout]
                if rp.shape == yo.shape:
                    block = yo.astype(np.float64) + ro
                    if y in normed:  # each row counts as much as it does after the LayerNorm: 1 / its variance
                        rows = LinearLayer.targets(player, block + normed[y], pick).reshape(-1, yo.shape[-1])
                        row_w = 1.0 / (rows.var(axis=1) + LN_EPS)
                    yo = block - rp
            t = LinearLayer.targets(player, yo, pick)
            fold = _folds(player, x.shape, pick, seen[y])
            seen[y] += x.shape[0]
            a = acc[y]
            if action == "bias":
                _add(a, "rsum", r.sum(axis=0, dtype=np.float64))
                _add(a, "tsum", t.sum(axis=0, dtype=np.float64))
            elif action == "stats":
                yp = _layer_output(pm, y, player, weights[y], r.astype(np.float64))
                tt = t.reshape(len(t), -1).astype(np.float64)
                _add(a, "psum", yp.sum(axis=0))
                _add(a, "psq", np.square(yp).sum(axis=0))
                _add(a, "tsum", tt.sum(axis=0))
                _add(a, "tsq", np.square(tt).sum(axis=0))
            else:
                for f in (0, 1):
                    sel = fold == f
                    if sel.any():
                        a.setdefault(f"moments{f}", Moments()).add(r[sel], t[sel],
                                                                   None if row_w is None else row_w[sel])
            a["n"] = a.get("n", 0) + len(r)
    for y, (action, layer, player, kout) in plan.items():
        node = pm.node_of[y]
        wname = node.input[1]
        w = pm.value(wname)
        m = player.wmat(w.astype(np.float64))  # [G, d, o]
        n_out = int(kout.sum())
        bias = _Bias(pm, node, player, n_out, w.dtype)
        a = acc[y]
        if not bias.ok:
            info["skipped"][y] = "its bias is shared, not stored, or not a vector"
            continue
        if action == "bias":
            mean_r = a["rsum"] / a["n"]  # [G, d]
            mean_t = a["tsum"] / a["n"]  # [G, o]
            b = (mean_t - np.einsum("gd,gdo->go", mean_r, m)).reshape(-1)
            bias.set(b)
            info["layers"][y] = "bias"
            continue
        if action == "stats":
            pm_, pv = a["psum"] / a["n"], a["psq"] / a["n"]
            tm, tv = a["tsum"] / a["n"], a["tsq"] / a["n"]
            sd_p, sd_t = np.sqrt(np.maximum(pv - pm_ ** 2, 0)), np.sqrt(np.maximum(tv - tm ** 2, 0))
            scale = np.where(sd_p > 1e-8, sd_t / np.maximum(sd_p, 1e-8), 1.0)
            shift = tm - scale * pm_
            b_old = bias.get()
            g_, _, o_ = m.shape
            m = m * scale.reshape(g_, 1, o_)
            pm.write(wname, player.from_wmat(m, w.shape))
            bias.set(scale * b_old + shift)
            info["layers"][y] = "stats"
            continue
        folds = []
        for f in (0, 1):
            mo = a.get(f"moments{f}")
            if mo is not None and mo.n:
                gram, rhs = _augmented(mo)
                folds.append((gram / mo.n, rhs / mo.n, mo.n))
        try:  # toward the pruned weights m, the ridge chosen on the other fold (passes/ridge.py)
            sol_w, sol_b, used = ridge_fit(folds, m, ridge)
        except np.linalg.LinAlgError:
            sol_w = sol_b = np.full(1, np.nan)
        if not (np.all(np.isfinite(sol_w)) and np.all(np.isfinite(sol_b))):
            info["skipped"][y] = "its least-squares re-fit did not converge"
            continue
        pm.write(wname, player.from_wmat(sol_w, w.shape))
        bias.set(sol_b.reshape(-1))
        info["layers"][y] = "lstsq"
        info.setdefault("ridge", {})[y] = used


def _layer_output(pm: _Model, y: str, player: LinearLayer, w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The pruned layer's output on rows `r` ([n, G, d]) with its current weights and bias, as [n, G*o]."""
    m = player.wmat(w.astype(np.float64))  # [G, d, o]
    out = np.matmul(r.transpose(1, 0, 2), m).transpose(1, 0, 2).reshape(len(r), -1)
    return out + _Bias(pm, pm.node_of[y], player, out.shape[1], None).get()


def _augmented(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """The Gram matrix of the rows with a trailing ones column (the bias), [G, d+1, d+1], and its product
    with the targets, [G, d+1, o], from the accumulated sums."""
    xx, sx = m.xx(), m.sx
    g, d, _ = xx.shape
    gram = np.empty((g, d + 1, d + 1))
    gram[:, :d, :d] = xx
    gram[:, :d, d] = gram[:, d, :d] = sx
    gram[:, d, d] = m.n
    return gram, np.concatenate([m.xt(), m.st[:, None, :]], axis=1)


def _add(acc: dict, key: str, value: np.ndarray) -> None:
    if key in acc:
        acc[key] += value
    else:
        acc[key] = value


def _bias_from_estimates(pm: _Model, plan: dict, estimates: dict, kept, view, info: dict) -> None:
    """Data-free bias compensation: the removed channels' expected values (BatchNorm statistics) times
    their original weights go into the bias."""
    for y, (_, layer, player, kout) in plan.items():
        st = estimates.get(y)
        kin = kept(layer.x, layer.x_axis)
        w = view.const_value(layer.w)
        if st is None or w is None:
            info["skipped"][y] = ("no BatchNorm statistics describe its input" if w is not None
                                  else "its weight is computed at run time, not stored")
            continue
        if kin is None:
            continue  # its input lost no channel: nothing removed to compensate
        m = layer.wmat(w.astype(np.float64))  # [G, d, o], original
        g, d, o = m.shape
        k = layer.taps
        cpg = d // k
        if st.mean.size != g * cpg:
            info["skipped"][y] = "the BatchNorm statistics do not match its input channels"
            continue
        mean = st.mean.reshape(g, cpg) * (~kin).reshape(g, cpg)
        contrib = np.einsum("gc,gcko->go", mean, m.reshape(g, cpg, k, o)).reshape(-1)[kout]
        node = pm.node_of[y]
        wname = node.input[1]
        bias = _Bias(pm, node, player, int(kout.sum()), pm.value(wname).dtype)
        if not bias.ok:
            info["skipped"][y] = "its bias is shared, not stored, or not a vector"
            continue
        bias.set(bias.get() + contrib)
        info["layers"][y] = "bias (BatchNorm estimate)"


# ---- fidelity --------------------------------------------------------------------------------------
__all__ = ["MODES", "compensate", "resolve"]
