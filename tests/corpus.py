"""The bad-input corpus: files a user may hand graphprune, generated into a folder at test time.

Each `Case` writes what it needs into an empty folder and returns the command line to run there. It says
what must happen: `expect="error"` (a one-line error mentioning `mentions`, exit code `code`, nothing written,
the input unchanged), `"pruned"` (a hard but legal model: exit 0, a valid pruned model, the frozen reasons in
`mentions` found in the report) or `"nothing"` (every channel group frozen: exit 0, a "nothing to prune"
message, no output file). tests/test_bad_inputs.py runs them all; benchmarks/robustness.py reports them.

Nothing binary is committed: every model is built here with onnx.helper (tests/graphs.py's GraphBuilder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests.graphs import GraphBuilder

MODEL = "m.onnx"  # the input's name inside a case's folder


@dataclass
class Case:
    name: str
    family: str
    make: Callable[[Path], list[str]]  # writes into the folder; returns argv (paths relative to the folder)
    expect: str = "error"  # "error" | "pruned" | "nothing"
    code: int = 1  # exit code of an error (2: usage error)
    mentions: tuple[str, ...] = ()  # in the error line, or in the report's frozen reasons when pruned
    check: Callable[[Path, dict], None] | None = None  # extra checks of a pruned case (folder, report)


# ---- models -------------------------------------------------------------------------------------------
def cnn(opset: int = 17, width: int = 16, g: GraphBuilder | None = None) -> GraphBuilder:
    """conv-bn-relu, a residual conv, global pool, flatten, gemm: the base model of most cases."""
    g = g or GraphBuilder(opset=opset)
    x = g.input("input", [1, 3, 16, 16])
    y = g.op("Relu", [g.bn(g.conv(x, 3, width, name="conv1"), width, name="bn1")], name="relu1")
    z = g.op("Relu", [g.conv(y, width, width, name="conv2")], name="relu2")
    y = g.op("Add", [y, z], name="add")
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y], name="gap")], name="flatten")
    g.output(g.gemm(y, width, 10, name="fc"))
    return g


def cnn_model(opset: int = 17) -> onnx.ModelProto:
    return cnn(opset).model()


def save(folder: Path, model: onnx.ModelProto, name: str = MODEL) -> str:
    onnx.save_model(model, str(folder / name))
    return name


def _write(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return name


def _prune(*extra: str, model: str = MODEL) -> list[str]:
    return [model, *extra]


def _with_model(model_fn, *extra: str):
    def make(folder: Path) -> list[str]:
        save(folder, model_fn())
        return _prune(*extra)

    return make


def _raw(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


# ---- file-level faults ----------------------------------------------------------------------------------
def _missing(folder):
    return ["no_such_model.onnx"]


def _directory(folder):
    (folder / "dir.onnx").mkdir()
    return ["dir.onnx"]


def _text(folder):
    return [_write(folder, MODEL, b"name: not a model\nthis is text, not protobuf\n")]


def _empty_file(folder):
    return [_write(folder, MODEL, b"")]


def _truncated(folder):
    data = _raw(cnn_model())
    return [_write(folder, MODEL, data[: len(data) // 2])]


def _corrupted_header(folder):
    data = bytearray(_raw(cnn_model()))
    data[:24] = b"\xff" * 24  # invalid wire types and lengths where the graph starts
    return [_write(folder, MODEL, bytes(data))]


def _random_bytes(folder):
    return [_write(folder, MODEL, np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())]


def _npz_renamed(folder):
    np.savez(folder / "arrays.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    os.replace(folder / "arrays.npz", folder / MODEL)
    return [MODEL]


def _json_file(folder):
    return [_write(folder, MODEL, json.dumps({"graph": {"node": []}}).encode())]


# ---- structurally invalid models ------------------------------------------------------------------------
def _empty_graph(folder):
    m = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])
    return [save(folder, m)]


def _no_graph(folder):
    m = onnx.ModelProto(ir_version=8)
    m.opset_import.add().version = 17
    return [save(folder, m)]


def _no_nodes(folder):
    vi = helper.make_tensor_value_info("x", TP.FLOAT, [1, 3])
    m = helper.make_model(helper.make_graph([], "passthrough", [vi], [vi]),
                          opset_imports=[helper.make_opsetid("", 17)])
    return [save(folder, m)]


def _undefined_input(folder):
    m = cnn_model()
    m.graph.node[3].input[0] = "nobody_makes_this"
    return [save(folder, m)]


def _duplicate_output(folder):
    m = cnn_model()
    m.graph.node[3].output[0] = m.graph.node[1].output[0]  # two producers of one tensor (not SSA)
    return [save(folder, m)]


def _unsorted(folder):
    m = cnn_model()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes[::-1])
    return [save(folder, m)]


def _bad_raw_data(folder):
    m = cnn_model()
    t = next(t for t in m.graph.initializer if t.name == "conv2.W")
    t.raw_data = t.raw_data[:-4]  # one float short of its dims
    return [save(folder, m)]


def _custom_domain_model() -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input("input", [1, 3, 16, 16])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")])
    y = g.op("Frobnicate", [y], name="custom", domain="com.example.ops")
    g.declare(y, [1, 16, 16, 16])
    out = g.conv(y, 16, 4, name="conv2")
    g.outputs.append(helper.make_tensor_value_info(out, TP.FLOAT, [1, 4, 16, 16]))
    return g.model(check=False)


def _unknown_opset_domain(folder):
    return [save(folder, _custom_domain_model())]


def _undeclared_domain(folder):
    m = _custom_domain_model()
    del m.opset_import[1:]  # the node's domain is never imported
    return [save(folder, m)]


def _opset_from_the_future(folder):
    m = cnn_model()
    m.opset_import[0].version = 99
    return [save(folder, m)]


def _ir_from_the_future(folder):
    m = cnn_model()
    m.ir_version = 99
    return [save(folder, m)]


def _conv_with_wrong_weight_rank(folder):
    m = cnn_model()
    t = next(t for t in m.graph.initializer if t.name == "conv2.W")
    w = numpy_helper.to_array(t).reshape(16, 16, 9)
    t.CopyFrom(numpy_helper.from_array(w, "conv2.W"))
    return [save(folder, m)]


# ---- external data -------------------------------------------------------------------------------------
def _external(folder: Path, location: str = "m.data") -> Path:
    p = folder / MODEL
    onnx.save_model(cnn_model(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return p


def set_location(path: Path, location: str) -> None:
    """Point every external-data initializer of the model file at `location`."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(m, str(path))


