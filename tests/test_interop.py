"""onnx-graphsurgeon interop: a gs.Graph prunes exactly like its ModelProto, results convert back, weights
keep their dtype (fp16, bf16) or the conversion is refused, opset and IR version survive."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto as TP
from onnx import numpy_helper

import graphprune
from graphprune.interop import from_graphsurgeon, is_graphsurgeon_graph, to_graphsurgeon
from tests.corpus import cast_weights_model, cnn_model, fp16_model

from .tinynet import tinynet


def weights(model: onnx.ModelProto) -> dict:
    """Initializers by name: dtype, dims and bytes (bf16 compared bit for bit)."""
    return {t.name: (t.data_type, list(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tinynet(tmp_path_factory.mktemp("interop") / "tinynet.onnx", tmp_path_factory)
    return onnx.load(str(path))


def _models(tiny):
    return {"tinynet": tiny, "cnn": cnn_model(), "bf16": cast_weights_model("bf16"), "fp16": fp16_model()}


@pytest.mark.parametrize("name", ["tinynet", "cnn", "bf16", "fp16"])
def test_prune_graphsurgeon_graph_equals_prune_modelproto(tiny, name):
    model = _models(tiny)[name]
    from_proto = graphprune.prune(model, ratio=0.5)
    from_gs = graphprune.prune(gs.import_onnx(model), ratio=0.5)
    v = from_gs.report.validation
    assert v["checker"] and v["shape_inference"] and v["runtime"] and v["oracle_max_abs_diff"] is not None
    assert from_gs.plan.to_json() == from_proto.plan.to_json() and from_gs.plan.n_removed > 0
    assert weights(from_gs.model) == weights(from_proto.model)
    assert [(n.op_type, list(n.input), list(n.output)) for n in from_gs.model.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in from_proto.model.graph.node]
    assert from_gs.model.ir_version == model.ir_version
    assert list(from_gs.model.opset_import) == list(model.opset_import)


@pytest.mark.parametrize("name", ["tinynet", "bf16", "fp16"])
def test_result_to_graphsurgeon(tiny, name):
    result = graphprune.prune(_models(tiny)[name], ratio=0.5)
    graph = result.to_graphsurgeon()
    assert isinstance(graph, gs.Graph)
    exported = gs.export_onnx(graph)
    assert weights(exported) == weights(result.model)
    assert exported.ir_version == result.model.ir_version
    assert list(exported.opset_import) == list(result.model.opset_import)
    # a copy: exporting a renamed constant does not rename result.model's weight
    const = next(t for t in graph.tensors().values() if isinstance(t, gs.Constant))
    old = const.name
    const.name = "renamed"
    gs.export_onnx(graph)
    assert old in {t.name for t in result.model.graph.initializer}


def test_analyze_graphsurgeon_graph():
    model = cnn_model()
    a, b = graphprune.analyze(gs.import_onnx(model)), graphprune.analyze(model)
    assert [(g.key, g.size, g.frozen) for g in a.channel_groups] == [(g.key, g.size, g.frozen) for g in b.channel_groups]


# ---- dtypes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, tensor, dtype", [
    (lambda: cast_weights_model("bf16"), "conv2.Wraw", TP.BFLOAT16),
    (fp16_model, "conv1.W", TP.FLOAT16),
])
def test_half_weights_kept_exactly_both_ways(make, tensor, dtype):
    model = make()
    graph = to_graphsurgeon(model)
    const = graph.tensors()[tensor]
    assert isinstance(const, gs.Constant)
    # read the values (what constant folding or an edit does), then export: same dtype, same bits
    original = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == tensor))
    assert np.asarray(const.values).tobytes() == original.tobytes()
    back = from_graphsurgeon(graph)
    assert weights(back) == weights(model)
    assert next(t for t in back.graph.initializer if t.name == tensor).data_type == dtype
    # and a bf16/fp16 constant made in gs from numpy (ml_dtypes) prunes with its dtype
    result = graphprune.prune(graph, ratio=0.5)
    assert next(t for t in result.model.graph.initializer if t.name == tensor).data_type == dtype


def test_export_that_would_cast_half_weights_is_refused(monkeypatch):
    """A gs whose export writes bf16/fp16 weights as float32 (what its warning describes) is refused with
    one line naming the tensor and its dtype."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    real = OnnxExporter.export_tensor_proto

    def casting(tensor):
        t = real(tensor)
        if t.data_type in (TP.BFLOAT16, TP.FLOAT16):
            t = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
        return t

    monkeypatch.setattr(OnnxExporter, "export_tensor_proto", staticmethod(casting))
    for model, tensor, dtype in ((cast_weights_model("bf16"), "conv1.Wraw", "bfloat16"),
                                 (fp16_model(), "conv1.W", "float16")):
        graph = gs.import_onnx(model)
        with pytest.raises(graphprune.ModelError, match=rf"exports tensor '{tensor}' \({dtype}\) as float: ") as err:
            from_graphsurgeon(graph)
        assert "\n" not in str(err.value)
        with pytest.raises(graphprune.ModelError, match=tensor):
            graphprune.prune(graph, ratio=0.5)


