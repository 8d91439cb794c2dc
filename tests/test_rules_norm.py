"""Normalisation rules: per-channel (BN, IN) slice parameters, GroupNorm cuts whole groups, LayerNorm freezes."""

import numpy as np
import onnx
import pytest

from tests.graphs import GraphBuilder, assert_oracle_unchecked, attr, group_of, init_value, kept, run_analysis, sizes
from tests.oracle import assert_oracle, assert_ratio_zero_identical


def _conv_norm_conv(norm, opset=17, c=16, check=True):
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, c, name="c1")
    y = norm(g, y)
    y = g.op("Relu", [y])
    g.output(g.conv(y, c, 4, k=1, name="c2"))
    return g.model(check=check)


def test_batchnorm_parameters_sliced():
    m = _conv_norm_conv(lambda g, y: g.op("BatchNormalization", [y, g.positive([16], "bn.s"), g.weight([16], "bn.b"),
                                                                 g.weight([16], "bn.m"), g.positive([16], "bn.v")],
                                          name="bn"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    k = kept(a, removed, "c1_out", 1)
    for t in ("bn.s", "bn.b", "bn.m", "bn.v"):
        np.testing.assert_array_equal(init_value(p, t), init_value(m, t)[k])
    assert_ratio_zero_identical(m)


def test_batchnorm_training_mode_running_stats_freeze_the_channels():
    """Training-mode BN exposes per-channel running statistics; whoever reads them must not see a cut."""
    g = GraphBuilder(opset=15)
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y, rm, _ = g.op("BatchNormalization", [y, g.positive([16]), g.weight([16]), g.weight([16]), g.positive([16])],
                    n_out=3, name="bn", training_mode=1)
    rm = g.op("Mul", [rm, g.weight([16], "k")])
    g.output(g.conv(y, 16, 4, name="c2"), rm)
    a = run_analysis(g.model())
    assert a.prunable == []
    grp = group_of(a, "c1", "producer")
    assert any("BatchNormalization 'bn' in training mode" in r for r in grp.reasons)


def test_instancenorm_parameters_sliced():
    m = _conv_norm_conv(lambda g, y: g.op("InstanceNormalization", [y, g.positive([16], "in.s"),
                                                                    g.weight([16], "in.b")], name="in"))
    a = run_analysis(m)
    assert sizes(a.prunable) == [16]
    a, p, removed = assert_oracle(m)
    assert init_value(p, "in.s").shape == (16 - len(removed),)
    assert init_value(p, "in.b").shape == (16 - len(removed),)


@pytest.mark.parametrize("opset", [18, 21])
def test_groupnorm_cuts_whole_groups(opset):
    # opset 18: scale/bias have one value per group; opset 21: one per channel.
    n = 4 if opset == 18 else 16

    def norm(g, y):
        out = g.op("GroupNormalization", [y, g.positive([n], "gn.s"), g.weight([n], "gn.b")], name="gn",
                   num_groups=4)
        # ONNX shape inference cannot type GroupNormalization (see the xfail below); exporters record it.
        return g.declare(out, [1, 16, 5, 5])

    # GroupNormalization-18 is deprecated: the checker refuses it, ORT still runs it.
    m = _conv_norm_conv(norm, opset=opset, check=opset != 18)
    a = run_analysis(m)
    assert sizes(a.prunable) == [4]
    assert a.prunable[0].round_multiple == 4
    a, p, removed = (assert_oracle_unchecked if opset == 18 else assert_oracle)(m)
    k = kept(a, removed, "c1_out", 1)
    blocks = np.unique(k // 4)
    np.testing.assert_array_equal(k, (blocks[:, None] * 4 + np.arange(4)).ravel())  # whole groups
    assert attr(p, "gn", "num_groups") == len(blocks)
    want = blocks if opset == 18 else k
    np.testing.assert_array_equal(init_value(p, "gn.s"), init_value(m, "gn.s")[want])


@pytest.mark.xfail(strict=True, reason="onnx shape inference has no inference for GroupNormalization (a "
                   "context-dependent function), so without recorded value_info its output has no shape and "
                   "everything downstream is frozen")
def test_groupnorm_without_value_info():
    def norm(g, y):
        return g.op("GroupNormalization", [y, g.positive([16], "gn.s"), g.weight([16], "gn.b")], name="gn",
                    num_groups=4)

    m = _conv_norm_conv(norm, opset=21, check=False)
    assert sizes(run_analysis(m).prunable) == [4]


def _layernorm_model():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8])
    h = g.matmul(x, 8, 16, name="m1")
    h = g.op("LayerNormalization", [h, g.positive([16], "ln.s"), g.weight([16], "ln.b")], name="ln", axis=-1)
    g.output(g.matmul(h, 16, 6, name="m2"))
    return g.model()


def test_layernorm_freezes_hidden_with_reason():
    m = _layernorm_model()
    a = run_analysis(m)
    assert a.prunable == []
    grp = group_of(a, "m1", "producer")
    assert grp.frozen
    assert any("LayerNormalization 'ln'" in r and "--prune-hidden" in r for r in grp.reasons)


def test_layernorm_prune_hidden_opt_in():
    m = _layernorm_model()
    a = run_analysis(m, prune_hidden=True)
    assert sizes(a.prunable) == [16]
    assert set(a.prunable[0].nodes) == {"m1", "m2"}


def test_layernorm_over_non_channel_axis_only():
    """LayerNorm over the last (spatial) axis of an NCHW tensor leaves channels prunable."""
    def norm(g, y):
        return g.op("LayerNormalization", [y, g.positive([5], "ln.s")], name="ln", axis=-1)

    m = _conv_norm_conv(norm)
    assert sizes(run_analysis(m).prunable) == [16]
    assert_oracle(m)


@pytest.mark.parametrize("op,attrs", [("LpNormalization", {"axis": 1}), ("LRN", {"size": 3})])
def test_channel_mixing_norms_freeze(op, attrs):
    m = _conv_norm_conv(lambda g, y: g.op(op, [y], name="nrm", **attrs))
    a = run_analysis(m)
    assert a.prunable == []
    grp = group_of(a, "c1", "producer")
    assert any(f"{op} 'nrm'" in r for r in grp.reasons)


def test_layernorm_over_chw_freezes_channels():
    m = _conv_norm_conv(lambda g, y: g.op("LayerNormalization", [y, g.positive([16, 5, 5])], name="ln", axis=1))
    a = run_analysis(m)
    assert a.prunable == []
    assert any("LayerNormalization 'ln'" in r for r in group_of(a, "c1", "producer").reasons)


# ---- GroupNorm with one group: statistics over every channel -----------------------------------------------

_GN_ONE = "GroupNorm with one group"


def _torch_groupnorm_model(groups, exporter, opset=None):
    """c0 -> ReLU -> c1 -> GroupNorm(groups, 32) -> ReLU -> c2 -> ReLU -> c3, exported by torch."""
    torch = pytest.importorskip("torch")
    from tests.torch_export import export

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c1 = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.gn = torch.nn.GroupNorm(groups, 32)
            self.c2 = torch.nn.Conv2d(32, 16, 3, padding=1)
            self.c3 = torch.nn.Conv2d(16, 4, 3)

        def forward(self, x):
            x = self.gn(self.c1(torch.relu(self.c0(x))))
            return self.c3(torch.relu(self.c2(torch.relu(x))))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # affine parameters away from 1 and 0, so slicing them is visible
        net.gn.weight.uniform_(0.5, 1.5)
        net.gn.bias.uniform_(-1, 1)
    return export(net, (torch.randn(1, 3, 8, 8),), exporter, opset)


# dynamo at opset 18 exports Reshape -> InstanceNormalization like TorchScript; at opset 21 GroupNormalization.
_EXPORTS = [("torchscript", None), ("dynamo", 18), ("dynamo", 21)]


def _gn_group(a):
    """The group c1 (the second Conv) produces: the normalised channels."""
    c1 = [n for n in a.view.nodes if n.op_type == "Conv"][1]
    return group_of(a, a.view.names[a.view.nodes.index(c1)], "producer")


@pytest.mark.parametrize("exporter,opset", _EXPORTS)
def test_groupnorm_one_group_freezes_by_design_and_the_rest_prunes(exporter, opset):
    """GroupNorm(1, C) normalises over all channels: its channels are frozen with a reason a user reads,
    and the convolutions before and after it still prune (oracle)."""
    m = _torch_groupnorm_model(1, exporter, opset)
    ops = {n.op_type for n in m.graph.node}
    assert ("GroupNormalization" in ops) == (opset == 21)
    a = run_analysis(m)
    grp = _gn_group(a)
    assert grp.frozen and grp.size == 32
    assert any(_GN_ONE in r and "--prune-hidden" in r for r in grp.reasons)
    assert all(r.kind == "by_design" for r in grp.refusals)
    assert sizes(a.prunable) == [16, 16]  # c0 and c2
    a, p, removed = assert_oracle(m, min_prunable=2)
    assert len(removed) > 0


@pytest.mark.parametrize("exporter,opset", _EXPORTS)
def test_groupnorm_several_groups_cuts_whole_groups_torch(exporter, opset):
    m = _torch_groupnorm_model(4, exporter, opset)
    a = run_analysis(m)
    grp = _gn_group(a)
    assert not grp.frozen and grp.size == 4
    a, p, removed = assert_oracle(m, min_prunable=3)
    c1 = [n for n in m.graph.node if n.op_type == "Conv"][1]
    k = kept(a, removed, c1.output[0], 1)
    blocks = np.unique(k // 8)
    np.testing.assert_array_equal(k, (blocks[:, None] * 8 + np.arange(8)).ravel())


@pytest.mark.parametrize("exporter,opset", _EXPORTS)
def test_groupnorm_one_group_prune_hidden(exporter, opset):
    """Under --prune-hidden the one-group norm is a hidden axis: it is cut, the model still runs, and the
    norm normalises over the channels kept (the oracle does not apply to a cut that changes statistics)."""
    import graphprune
    from graphprune.core import runtime

    m = _torch_groupnorm_model(1, exporter, opset)
    a = run_analysis(m, prune_hidden=True)
    grp = _gn_group(a)
    assert not grp.frozen and grp.kind == "hidden"
    res = graphprune.prune(m, ratio=0.5, prune_hidden=True)
    v = res.report.validation
    assert v["checker"] and v["shape_inference"] and v["runtime"] and v["oracle_max_abs_diff"] is None
    assert len(res.plan.cuts[_gn_group(res.analysis).key].removed) == 16
    if opset == 21:
        assert attr(res.model, next(n.name for n in m.graph.node if n.op_type == "GroupNormalization"),
                    "num_groups") == 1
    # The pruned norm normalises the 16 kept channels: zero mean over them, per sample.
    gn_out = next(n.output[0] for n in res.model.graph.node
                  if n.op_type in ("GroupNormalization", "InstanceNormalization"))
    probe = onnx.ModelProto()
    probe.CopyFrom(res.model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(gn_out, onnx.TensorProto.FLOAT, None))
    out = runtime.run(probe, runtime.synthetic_inputs(m))[-1]
    if opset == 21:  # GroupNormalization includes the affine parameters: undo them
        node = next(n for n in res.model.graph.node if n.op_type == "GroupNormalization")
        s, b = init_value(res.model, node.input[1]), init_value(res.model, node.input[2])
        out = (out - b.reshape(1, -1, 1, 1)) / s.reshape(1, -1, 1, 1)
    assert out.reshape(-1).size == 16 * 64
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-2


def test_groupnormalization_one_group_helper_graph():
    """GroupNormalization num_groups=1 built by hand: frozen by design, and under --prune-hidden the
    per-channel scale and bias are sliced while num_groups stays 1."""
    def norm(g, y):
        out = g.op("GroupNormalization", [y, g.positive([16], "gn.s"), g.weight([16], "gn.b")], name="gn",
                   num_groups=1)
        return g.declare(out, [1, 16, 5, 5])

    m = _conv_norm_conv(norm, opset=21)
    a = run_analysis(m)
    assert a.prunable == []
    assert any(_GN_ONE in r for r in group_of(a, "c1", "producer").reasons)
    from graphprune.passes import rewrite

    a = run_analysis(m, prune_hidden=True)
    assert sizes(a.prunable) == [16] and a.prunable[0].kind == "hidden"
    removed = a.prunable[0].units[:6]
    p = rewrite.apply(m, a.cut(removed))
    onnx.checker.check_model(p, full_check=True)
    k = kept(a, removed, "c1_out", 1)
    np.testing.assert_array_equal(init_value(p, "gn.s"), init_value(m, "gn.s")[k])
    assert attr(p, "gn", "num_groups") == 1


def test_instancenorm_over_merged_channels_freezes():
    """Any InstanceNormalization whose normalised axis carries merged channels freezes them (here the
    helper-graph form of torch's GroupNorm(1, C) export, with a constant target shape)."""
    def norm(g, y):
        z = g.op("Reshape", [y, g.ints([1, 1, -1])])
        z = g.op("InstanceNormalization", [z, g.positive([1]), g.weight([1])], name="in")
        z = g.op("Reshape", [z, g.ints([1, 16, 5, 5])])
        return g.op("Add", [g.op("Mul", [z, g.positive([16, 1, 1], "gn.s")]), g.weight([16, 1, 1], "gn.b")])

    m = _conv_norm_conv(norm)
    a = run_analysis(m)
    assert a.prunable == []
    assert any(_GN_ONE in r and "'in'" in r for r in group_of(a, "c1", "producer").reasons)
