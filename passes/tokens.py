"""Padding rows of transformer calibration samples: which positions of a layer's input are real tokens.

A model input named `attention_mask` ([batch, sequence], the Hugging Face convention ONNX Runtime's
transformer tools also read) marks padding with 0. A padded position's keys are masked out of attention and
its hidden state is pooled into no output, so it reaches nothing the model computes for real tokens; yet
with short sentences padded to a common length it is most of the rows (all-MiniLM-L6-v2 calibration: 62 %).
Statistics and least-squares re-fits that count those rows spend their fit on positions that do not matter;
`valid_rows` tells them which rows to keep.
"""

from __future__ import annotations

import numpy as np

MASK_INPUT = "attention_mask"


def mask_input(samples: dict[str, np.ndarray]) -> str | None:
    """The name of the padding-mask input among the calibration samples ([n, sequence], values 0/1), or None."""
    m = samples.get(MASK_INPUT)
    if m is None or m.ndim != 2 or m.dtype.kind not in "biuf":
        return None
    if not np.isin(m, (0, 1)).all() or not m.any():
        return None
    return MASK_INPUT


def valid_rows(x_shape, feeds: dict, name: str | None) -> np.ndarray | None:
    """[batch * sequence] bool: the rows of a [batch, sequence, features] layer input that are real tokens;
    None (every row counts) without a mask, or when the input's leading axes are not the mask's."""
    if name is None or name not in feeds or len(x_shape) != 3:
        return None
    m = np.asarray(feeds[name])
    if tuple(x_shape[:2]) != m.shape:
        return None
    return m.reshape(-1) != 0
