"""The equivalence oracle on every zoo CNN, both torch exporters: pruned(x) == masked original(x)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.core import runtime
from models import CNN_MODELS, get_model
from tests.oracle import assert_oracle, assert_ratio_zero_identical

EXPORTERS = ("torchscript", "dynamo")


@pytest.fixture(scope="module", params=EXPORTERS)
def exporter(request):
    return request.param


@pytest.mark.parametrize("name", CNN_MODELS)
def test_oracle_random_channels(name, exporter):
    model = onnx.load(str(get_model(name, exporter=exporter)))
    for seed in (0, 1):
        a, pruned, removed = assert_oracle(model, seed=seed, fraction=0.5)
        assert len(removed) > 0
    # The cut is real: outputs moved and the model shrank.
    feeds = runtime.synthetic_inputs(model)
    before = runtime.run(model, feeds)
    after = runtime.run(pruned, feeds)
    assert any(not np.allclose(b, c) for b, c in zip(before, after))
    assert pruned.ByteSize() < model.ByteSize()


@pytest.mark.parametrize("name", CNN_MODELS)
def test_ratio_zero_is_bit_identical(name):
    model = onnx.load(str(get_model(name)))
    assert_ratio_zero_identical(model)
    res = graphprune.prune(model, ratio=0.0)
    feeds = runtime.synthetic_inputs(model)
    for a, b in zip(runtime.run(res.model, feeds), runtime.run(model, feeds)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", CNN_MODELS)
def test_prune_half_validates(name, exporter):
    model = onnx.load(str(get_model(name, exporter=exporter)))
    res = graphprune.prune(model, ratio=0.5)
    v = res.report.validation
    assert v["checker"] and v["shape_inference"] and v["runtime"]
    assert v["oracle_max_abs_diff"] is not None
    assert res.report.after.macs < 0.5 * res.report.before.macs
    # every prunable group lost channels and none was emptied
    for g in res.analysis.prunable:
        cut = res.plan.cuts.get(g.key)
        if g.size >= 2:
            assert cut is not None and 0 < len(cut.removed) < g.size


@pytest.mark.parametrize("name", ["resnet18", "densenet", "mobilenetv2"])
def test_batchnorm_kept_exports(name):
    model = onnx.load(str(get_model(name, keep_bn=True)))
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert_oracle(model, seed=3)


@pytest.mark.parametrize("name,op", [("crnn", "LSTM"), ("crnn_gru", "GRU")])
def test_crnn_prunes_recurrent_hidden_and_the_convolutions_feeding_it(name, op, exporter):
    """The text recogniser at ratio 0.5: both recurrent layers lose hidden units (hidden_size rewritten),
    the last convolution (which feeds the sequence through Squeeze or a run-time-shape Reshape) loses
    channels, and the oracle passes."""
    model = onnx.load(str(get_model(name, exporter=exporter)))
    res = graphprune.prune(model, ratio=0.5)
    assert res.report.validation["oracle_max_abs_diff"] is not None
    rnn = [res.analysis.view.names[i] for i, n in enumerate(res.analysis.view.nodes) if n.op_type == op]
    assert len(rnn) == 2
    for node in rnn:
        hidden = next(g for g in res.analysis.prunable if node in g.producers)
        assert len(res.plan.cuts[hidden.key].removed) >= hidden.size // 4
    feeding = next(g for g in res.analysis.prunable if rnn[0] in g.consumers)
    assert any(res.analysis.view.nodes[res.analysis.view.names.index(p)].op_type == "Conv" for p in feeding.producers)
    assert len(res.plan.cuts[feeding.key].removed) >= feeding.size // 4
    for node in res.model.graph.node:
        if node.op_type == op:
            hs = next(a.i for a in node.attribute if a.name == "hidden_size")
            assert hs < 48


_DYNAMO_DH = pytest.mark.xfail(strict=True, reason="with a symbolic batch, dynamo writes the Reshape after a "
                               "bidirectional layer as [seq, batch, dim(2) * dim(3)] from the run-time shape; "
                               "a product of two run-time dims is not followed (shape.py), so the first "
                               "layer's hidden size stays frozen")


@pytest.mark.parametrize("exp", ["torchscript", pytest.param("dynamo", marks=_DYNAMO_DH)])
@pytest.mark.parametrize("name", ["crnn", "crnn_gru"])
def test_crnn_dynamic_batch(name, exp):
    """With a symbolic batch the exporters build the default zero states from the run-time batch size
    (ConstantOfShape / Expand) and crnn_gru's sequence Reshape from the run-time shape: every
    convolution and both recurrent layers still prune, oracle passing."""
    model = onnx.load(str(get_model(name, exporter=exp, dynamic_batch=True)))
    res = graphprune.prune(model, ratio=0.5)
    assert res.report.validation["oracle_max_abs_diff"] is not None
    view = res.analysis.view
    weighted = [view.names[i] for i, n in enumerate(view.nodes) if n.op_type in ("Conv", "LSTM", "GRU")]
    for node in weighted:
        assert any(node in g.producers for g in res.analysis.prunable), node
