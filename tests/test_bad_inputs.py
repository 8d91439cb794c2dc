"""The bad-input corpus (tests/corpus.py) through the CLI, and the hard models behind it: control flow,
quantized operators, storage dtypes, opsets 11 to the newest.

Every error case must end in one line on stderr naming the problem, the right exit code, no traceback,
nothing written and the input unchanged; every hard-but-legal case must prune to a valid model (or say
"nothing to prune") with the frozen reasons a user can read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

import graphprune
from graphprune.cli import main
from graphprune.core import runtime
from tests import corpus
from tests.graphs import GraphBuilder, init_value, run_analysis
from tests.oracle import assert_oracle

CASES = corpus.cases()


snapshot = corpus.snapshot


def run_main(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphprune: error:"), err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


@pytest.fixture
def case_folder(tmp_path, monkeypatch):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_corpus_size():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.expect == "error" for c in CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case, case_folder):
    """Errors: one line naming the problem, the exit code, no traceback, nothing written, the input intact.
    Hard models: exit 0, a valid pruned model that passed the oracle, the frozen reasons in the report (or
    "nothing to prune" and no model). See corpus.check_case."""
    result = corpus.check_case(case, case_folder)
    assert result["ok"], "\n".join(result["problems"])


FILE_CASES = [c for c in CASES if c.expect == "error" and c.family in ("file", "graph", "external")]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_api_raises_graphprune_errors(case, case_folder):
    """The Python API refuses the same files with the same one-line messages (GraphpruneError subclasses,
    never a protobuf, ONNX or ONNX Runtime exception)."""
    (path,) = case.make(case_folder)
    with pytest.raises(graphprune.GraphpruneError) as info:
        graphprune.prune(path, ratio=0.5)
    assert "\n" not in str(info.value)
    assert all(m in str(info.value) for m in case.mentions if not m.startswith("graphprune"))


@pytest.mark.parametrize("name", ["unknown opset domain", "external data outside the folder (..)",
                                  "QLinearConv, per-channel"])
def test_cases_in_a_real_process(name, case_folder):
    """A few cases as a user's shell runs them (ONNX Runtime's own logging included)."""
    case = next(c for c in CASES if c.name == name)
    argv = case.make(case_folder)
    before = snapshot(case_folder)
    r = subprocess.run([sys.executable, "-m", "graphprune.cli", *argv], capture_output=True, text=True,
                       timeout=120)
    if case.expect == "error":
        assert r.returncode == case.code
        assert_one_line_error(r.stderr)
        assert snapshot(case_folder) == before
    else:
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert (case_folder / "m.pruned.onnx").exists()


def test_debug_shows_the_traceback(case_folder):
    argv = corpus._truncated(case_folder)
    r = subprocess.run([sys.executable, "-m", "graphprune.cli", *argv, "--debug"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ModelError" in r.stderr


# ---- atomic writes of the side files ------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_interrupted_text_write_keeps_the_previous_file(tmp_path, monkeypatch, exc):
    """Reports, plans and HTML pages are written like models: temporary file, then rename."""
    from graphprune.core import io as gio

    target = tmp_path / "r.json"
    target.write_text("previous")
    real = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real(self, text[:5], *args, **kwargs)
        raise exc

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt) else graphprune.GraphpruneError):
        gio.write_text_atomic(target, '{"a": 1}')
    monkeypatch.undo()
    assert target.read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # no temporary file left


def test_html_report_and_plan_are_complete_files(case_folder, capsys):
    corpus.save(case_folder, corpus.cnn_model())
    rc, _, err = run_main(capsys, ["m.onnx", "--dry-run", "--save-plan", "p.json", "--report", "r.json", "-q"])
    assert rc == 0, err
    assert json.loads((case_folder / "p.json").read_text())["cuts"]
    assert json.loads((case_folder / "r.json").read_text())["output"] is None
    assert sorted(p.name for p in case_folder.iterdir()) == ["m.onnx", "p.json", "r.json"]


# ---- nothing to prune ------------------------------------------------------------------------------------
def test_nothing_to_prune_names_the_reasons(case_folder, capsys):
    corpus.save(case_folder, corpus.all_frozen_model())
    rc, out, err = run_main(capsys, ["m.onnx"])
    assert rc == 0 and err == ""
    assert out.count("\n") == 1  # one line, however wide the terminal
    assert "nothing to prune" in out and "Softmax 'softmax'" in out and "no model written" in out
    rc, out, _ = run_main(capsys, ["m.onnx", "--json"])
    assert rc == 0 and json.loads(out)["nothing_to_prune"] is True
    rc, out, _ = run_main(capsys, ["m.onnx", "--quiet"])
    assert rc == 0 and out == ""
    assert snapshot(case_folder).keys() == {"m.onnx"}


def test_nothing_to_prune_through_the_api():
    res = graphprune.prune(corpus.all_frozen_model(), ratio=0.5)
    assert not res.analysis.prunable and res.plan.n_removed == 0
    assert res.report.groups_pruned == 0


# ---- control flow ----------------------------------------------------------------------------------------
def _reasons(a) -> str:
    return " | ".join(r for g in a.groups for r in g.reasons)


def test_if_capture_freezes_only_what_the_branches_read():
    a = run_analysis(corpus.if_model())
    by_producer = {p: g for g in a.channel_groups for p in g.producers}
    assert not by_producer["conv1"].frozen and not by_producer["conv2"].frozen
    assert by_producer["conv3"].frozen
    assert any("read inside the subgraph of 'branch'" in r for r in by_producer["conv3"].reasons)
    assert_oracle(corpus.if_model())


def test_loop_input_freezes_with_a_reason():
    """A tensor consumed directly as a Loop input (loop-carried), not captured by the body."""
    a = run_analysis(corpus.loop_model())
    g = next(g for g in a.channel_groups if "conv2" in g.producers)
    assert g.frozen and any("flows into Loop 'loop'" in r for r in g.reasons)
    after = next(g for g in a.channel_groups if "conv3" in g.consumers)
    assert after.frozen and any("comes out of Loop 'loop'" in r for r in after.reasons)
    assert not next(g for g in a.channel_groups if "conv1" in g.producers).frozen
    assert_oracle(corpus.loop_model())


def test_scan_input_freezes_with_a_reason():
    a = run_analysis(corpus.scan_model())
    assert "flows into Scan 'scan'" in _reasons(a)
    assert_oracle(corpus.scan_model())


def test_if_condition_from_a_conv_freezes():
    """If's own input (its condition) computed from a conv's channels."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")])
    y2 = g.conv(y, 16, 16, name="conv2")
    cond = g.op("Greater", [g.op("ReduceSum", [y2], keepdims=0), g.const(np.float32(0))])
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Constant", [], ["t"], value_float=1.0)], "t", [],
                               [vi("t", TP.FLOAT, [])])
    else_g = helper.make_graph([helper.make_node("Constant", [], ["e"], value_float=0.0)], "e", [],
                               [vi("e", TP.FLOAT, [])])
    g.nodes.append(helper.make_node("If", [cond], ["flag"], name="branch", then_branch=then_g,
                                    else_branch=else_g))
    g.output(g.op("Mul", [g.conv(y2, 16, 4, name="conv3"), "flag"]))
    m = g.model()
    a = run_analysis(m)
    assert not next(g for g in a.channel_groups if "conv1" in g.producers).frozen
    assert_oracle(m)