def _external_missing(folder):
    _external(folder)
    os.unlink(folder / "m.data")
    return [MODEL]


def _external_parent(folder):
    (folder / "inner").mkdir()
    p = _external(folder / "inner")
    os.replace(folder / "inner" / "m.data", folder / "secret.data")
    set_location(p, "../secret.data")
    return ["inner/" + MODEL]


def _external_absolute(folder):
    (folder / "inner").mkdir()
    p = _external(folder / "inner")
    os.replace(folder / "inner" / "m.data", folder / "secret.data")
    set_location(p, str((folder / "secret.data").resolve()))
    return ["inner/" + MODEL]


def _external_truncated(folder):
    _external(folder)
    data = folder / "m.data"
    data.write_bytes(data.read_bytes()[:64])
    return [MODEL]


# ---- options -------------------------------------------------------------------------------------------
def _args(*extra):
    return _with_model(cnn_model, *extra)


def _same_output(folder):
    save(folder, cnn_model())
    return [MODEL, "-o", f"./{MODEL}"]


def _other_model_plan(folder):
    plan = {"fingerprint": "0123456789abcdef", "options": {}, "cuts": [{"key": "conv1.W:0", "size": 16,
                                                                         "removed": [0, 1]}]}
    (folder / "plan.json").write_text(json.dumps(plan))
    save(folder, cnn_model())
    return [MODEL, "--plan", "plan.json"]


def _analyze_html_missing_folder(folder):
    save(folder, cnn_model())
    return ["analyze", MODEL, "--html", "no_such_folder/report.html"]


def _analyze_calib_wrong_name(folder):
    save(folder, cnn_model())
    np.savez(folder / "calib.npz", image=_x())
    return ["analyze", MODEL, "--calib", "calib.npz"]


def _analyze_calib_custom_op(folder):
    save(folder, _custom_domain_model())
    np.savez(folder / "calib.npz", input=_x(2))
    return ["analyze", MODEL, "--calib", "calib.npz"]


def _analyze_bad_ratio(folder):
    save(folder, cnn_model())
    return ["analyze", MODEL, "--ratio", "1.5"]


# ---- calibration data ------------------------------------------------------------------------------------
def _calib(arrays: dict, *extra):
    def make(folder):
        save(folder, cnn_model())
        np.savez(folder / "calib.npz", **arrays)
        return [MODEL, "--calib", "calib.npz", *extra]

    return make


def _calib_not_npz(folder):
    save(folder, cnn_model())
    (folder / "calib.npz").write_text("1,2,3\n")
    return [MODEL, "--calib", "calib.npz"]


