"""Padding rows: with an `attention_mask` input, calibration statistics and compensation re-fits read only the
rows of real tokens (passes/tokens.py), so what padded positions hold cannot change the pruned model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphprune
from graphprune.passes import calibration, tokens

pytest.importorskip("transformers")

from models.transformers_zoo import get_transformer_model  # noqa: E402


def padded_feeds(n=24, seq=16, seed=0, pad_seed=None):
    """Samples whose second half is padding in every other sample; `pad_seed` redraws the ids at padded
    positions only."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 128, (n, seq)).astype(np.int64)
    mask = np.ones((n, seq), np.int64)
    mask[::2, seq // 2:] = 0
    if pad_seed is not None:
        other = np.random.default_rng(pad_seed).integers(0, 128, (n, seq)).astype(np.int64)
        ids = np.where(mask == 0, other, ids)
    return {"input_ids": ids, "attention_mask": mask}


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_valid_rows_and_row_pick_keep_only_real_tokens():
    layer = calibration.LinearLayer("MatMul", "x", "w", "", "y", 2)
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    valid = tokens.valid_rows((2, 4, 8), {"attention_mask": mask}, "attention_mask")
    assert valid.tolist() == [True, True, False, False, True, False, False, False]
    assert tokens.valid_rows((2, 4), {"attention_mask": mask}, "attention_mask") is None  # not [batch, seq, d]
    assert tokens.valid_rows((2, 5, 8), {"attention_mask": mask}, "attention_mask") is None  # other sequence
    pick = calibration.row_pick(layer, (2, 4, 8), 2, np.random.default_rng(0), valid)
    assert pick.tolist() == [0, 1, 4]
    assert tokens.mask_input({"attention_mask": mask}) == "attention_mask"
    assert tokens.mask_input({"attention_mask": mask * 3}) is None  # not a 0/1 mask


@pytest.fixture(scope="module")
def bert():
    return onnx.load(str(get_transformer_model("bert")))


def test_padded_positions_do_not_change_the_compensated_model(bert, monkeypatch):
    a, b = padded_feeds(), padded_feeds(pad_seed=7)
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    kw = dict(ratio=0.5, compensate="all")
    ra, rb = graphprune.prune(bert, calib=a, **kw), graphprune.prune(bert, calib=b, **kw)
    assert "real tokens" in ra.report.quality["calibration"]["rows"]
    wa, wb = weights(ra.model), weights(rb.model)
    refit = [k for k in wa if k in weights(bert) and wa[k].shape == weights(bert)[k].shape
             and not np.array_equal(wa[k], weights(bert)[k])]
    assert refit  # compensation changed kept weights
    assert all(np.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6) for k in wa)
    # counting every row, the padded positions' ids reach the fit: the check above can fail
    monkeypatch.setattr(tokens, "MASK_INPUT", "no_such_input")
    rc, rd = graphprune.prune(bert, calib=a, **kw), graphprune.prune(bert, calib=b, **kw)
    wc, wd = weights(rc.model), weights(rd.model)
    assert not all(np.allclose(wc[k], wd[k], rtol=1e-5, atol=1e-6) for k in wc if k in wd)