def test_weight_read_inside_a_loop_body_freezes_its_channels():
    """A weight initializer the main graph slices, also read (captured) by a Loop body: both of its channel
    axes keep every channel; the rest of the graph still prunes."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 3, 8, name="conv0")])
    y = g.op("Relu", [g.conv(y, 8, 16, name="conv1")])
    y = g.op("Relu", [g.conv(y, 16, 16, name="conv2")])
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("ReduceSum", ["conv2.W"], ["s"], keepdims=0),  # reads the outer weight
         helper.make_node("Add", ["acc_in", "s"], ["acc_out"])],
        "body", [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("acc_in", TP.FLOAT, [])],
        [vi("c_out", TP.BOOL, []), vi("acc_out", TP.FLOAT, [])])
    g.nodes.append(helper.make_node("Loop", [g.ints(np.array(2, np.int64)), g.const(np.array(True)),
                                             g.const(np.float32(0))], ["total"], name="loop", body=body))
    g.output(g.conv(y, 16, 4, name="conv3"))
    g.outputs.append(vi("total", TP.FLOAT, []))
    m = g.model()
    a = run_analysis(m)
    frozen = " | ".join(r for grp in a.frozen for r in grp.reasons)
    assert "read inside the subgraph of 'loop'" in frozen
    assert not any("conv2" in grp.producers or "conv2" in grp.consumers for grp in a.prunable)
    res = graphprune.prune(m, ratio=0.5)
    np.testing.assert_array_equal(init_value(res.model, "conv2.W"), init_value(m, "conv2.W"))
    assert [grp.producers for grp in a.prunable] == [["conv0"]] and res.report.groups_pruned == 1
    assert_oracle(m)


def test_constant_read_by_a_subgraph_is_not_edited_in_place():
    """Regression: a Reshape target also read inside an If body was rewritten in place (the body saw the
    pruned shape and the oracle failed). It now gets a copy; the body keeps the original."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    c = g.input("cond", [], TP.BOOL)
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")])
    r = g.op("Reshape", [y, g.ints([1, 16, 64], "shape_c")], name="flat")
    r = g.op("Reshape", [r, g.ints([1, 16, 8, 8])], name="back")
    vi = [helper.make_tensor_value_info("t", TP.INT64, [3])]
    branch = helper.make_graph([helper.make_node("Identity", ["shape_c"], ["t"])], "b", [], vi)
    g.nodes.append(helper.make_node("If", [c], ["shape_out"], name="branch", then_branch=branch,
                                    else_branch=branch))
    g.output(g.conv(r, 16, 4, name="conv2"), "shape_out")
    res = graphprune.prune(g.model(), ratio=0.5)
    assert res.report.groups_pruned == 1
    np.testing.assert_array_equal(init_value(res.model, "shape_c"), [1, 16, 64])


