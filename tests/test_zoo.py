"""Model zoo: every CNN exports with both exporters, passes the ONNX checker and matches
PyTorch in ONNX Runtime; keep_bn exports keep BatchNormalization; caching and CLI work.

Exports go to a session temp dir (not the shared cache) so timings are honest and runs
are independent; each (model, exporter, keep_bn, dynamic_batch) is exported once per
session and shared between tests.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest` without `python -m`: make the repo-root package importable
    sys.path.insert(0, str(REPO))

import models  # noqa: E402
from models import CNN_MODELS, EXPORTERS, FULL_MODELS, ZOO, export_model, get_model
from models.export import count_ops  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4

EXPECTED_MODELS = [
    "resnet18",
    "resnet50",
    "resnext",
    "mobilenetv2",
    "mobilenetv3",
    "efficientnet_b0",
    "densenet",
    "squeezenet",
    "inception",
    "shufflenetv2",
    "unet",
    "yolo_c2f",
    "vgg",
    "conv1d",
    "conv3d",
    "crnn",
    "crnn_gru",
]
# Models whose BatchNorms all follow a Conv (so folding removes every BN node).
# DenseNet's pre-activation BNs read a Concat / the stem-less block input and must survive.
PREACT_BN_MODELS = {"densenet"}
BN_MODELS = [n for n in CNN_MODELS if ZOO[n].has_batchnorm]
# channel-shuffle Reshape targets, Flatten -> Gemm, Resize / ConvTranspose with a symbolic batch
DYNAMIC_BATCH_MODELS = ["shufflenetv2", "vgg", "unet"]


def _bn_module_count(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


@pytest.fixture(scope="module", autouse=True)
def _single_thread_torch():
    """The models are tiny: intra-op threading only adds overhead, and on a loaded
    machine OpenMP spin-waiting makes 2-thread CPU ops 10-100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    done: dict[tuple, pathlib.Path] = {}

    def get(name: str, exporter: str, keep_bn: bool = False, dynamic_batch: bool = False) -> pathlib.Path:
        key = (name, exporter, keep_bn, dynamic_batch)
        if key not in done:
            fname = f"{name}.{exporter}.{'bn' if keep_bn else 'fold'}{'.dyn' if dynamic_batch else ''}.onnx"
            done[key] = export_model(
                name, root / fname, exporter=exporter, keep_bn=keep_bn, dynamic_batch=dynamic_batch
            )
        return done[key]

    return get


