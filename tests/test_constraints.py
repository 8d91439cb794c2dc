"""What `graphprune.prune` promises about the model it returns: constraints, options, and the input left alone."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import graphprune
from graphprune.core import runtime
from graphprune.passes.allocation import kept_count

from .tinynet import tinynet


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tinynet(tmp_path_factory.mktemp("constraints") / "m.onnx", tmp_path_factory)


@pytest.fixture
def model(model_path) -> onnx.ModelProto:
    return onnx.load(str(model_path))


def weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def channel_dims(m: onnx.ModelProto) -> dict[str, int]:
    """Axis-1 size of every inferred activation (the channel axis of NCHW tensors and of [N, features])."""
    inferred = onnx.shape_inference.infer_shapes(m)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            out[vi.name] = dims[1].dim_value
    return out


def run(m: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    return runtime.run(m, runtime.synthetic_inputs(m, seed=seed))


def conv_groups(m: onnx.ModelProto) -> list[tuple[str, int, np.ndarray]]:
    w = weights(m)
    out = []
    for n in m.graph.node:
        if n.op_type == "Conv":
            group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
            out.append((n.name, group, w[n.input[1]]))
    return out


# ---- structural constraints -----------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75, 0.99])
def test_grouped_convs_stay_divisible(model, ratio):
    res = graphprune.prune(model, ratio=ratio)
    before = {name: (g, w.shape) for name, g, w in conv_groups(model)}
    shapes = channel_dims(res.model)
    for node in res.model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        w = weights(res.model)[node.input[1]]
        c_in = shapes[node.input[0]] if node.input[0] in shapes else 3
        c_out = w.shape[0]
        assert c_out % group == 0, (node.name, c_out, group)
        assert w.shape[1] * group == c_in, (node.name, w.shape, group, c_in)
        if before[node.name][0] == before[node.name][1][0]:  # depthwise stays depthwise
            assert group == c_out == c_in, node.name
    assert {g for _, g, _ in conv_groups(res.model)} != {1}  # the grouped convs are still grouped
    assert res.report.validation["runtime"]


def test_no_layer_drops_to_zero_channels(model):
    res = graphprune.prune(model, ratio=0.99, round_to=1)  # exact counts (auto keeps at least one block)
    for t in res.model.graph.initializer:
        assert all(d >= 1 for d in t.dims), (t.name, list(t.dims))
    for name, c in channel_dims(res.model).items():
        assert c >= 1, name
    assert run(res.model)[0].shape == (1, 10)
    # every prunable group was cut as far as it goes: one unit left
    assert weights(res.model)["conv1.weight"].shape[0] == 1
    assert weights(res.model)["fc1.weight"].shape[0] == 1


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5, 0.7, 0.9])
def test_round_to_gives_multiples(model, ratio):
    res = graphprune.prune(model, ratio=ratio, round_to=8)
    before, after = channel_dims(model), channel_dims(res.model)
    cut = 0
    for name, c in after.items():
        if before[name] >= 8 and c != before[name]:
            cut += 1
            assert c % 8 == 0, (name, before[name], c)
    for name, w in weights(res.model).items():  # output channels of every conv/linear that was cut
        old = weights(model)[name]
        if w.ndim >= 2 and old.shape[0] >= 8 and w.shape[0] != old.shape[0]:
            assert w.shape[0] % 8 == 0, (name, old.shape, w.shape)
    if ratio >= 0.5:
        assert cut, "round_to=8 should still cut something at this ratio"


def test_exclude_leaves_the_layer_untouched(model):
    names = [n.name for n in model.graph.node]
    assert "/conv2/Conv" in names  # the glob below is written for torch's node names
    res = graphprune.prune(model, ratio=0.5, exclude=("/conv2*",))
    w0, w1 = weights(model), weights(res.model)
    for name in ("conv2.weight", "conv2.bias"):
        assert w1[name].shape == w0[name].shape
        assert w1[name].tobytes() == w0[name].tobytes()
    assert w1["fc1.weight"].shape[0] < w0["fc1.weight"].shape[0]  # the rest is still pruned
    frozen = [r for g in res.report.groups_frozen for r in g["reasons"]]
    assert any("/conv2*" in r for r in frozen), frozen


def test_exclude_by_initializer_name(model):
    res = graphprune.prune(model, ratio=0.5, exclude=("fc1.*",))
    assert weights(res.model)["fc1.weight"].shape == weights(model)["fc1.weight"].shape


def test_exclude_that_matches_nothing_changes_nothing(model):
    a = graphprune.prune(model, ratio=0.5)
    b = graphprune.prune(model, ratio=0.5, exclude=("/no/such/node*",))
    assert a.model.SerializeToString() == b.model.SerializeToString()


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("max_ratio", [0.25, 0.45])
def test_max_ratio_caps_removal(model, max_ratio, round_to):
    res = graphprune.prune(model, ratio=0.9, max_ratio=max_ratio, round_to=round_to)
    before, after = channel_dims(model), channel_dims(res.model)
    for name, c in after.items():
        removed = before[name] - c
        assert removed <= math.floor(before[name] * max_ratio + 1e-9), (name, before[name], c)
    assert sum(before.values()) > sum(after.values())  # it still prunes


def test_kept_count_properties():
    """Exhaustively over small groups: keep in [1, n], max_ratio never exceeded, multiples of round_to."""
    for n in range(1, 65):
        for ratio in [i / 20 for i in range(20)]:
            for max_ratio in (None, 0.1, 0.25, 0.45, 0.8):
                for round_to in (1, 2, 4, 8, 16):
                    for per_unit in (1, 2, 4):
                        k = kept_count(n, ratio, max_ratio, round_to, per_unit)
                        assert 1 <= k <= n
                        if max_ratio is not None:
                            assert n - k <= math.floor(n * max_ratio + 1e-9), (n, ratio, max_ratio, round_to, k)
                        q = round_to // math.gcd(round_to, per_unit)
                        if q > 1 and n >= q and k != n:
                            assert k % q == 0, (n, ratio, max_ratio, round_to, per_unit, k)
                        if ratio == 0:
                            assert k == n, (n, round_to, per_unit, k)  # rounding never cuts an uncut group
                        if round_to == 1:
                            r = ratio if max_ratio is None else min(ratio, max_ratio)
                            assert n - k == min(n - 1, math.floor(n * r + 1e-9))


# ---- scoring options ------------------------------------------------------------------------------------
def test_random_importance_is_seeded(model):
    a = graphprune.prune(model, ratio=0.5, importance="random", seed=1)
    b = graphprune.prune(model, ratio=0.5, importance="random", seed=1)
    c = graphprune.prune(model, ratio=0.5, importance="random", seed=2)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.plan.to_json() == b.plan.to_json()
    wa, wc = weights(a.model), weights(c.model)
    assert any(wa[k].tobytes() != wc[k].tobytes() for k in wa)
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wc.items()}  # same counts


def test_magnitude_importance_is_deterministic(model):
    a = graphprune.prune(model, ratio=0.5, importance="l1")
    b = graphprune.prune(model, ratio=0.5, importance="l1", seed=7)  # the seed does not matter for l1
    assert a.model.SerializeToString() == b.model.SerializeToString()


def test_ratio_zero_is_bit_identical(model):
    res = graphprune.prune(model, ratio=0.0)
    assert res.plan.n_removed == 0
    for seed in (0, 1):
        for got, want in zip(run(res.model, seed), run(model, seed)):
            assert got.dtype == want.dtype and np.array_equal(got, want)
    w0, w1 = weights(model), weights(res.model)
    assert w0.keys() == w1.keys() and all(w0[k].tobytes() == w1[k].tobytes() for k in w0)
    assert res.report.after.params == res.report.before.params


# ---- inputs: path or ModelProto, never modified ---------------------------------------------------------
def test_path_and_modelproto_give_the_same_result(model, model_path):
    a = graphprune.prune(model_path, ratio=0.5)
    b = graphprune.prune(model, ratio=0.5)
    c = graphprune.prune(str(model_path), ratio=0.5)
    assert a.model.SerializeToString() == b.model.SerializeToString() == c.model.SerializeToString()


@pytest.mark.parametrize("kwargs", [dict(ratio=0.5), dict(ratio=0.0), dict(ratio=0.7, round_to=8),
                                    dict(ratio=0.5, exclude=("/conv2*",), importance="random"),
                                    dict(ratio=0.5, input_shapes={"input": [1, 3, 16, 16]})])
def test_input_model_is_never_modified(model, model_path, kwargs):
    before = model.SerializeToString()
    file_before = model_path.read_bytes()
    graphprune.prune(model, **kwargs)
    graphprune.analyze(model)
    graphprune.prune(model_path, **kwargs)
    assert model.SerializeToString() == before
    assert model_path.read_bytes() == file_before


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def test_input_shapes_fix_dynamic_dims(model):
    m = dynamic_batch(model)
    before = m.SerializeToString()
    res = graphprune.prune(m, ratio=0.5, input_shapes={"input": [3, 3, 16, 16]})
    assert res.report.validation["runtime"]
    out = runtime.run(res.model, runtime.synthetic_inputs(res.model, {"input": [3, 3, 16, 16]}))[0]
    assert out.shape == (3, 10)
    assert m.SerializeToString() == before


def test_input_shapes_fix_a_minus_one_dim(model):
    """Paddle exports write an unknown batch as dim_value -1 (rapidocr's text classifier): that is a dynamic
    dim --input-shape may fix, not a static one it contradicts."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    res = graphprune.prune(m, ratio=0.5, input_shapes={"input": [2, 3, 16, 16]})
    out = runtime.run(res.model, runtime.synthetic_inputs(res.model, {"input": [2, 3, 16, 16]}))[0]
    assert out.shape == (2, 10)


@pytest.mark.parametrize("dynamic_axes", [(0,), (0, 2, 3)])
def test_report_counts_before_and_after_on_the_same_input_shape(model, dynamic_axes):
    """MACs before and after are both counted for --input-shape, so their ratio is the static model's."""
    m = dynamic_batch(model)
    for ax in dynamic_axes:
        m.graph.input[0].type.tensor_type.shape.dim[ax].dim_param = f"d{ax}"
    static = graphprune.prune(model, ratio=0.5).report
    dyn = graphprune.prune(m, ratio=0.5, input_shapes={"input": [3, 3, 16, 16]}).report
    assert dyn.before.macs == 3 * static.before.macs
    assert dyn.after.macs == 3 * static.after.macs
    assert dyn.before.params == static.before.params and dyn.after.params == static.after.params


@pytest.mark.parametrize("shapes, message", [
    ({"image": [1, 3, 16, 16]}, "not a graph input"),
    ({"input": [1, 3, 16]}, "rank"),
    ({"input": [2, 3, 16, 16]}, "fixed to 1"),
    ({"input": [1, 3, 32, 32]}, "fixed to 16"),
])
def test_input_shapes_the_model_contradicts(model, shapes, message):
    """A wrong --input-shape is the user's mistake: say so, instead of failing later in validation."""
    with pytest.raises(graphprune.UsageError, match=message):
        graphprune.prune(model, ratio=0.5, input_shapes=shapes)
    with pytest.raises(graphprune.UsageError, match=message):
        graphprune.analyze(model, input_shapes=shapes)


def test_options_object_and_kwargs_agree(model):
    a = graphprune.prune(model, graphprune.PruneOptions(ratio=0.4, round_to=4))
    b = graphprune.prune(model, ratio=0.4, round_to=4)
    assert a.model.SerializeToString() == b.model.SerializeToString()


def test_exclude_accepts_a_single_string(model):
    """A bare string is one glob, not one pattern per character ('*' would freeze everything)."""
    a = graphprune.prune(model, ratio=0.5, exclude="/conv2*")
    b = graphprune.prune(model, ratio=0.5, exclude=("/conv2*",))
    assert a.plan.n_removed == b.plan.n_removed > 0
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert len(graphprune.analyze(model, exclude="/conv2*").frozen) == len(graphprune.analyze(
        model, exclude=["/conv2*"]).frozen)


def test_numpy_scalars_are_accepted(model):
    a = graphprune.prune(model, ratio=np.float32(0.5), round_to=np.int64(4), seed=np.int64(0))
    b = graphprune.prune(model, ratio=0.5, round_to=4)
    assert a.model.SerializeToString() == b.model.SerializeToString()


@pytest.mark.parametrize("kwargs", [dict(ratio=1.0), dict(ratio=-0.1), dict(round_to=0), dict(max_ratio=1.0),
                                    dict(importance="nope"), dict(no_such_option=1), dict(ratio="0.5"),
                                    dict(round_to=2.5), dict(seed="x"), dict(exclude=[1]),
                                    dict(ratio=float("nan"))])
def test_bad_options_raise_usage_error(model, kwargs):
    with pytest.raises(graphprune.UsageError):
        graphprune.prune(model, **kwargs)


def test_plan_roundtrip_through_the_api(model):
    a = graphprune.prune(model, ratio=0.5, importance="random", seed=5)
    plan = graphprune.Plan.from_json(a.plan.to_json())
    b = graphprune.prune(model, plan=plan)
    assert a.model.SerializeToString() == b.model.SerializeToString()


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_auto_round_to_keeps_whole_channel_blocks(ratio):
    """The default (--round-to auto) keeps multiples of 16 in groups of 32+ channels, of 8 in groups of 16-31,
    and leaves an uncut group alone (on MobileNetV2, whose widths 16/24/32/96/144... exercise all three)."""
    from models import get_model

    model = onnx.load(str(get_model("mobilenetv2")))
    res = graphprune.prune(model, ratio=ratio)
    before, after = weights(model), weights(res.model)
    cut = 0
    for name, w in after.items():
        old = before[name]
        if w.ndim != 4 or old.shape[0] == w.shape[0]:
            continue
        cut += 1
        block = 16 if old.shape[0] >= 32 else 8 if old.shape[0] >= 16 else 1
        assert w.shape[0] % block == 0, (name, old.shape, w.shape)
    assert cut >= 10
    exact = graphprune.prune(model, ratio=ratio, round_to=1)
    odd = [n for n, w in weights(exact.model).items() if w.ndim == 4 and w.shape[0] % 8]
    assert odd, "round_to=1 keeps exact counts (this model then has widths that are not multiples of 8)"
