"""Transformers: whole attention heads and MLP neurons pruned on every zoo model, both exporters, checked
by the oracle (removing heads/neurons == zeroing their slices of the output/down projection)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.analysis import AnalysisOptions
from graphprune.core import runtime
from graphprune.passes.normalize import unshare_uniform_constants
from models.transformers_zoo import TRANSFORMER_TEST_MODELS, TRANSFORMER_ZOO, get_transformer_model
from tests.oracle import assert_oracle

NO_ATTENTION = {n for n, e in TRANSFORMER_ZOO.items() if not e.has_attention}  # ConvNeXt, PoolFormer, ...: MLPs only
CONV_MLP = {"poolformer"}  # its MLP is two 1x1 convolutions: channels, not MLP neurons
EXPORTERS = ("torchscript", "dynamo")
# Models whose heads stay whole, and the refusal that says why (None: the head axis is tied to one that is
# kept, so the heads land in another group).
FROZEN_HEADS = {
    # WavLM's gated relative position bias computes each head's gate from that head's slice of the hidden
    # state, which is not cut: a head cannot leave without the hidden state losing its slice.
    ("wavlm", "torchscript"): None,
    ("wavlm", "dynamo"): None,
}
NORMALISED_MLP = {"convnextv2"}  # GRN divides by a mean over the MLP's channels: --prune-hidden only


def _load(name, exporter):
    model = onnx.load(str(get_transformer_model(name, exporter=exporter)))
    return unshare_uniform_constants(model)[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [n for n in TRANSFORMER_TEST_MODELS if n not in NORMALISED_MLP])
def test_heads_and_mlp_oracle(name, exporter):
    model = _load(name, exporter)
    a, pruned, removed = assert_oracle(model, seed=0, fraction=0.5)
    kinds = {g.kind for g in a.prunable}
    mlp = "channel" if name in CONV_MLP else "mlp"
    assert mlp in kinds, f"no prunable MLP group: {[(g.key, g.kind, g.reasons[:1]) for g in a.frozen]}"
    if (name, exporter) in FROZEN_HEADS:
        assert "head" not in kinds, "heads are prunable now: update FROZEN_HEADS"
        said = FROZEN_HEADS[(name, exporter)]
        assert said is None or any(said in r for g in a.frozen if g.kind == "head" for r in g.reasons)
    elif name not in NO_ATTENTION:
        assert "head" in kinds, f"no prunable head group: {[(g.key, g.kind, g.reasons[:1]) for g in a.frozen]}"
    feeds = runtime.synthetic_inputs(model)
    before, after = runtime.run(model, feeds), runtime.run(pruned, feeds)
    assert any(not np.allclose(b, c) for b, c in zip(before, after)), "the cut changed nothing"


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "vit"])
def test_prune_validates_with_separate_ratios(name):
    model = onnx.load(str(get_transformer_model(name)))
    res = graphprune.prune(model, head_ratio=0.5, mlp_ratio=0.25)
    assert res.report.validation["runtime"] and res.report.validation["oracle_max_abs_diff"] is not None
    for g in res.analysis.prunable:
        cut = res.plan.cuts.get(g.key)
        want = {"head": 0.5, "mlp": 0.25}.get(g.kind)
        if want is not None and g.size >= 4:
            assert cut is not None and len(cut.removed) == int(g.size * want)
    assert res.report.after.macs < res.report.before.macs


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_head_dim_pruning_keeps_rotary_pairs(name):
    model = _load(name, "dynamo")
    a, _, _ = assert_oracle(model, options=AnalysisOptions(prune_head_dim=True))
    heads = [g for g in a.prunable if g.kind == "head"]
    assert heads
    if name == "llama":
        # rotate_half pairs dim i with dim i + D/2: query/key head-dims come in tied pairs
        assert any(g.size * 2 == max(h.size for h in heads) for g in heads)


def test_gqa_kv_head_goes_with_its_query_heads():
    model = _load("llama", "torchscript")
    a = graphprune.analyze(model)
    heads = [g for g in a.prunable if g.kind == "head"]
    # 4 query heads share 2 KV heads: a unit is one KV head with its 2 query heads.
    assert heads and all(g.size == 2 for g in heads)


def test_prune_hidden_is_opt_in():
    model = _load("bert", "torchscript")
    # The zoo exposes last_hidden_state as an output (its width can never change); keep only the logits.
    for o in list(model.graph.output):
        if o.name == "last_hidden_state":
            model.graph.output.remove(o)
    default = graphprune.analyze(model)
    assert any(g.kind == "hidden" and g.frozen and "--prune-hidden" in g.reasons[0] for g in default.frozen)
    res = graphprune.prune(model, ratio=0.25, prune_hidden=True)
    hidden = [g for g in res.analysis.prunable if g.kind == "hidden"]
    assert hidden and any(res.plan.cuts.get(g.key) for g in hidden)
    assert res.report.validation["runtime"] and res.report.validation["oracle_max_abs_diff"] is None


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_grn_mlp_is_hidden_size_pruning(exporter):
    """ConvNeXt V2's GRN divides each channel by the mean over channels: its MLP channels are a normalised
    axis, refused by design unless --prune-hidden (which then cuts them; the oracle does not apply)."""
    model = _load("convnextv2", exporter)
    a = graphprune.analyze(model)
    mlp = [g for g in a.frozen if g.kind == "hidden" and any("GRN" in r for r in g.reasons)]
    assert len(mlp) == 2 and all(r.kind == "by_design" for g in mlp for r in g.refusals)
    res = graphprune.prune(model, ratio=0.5, prune_hidden=True)
    assert res.report.validation["runtime"] and res.report.after.params < res.report.before.params
