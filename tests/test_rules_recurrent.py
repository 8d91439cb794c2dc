"""LSTM / GRU / RNN rules: the input features are consumed by W, the hidden size is one group whose gate
blocks (W, R rows and columns, B, P) are sliced together, in both directions, with the states tied."""

import numpy as np
import onnx
import pytest

from graphprune.analysis.costs import model_stats
from graphprune.core import runtime
from graphprune.passes import oracle, rewrite
from tests.graphs import GraphBuilder, attr, group_of, init_value, kept, run_analysis
from tests.oracle import assert_oracle, assert_ratio_zero_identical, random_removal

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, IN, FEAT, HID = 5, 2, 6, 10, 12


def _recurrent_model(op="LSTM", direction="forward", layout=0, states="none", use_state_outputs=False,
                     peepholes=False, bias=True, batch_first_input=False, **attrs):
    """MatMul (features) -> op -> Y to [.., D*H] -> MatMul, optionally with initial states and Y_h / Y_c
    read by a second head. `states`: "none", "const" (initializers) or "computed" (from a MatMul on a
    second input). `batch_first_input`: the graph input is [batch, seq, in], transposed for layout 0."""
    g = GraphBuilder(seed=1)
    d = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    lstm = op == "LSTM"
    if batch_first_input and layout == 0:
        x = g.op("Transpose", [g.input("x", [BATCH, SEQ, IN])], perm=[1, 0, 2])
    else:
        x = g.input("x", [SEQ, BATCH, IN] if layout == 0 else [BATCH, SEQ, IN])
    f = g.op("Relu", [g.matmul(x, IN, FEAT, name="pre")])
    ins = [f, g.weight([d, gates * HID, FEAT], "rnn.W"), g.weight([d, gates * HID, HID], "rnn.R")]
    ins.append(g.weight([d, 2 * gates * HID], "rnn.B") if bias else "")
    ins.append("")  # sequence_lens
    state_shape = [d, BATCH, HID] if layout == 0 else [BATCH, d, HID]
    if states == "const":
        ins += [g.weight(state_shape, "rnn.h0")] + ([g.weight(state_shape, "rnn.c0")] if lstm else [])
    elif states == "computed":
        z = g.input("z", [BATCH, 4])
        h0 = g.op("Tanh", [g.matmul(z, 4, HID, name="init_h")])  # [batch, H]
        # [batch, H] -> [D, batch, H] (layout 0) or [batch, D, H] (layout 1), both directions alike
        h0 = g.op("Unsqueeze", [h0, g.ints([0 if layout == 0 else 1])])
        if d == 2:
            h0 = g.op("Concat", [h0, h0], axis=0 if layout == 0 else 1)
        ins += [h0] + ([g.op("Mul", [h0, g.positive([HID], "c0.s")])] if lstm else [])
    else:
        ins += [""] + ([""] if lstm else [])
    if peepholes:
        ins.append(g.weight([d, 3 * HID], "rnn.P"))
    while ins and ins[-1] == "":
        ins.pop()
    n_out = 3 if lstm else 2
    outs = g.op(op, ins, n_out=n_out, name="rnn", hidden_size=HID, direction=direction, layout=layout, **attrs)
    y, yh = outs[0], outs[1]
    # Y [seq, D, batch, H] -> [seq, batch, D*H] (layout 1: [batch, seq, D, H] -> [batch, seq, D*H])
    if layout == 0:
        y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.ints([SEQ, BATCH, d * HID])])
    else:
        y = g.op("Reshape", [y, g.ints([BATCH, SEQ, d * HID])])
    g.output(g.matmul(y, d * HID, 7, name="head"))
    if use_state_outputs:
        # Y_h [D, batch, H] -> [batch, D*H] -> head; Y_c read per direction by a matmul over H
        yh = g.op("Transpose", [yh], perm=[1, 0, 2]) if layout == 0 else yh
        g.output(g.matmul(g.op("Reshape", [yh, g.ints([BATCH, d * HID])]), d * HID, 3, name="head_h"))
        if lstm:
            g.output(g.matmul(outs[2], HID, 3, name="head_c"))
    return g.model()