def test_import_that_would_cast_half_weights_is_refused(monkeypatch):
    from onnx_graphsurgeon.importers import onnx_importer

    real = onnx_importer.get_onnx_tensor_dtype

    def casting(t):
        d = real(t)
        return np.float32 if d in (TP.BFLOAT16, np.float16) or d == np.dtype(np.float16) else d

    monkeypatch.setattr(onnx_importer, "get_onnx_tensor_dtype", casting)
    for model, tensor, dtype in ((cast_weights_model("bf16"), "conv1.Wraw", "bfloat16"),
                                 (fp16_model(), "conv1.W", "float16")):
        with pytest.raises(graphprune.ModelError, match=rf"imports tensor '{tensor}' \({dtype}\) as float:"):
            to_graphsurgeon(model)


def test_onnx_that_reads_bf16_as_float32_is_refused(monkeypatch):
    """Older onnx reads bf16 values as float32: gs would cast them as soon as they are read."""
    real = onnx.helper.tensor_dtype_to_np_dtype
    monkeypatch.setattr(onnx.helper, "tensor_dtype_to_np_dtype",
                        lambda d: np.dtype(np.float32) if d == TP.BFLOAT16 else real(d))
    with pytest.raises(graphprune.ModelError, match=r"tensor 'conv1.Wraw' \(bfloat16\): .* reads its values as float"):
        to_graphsurgeon(cast_weights_model("bf16"))
    to_graphsurgeon(fp16_model())  # fp16 is unaffected


# ---- versions, types ----------------------------------------------------------------------------------------
def test_opset_and_ir_version_survive():
    model = cnn_model(opset=13)
    model.ir_version = 7
    back = from_graphsurgeon(to_graphsurgeon(model))
    assert back.ir_version == 7 and [(o.domain, o.version) for o in back.opset_import] == [("", 13)]
    assert graphprune.prune(to_graphsurgeon(model), ratio=0.5).model.ir_version == 7


def test_hand_built_graph_gets_the_ir_version_of_its_opset():
    x = gs.Variable("x", dtype=np.float32, shape=(1, 8))
    y = gs.Variable("y", dtype=np.float32, shape=(1, 4))
    h = gs.Variable("h", dtype=np.float32, shape=(1, 16))
    rng = np.random.default_rng(0)
    w1 = gs.Constant("w1", rng.standard_normal((8, 16)).astype(np.float32))
    w2 = gs.Constant("w2", rng.standard_normal((16, 4)).astype(np.float32))
    r = gs.Variable("r", dtype=np.float32, shape=(1, 16))
    graph = gs.Graph(nodes=[gs.Node("MatMul", inputs=[x, w1], outputs=[h]), gs.Node("Relu", inputs=[h], outputs=[r]),
                            gs.Node("MatMul", inputs=[r, w2], outputs=[y])], inputs=[x], outputs=[y], opset=17)
    assert graph.ir_version is None
    model = from_graphsurgeon(graph)
    assert model.ir_version == onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", 17)])
    result = graphprune.prune(graph, ratio=0.5)
    assert [list(t.dims) for t in result.model.graph.initializer] == [[8, 8], [8, 4]]


def test_other_objects_keep_the_usage_error():
    for obj in (object(), {"graph": 1}, gs.Variable("x")):
        with pytest.raises(graphprune.UsageError, match="model must be a path, an onnx.ModelProto or a torch.nn.Module"):
            graphprune.prune(obj, ratio=0.5)
        assert not is_graphsurgeon_graph(obj)
    with pytest.raises(graphprune.UsageError, match="to_graphsurgeon takes an onnx.ModelProto"):
        to_graphsurgeon("m.onnx")
    with pytest.raises(graphprune.UsageError, match="expected an onnx_graphsurgeon.Graph"):
        from_graphsurgeon(cnn_model())


def test_recognised_without_importing_graphsurgeon():
    code = ("import sys, graphprune, graphprune.interop as i; assert not i.is_graphsurgeon_graph(object()); "
            "assert 'onnx_graphsurgeon' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
