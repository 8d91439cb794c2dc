"""Comparing a model's outputs with a reference's: the one home of the measures that validation, the
fidelity report and the sensitivity curves quote (max abs difference, cosine, relative error, top-1)."""

from __future__ import annotations

import numpy as np


def max_abs_diff(ref: list, got: list) -> float:
    """Largest absolute difference over all outputs; a changed shape is a ValueError."""
    worst = 0.0
    for a, b in zip(ref, got):
        if a.shape != b.shape:
            raise ValueError(f"output shape changed from {a.shape} to {b.shape}")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def flat(outputs: list) -> np.ndarray:
    """All outputs as one float64 vector."""
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs]) if outputs else np.zeros(0)


def cosine(ref, got) -> float:
    """Cosine similarity of two vectors (or lists of outputs, flattened together); 1 when either is zero."""
    a = ref if isinstance(ref, np.ndarray) else flat(ref)
    b = got if isinstance(got, np.ndarray) else flat(got)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 1.0


def relative_error(ref, got) -> float:
    """||got - ref|| / ||ref|| (vectors or lists of outputs)."""
    a = ref if isinstance(ref, np.ndarray) else flat(ref)
    b = got if isinstance(got, np.ndarray) else flat(got)
    return float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30))


def nearest_neighbour_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Rows are embeddings (one per sample): the share of samples whose nearest other sample by cosine is the
    same under both models (the retrieval a sentence embedder is used for); 1 with fewer than 3 samples."""
    if len(ref) < 3:
        return 1.0

    def nearest(e):
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(nearest(np.asarray(ref, np.float64)) == nearest(np.asarray(got, np.float64))))


EMBEDDING_ROWS = 4096  # samples of a rank-2 output kept for nearest-neighbour agreement


class OutputAgreement:
    """Running comparison of one output over batches: cosine of the whole output, the mean and the least
    per-sample cosine, relative error, max abs difference, top-1 agreement where the output looks like
    logits (rank 2 or 3, floating, last axis > 1), nearest-neighbour agreement where it looks like embeddings
    (rank 2: one vector per sample), and whether every value is within atol + rtol * |ref|."""

    def __init__(self, atol: float | None = None, rtol: float | None = None):
        self.atol, self.rtol = atol, rtol
        self.dot = self.nr = self.np = self.diff = self.max = self.cos_sum = 0.0
        self.agree = self.count = self.samples = 0
        self.ok = True
        self.logits: bool | None = None
        self.cos_min = 1.0
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []  # rank-2 outputs: (ref, got) per batch
        self.n_rows = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r64, p64 = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if r64.shape != p64.shape:
            self.ok = False
            return
        self.dot += float((r64 * p64).sum())
        self.nr += float((r64 * r64).sum())
        self.np += float((p64 * p64).sum())
        self.diff += float(np.square(r64 - p64).sum())
        self.max = max(self.max, float(np.abs(r64 - p64).max()) if r64.size else 0.0)
        rs, ps = r64.reshape(len(r64), -1), p64.reshape(len(p64), -1)
        den = np.linalg.norm(rs, axis=1) * np.linalg.norm(ps, axis=1)
        cos = np.where(den > 0, (rs * ps).sum(axis=1) / np.where(den > 0, den, 1), 1.0)
        self.cos_sum += float(np.sum(cos))
        self.cos_min = min(self.cos_min, float(cos.min()) if len(cos) else 1.0)
        self.samples += len(rs)
        if r64.ndim == 2 and r64.shape[1] > 1 and self.n_rows + len(r64) <= EMBEDDING_ROWS:
            self.rows.append((r64.astype(np.float32), p64.astype(np.float32)))
            self.n_rows += len(r64)
        if self.logits is None:
            self.logits = r64.ndim in (2, 3) and r64.shape[-1] > 1 and np.issubdtype(np.asarray(ref).dtype,
                                                                                      np.floating)
        if self.logits:
            self.agree += int((r64.argmax(-1) == p64.argmax(-1)).sum())
            self.count += int(np.prod(r64.shape[:-1]))
        if self.atol is not None or self.rtol is not None:
            tol = (self.atol or 0.0) + (self.rtol or 0.0) * np.abs(r64)
            if not np.all(np.abs(r64 - p64) <= tol):
                self.ok = False

    def summary(self) -> dict:
        den = np.sqrt(self.nr * self.np)
        row = {"cosine": round(self.dot / den, 6) if den > 0 else 1.0,
               "sample_cosine": round(self.cos_sum / max(self.samples, 1), 6),
               "relative_error": round(float(np.sqrt(self.diff / self.nr)) if self.nr > 0 else 0.0, 6),
               "max_abs_diff": float(f"{self.max:.4g}")}
        row["min_sample_cosine"] = round(self.cos_min, 6)
        if self.logits and self.count:
            row["top1_agreement"] = round(self.agree / self.count, 6)
        if self.n_rows >= 3 and self.n_rows == self.samples:
            ref = np.concatenate([r for r, _ in self.rows])
            got = np.concatenate([g for _, g in self.rows])
            row["nn_agreement"] = round(nearest_neighbour_agreement(ref, got), 6)
        return row
