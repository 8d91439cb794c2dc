"""Scoring pass: an importance per unit of every prunable group (higher = keep).

Magnitude scores (l1, l2) follow Torch-Pruning's group magnitude: each weight slice that produces or
consumes the group's channels gives a per-channel |w|^p sum, scattered back onto units through the
element -> unit map and reduced over slices. Data-aware scores look at the consumers (the layers that read
the group's channels) and what they read, from calibration statistics or, without data, from the
BatchNorm statistics in front of them:

- dead: the fraction of values that are non-zero (dead channels go first; magnitude breaks ties),
- wanda: sum |W| over the weights reading the channel times the channel's RMS (Wanda, structured),
- fluctuation: the channel's variance times ||W||^2 (FLAP: the part a bias cannot compensate),
- reconstruction: the consumer's output error when the channel is removed and the remaining weights and
  bias are re-fit (OBS on the input Gram matrix), relative to the consumer's output energy.

Per unit, the consumers' (or slices') values are reduced by sum, mean or max. `normalize` rescales a
group's scores (mean, LAMP, z-score) so global allocation can rank units of different groups together.
"""

from __future__ import annotations

from math import erf, pi, sqrt

import numpy as np

from graphprune.errors import UsageError

from .base import StageResult
from .calibration import InputStats
from .choices import IMPORTANCES, NORMALIZATIONS, REDUCTIONS  # noqa: F401 - the accepted values, re-exported

DATA_AWARE = ("dead", "wanda", "fluctuation", "reconstruction")
DAMPING = 1e-2  # ridge of the OBS inverse, relative to the mean diagonal of the Gram matrix


def resolve(importance: str, have_data: bool, have_estimates: bool) -> str:
    """The score `auto` stands for: reconstruction with calibration data, fluctuation from BatchNorm
    statistics without it, else L2 magnitude."""
    if importance != "auto":
        return importance
    if have_data:
        return "reconstruction"
    return "fluctuation" if have_estimates else "l2"


def score(analysis, importance: str = "l2", seed: int = 0, stats: dict | None = None,
          reduction: str = "mean") -> StageResult:
    """Scores per group key, aligned with `group.units` (the result's value), and what was used (its info:
    the importance, the groups that fell back to magnitude). `stats` maps a linear layer's output name to
    its calibration.InputStats (needed by the data-aware scores)."""
    if importance not in IMPORTANCES:
        raise UsageError(f"unknown importance '{importance}' (choose from {', '.join(IMPORTANCES)})")
    if reduction not in REDUCTIONS:
        raise UsageError(f"unknown reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")
    info: dict = {}
    groups = analysis.prunable
    if importance == "auto":
        importance = resolve(importance, bool(stats) and not _estimated(stats), bool(stats))
    info["importance"] = importance
    if importance == "random":
        rng = np.random.default_rng(seed)
        return StageResult({g.key: rng.random(g.size) for g in groups}, info)
    magnitude = _magnitude(analysis, 1 if importance == "l1" else 2, reduction)
    if importance in ("l1", "l2"):
        return StageResult(magnitude, info)
    if not stats:
        raise UsageError(f"--importance {importance} needs calibration data (--calib) or BatchNorm "
                         "statistics in the model")
    per_consumer = _consumer_scores(analysis, importance, stats)
    consumers = _consumers_by_space(analysis)
    out, fallback = {}, []
    for g in groups:
        cons = list(dict.fromkeys(y for sp in g.spaces for y in consumers.get(sp, ())))
        if not cons or any(c not in per_consumer for c in cons):
            out[g.key] = magnitude[g.key]
            fallback.append(g.key)
            continue
        looked = [_lookup(per_consumer[c], g.units) for c in cons]
        out[g.key] = _reduce([v for v, _ in looked], [n for _, n in looked], reduction)
    info["magnitude_fallback"] = fallback
    return StageResult(out, info)


def _lookup(entry, units: np.ndarray):
    """Values and counts of a sparse per-root table (sorted roots) at the given units (0 where absent)."""
    u, v, c = entry
    if len(u) == 0:
        return np.zeros(len(units)), np.zeros(len(units))
    idx = np.clip(np.searchsorted(u, units), 0, len(u) - 1)
    hit = u[idx] == units
    return np.where(hit, v[idx], 0.0), np.where(hit, c[idx], 0.0)