def _x(n=4, shape=(3, 16, 16), dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(dtype)


# ---- hard but legal models ------------------------------------------------------------------------------
def _reasons(report: dict) -> str:
    return " | ".join(r for g in report.get("groups_frozen", []) for r in g["reasons"])


def if_model() -> onnx.ModelProto:
    """A conv output read inside both branches of an If (captured), and another fed to it as its condition's
    neighbour; the convs before and after still prune."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 16, 16])
    c = g.input("cond", [], TP.BOOL)
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")], name="relu1")
    y = g.op("Relu", [g.conv(y, 16, 16, name="conv2")], name="relu2")
    cap = g.conv(y, 16, 8, name="conv3")
    vi = [helper.make_tensor_value_info("then_out", TP.FLOAT, [1, 8, 16, 16])]
    then_g = helper.make_graph([helper.make_node("Relu", [cap], ["then_out"])], "then", [], vi)
    vi = [helper.make_tensor_value_info("else_out", TP.FLOAT, [1, 8, 16, 16])]
    else_g = helper.make_graph([helper.make_node("Sigmoid", [cap], ["else_out"])], "else", [], vi)
    g.nodes.append(helper.make_node("If", [c], ["if_out"], name="branch", then_branch=then_g, else_branch=else_g))
    g.output(g.conv("if_out", 8, 4, name="conv4"))
    return g.model()


def loop_model() -> onnx.ModelProto:
    """A conv output fed straight into a Loop as a loop-carried value (not captured): it must freeze too."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")], name="relu1")
    carried = g.conv(y, 16, 8, name="conv2")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TP.INT64, []), helper.make_tensor_value_info("cond_in", TP.BOOL, []),
         helper.make_tensor_value_info("v_in", TP.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TP.BOOL, []),
         helper.make_tensor_value_info("v_out", TP.FLOAT, [1, 8, 8, 8])])
    trip = g.ints(np.array(2, dtype=np.int64), "trip")
    cond = g.const(np.array(True), "keep_going")
    g.nodes.append(helper.make_node("Loop", [trip, cond, carried], ["loop_out"], name="loop", body=body))
    g.declare("loop_out", [1, 8, 8, 8])
    out = g.conv("loop_out", 8, 4, name="conv3")
    g.outputs.append(helper.make_tensor_value_info(out, TP.FLOAT, [1, 4, 8, 8]))
    return g.model()