def test_node_read_by_a_subgraph_survives_dead_node_removal():
    """Regression: a run-time Slice bound (Shape -> Gather -> Div) is replaced by a constant and its now
    unused chain removed; the chain's output was also read inside an If body and vanished with it."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    c = g.input("cond", [], TP.BOOL)
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")])
    ch = g.op("Gather", [g.op("Shape", [y]), g.ints([1])], name="gather", axis=0)
    half = g.op("Div", [ch, g.ints([2])], name="half")
    a = g.op("Slice", [y, g.ints([0]), half, g.ints([1])], name="slice_a")
    b = g.op("Slice", [y, half, g.ints([16]), g.ints([1])], name="slice_b")
    z = g.op("Add", [g.conv(a, 8, 4, name="ca"), g.conv(b, 8, 4, name="cb")])
    vi = [helper.make_tensor_value_info("t", TP.INT64, [1])]
    branch = helper.make_graph([helper.make_node("Shape", [half], ["t"])], "b", [], vi)  # [1] whatever `half` is
    g.nodes.append(helper.make_node("If", [c], ["rank"], name="branch", then_branch=branch, else_branch=branch))
    g.output(z, "rank")
    res = graphprune.prune(g.model(), ratio=0.5)
    assert res.report.groups_pruned == 2
    assert "half" in [n.name for n in res.model.graph.node]


# ---- quantized operators -----------------------------------------------------------------------------------
QUANT_MODELS = {
    "qlinearconv per-channel": lambda: corpus.qlinear_conv_model(),
    "qlinearconv per-tensor no bias": lambda: corpus.qlinear_conv_model(per_channel=False, bias=False),
    "qlinearconv grouped": lambda: corpus.qlinear_conv_model(group=4),
    "qlinearmatmul per-column": lambda: corpus.qlinear_matmul_model(),
    "qlinearmatmul per-tensor": lambda: corpus.qlinear_matmul_model(per_column=False),
}


@pytest.mark.parametrize("name", list(QUANT_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_quantized_oracle_is_exact(name, seed):
    """Integer arithmetic: pruning equals the original with the removed weight slices at their zero point,
    exactly (tolerance 0)."""
    a, pruned, removed = assert_oracle(QUANT_MODELS[name](), seed=seed, rtol=0, atol=0)
    assert len(removed)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_qdq_oracle(per_channel, seed):
    """QDQ: int8 weights behind DequantizeLinear (their per-channel scales and zero points sliced with them)
    and fake-quantized activations. Rounding turns last-bit float differences into whole quantization steps,
    so the oracle compares with the per-tensor activation Q/DQ pairs as Identity (what validation does too),
    and the pruned model with them must still run."""
    from graphprune.passes import oracle, rewrite
    from tests.oracle import random_removal

    m = corpus.qdq_model(per_channel)
    a = run_analysis(m)
    assert len(a.prunable) == 2
    removed = random_removal(a, np.random.default_rng(seed), 0.5)
    pruned = rewrite.apply(m, a.cut(removed))
    onnx.checker.check_model(pruned, full_check=True)
    feeds = runtime.synthetic_inputs(m, seed=seed)
    runtime.run(pruned, feeds)
    got = runtime.run(oracle.without_activation_fake_quant(pruned), feeds)[0]
    want = runtime.run(oracle.without_activation_fake_quant(oracle.masked_model(m, a.cut(removed))), feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    if per_channel:
        kept = np.flatnonzero(a.cut(removed).kept("conv1.Wq", 0))
        for name in ("conv1.Wq", "conv1.Ws", "conv1.Wz"):
            np.testing.assert_array_equal(init_value(pruned, name), init_value(m, name)[kept])


def test_qdq_prunes_and_validates_at_any_seed():
    """Regression: validation compared fake-quantized outputs with the float tolerance and refused about one
    QDQ prune in four ("the rewrite is wrong for this model") over a one-step rounding flip."""
    m = corpus.qdq_model()
    for seed in range(4):
        res = graphprune.prune(m, ratio=0.5, importance="random", seed=seed)
        assert res.report.validation["oracle_max_abs_diff"] < 1e-3


def test_qlinearconv_slices_scales_zero_points_and_bias_with_the_weight():
    m = corpus.qlinear_conv_model()
    a, pruned, removed = assert_oracle(m, rtol=0, atol=0)
    g = next(g for g in a.prunable if "qconv1" in g.producers)
    kept = np.flatnonzero(a.cut(removed).kept("qconv1.W", 0))
    assert 0 < len(kept) < 16
    for name in ("qconv1.W", "qconv1.Ws", "qconv1.Wz", "qconv1.B"):
        np.testing.assert_array_equal(init_value(pruned, name), init_value(m, name)[kept])
        assert init_value(pruned, name).dtype == init_value(m, name).dtype
    kept2 = np.flatnonzero(a.cut(removed).kept("qconv2.W", 0))
    np.testing.assert_array_equal(init_value(pruned, "qconv2.W"), init_value(m, "qconv2.W")[kept2][:, kept])
    assert g.kind == "channel"


def test_quantized_oracle_would_catch_a_wrong_mask():
    """Negative control: the removed input channels really matter (the unmasked original differs), so the
    exact equality above is a real check of the integer-domain masking."""
    from graphprune.passes import oracle, rewrite

    m = corpus.qlinear_conv_model()
    a = run_analysis(m)
    removed = np.concatenate([g.units[::2] for g in a.prunable])
    feeds = runtime.synthetic_inputs(m)
    got = runtime.run(rewrite.apply(m, a.cut(removed)), feeds)[0]
    assert np.array_equal(got, runtime.run(oracle.masked_model(m, a.cut(removed)), feeds)[0])
    assert not np.array_equal(got, runtime.run(m, feeds)[0])


def test_qlinearmatmul_between_activations_freezes():
    g = GraphBuilder(opset=13)
    a = g.input("a", [4, 8], TP.UINT8)
    b = g.input("b", [8, 6], TP.UINT8)
    s, z = g.const(np.float32(0.1), "s"), g.const(np.uint8(128), "z")
    g.output(g.op("QLinearMatMul", [a, s, z, b, s, z, s, z], name="qmm"))
    an = run_analysis(g.model())
    assert "the second operand is not a constant weight" in _reasons(an)


def test_per_channel_input_scale_freezes():
    m = corpus.qlinear_conv_model()
    for t in m.graph.initializer:
        if t.name == "qconv2.Ys":  # qconv2's output scale is qconv3's input scale: make it per-channel
            t.CopyFrom(onnx.numpy_helper.from_array(np.full(16, 0.08, np.float32), t.name))
    a = run_analysis(m)
    assert "per-channel input scale or zero point ('qconv2.Ys')" in _reasons(a)


def _integer_model(op: str) -> onnx.ModelProto:
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(5)
    if op == "ConvInteger":
        x = g.input("x", [1, 3, 6, 6], TP.UINT8)
        w1 = g.const(rng.integers(0, 255, (16, 3, 3, 3)).astype(np.uint8), "w1")
        # ONNX Runtime's ConvInteger takes a per-tensor weight zero point only
        y = g.op("ConvInteger", [x, w1, g.const(np.uint8(128)), g.const(np.uint8(120), "w1.z")],
                 name="c1", kernel_shape=[3, 3])
    else:
        x = g.input("x", [4, 8], TP.UINT8)
        w1 = g.const(rng.integers(-100, 100, (8, 16)).astype(np.int8), "w1")
        y = g.op("MatMulInteger", [x, w1, g.const(np.uint8(128)), g.const(np.arange(16, dtype=np.int8), "w1.z")],
                 name="c1")
    y = g.op("Cast", [y], to=TP.FLOAT)
    if op == "ConvInteger":
        g.output(g.conv(g.op("Relu", [y]), 16, 4, name="c2"))
    else:
        g.output(g.matmul(g.op("Relu", [y]), 16, 4, name="c2"))
    return g.model()


@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger"])
def test_integer_ops_prune_with_their_zero_points(op):
    m = _integer_model(op)
    a, pruned, removed = assert_oracle(m)
    axis = 0 if op == "ConvInteger" else 1
    kept = np.flatnonzero(a.cut(removed).kept("w1", axis))
    assert 0 < len(kept) < 16
    np.testing.assert_array_equal(init_value(pruned, "w1"), np.take(init_value(m, "w1"), kept, axis=axis))
    if op == "MatMulInteger":  # per-column zero point
        np.testing.assert_array_equal(init_value(pruned, "w1.z"), init_value(m, "w1.z")[kept])


# ---- storage dtypes ----------------------------------------------------------------------------------------
def test_fp16_model_prunes_validates_and_stays_fp16():
    m = corpus.fp16_model()
    res = graphprune.prune(m, ratio=0.5)
    assert res.report.groups_pruned >= 1
    assert res.report.validation["oracle_max_abs_diff"] is not None
    assert {t.data_type for t in res.model.graph.initializer} == {t.data_type for t in m.graph.initializer}
    assert res.model.graph.input[0].type.tensor_type.elem_type == TP.FLOAT16
    feeds = runtime.synthetic_inputs(res.model)
    assert runtime.run(res.model, feeds)[0].dtype == np.float16


@pytest.mark.parametrize("dtype, tp", [("int8", TP.INT8), ("bf16", TP.BFLOAT16)])
def test_stored_weight_dtypes_are_kept(dtype, tp):
    m = corpus.cast_weights_model(dtype)
    a, pruned, removed = assert_oracle(m)
    types = {t.name: t.data_type for t in pruned.graph.initializer}
    assert types["conv1.Wraw"] == types["conv2.Wraw"] == tp
    w = next(t for t in pruned.graph.initializer if t.name == "conv2.Wraw")
    assert w.dims[0] < 16 and w.dims[1] < 16


# ---- opsets ------------------------------------------------------------------------------------------------
def _opset_net() -> onnx.ModelProto:
    g = GraphBuilder(opset=11)
    x = g.input("input", [1, 3, 12, 12])
    y = g.op("Relu", [g.bn(g.conv(x, 3, 16, name="conv1"), 16, name="bn1")])
    z = g.op("Relu", [g.conv(y, 16, 16, name="conv2")])
    y = g.op("MaxPool", [g.op("Add", [y, z])], kernel_shape=[2, 2], strides=[2, 2])
    y = g.op("Concat", [g.conv(y, 16, 8, name="conv3"), g.conv(y, 16, 8, name="conv4")], axis=1)
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])])
    g.output(g.gemm(g.op("Relu", [g.gemm(y, 16, 12, name="fc1")]), 12, 10, name="fc2"))
    return g.model()


OPSETS = list(range(11, onnx.defs.onnx_opset_version() + 1))


@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset(opset, tmp_path, capsys):
    """The same net converted to every opset from 11 to the newest the installed onnx knows: it prunes and
    validates wherever ONNX Runtime runs that opset, and is refused in one line (naming the opset) where not."""
    from onnx import version_converter

    m = version_converter.convert_version(_opset_net(), opset)
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path))
    ort_runs = True
    try:
        runtime.run(m, runtime.synthetic_inputs(m))
    except Exception:  # noqa: BLE001 - newer than this ONNX Runtime
        ort_runs = False
    rc, out, err = run_main(capsys, [path, "--ratio", "0.5", "-q", "--report", tmp_path / "r.json"])
    if ort_runs:
        assert rc == 0, err
        pruned = onnx.load(str(tmp_path / "m.pruned.onnx"))
        assert [o.version for o in pruned.opset_import] == [o.version for o in m.opset_import]
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["groups_pruned"] >= 3 and report["validation"]["oracle_max_abs_diff"] < 1e-3
    else:
        line = assert_one_line_error(err)
        assert rc == 1 and f"opset {opset}" in line
        assert not (tmp_path / "m.pruned.onnx").exists()


def test_the_newest_runnable_opset_is_covered():
    from graphprune.core.runtime import runtime_support

    newest, _ = runtime_support()
    assert 17 <= newest <= OPSETS[-1]


# ---- reproducibility ---------------------------------------------------------------------------------------
def test_seed_reaches_the_validation_inputs(monkeypatch):
    seen = []
    real = runtime.synthetic_inputs

    def spy(model, input_shapes=None, seed=0, *args, **kwargs):
        seen.append(seed)
        return real(model, input_shapes, seed, *args, **kwargs)

    monkeypatch.setattr(runtime, "synthetic_inputs", spy)
    graphprune.prune(corpus.cnn_model(), ratio=0.5, seed=7)
    assert seen and set(seen) == {7}


def test_seed_makes_random_scoring_reproducible_and_is_reported():
    m = corpus.cnn_model()
    a = graphprune.prune(m, ratio=0.5, importance="random", seed=3)
    b = graphprune.prune(m, ratio=0.5, importance="random", seed=3)
    c = graphprune.prune(m, ratio=0.5, importance="random", seed=4)
    assert a.plan.to_json() == b.plan.to_json()
    assert a.plan.cuts != c.plan.cuts
    rep = a.report.to_dict()
    assert rep["version"] == graphprune.__version__
    assert rep["options"]["seed"] == 3 and rep["options"]["importance"] == "random"
    assert rep["options"]["ratio"] == 0.5


# ---- a torch.nn.Module straight into prune() ----------------------------------------------------------------
def _torch_net():
    torch = pytest.importorskip("torch")
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.c2, self.fc = nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            return self.fc(torch.relu(self.c2(x)).mean((2, 3)))

    torch.manual_seed(0)
    return torch, Net()


def test_prune_a_torch_module():
    torch, net = _torch_net()
    net.train()
    x = torch.randn(1, 3, 16, 16)
    res = graphprune.prune(net, ratio=0.5, example_inputs=(x,))
    assert res.report.groups_pruned == 2 and res.report.validation["oracle_max_abs_diff"] is not None
    assert net.training  # the user's module is left as it was
    assert [i.name for i in res.model.graph.input] == ["input"]
    assert runtime.run(res.model, {"input": x.numpy()})[0].shape == (1, 4)
    again = graphprune.prune(net, ratio=0.5, example_inputs=x)  # a lone tensor is one input
    assert again.plan.to_json() == res.plan.to_json()


def test_torch_module_without_example_inputs_is_a_usage_error():
    _, net = _torch_net()
    with pytest.raises(graphprune.UsageError, match="example_inputs"):
        graphprune.prune(net, ratio=0.5)
    with pytest.raises(graphprune.UsageError, match="empty"):
        graphprune.prune(net, ratio=0.5, example_inputs=())


def test_torch_module_when_torch_is_missing(monkeypatch):
    """torch stays optional: graphprune recognises a module without importing torch, and says what to do
    when it cannot be imported."""
    fake = type("Module", (), {"__module__": "torch.nn.modules.module"})
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(graphprune.UsageError, match="torch cannot be imported"):
        graphprune.prune(type("Net", (fake,), {})(), ratio=0.5, example_inputs=(1,))


def test_other_model_types_are_usage_errors():
    with pytest.raises(graphprune.UsageError, match="must be a path"):
        graphprune.prune(42, ratio=0.5)
    with pytest.raises(graphprune.UsageError, match="only for a torch.nn.Module"):
        graphprune.prune(corpus.cnn_model(), ratio=0.5, example_inputs=(1,))


def test_torch_is_not_imported_by_graphprune():
    r = subprocess.run([sys.executable, "-c", "import graphprune, graphprune.cli, sys; "
                        "graphprune.prune; print('torch' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