def _estimated(stats: dict) -> bool:
    return all(s.estimated for s in stats.values())


def _reduce(vals, touched, reduction):
    v = np.stack(vals)
    t = np.stack(touched) > 0
    if reduction == "sum":
        return v.sum(axis=0)
    if reduction == "max":
        return np.where(t, v, -np.inf).max(axis=0)
    return v.sum(axis=0) / np.maximum(t.sum(axis=0), 1)


def _per_root(roots: np.ndarray, values: np.ndarray):
    """Sparse sums per root: (sorted unique roots, sums, counts)."""
    u, inv = np.unique(roots, return_inverse=True)
    return u, np.bincount(inv, weights=values, minlength=len(u)), np.bincount(inv, minlength=len(u)).astype(float)


def _add_root_sums(analysis, sp, per_elem, root_score, root_slices, root_max) -> None:
    u, sums, _ = _per_root(analysis.units_of(sp), per_elem)
    root_score[u] += sums
    root_slices[u] += 1.0
    root_max[u] = np.maximum(root_max[u], sums)


def _magnitude(analysis, p: int, reduction: str) -> dict[str, np.ndarray]:
    n = analysis.id_count
    root_score = np.zeros(n, dtype=np.float64)
    root_slices = np.zeros(n, dtype=np.float64)
    root_max = np.full(n, -np.inf)
    view = analysis.view
    by_tensor: dict[str, dict[int, object]] = {}  # weight -> axis -> role (each weight read once)
    for role in analysis.roles:
        if role.weight:
            tensor = view.nodes[role.node].input[role.input_index]
            by_tensor.setdefault(tensor, {}).setdefault(role.axis, role)
    for tensor, roles in by_tensor.items():
        w = view.const_value(tensor)
        if w is None:
            continue
        powered = None
        for axis, role in roles.items():
            sp = analysis.spaces.spaces[role.space]
            if w.shape[axis] != sp.size:
                continue
            if powered is None:  # |w|^p once per weight, summed over the other axes per role (no copies)
                powered = np.abs(w if w.dtype in (np.float32, np.float64) else w.astype(np.float64))
                powered = powered if p == 1 else np.square(powered) if p == 2 else powered ** p
            others = tuple(a for a in range(w.ndim) if a != axis)
            per_elem = powered.sum(axis=others, dtype=np.float64) if others else powered.astype(np.float64)
            _add_root_sums(analysis, sp, per_elem, root_score, root_slices, root_max)
    out = {}
    for g in analysis.prunable:
        if reduction == "sum":
            out[g.key] = root_score[g.units]
        elif reduction == "max":
            out[g.key] = np.where(np.isfinite(root_max[g.units]), root_max[g.units], 0.0)
        else:
            out[g.key] = root_score[g.units] / np.maximum(root_slices[g.units], 1.0)
    return out


def _consumers_by_space(analysis) -> dict[int, list[str]]:
    """Space id -> output names of the linear layers whose weights read it (consumers)."""
    view = analysis.view
    out: dict[int, list[str]] = {}
    for role in analysis.roles:
        if role.kind == "consumer" and role.weight:
            y = view.nodes[role.node].output[0]
            lst = out.setdefault(role.space, [])
            if y not in lst:
                lst.append(y)
    return out