CASES = [
    dict(op="LSTM"),
    dict(op="LSTM", direction="bidirectional"),
    dict(op="LSTM", direction="reverse", peepholes=True),
    dict(op="LSTM", states="const", use_state_outputs=True),
    dict(op="LSTM", direction="bidirectional", states="computed", use_state_outputs=True, peepholes=True),
    dict(op="LSTM", input_forget=1, bias=False),
    dict(op="GRU", linear_before_reset=0),
    dict(op="GRU", linear_before_reset=1),
    dict(op="GRU", direction="bidirectional", linear_before_reset=0, states="computed", use_state_outputs=True),
    dict(op="GRU", direction="bidirectional", linear_before_reset=1, states="const", use_state_outputs=True),
    dict(op="RNN"),
    dict(op="RNN", direction="bidirectional", states="computed", use_state_outputs=True),
]


def _case_id(c):
    return "-".join(f"{k}={v}" if k != "op" else v for k, v in c.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_recurrent_oracle(case):
    """Random hidden units and input features are cut; pruned == masked original; gate blocks sliced."""
    m = _recurrent_model(**case)
    a = run_analysis(m)
    d = 2 if case.get("direction") == "bidirectional" else 1
    gates = GATES[case["op"]]
    hid = group_of(a, "rnn", "producer")
    assert not hid.frozen and hid.size == HID
    assert hid.kind == "channel"  # gate blocks are not attention heads, nor MLP neurons
    feat = group_of(a, "pre", "producer")
    assert not feat.frozen and feat.size == FEAT and "rnn" in feat.consumers
    if case.get("states") == "computed":
        assert "init_h" in hid.producers  # the computed initial state is cut with the hidden units
    for seed in (0, 1):
        a, p, removed = assert_oracle(m, seed=seed, min_prunable=2)
        kh = kept(a, removed, "rnn.R", 2)
        kf = kept(a, removed, "rnn.W", 2)
        assert 0 < len(kh) < HID and 0 < len(kf) < FEAT
        rows = (np.arange(gates)[:, None] * HID + kh[None, :]).ravel()
        np.testing.assert_array_equal(init_value(p, "rnn.W"), init_value(m, "rnn.W")[:, rows][:, :, kf])
        np.testing.assert_array_equal(init_value(p, "rnn.R"), init_value(m, "rnn.R")[:, rows][:, :, kh])
        if case.get("bias", True):
            brows = (np.arange(2 * gates)[:, None] * HID + kh[None, :]).ravel()
            np.testing.assert_array_equal(init_value(p, "rnn.B"), init_value(m, "rnn.B")[:, brows])
        if case.get("peepholes"):
            prows = (np.arange(3)[:, None] * HID + kh[None, :]).ravel()
            np.testing.assert_array_equal(init_value(p, "rnn.P"), init_value(m, "rnn.P")[:, prows])
        if case.get("states") == "const":
            assert init_value(p, "rnn.h0").shape == (d, BATCH, len(kh))
        assert attr(p, "rnn", "hidden_size") == len(kh)
        # both directions' features d*H + h of the head's input follow hidden unit h
        kin = kept(a, removed, "head.W", 0)
        np.testing.assert_array_equal(kin, (np.arange(d)[:, None] * HID + kh[None, :]).ravel())
    assert_ratio_zero_identical(m)


def test_recurrent_macs_follow_the_cut():
    """The MAC count has an input term (G*H*I) and a recurrent term (G*H*H); both follow the rewrite, and
    the cost model predicts the pruned count exactly."""
    from graphprune.analysis.costs import CostModel

    m = _recurrent_model("LSTM", direction="bidirectional")
    a = run_analysis(m)
    per_step = 2 * 4 * HID * (FEAT + HID)
    rnn_macs = SEQ * BATCH * per_step
    base = model_stats(m).macs
    assert base == rnn_macs + SEQ * BATCH * (IN * FEAT + 2 * HID * 7)
    removed = random_removal(a, np.random.default_rng(0))
    p = rewrite.apply(m, a.cut(removed))
    kh = len(kept(a, removed, "rnn.R", 2))
    kf = len(kept(a, removed, "rnn.W", 2))
    after = model_stats(p).macs
    assert after == SEQ * BATCH * (2 * 4 * kh * (kf + kh) + IN * kf + 2 * kh * 7)
    predicted = (1 - CostModel(a, "macs").removed_fraction(a.cut(removed).removed)) * base
    assert abs(predicted - after) < 1e-6 * base


def test_layout_1_oracle_with_reference_evaluator():
    """layout=1 (batch first): ONNX Runtime refuses it, so pruned == masked is checked with onnx's
    reference evaluator; the batch, sequence and hidden axes of X, Y, Y_h and Y_c are read in that order."""
    from onnx.reference import ReferenceEvaluator

    m = _recurrent_model("LSTM", direction="bidirectional", layout=1, states="computed", use_state_outputs=True)
    a = run_analysis(m)
    hid = group_of(a, "rnn", "producer")
    assert not hid.frozen and hid.size == HID
    removed = random_removal(a, np.random.default_rng(0))
    p = rewrite.apply(m, a.cut(removed))
    onnx.checker.check_model(p, full_check=True)
    onnx.shape_inference.infer_shapes(p, strict_mode=True)
    feeds = runtime.synthetic_inputs(m)
    got = ReferenceEvaluator(p).run(None, feeds)
    want = ReferenceEvaluator(oracle.masked_model(m, a.cut(removed))).run(None, feeds)
    for gv, wv in zip(got, want):
        np.testing.assert_allclose(gv, wv, rtol=1e-4, atol=1e-5)
    assert attr(p, "rnn", "hidden_size") == len(kept(a, removed, "rnn.R", 2))


def test_sequence_and_direction_axes_stay_whole():
    """The recurrence mixes the sequence axis and the direction axis is not a channel: a head that reads
    them as features freezes its input group instead of cutting time steps or one direction."""
    g = GraphBuilder(seed=2)
    x = g.input("x", [SEQ, 1, IN])
    y, _ = g.op("LSTM", [x, g.weight([2, 4 * HID, IN]), g.weight([2, 4 * HID, HID])], n_out=2, name="rnn",
                hidden_size=HID, direction="bidirectional")
    # [seq, 2, 1, H] -> [1, H, seq*2]: the head reads time steps and directions as its features
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[2, 3, 0, 1]), g.ints([1, HID, SEQ * 2])])
    g.output(g.matmul(y, SEQ * 2, 3, name="head"))
    a = run_analysis(g.model())
    assert group_of(a, "head", "consumer").frozen
    hid = group_of(a, "rnn", "producer")
    assert hid.frozen  # H reaches the graph output through the head's batch axis
    assert_oracle(g.model(), min_prunable=0)