def scan_model() -> onnx.ModelProto:
    """A Scan whose body reads a conv output from the outer scope, and whose scanned input is another one."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")], name="relu1")
    scanned = g.op("Squeeze", [g.conv(y, 16, 6, name="conv2"), g.ints([0])], name="squeeze")  # [6, 8, 8]
    init = g.const(np.zeros((8, 8), np.float32), "acc0")
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["row_out"])],
        "scan_body",
        [helper.make_tensor_value_info("acc_in", TP.FLOAT, [8, 8]),
         helper.make_tensor_value_info("row", TP.FLOAT, [8, 8])],
        [helper.make_tensor_value_info("acc_out", TP.FLOAT, [8, 8]),
         helper.make_tensor_value_info("row_out", TP.FLOAT, [8, 8])])
    g.nodes.append(helper.make_node("Scan", [init, scanned], ["acc_final", "rows"], name="scan", body=body,
                                    num_scan_inputs=1))
    rows = g.op("Unsqueeze", ["rows", g.ints([0])], name="unsq")
    g.output(g.conv(rows, 6, 4, name="conv3"), "acc_final")
    return g.model()


def qdq_model(per_channel: bool = True) -> onnx.ModelProto:
    """QDQ: int8 weights with per-output-channel scales and zero points (DequantizeLinear axis 0) and
    per-tensor uint8 activation Q/DQ pairs between the convs."""
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(1)
    x = g.input("input", [1, 3, 16, 16])

    def qconv(inp, cin, cout, name):
        wq = g.const(rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8), f"{name}.Wq")
        if per_channel:
            s = g.const(rng.uniform(0.005, 0.02, cout).astype(np.float32), f"{name}.Ws")
            z = g.const(np.zeros(cout, np.int8), f"{name}.Wz")
        else:
            s = g.const(np.float32(0.01), f"{name}.Ws")
            z = g.const(np.int8(0), f"{name}.Wz")
        w = g.op("DequantizeLinear", [wq, s, z], name=f"{name}.dq", axis=0)
        b = g.weight([cout], f"{name}.b")
        return g.op("Conv", [inp, w, b], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    def qdq(t, name):
        s, z = g.const(np.float32(0.05), f"{name}.s"), g.const(np.uint8(128), f"{name}.z")
        return g.op("DequantizeLinear", [g.op("QuantizeLinear", [t, s, z], name=f"{name}.q"), s, z],
                    name=f"{name}.dq")

    y = qdq(g.op("Relu", [qconv(x, 3, 16, "conv1")]), "act1")
    y = qdq(g.op("Relu", [qconv(y, 16, 16, "conv2")]), "act2")
    g.output(qconv(y, 16, 4, "conv3"))
    return g.model()


def qlinear_conv_model(per_channel: bool = True, bias: bool = True, group: int = 1) -> onnx.ModelProto:
    """A fully quantized chain: QuantizeLinear -> QLinearConv -> QLinearConv -> QLinearConv ->
    DequantizeLinear, uint8 activations and int8 weights (per-channel scales and zero points)."""
    g = GraphBuilder(opset=13)
    rng = np.random.default_rng(2)
    x = g.input("input", [1, 3, 8, 8])
    xs, xz = g.const(np.float32(0.05), "x.s"), g.const(np.uint8(128), "x.z")
    q = g.op("QuantizeLinear", [x, xs, xz], name="quant")

    def qlconv(inp, in_s, in_z, cin, cout, name, grp=1):
        w = g.const(rng.integers(-60, 61, (cout, cin // grp, 3, 3)).astype(np.int8), f"{name}.W")
        if per_channel:
            ws = g.const(rng.uniform(0.002, 0.01, cout).astype(np.float32), f"{name}.Ws")
            wz = g.const(np.zeros(cout, np.int8), f"{name}.Wz")
        else:
            ws, wz = g.const(np.float32(0.005), f"{name}.Ws"), g.const(np.int8(0), f"{name}.Wz")
        ys, yz = g.const(np.float32(0.08), f"{name}.Ys"), g.const(np.uint8(128), f"{name}.Yz")
        ins = [inp, in_s, in_z, w, ws, wz, ys, yz]
        if bias:
            ins.append(g.const(rng.integers(-500, 500, cout).astype(np.int32), f"{name}.B"))
        return g.op("QLinearConv", ins, name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=grp), ys, yz

    y, s, z = qlconv(q, xs, xz, 3, 16, "qconv1")
    y, s, z = qlconv(y, s, z, 16, 16, "qconv2", grp=group)
    y, s, z = qlconv(y, s, z, 16, 4, "qconv3")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    return g.model()


def qlinear_matmul_model(per_column: bool = True) -> onnx.ModelProto:
    """QuantizeLinear -> QLinearMatMul [8 -> 32] -> QLinearMatMul [32 -> 6] -> DequantizeLinear (opset 21
    allows per-column scales and zero points of the constant operand)."""
    g = GraphBuilder(opset=21)
    rng = np.random.default_rng(3)
    x = g.input("input", [4, 8])
    xs, xz = g.const(np.float32(0.05), "x.s"), g.const(np.uint8(128), "x.z")
    q = g.op("QuantizeLinear", [x, xs, xz], name="quant")

    def qlmm(a, a_s, a_z, k, n, name):
        b = g.const(rng.integers(-60, 61, (k, n)).astype(np.int8), f"{name}.B")
        if per_column:
            bs = g.const(rng.uniform(0.002, 0.01, n).astype(np.float32), f"{name}.Bs")
            bz = g.const(np.zeros(n, np.int8), f"{name}.Bz")
        else:
            bs, bz = g.const(np.float32(0.005), f"{name}.Bs"), g.const(np.int8(0), f"{name}.Bz")
        ys, yz = g.const(np.float32(0.08), f"{name}.Ys"), g.const(np.uint8(128), f"{name}.Yz")
        return g.op("QLinearMatMul", [a, a_s, a_z, b, bs, bz, ys, yz], name=name), ys, yz

    y, s, z = qlmm(q, xs, xz, 8, 32, "qmm1")
    y, s, z = qlmm(y, s, z, 32, 6, "qmm2")
    g.output(g.op("DequantizeLinear", [y, s, z], name="dequant"))
    return g.model()


def cast_weights_model(dtype) -> onnx.ModelProto:
    """Weights stored as int8 or bf16 and Cast to float before the convs (weight-only storage formats)."""
    g = GraphBuilder()
    rng = np.random.default_rng(4)
    x = g.input("input", [1, 3, 8, 8])

    def conv(inp, cin, cout, name):
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        if dtype == "int8":
            t = numpy_helper.from_array(np.clip(np.round(w * 40), -127, 127).astype(np.int8), f"{name}.Wraw")
        else:
            t = helper.make_tensor(f"{name}.Wraw", TP.BFLOAT16, w.shape, w.ravel().tolist())
        g.inits.append(t)
        wf = g.op("Cast", [t.name], name=f"{name}.cast", to=TP.FLOAT)
        return g.op("Conv", [inp, wf, g.weight([cout], f"{name}.b")], name=name, kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1])

    y = g.op("Relu", [conv(x, 3, 16, "conv1")])
    y = g.op("Relu", [conv(y, 16, 16, "conv2")])
    g.output(conv(y, 16, 4, "conv3"))
    return g.model()


def fp16_model() -> onnx.ModelProto:
    m = cnn_model()
    for t in m.graph.initializer:
        if t.data_type == TP.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.type.tensor_type.elem_type == TP.FLOAT:
            vi.type.tensor_type.elem_type = TP.FLOAT16
    onnx.checker.check_model(m, full_check=True)
    return m


def symbolic_model(all_dynamic: bool = False) -> onnx.ModelProto:
    m = cnn_model()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    names = ["batch", None, "height", "width"]
    for d, n in zip(dims, names):
        if n and (all_dynamic or n == "batch" or n == "height" or n == "width"):
            d.Clear()
            d.dim_param = n
    if all_dynamic:
        for d in dims:
            d.Clear()  # known rank, no dim known at all (not even the channels)
    for o in m.graph.output:
        o.type.tensor_type.shape.dim[0].Clear()
        o.type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def no_shape_model() -> onnx.ModelProto:
    """The graph input has no shape at all (not even a rank)."""
    m = cnn_model()
    m.graph.input[0].type.tensor_type.ClearField("shape")
    return m


def tied_model() -> onnx.ModelProto:
    """One weight initializer read by two convs on two branches (ALBERT-style sharing)."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")], name="relu1")
    w = g.weight([16, 16, 3, 3], "shared.W")
    a = g.op("Conv", [y, w], name="conv_a", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = g.op("Conv", [g.op("Sigmoid", [y]), w], name="conv_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Relu", [g.op("Add", [a, b])])
    g.output(g.conv(y, 16, 4, name="conv_out"))
    return g.model()


def output_channels_model() -> onnx.ModelProto:
    """conv1's channels reach a graph output (a feature map the user reads) as well as the next conv."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    feat = g.op("Relu", [g.conv(x, 3, 16, name="conv1")], name="features")
    y = g.op("Relu", [g.conv(feat, 16, 24, name="conv2")])
    g.output(g.conv(y, 24, 4, name="conv3"), feat)
    return g.model()


def all_frozen_model() -> onnx.ModelProto:
    """Every channel group reaches a graph output or a channel-mixing op: nothing can be cut."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    y = g.conv(x, 3, 8, name="conv1")
    g.output(g.op("Softmax", [y], name="softmax", axis=1))
    return g.model()


def no_weights_model() -> onnx.ModelProto:
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    g.output(g.op("Relu", [g.op("MaxPool", [x], kernel_shape=[2, 2])]))
    return g.model()


def weight_as_input_model() -> onnx.ModelProto:
    """conv2's weight is a graph input (supplied at run time): its channels cannot be cut."""
    g = GraphBuilder()
    x = g.input("input", [1, 3, 8, 8])
    w = g.input("w2", [16, 16, 3, 3])
    y = g.op("Relu", [g.conv(x, 3, 16, name="conv1")])
    y = g.op("Conv", [y, w], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g.output(g.conv(g.op("Relu", [y]), 16, 4, name="conv3"))
    return g.model()


def _check_dtype_kept(*names_types):
    def check(folder: Path, report: dict) -> None:
        m = onnx.load(str(folder / "m.pruned.onnx"))
        inits = {t.name: t for t in m.graph.initializer}
        for name, dt in names_types:
            assert inits[name].data_type == dt, (name, inits[name].data_type)
    return check


def _check_shrunk(name: str, axis: int, before: int):
    def check(folder: Path, report: dict) -> None:
        m = onnx.load(str(folder / "m.pruned.onnx"))
        t = next(t for t in m.graph.initializer if t.name == name)
        assert t.dims[axis] < before, (name, list(t.dims))
    return check


def _checks(*fns):
    def check(folder, report):
        for f in fns:
            f(folder, report)
    return check


# ---- the corpus ----------------------------------------------------------------------------------------
def cases(calibration: bool | None = None) -> list[Case]:
    """All cases. Calibration cases only when the CLI has --calib (another engineer's work)."""
    if calibration is None:
        calibration = has_calibration()
    out = [
        # files
        Case("missing file", "file", _missing, mentions=("no_such_model.onnx", "no such file")),
        Case("directory", "file", _directory, mentions=("dir.onnx", "directory")),
        Case("text file", "file", _text, mentions=(MODEL, "not a readable ONNX model")),
        Case("empty file", "file", _empty_file, mentions=(MODEL, "empty")),
        Case("truncated protobuf", "file", _truncated, mentions=(MODEL, "not a readable ONNX model")),
        Case("corrupted protobuf", "file", _corrupted_header, mentions=(MODEL,)),
        Case("random bytes", "file", _random_bytes, mentions=(MODEL,)),
        Case("npz archive named .onnx", "file", _npz_renamed, mentions=(MODEL,)),
        Case("JSON file", "file", _json_file, mentions=(MODEL,)),
        # graphs
        Case("empty graph", "graph", _empty_graph, mentions=("empty graph",)),
        Case("model without a graph", "graph", _no_graph, mentions=("empty graph",)),
        Case("graph without nodes", "graph", _no_nodes, mentions=("no nodes",)),
        Case("undefined tensor", "graph", _undefined_input, mentions=("nobody_makes_this",)),
        Case("tensor with two producers", "graph", _duplicate_output, mentions=("invalid ONNX model",)),
        Case("nodes out of order", "graph", _unsorted, mentions=("invalid ONNX model",)),
        Case("initializer data shorter than its dims", "graph", _bad_raw_data, mentions=("conv2.W",)),
        Case("conv weight of the wrong rank", "graph", _conv_with_wrong_weight_rank, mentions=("conv2",)),
        Case("unknown opset domain", "graph", _unknown_opset_domain,
             mentions=("com.example.ops", "Frobnicate", "custom")),
        Case("domain used but not imported", "graph", _undeclared_domain, mentions=("com.example.ops",)),
        Case("opset newer than ONNX knows", "graph", _opset_from_the_future, mentions=("opset", "99")),
        Case("IR version newer than ONNX knows", "graph", _ir_from_the_future, mentions=("ir_version 99",)),
        # external data
        Case("missing external data file", "external", _external_missing, mentions=("m.data", "missing")),
        Case("external data outside the folder (..)", "external", _external_parent,
             mentions=("../secret.data", "outside the model's folder")),
        Case("external data at an absolute path elsewhere", "external", _external_absolute,
             mentions=("secret.data", "outside the model's folder")),
        Case("truncated external data", "external", _external_truncated, mentions=("external data",)),
        # options
        Case("--ratio 1", "options", _args("--ratio", "1"), code=2, mentions=("--ratio",)),
        Case("--ratio -0.2", "options", _args("--ratio", "-0.2"), code=2, mentions=("--ratio",)),
        Case("--ratio nan", "options", _args("--ratio", "nan"), code=2, mentions=("--ratio",)),
        Case("--ratio inf", "options", _args("--ratio", "inf"), code=2, mentions=("--ratio",)),
        Case("--ratio half", "options", _args("--ratio", "half"), code=2, mentions=("--ratio",)),
        Case("--max-ratio 2", "options", _args("--max-ratio", "2"), code=2, mentions=("--max-ratio",)),
        Case("--importance bogus", "options", _args("--importance", "bogus"), code=2, mentions=("--importance",)),
        Case("--round-to 0", "options", _args("--round-to", "0"), code=2, mentions=("--round-to",)),
        Case("unknown flag", "options", _args("--prune-everything"), code=2, mentions=("--prune-everything",)),
        Case("-o equal to the input", "options", _same_output, code=2, mentions=("--overwrite",)),
        Case("-o into a missing folder", "options", _args("-o", "nowhere/out.onnx"), code=2,
             mentions=("nowhere",)),
        Case("--report overwriting the input", "options", _args("--report", MODEL), code=2,
             mentions=("--report",)),
        Case("--input-shape of no input", "options", _args("--input-shape", "image:1,3,16,16"), code=2,
             mentions=("image",)),
        Case("--input-shape of the wrong rank", "options", _args("--input-shape", "input:1,3,16"), code=2,
             mentions=("input", "rank")),
        Case("--plan for another model", "options", _other_model_plan, code=2, mentions=("different model",)),
        Case("analyze --html into a missing folder", "analyze", _analyze_html_missing_folder, code=2,
             mentions=("--html", "no_such_folder")),
        Case("analyze --ratio 1.5", "analyze", _analyze_bad_ratio, code=2, mentions=("--ratio",)),
        Case("analyze --calib naming no input", "analyze", _analyze_calib_wrong_name, code=2,
             mentions=("--calib", "'input'")),
        Case("analyze --calib on a model ONNX Runtime cannot run", "analyze", _analyze_calib_custom_op,
             mentions=("sensitivity", "Frobnicate")),
        # hard but legal models
        Case("If with a captured conv output", "control flow", _with_model(if_model), expect="pruned",
             mentions=("subgraph of 'branch'",), check=_check_shrunk("conv1.W", 0, 16)),
        Case("Loop with a conv output as loop-carried input", "control flow", _with_model(loop_model),
             expect="pruned", mentions=("Loop 'loop'",), check=_check_shrunk("conv1.W", 0, 16)),
        Case("Scan reading conv outputs", "control flow", _with_model(scan_model), expect="pruned",
             mentions=("Scan 'scan'",), check=_check_shrunk("conv1.W", 0, 16)),
        Case("QDQ with per-channel weight scales", "quantized", _with_model(qdq_model), expect="pruned",
             check=_checks(_check_shrunk("conv1.Ws", 0, 16), _check_shrunk("conv2.Wq", 0, 16),
                           _check_dtype_kept(("conv2.Wq", TP.INT8), ("conv2.Wz", TP.INT8)))),
        Case("QDQ with per-tensor weight scales", "quantized", _with_model(lambda: qdq_model(False)),
             expect="pruned", check=_check_shrunk("conv1.Wq", 0, 16)),
        Case("QLinearConv, per-channel", "quantized", _with_model(qlinear_conv_model), expect="pruned",
             check=_checks(_check_shrunk("qconv1.W", 0, 16), _check_shrunk("qconv1.Ws", 0, 16),
                           _check_shrunk("qconv1.B", 0, 16), _check_shrunk("qconv2.W", 1, 16),
                           _check_dtype_kept(("qconv1.W", TP.INT8), ("qconv1.B", TP.INT32)))),
        Case("QLinearConv, per-tensor, grouped", "quantized",
             _with_model(lambda: qlinear_conv_model(per_channel=False, group=4)), expect="pruned",
             check=_check_shrunk("qconv1.W", 0, 16)),
        Case("QLinearMatMul, per-column", "quantized", _with_model(qlinear_matmul_model), expect="pruned",
             check=_checks(_check_shrunk("qmm1.B", 1, 32), _check_shrunk("qmm1.Bs", 0, 32),
                           _check_shrunk("qmm2.B", 0, 32))),
        Case("int8 weights behind Cast", "dtypes", _with_model(lambda: cast_weights_model("int8")),
             expect="pruned", check=_checks(_check_shrunk("conv1.Wraw", 0, 16),
                                            _check_dtype_kept(("conv1.Wraw", TP.INT8)))),
        Case("bf16 weights behind Cast", "dtypes", _with_model(lambda: cast_weights_model("bf16")),
             expect="pruned", check=_checks(_check_shrunk("conv2.Wraw", 1, 16),
                                            _check_dtype_kept(("conv2.Wraw", TP.BFLOAT16)))),
        Case("fp16 model", "dtypes", _with_model(fp16_model), expect="pruned",
             check=_checks(_check_shrunk("conv1.W", 0, 16), _check_dtype_kept(("conv1.W", TP.FLOAT16),
                                                                               ("fc.W", TP.FLOAT16)))),
        Case("symbolic batch and spatial dims", "shapes", _with_model(symbolic_model), expect="pruned",
             check=_check_shrunk("conv1.W", 0, 16)),
        Case("input with no known dim", "shapes", _with_model(lambda: symbolic_model(True)),
             mentions=("--input-shape",)),
        Case("input with no known dim, --input-shape given", "shapes",
             _with_model(lambda: symbolic_model(True), "--input-shape", "input:2,3,16,16"), expect="pruned",
             mentions=("reaches graph input 'input'",), check=_check_shrunk("conv2.W", 0, 16)),
        Case("input without a shape", "graph", _with_model(no_shape_model), mentions=("'input'", "no shape")),
        Case("tied weights", "sharing", _with_model(tied_model), expect="pruned",
             check=_checks(_check_shrunk("shared.W", 0, 16), _check_shrunk("shared.W", 1, 16))),
        Case("channels reaching a graph output", "boundaries", _with_model(output_channels_model),
             expect="pruned", mentions=("reaches graph output 'features_out'",), check=_check_shrunk("conv2.W", 0, 24)),
        Case("conv weight supplied at run time", "boundaries", _with_model(weight_as_input_model),
             expect="nothing"),
        Case("every group frozen", "boundaries", _with_model(all_frozen_model), expect="nothing"),
        Case("no weights at all", "boundaries", _with_model(no_weights_model), expect="nothing"),
    ]
    if calibration:
        out += [
            Case("calibration: not an npz", "calibration", _calib_not_npz, code=2, mentions=("calib.npz",)),
            Case("calibration: wrong input name", "calibration", _calib({"image": _x()}), code=2,
                 mentions=("input",)),
            Case("calibration: wrong shape", "calibration", _calib({"input": _x(shape=(3, 8, 8))}), code=2,
                 mentions=("input", "shape")),
            Case("calibration: wrong rank", "calibration", _calib({"input": _x(shape=(3, 16))}), code=2,
                 mentions=("input", "rank")),
            Case("calibration: wrong dtype", "calibration",
                 _calib({"input": np.full((4, 3, 16, 16), "x")}), code=2, mentions=("input",)),
            Case("calibration: fewer samples than asked", "calibration",
                 _calib({"input": _x(4)}, "--calib-samples", "100"), code=2, mentions=("--calib-samples", "100")),
            Case("calibration: no samples", "calibration", _calib({"input": _x(0)}), code=2,
                 mentions=("no samples",)),
            Case("calibration: NaN values", "calibration", _calib({"input": _x() * np.nan}), code=2,
                 mentions=("NaN",)),
        ]
    return out


# ---- running a case ------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every file under the folder and its hash: the input unchanged and nothing new written."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], folder: Path) -> tuple[int, str, str]:
    """`graphprune.cli.main` in this process, in `folder`, with stdout and stderr captured."""
    import contextlib
    import io

    from graphprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
    finally:
        os.chdir(cwd)
    return rc, out.getvalue(), err.getvalue()


def check_case(case: Case, folder: Path) -> dict:
    """Build the case in `folder`, run the CLI and check everything the corpus promises. Returns
    {"ok": bool, "problems": [...], "line": the error line or the outcome}."""
    problems: list[str] = []
    argv = case.make(folder)
    before = snapshot(folder)
    if case.expect == "error":
        rc, out, err = run_cli(argv, folder)
        lines = err.splitlines()
        line = lines[0] if lines else ""
        if len(lines) != 1 or not line.startswith("graphprune: error:"):
            problems.append(f"stderr is not one error line: {err!r}")
        if "Traceback" in err or "internal error" in err:
            problems.append("internal error or traceback")
        if rc != case.code:
            problems.append(f"exit code {rc}, expected {case.code}")
        problems += [f"{m!r} not in the error" for m in case.mentions if m not in line]
        if out:
            problems.append(f"stdout not empty: {out[:200]!r}")
        if snapshot(folder) != before:
            problems.append("files written or the input changed")
        return {"ok": not problems, "problems": problems, "line": line}
    rc, out, err = run_cli([*argv, "--report", "report.json"], folder)
    if rc != 0 or err:
        return {"ok": False, "problems": [f"exit code {rc}: {err.strip()}"], "line": err.strip()}
    report = json.loads((folder / "report.json").read_text())
    after = snapshot(folder)
    if {k: v for k, v in after.items() if k in before} != before:
        problems.append("the input changed")
    if case.expect == "nothing":
        if "nothing to prune" not in out or report.get("nothing_to_prune") is not True:
            problems.append(f"no 'nothing to prune' message: {out!r}")
        if set(after) != set(before) | {"report.json"}:
            problems.append(f"files written: {sorted(set(after) - set(before))}")
        return {"ok": not problems, "problems": problems, "line": out.strip()}
    if set(after) != set(before) | {"report.json", "m.pruned.onnx"}:
        problems.append(f"unexpected files: {sorted(set(after) ^ set(before))}")
    if report["groups_pruned"] < 1 or report["channels_removed"] < 1:
        problems.append("nothing was pruned")
    try:
        onnx.checker.check_model(onnx.load(str(folder / "m.pruned.onnx")), full_check=True)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"pruned model fails the checker: {exc}")
    v = report["validation"]
    if not v.get("runtime") or v.get("oracle_max_abs_diff") is None:
        problems.append(f"not validated: {v}")
    reasons = " | ".join(r for g in report["groups_frozen"] for r in g["reasons"])
    problems += [f"{m!r} not among the frozen reasons: {reasons}" for m in case.mentions if m not in reasons]
    if case.check is not None:
        try:
            case.check(folder, report)
        except AssertionError as exc:
            problems.append(f"check failed: {exc}")
    line = (f"pruned {report['groups_pruned']} of {report['groups_total']} groups, "
            f"{report['channels_removed']} channels; oracle diff {v.get('oracle_max_abs_diff'):.2g}")
    return {"ok": not problems, "problems": problems, "line": line}


def has_calibration() -> bool:
    from graphprune.cli import prune_parser

    return any("--calib" in a.option_strings for a in prune_parser()._actions)