def channel_weights(layer, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per input channel of a linear layer: sum |w| and sum w^2 over the weights that read it."""
    m = np.abs(layer.wmat(w.astype(np.float64)))  # [G, d, o]
    g, d, _ = m.shape
    k = layer.taps
    a = m.reshape(g, d // k, k, -1)
    return a.sum(axis=(2, 3)).reshape(-1), np.square(a).sum(axis=(2, 3)).reshape(-1)


def _consumer_scores(analysis, importance: str, stats: dict) -> dict[str, tuple]:
    """Per consumer layer (output name): per unit root it reads, the score and how many of the layer's
    channels fed the root, as a sparse table (sorted roots, scores, counts)."""
    view = analysis.view
    out = {}
    for y, st in stats.items():
        layer = st.layer
        sp = analysis.spaces.get(layer.x, layer.x_axis)
        w = view.const_value(layer.w)
        if sp is None or w is None or st.sum is None or len(st.sum) != sp.size:
            continue
        wabs, wsq = channel_weights(layer, w)
        if len(wabs) != sp.size:
            continue
        if importance == "wanda":
            s = wabs * np.sqrt(st.meansq)
        elif importance == "fluctuation":
            s = wsq * st.var
        elif importance == "dead":
            tie = wsq / (wsq.max() + 1e-30)
            s = (1.0 - st.dead_rate) + 1e-6 * tie
        else:
            s = _obs(layer, w, st)
            if s is None:  # no Gram (too wide, or estimated statistics): the diagonal approximation
                energy = float((wsq * st.meansq).sum()) or 1.0
                s = wsq * st.var / energy
        out[y] = _per_root(analysis.units_of(sp), s)
    return out


def augmented_gram(st, damping: float = DAMPING) -> np.ndarray:
    """[G, d+1, d+1] mean Gram of the rows with a trailing ones column (the bias), ridge-damped."""
    r = max(st.rows, 1)
    g, d, _ = st.gram.shape
    h = np.zeros((g, d + 1, d + 1))
    h[:, :d, :d] = st.gram / r
    h[:, :d, d] = h[:, d, :d] = st.rsum / r
    h[:, d, d] = 1.0
    diag = np.einsum("gii->gi", h[:, :d, :d])
    lam = damping * np.maximum(diag.mean(axis=1), 1e-12)
    h[:, np.arange(d), np.arange(d)] += lam[:, None]
    return h


def triangular_inverse(low: np.ndarray) -> np.ndarray:
    """Inverse of lower-triangular matrices [G, n, n] by 2x2 block recursion: n^3/3 multiply-adds in matrix
    products (numpy has no triangular solver; its inv would take 4x as many)."""
    n = low.shape[-1]
    if n <= 128:
        return np.linalg.inv(low)
    h = n // 2
    a, c = triangular_inverse(low[:, :h, :h]), triangular_inverse(low[:, h:, h:])
    out = np.zeros_like(low)
    out[:, :h, :h], out[:, h:, h:] = a, c
    out[:, h:, :h] = -(c @ (low[:, h:, :h] @ a))
    return out


def inverse_diagonal_blocks(h: np.ndarray, d: int, k: int) -> np.ndarray:
    """The k x k diagonal blocks of H^-1 over its first d rows and columns ([G, d/k, k, k]), from the
    Cholesky factor H = L L^T: H^-1 = L^-T L^-1, so block B is the sum over rows j of L^-1[j, B]^T L^-1[j, B].
    A matrix that is not positive definite (rounding) goes through the full inverse; one that is singular
    raises LinAlgError."""
    c = d // k
    try:
        li = triangular_inverse(np.linalg.cholesky(h))[:, :, :d]  # [G, D, d]
    except np.linalg.LinAlgError:
        hinv = np.linalg.inv(h)[:, :d, :d]
        return np.moveaxis(hinv.reshape(-1, c, k, c, k)[:, np.arange(c), :, np.arange(c), :], 0, 1)
    g, n, _ = li.shape
    r = li.reshape(g, n, c, k).transpose(0, 2, 1, 3)  # [G, c, D, k]
    return np.matmul(r.transpose(0, 1, 3, 2), r)


def _obs(layer, w: np.ndarray, st) -> np.ndarray | None:
    """Per input channel: the least output error of the layer without it, the other weights and the bias
    re-fit (block OBS: tr(W_B^T (H^-1_BB)^-1 W_B)), over the layer's output energy."""
    if st.gram is None:
        return None
    m = layer.wmat(w.astype(np.float64))  # [G, d, o]
    g, d, o = m.shape
    k = layer.taps
    h = augmented_gram(st)
    c = d // k
    try:
        blocks = inverse_diagonal_blocks(h, d, k)  # [g, c, k, k]
    except np.linalg.LinAlgError:
        return None
    try:
        binv = np.linalg.inv(blocks)
    except np.linalg.LinAlgError:
        binv = np.linalg.pinv(blocks)
    wb = m.reshape(g, c, k, o)
    err = np.einsum("gcko,gckl,gclo->gc", wb, binv, wb, optimize=True)
    energy = float(np.einsum("gdo,gde,geo->", m, h[:, :d, :d], m, optimize=True)) or 1.0
    return np.maximum(err, 0.0).reshape(-1) / energy


# ---- normalisation ---------------------------------------------------------------------------------
def normalize(s: np.ndarray, method: str) -> np.ndarray:
    """Rescale one group's scores so groups compare: mean (s / mean), LAMP (s_i over the sum of the scores
    not below it), z-score, or none."""
    s = np.asarray(s, dtype=np.float64)
    if method == "none" or len(s) == 0:
        return s
    if method == "mean":
        m = float(np.mean(np.abs(s)))
        return s / m if m > 0 else s
    if method == "zscore":
        sd = float(np.std(s))
        return (s - s.mean()) / sd if sd > 0 else s - s.mean()
    if method == "lamp":
        order = np.argsort(s, kind="stable")
        srt = s[order]
        tail = np.cumsum(srt[::-1])[::-1]
        out = np.empty_like(s)
        out[order] = np.where(tail > 0, srt / np.where(tail > 0, tail, 1.0), 0.0)
        return out
    raise UsageError(f"unknown normalisation '{method}' (choose from {', '.join(NORMALIZATIONS)})")


# ---- data-free estimates from BatchNorm ------------------------------------------------------------
_PASS = {"Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def batchnorm_estimates(analysis, layers: dict) -> dict:
    """InputStats estimated from BatchNorm, without data: a BatchNormalization output is per channel
    N(beta, gamma^2); a ReLU (or Clip at 0) rectifies it, an Add of two such tensors adds means and
    variances (independent branches: residual blocks), pooling and Identity pass it on. Layers whose input
    cannot be traced back that way get no estimate."""
    view = analysis.view
    memo: dict[str, tuple | None] = {}
    out = {}
    for y, layer in layers.items():
        est = _estimate(view, layer.x, memo, 0)
        shape = view.shape(layer.x)
        if est is None or shape is None or shape[layer.x_axis] != len(est[0]):
            continue
        mean, var, dead = est
        out[y] = InputStats(layer, len(mean), count=1, sum=mean, sumsq=var + mean ** 2, zeros=dead,
                            estimated=True)
    return out


def _estimate(view, t: str, memo: dict, depth: int):
    """(mean, var, P(0)) per channel of tensor t, from BatchNorm statistics upstream; None if unknown."""
    if t in memo:
        return memo[t]
    memo[t] = None
    p = view.producer.get(t)
    if p is None or depth > 64:
        return None
    node = view.nodes[p]
    op = node.op_type
    est = None
    if op == "BatchNormalization" and len(node.input) >= 3:
        gamma, beta = view.const_value(node.input[1]), view.const_value(node.input[2])
        if gamma is not None and beta is not None:
            g = gamma.astype(np.float64).reshape(-1)
            est = (beta.astype(np.float64).reshape(-1), g ** 2, np.zeros_like(g))
    elif op in ("Relu", "Clip"):
        if op == "Clip":
            lo = view.const_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if lo is None or float(np.asarray(lo).reshape(-1)[0]) != 0.0:
                memo[t] = None
                return None
        src = _estimate(view, node.input[0], memo, depth + 1)
        if src is not None:
            est = _rectified(src[0], np.sqrt(src[1]) + 1e-12)
    elif op in _PASS:
        est = _estimate(view, node.input[0], memo, depth + 1)
    elif op == "Add" and len(node.input) == 2:
        a, b = (_estimate(view, x, memo, depth + 1) for x in node.input)
        if a is not None and b is not None and len(a[0]) == len(b[0]):
            est = (a[0] + b[0], a[1] + b[1], a[2] * b[2])
    memo[t] = est
    return est


def _rectified(mu: np.ndarray, sd: np.ndarray):
    """Mean, variance and P(0) of ReLU(N(mu, sd^2))."""
    a = mu / sd
    cdf = np.array([0.5 * (1 + erf(v / sqrt(2))) for v in a])
    pdf = np.exp(-0.5 * a ** 2) / sqrt(2 * pi)
    mean = mu * cdf + sd * pdf
    meansq = (mu ** 2 + sd ** 2) * cdf + mu * sd * pdf
    return mean, np.maximum(meansq - mean ** 2, 0.0), 1.0 - cdf