@functools.cache
def _reference(name: str, batch: int = 1) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(inputs, torch outputs) for the seed-0 model. batch != 1 draws fresh inputs."""
    module, inputs = ZOO[name].build(seed=0, batch=1)
    if batch != 1:
        g = torch.Generator().manual_seed(123)
        inputs = tuple(torch.randn((batch,) + tuple(t.shape[1:]), generator=g) for t in inputs)
    with torch.no_grad():
        out = module(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    return tuple(t.numpy() for t in inputs), tuple(t.numpy() for t in outs)


def _run_ort(path: pathlib.Path, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def _assert_matches(got: list[np.ndarray], expected: tuple[np.ndarray, ...]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def _check_file(path: pathlib.Path) -> onnx.ModelProto:
    model = onnx.load(os.fspath(path))
    onnx.checker.check_model(model, full_check=True)
    for init in model.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
    # nothing but .onnx files next to it (no external .data, no leftover temp files)
    assert all(p.suffix == ".onnx" for p in path.parent.iterdir()), sorted(path.parent.iterdir())
    return model


# --------------------------------------------------------------------------- registry


def test_registry_contents():
    assert CNN_MODELS == EXPECTED_MODELS
    assert "resnet50_full" in FULL_MODELS
    assert set(CNN_MODELS) | set(FULL_MODELS) == set(ZOO)
    assert not set(CNN_MODELS) & set(FULL_MODELS)
    for name, entry in ZOO.items():
        assert entry.name == name and entry.description
        module, inputs = entry.builder()
        assert isinstance(module, torch.nn.Module)
        assert isinstance(inputs, tuple) and len(inputs) == len(entry.input_names)
        assert all(isinstance(t, torch.Tensor) and t.shape[0] == 1 for t in inputs)


def test_build_is_deterministic_and_bn_nontrivial():
    m1, x1 = ZOO["resnet18"].build(seed=0)
    m2, x2 = ZOO["resnet18"].build(seed=0)
    m3, _ = ZOO["resnet18"].build(seed=1)
    sd1, sd2, sd3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(x1[0], x2[0])
    assert not torch.equal(sd1["stem.0.weight"], sd3["stem.0.weight"])
    assert not m1.training
    for m in m1.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean))
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
            assert not torch.allclose(m.weight, torch.ones_like(m.weight))
            assert not torch.allclose(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize(
    "name,params",
    [
        # torchvision parameter counts of the reference architectures
        ("resnet50_full", 25_557_032),
        ("resnext50_full", 25_028_904),
        ("mobilenetv2_full", 3_504_872),
        ("mobilenetv3_full", 5_483_032),
        ("efficientnet_b0_full", 5_288_548),
        ("shufflenetv2_full", 2_278_604),
    ],
)
def test_full_size_configs_match_reference_param_counts(name, params):
    module, inputs = ZOO[name].builder()
    assert sum(p.numel() for p in module.parameters()) == params
    assert tuple(inputs[0].shape) == (1, 3, 224, 224)


# --------------------------------------------------------------------------- export + ORT


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", CNN_MODELS)
def test_export_matches_torch(name, exporter, exported):
    path = exported(name, exporter)
    model = _check_file(path)
    entry = ZOO[name]
    assert [i.name for i in model.graph.input] == list(entry.input_names)
    assert [o.name for o in model.graph.output] == list(entry.output_names)
    ops = count_ops(model)
    assert "Dropout" not in ops
    if name not in PREACT_BN_MODELS:
        assert "BatchNormalization" not in ops, ops  # folded into the convs
    if entry.task == "classification":
        # logits come straight out of the Linear head
        (producer,) = [n for n in model.graph.node if entry.output_names[0] in n.output]
        assert producer.op_type == "Gemm", producer.op_type
    inputs, expected = _reference(name)
    _assert_matches(_run_ort(path, inputs), expected)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", BN_MODELS)
def test_keep_bn_export(name, exporter, exported):
    path = exported(name, exporter, keep_bn=True)
    model = _check_file(path)
    ops = count_ops(model)
    module, _ = ZOO[name].build()
    # every BatchNorm module survives as one BatchNormalization node
    assert ops.get("BatchNormalization", 0) == _bn_module_count(module), ops
    for node in model.graph.node:  # inference-mode BN (running statistics), single output
        if node.op_type == "BatchNormalization":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("training_mode", 0) == 0 and len(node.output) == 1, node
    assert "Dropout" not in ops
    folded = count_ops(exported(name, exporter, keep_bn=False))
    assert folded.get("BatchNormalization", 0) < ops["BatchNormalization"]
    if name in PREACT_BN_MODELS:
        assert folded.get("BatchNormalization", 0) > 0  # pre-activation BNs cannot be folded
    inputs, expected = _reference(name)
    _assert_matches(_run_ort(path, inputs), expected)


def test_models_without_batchnorm():
    assert set(CNN_MODELS) - set(BN_MODELS) == {"squeezenet"}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", DYNAMIC_BATCH_MODELS)
def test_dynamic_batch(name, exporter, exported):
    path = exported(name, exporter, dynamic_batch=True)
    model = _check_file(path)
    for vi in list(model.graph.input) + list(model.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert d0.dim_param and not d0.dim_value, vi
    inputs, expected = _reference(name, batch=3)
    _assert_matches(_run_ort(path, inputs), expected)


def test_export_metadata_and_atomic_write(tmp_path):
    path = export_model("conv3d", tmp_path / "sub" / "m.onnx")
    model = onnx.load(os.fspath(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["graphprune.zoo.name"] == "conv3d"
    assert meta["graphprune.zoo.exporter"] == "torchscript"
    assert meta["graphprune.zoo.keep_bn"] == "false"
    assert model.opset_import[0].version == 17
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]


def test_export_same_seed_same_weights(tmp_path):
    a = onnx.load(os.fspath(export_model("conv1d", tmp_path / "a.onnx", seed=0)))
    b = onnx.load(os.fspath(export_model("conv1d", tmp_path / "b.onnx", seed=0)))
    c = onnx.load(os.fspath(export_model("conv1d", tmp_path / "c.onnx", seed=5)))

    def weights(m):
        return [onnx.numpy_helper.to_array(i) for i in sorted(m.graph.initializer, key=lambda t: t.name)]

    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(weights(a), weights(c)))


def test_export_rejects_unknown():
    with pytest.raises(KeyError):
        export_model("nope", "/tmp/never.onnx")
    with pytest.raises(ValueError):
        get_model("resnet18", exporter="tflite")
    with pytest.raises(ValueError, match="opset"):
        export_model("conv1d", "/tmp/never.onnx", exporter="dynamo", opset=17)


# --------------------------------------------------------------------------- cache + CLI


def test_get_model_caches(tmp_path, monkeypatch):
    p1 = get_model("conv1d", cache_dir=tmp_path)
    assert p1.parent == tmp_path and p1.is_file()
    assert models.cache_key() in p1.name
    mtime = p1.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(models, "export_model", boom)
    p2 = get_model("conv1d", cache_dir=tmp_path)
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime
    # a different key (keep_bn) is a different file and would need an export
    with pytest.raises(AssertionError, match="cache"):
        get_model("conv1d", keep_bn=True, cache_dir=tmp_path)


def test_get_model_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_ZOO_CACHE", os.fspath(tmp_path / "envcache"))
    assert models.default_cache_dir() == tmp_path / "envcache"
    p = get_model("conv3d", keep_bn=True)
    assert p.parent == tmp_path / "envcache"
    assert "conv3d__torchscript__bn__" in p.name
    assert count_ops(p)["BatchNormalization"] == 4


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv("GRAPHPRUNE_ZOO_CACHE", raising=False)
    assert models.default_cache_dir() == REPO / ".cache" / "zoo"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "models", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_list():
    r = _cli("list")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == CNN_MODELS


def test_cli_build(tmp_path):
    out = tmp_path / "vgg.onnx"
    r = _cli("build", "vgg", "--keep-bn", "-o", os.fspath(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.fspath(out)
    model = _check_file(out)
    assert count_ops(model)["BatchNormalization"] == 6
    inputs, expected = _reference("vgg")
    _assert_matches(_run_ort(out, inputs), expected)