def test_recurrent_weights_computed_at_run_time_freeze():
    g = GraphBuilder()
    x = g.input("x", [SEQ, 1, IN])
    w = g.op("Mul", [g.weight([1, 4 * HID, IN]), g.input("s", [1])])
    y, _ = g.op("LSTM", [g.matmul(x, IN, IN, name="pre"), w, g.weight([1, 4 * HID, HID])], n_out=2, name="rnn",
                hidden_size=HID)
    g.output(y)
    a = run_analysis(g.model())
    assert any("LSTM 'rnn': W or R is not a constant" in r for r in group_of(a, "pre", "producer").reasons)


# ---- torch exports ---------------------------------------------------------------------------------------


def _torch_rnn(cls, bidirectional, layers=2, with_states=False):
    """Linear -> ReLU -> nn.LSTM/GRU/RNN -> Linear; with_states: h0 (and c0) computed from a second input,
    and the final hidden state read by a second head."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            d = 2 if bidirectional else 1
            self.pre = torch.nn.Linear(IN, FEAT)
            self.rnn = cls(FEAT, HID, num_layers=layers, bidirectional=bidirectional)
            self.head = torch.nn.Linear(d * HID, 7)
            self.init = torch.nn.Linear(4, HID)
            self.head_h = torch.nn.Linear(HID, 3)
            self.n_states = layers * d

        def forward(self, x, z=None):
            f = torch.relu(self.pre(x))
            if not with_states:
                y, _ = self.rnn(f)
                return self.head(y)
            h0 = torch.stack([torch.tanh(self.init(z))] * self.n_states)  # one computed state for all layers
            state = (h0, 0.5 * h0) if cls is torch.nn.LSTM else h0
            y, hn = self.rnn(f, state)
            hn = hn[0] if cls is torch.nn.LSTM else hn
            return self.head(y), self.head_h(hn[-1])

    torch.manual_seed(0)
    x = torch.randn(SEQ, BATCH, IN)
    return Net(), ((x, torch.randn(BATCH, 4)) if with_states else (x,))


TORCH_CASES = [("LSTM", False, False), ("LSTM", True, False), ("LSTM", True, True), ("GRU", False, True),
               ("GRU", True, False), ("RNN", True, False), ("RNN", False, True)]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("op,bidirectional,with_states", TORCH_CASES)
def test_torch_recurrent_oracle(op, bidirectional, with_states, exporter):
    """torch.nn.LSTM/GRU/RNN exported by both exporters: the features feeding the first layer and every
    layer's hidden size prune (oracle). The dynamo exporter unrolls nn.RNN into MatMuls (no RNN node).
    With one computed initial state for both layers, their hidden sizes are one group with its producer."""
    torch = pytest.importorskip("torch")
    from graphprune.passes.normalize import unshare_uniform_constants
    from tests.torch_export import export

    net, inputs = _torch_rnn(getattr(torch.nn, op), bidirectional, with_states=with_states)
    m = export(net, inputs, exporter)
    m, _ = unshare_uniform_constants(m)  # the pipeline's normalize stage: dynamo shares one zero state
    nodes = [n for n in m.graph.node if n.op_type == op]
    assert len(nodes) == (0 if op == "RNN" and exporter == "dynamo" else 2)
    a = run_analysis(m)
    assert not a.internal_errors
    assert not any("no rule for op" in r for g in a.channel_groups for r in g.reasons)
    n_groups = 2 if with_states else 3  # pre's features, the hidden size of each layer (tied by one h0)
    assert len(a.prunable) >= n_groups
    names = [a.view.names[list(a.view.nodes).index(n)] for n in nodes]
    for name in names:
        assert not group_of(a, name, "producer").frozen
    if names:  # the features feeding the first layer
        assert not next(g for g in a.channel_groups if names[0] in g.consumers and g.size == FEAT).frozen
    for seed in (0, 1):
        a, p, removed = assert_oracle(m, seed=seed, min_prunable=n_groups)
        for n in nodes:
            assert attr(p, n.name, "hidden_size") < HID


def test_calibrated_prune_scores_and_reports_uncompensated_recurrent_layer():
    """With calibration data: scoring falls back to weight magnitude for the groups an LSTM reads (it is
    not a linear layer with input statistics), the linear layers are re-fit, and the report lists the
    LSTM as not re-fit, with why (JSON and terminal)."""
    import io

    from rich.console import Console

    import graphprune
    from graphprune.render import print_quality

    m = _recurrent_model("LSTM", direction="bidirectional", states="computed", use_state_outputs=True,
                         batch_first_input=True)
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((32, SEQ, IN)).astype(np.float32),
             "z": rng.standard_normal((32, 4)).astype(np.float32)}
    res = graphprune.prune(m, calib=calib, ratio=0.5)
    q = res.report.quality
    hidden = group_of(res.analysis, "rnn", "producer")
    features = group_of(res.analysis, "pre", "producer")
    assert {hidden.key, features.key} <= set(q["scoring"]["magnitude_fallback"])
    assert len(res.plan.cuts[hidden.key].removed) > 0 and len(res.plan.cuts[features.key].removed) > 0
    comp = q["compensation"]
    rnn_out = next(n.output[0] for n in m.graph.node if n.name == "rnn")
    assert "LSTM layers are not re-fit" in comp["skipped"][rnn_out]
    assert [y for y, why in comp["skipped"].items() if "LSTM" in why] == [rnn_out]
    assert comp["layers"]  # the heads reading the cut hidden units are re-fit
    buf = io.StringIO()
    print_quality(res.report, Console(file=buf, width=200))
    assert "not re-fit: 1 layer: LSTM layers are not re-fit" in buf.getvalue()


# ---- exporters' idioms: default zero states, a sequence made by a run-time-shape Reshape -----------------------


def _zero_state_model(kind):
    """Two stacked LSTMs whose initial states are zeros built from the run-time batch size, the way the
    exporters write the default state: "constantofshape" (TorchScript: ConstantOfShape([2 layers, batch,
    H]) sliced per layer) or "expand" (dynamo: Expand(0., [layers, batch, H]) sliced per layer)."""
    g = GraphBuilder(seed=3)
    x = g.input("x", [SEQ, BATCH, IN])
    f = g.op("Relu", [g.matmul(x, IN, FEAT, name="pre")])
    batch = g.op("Gather", [g.op("Shape", [x]), g.ints([1])], axis=0)
    shape = g.op("Concat", [g.ints([2]), batch, g.ints([HID])], axis=0)
    if kind == "constantofshape":
        zeros = g.op("ConstantOfShape", [shape], value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.0]))
    else:
        zeros = g.op("Expand", [g.const(np.zeros([1], np.float32)), shape])
    h = f
    for layer, width in enumerate((FEAT, HID)):
        state = g.op("Slice", [zeros, g.ints([layer]), g.ints([layer + 1]), g.ints([0])])
        y, _, _ = g.op("LSTM", [h, g.weight([1, 4 * HID, width], f"l{layer}.W"), g.weight([1, 4 * HID, HID]),
                                g.weight([1, 8 * HID]), "", state, state], n_out=3, name=f"lstm{layer}",
                       hidden_size=HID)
        h = g.op("Squeeze", [y, g.ints([1])])
    g.output(g.matmul(h, HID, 7, name="head"))
    return g.model()


@pytest.mark.parametrize("kind", ["constantofshape", "expand"])
def test_zero_initial_states_are_dropped_not_tied(kind):
    """A zero state built from the run-time batch size does not freeze the hidden size (ConstantOfShape
    fixes its axes) nor tie the two layers through the shared zeros: each layer is its own group, and the
    rewrite drops the state (ONNX's default is the same zeros) and the nodes that only built it."""
    m = _zero_state_model(kind)
    a = run_analysis(m)
    assert not group_of(a, "lstm0", "producer").frozen and not group_of(a, "lstm1", "producer").frozen
    assert group_of(a, "lstm0", "producer") is not group_of(a, "lstm1", "producer")
    a, p, removed = assert_oracle(m, min_prunable=3)
    for name in ("lstm0", "lstm1"):
        node = next(n for n in p.graph.node if n.name == name)
        assert len(node.input) <= 5 or not any(node.input[5:7])  # initial_h, initial_c omitted
    assert not any(n.op_type in ("ConstantOfShape", "Expand", "Slice") for n in p.graph.node)


def test_sequence_from_a_run_time_shape_reshape():
    """CRNN's reshape(n, c * h, w) with h == 1, its shape read at run time (Shape -> Gather -> Mul ->
    Concat): the convolution feeding the sequence stays prunable, and the pruned model computes the new
    shape itself."""
    g = GraphBuilder(seed=4)
    x = g.input("x", [1, 3, 1, SEQ])
    f = g.op("Relu", [g.conv(x, 3, FEAT, k=1, name="conv")])  # [1, C, 1, W]
    shp = g.op("Shape", [f])
    n, c, h, w = (g.op("Gather", [shp, g.ints([i])], axis=0) for i in range(4))
    flat = g.op("Reshape", [f, g.op("Concat", [n, g.op("Mul", [c, h]), w], axis=0)])  # [1, C, W]
    seq = g.op("Transpose", [flat], perm=[2, 0, 1])  # [W, 1, C]
    y, _ = g.op("LSTM", [seq, g.weight([1, 4 * HID, FEAT]), g.weight([1, 4 * HID, HID])], n_out=2, name="rnn",
                hidden_size=HID)
    g.output(g.matmul(g.op("Squeeze", [y, g.ints([1])]), HID, 5, name="head"))
    m = g.model()
    a = run_analysis(m)
    conv = group_of(a, "conv", "producer")
    assert not conv.frozen and conv.consumers == ["rnn"]
    a, p, removed = assert_oracle(m, min_prunable=2)
    assert len(kept(a, removed, "conv.W", 0)) < FEAT
    assert any(n.op_type == "Mul" for n in p.graph.node)  # still computed at run time
