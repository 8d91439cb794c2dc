"""Ridge least squares for compensation: re-fit a layer's kept weights and bias to the original's outputs,
pulled toward the layer's own (pruned) weights, with the strength chosen on held-out calibration samples.

The fit reads two folds of running sums (samples alternate between them, so the rows of one sample stay in
one fold): per convolution group the augmented Gram matrix A = mean [x 1]^T [x 1] and the cross term
R = mean [x 1]^T t. With an unpenalised bias, the ridge solution is the one of the centred problem,

    W = (Cov + lam I)^-1 (Cov_xt + lam W0),   b = mean(t) - mean(x) W,

so one eigendecomposition of each fold's covariance serves every lam of the grid. Each lam is fitted on one
fold and scored on the other (both ways); the best is refitted on both folds. Pulling toward W0 rather than
toward zero means a strong ridge falls back to the pruned layer with its bias corrected (the mean of what
was removed), never to a shrunken layer: with few calibration samples a plain least-squares fit memorises
them (all-MiniLM-L6-v2 with 64 sentences: held-out cosine 0.87 with ridge toward zero, 0.91 toward W0).
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # relative to the mean input variance
DEFAULT = 1e-3  # when there is no held-out fold (a single calibration sample)
CHOICE_OUTPUTS = 64  # output columns the ridge is chosen on (a seeded subset of wider layers; the fit uses all)


def _centred(a: np.ndarray, r: np.ndarray):
    """Per group: covariance [G, d, d], cross-covariance [G, d, o], input mean [G, d], target mean [G, o]."""
    d = a.shape[1] - 1
    mx, mt = a[:, :d, d], r[:, d, :]
    return (a[:, :d, :d] - mx[:, :, None] * mx[:, None, :], r[:, :d, :] - mx[:, :, None] * mt[:, None, :],
            mx, mt)


def _scale(cov: np.ndarray) -> np.ndarray:
    """[G]: the mean input variance, what a relative ridge is multiplied by."""
    return np.maximum(np.einsum("gii->g", cov) / cov.shape[1], 1e-12)


def _bias(mx, mt, w):
    return mt - np.einsum("gd,gdo->go", mx, w)


def _error(a: np.ndarray, r: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of [w; b] on a fold (summed over groups), up to the fold's constant target energy."""
    wa = np.concatenate([w, b[:, None, :]], axis=1)
    return float(np.einsum("gdo,gde,geo->", wa, a, wa, optimize=True) - 2.0 * np.sum(wa * r))


def _output_subset(folds, w0, outputs: int):
    """The folds and pruned weights restricted to a seeded subset of `outputs` output columns (all of them when
    the layer has no more): each column's error is a separate least-squares problem sharing the Gram matrix,
    so a subset estimates the grid's held-out errors at a fraction of the cost (MiniLM: 40 % of the prune)."""
    o = w0.shape[2]
    if o <= outputs:
        return folds, w0
    cols = np.sort(np.random.default_rng(0).choice(o, outputs, replace=False))
    return [(a, r[:, :, cols], n) for a, r, n in folds], w0[:, :, cols]


def choose(folds: list[tuple[np.ndarray, np.ndarray, int]], w0: np.ndarray, grid=RIDGE_GRID,
           outputs: int = CHOICE_OUTPUTS) -> float:
    """The relative ridge of the grid with the least held-out error (two folds: each fits, the other scores),
    estimated on at most `outputs` output columns."""
    folds, w0 = _output_subset(folds, w0, outputs)
    errors = np.zeros(len(grid))
    for fit, score in ((0, 1), (1, 0)):
        cov, cxt, mx, mt = _centred(folds[fit][0], folds[fit][1])
        e, q = np.linalg.eigh(cov)
        e = np.maximum(e, 0.0)
        qt = np.swapaxes(q, 1, 2)
        p1, p2 = qt @ cxt, qt @ w0
        s = _scale(cov)[:, None, None]
        for i, rel in enumerate(grid):
            lam = rel * s
            w = q @ ((p1 + lam * p2) / (e[:, :, None] + lam))
            errors[i] += _error(folds[score][0], folds[score][1], w, _bias(mx, mt, w))
    return float(grid[int(np.argmin(errors))])


def fit(folds: list[tuple[np.ndarray, np.ndarray, int]], w0: np.ndarray, ridge: float | None):
    """(W [G, d, o], b [G, o], the relative ridge used). `folds`: (A [G, d+1, d+1], R [G, d+1, o], rows) per
    fold, one or two; `w0` [G, d, o] the pruned weights; `ridge` None chooses it on the held-out fold
    (DEFAULT with one fold)."""
    folds = [f for f in folds if f[2] > 0]
    if ridge is None:
        ridge = choose(folds, w0) if len(folds) == 2 else DEFAULT
    rows = sum(f[2] for f in folds)
    a = sum(f[0] * f[2] for f in folds) / rows
    r = sum(f[1] * f[2] for f in folds) / rows
    cov, cxt, mx, mt = _centred(a, r)
    lam = ridge * _scale(cov)
    d = cov.shape[1]
    w = np.linalg.solve(cov + lam[:, None, None] * np.eye(d), cxt + lam[:, None, None] * w0)
    return w, _bias(mx, mt, w), ridge
