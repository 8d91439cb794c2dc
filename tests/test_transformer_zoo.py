"""Transformer zoo: every Hugging Face model builds offline with deterministic, non-trivial
weights, exports with both exporters, passes the ONNX checker and matches PyTorch in ONNX
Runtime at the export size and, where the export is dynamic, at a second batch/length.

Exports go through :func:`get_transformer_model`, i.e. the shared zoo cache
(``$GRAPHPRUNE_ZOO_CACHE`` or ``<repo>/.cache/zoo``), keyed by the torch / transformers /
onnx / onnxscript versions and the zoo module's source: a cold run exports the 68 exports of
``TRANSFORMER_TEST_MODELS`` (most of the time is the dynamo exporter), later runs only check them.
Building, weights and the wrappers are checked for every entry (cheap, no export).
"""

from __future__ import annotations

import functools
import os
import pathlib
import socket
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.transformers_zoo import (  # noqa: E402
    BATCH,
    SEQ,
    TORCHSCRIPT_OPSET,
    TRANSFORMER_EXPORTERS,
    TRANSFORMER_MODELS,
    TRANSFORMER_TEST_MODELS,
    TRANSFORMER_ZOO,
    export_all,
    get_transformer_model,
    transformer_cache_key,
    transformer_model_path,
)

RTOL, ATOL = 1e-3, 1e-4

EXPECTED_MODELS = [
    "bert",
    "distilbert",
    "roberta",
    "albert",
    "t5_encoder",
    "gpt2",
    "llama",
    "qwen2",
    "phi",
    "vit",
    "deit",
    "swin",
    "convnext",
    "mobilevit",
    "segformer",
    "whisper_encoder",
    "wav2vec2",
    "phi3",
    "falcon",
    "bloom",
    "gptbigcode",
    "deberta_v2",
    "modernbert",
    "convbert",
    "funnel",
    "wavlm",
    "convnextv2",
    "mistral",
    "gemma",
    "gpt_neox",
    "gptj",
    "opt",
    "olmo",
    "olmo2",
    "stablelm",
    "xglm",
    "mpt",
    "codegen",
    "mixtral",
    "qwen2_moe",
    "olmoe",
    "electra",
    "mpnet",
    "xlm_roberta",
    "deberta",
    "beit",
    "dinov2",
    "levit",
    "swinv2",
    "poolformer",
    "focalnet",
    "pvt",
    "hubert",
    "data2vec_audio",
    "sew",
]
# Models with tied parameters (one tensor registered twice): the LM heads of GPT-2, Falcon, BLOOM
# GPTBigCode, Gemma, XGLM and MPT are their token embeddings; T5EncoderModel's encoder.embed_tokens is its `shared`
# embedding. (ALBERT shares differently: one layer module is called num_hidden_layers times.)
# Exports where dynamo's optimizer folds one shared tensor once per use, so two initializers hold the same
# values: ALBERT's shared layer (the transposes of q, k, v, dense, ffn, ffn_output), DeBERTa's relative
# embedding table (read by both layers), one of Swin V2's first-stage window attention constants (16 windows x 16 x
# 16, folded once per block).
FOLDED_PER_USE = {("albert", "dynamo"): 6, ("deberta", "dynamo"): 1, ("swinv2", "dynamo"): 1}
# LeViT's Linear + BatchNorm1d pairs: no exporter folds a BatchNorm into a MatMul (only into a Conv).
BATCHNORM_MODELS = {"levit"}
TIED_PARAM_MODELS = {"gpt2", "t5_encoder", "falcon", "bloom", "gptbigcode", "gemma", "xglm", "mpt"}


@pytest.fixture(scope="module", autouse=True)
def _single_thread_torch():
    """Tiny models: intra-op threads only add overhead (and spin-wait on a loaded box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.cache
def _built(name: str):
    module, _ = TRANSFORMER_ZOO[name].build(seed=0)
    return module


@functools.cache
def _reference(name: str, batch: int, length: int):
    entry = TRANSFORMER_ZOO[name]
    inputs = entry.make_inputs(batch, length)
    with torch.no_grad():
        outs = _built(name)(*inputs)
    return tuple(t.numpy() for t in inputs), tuple(t.numpy() for t in outs)


@pytest.fixture(scope="session")
def prewarmed_cache():
    """Export whatever is not cached yet in parallel (``$GRAPHPRUNE_ZOO_JOBS`` workers,
    default min(2, CPUs)): a cold cache costs ~150 s of CPU, mostly the dynamo exporter.
    Failures are ignored here; the test of that case exports again and reports the error."""
    missing = [
        (n, e)
        for n in TRANSFORMER_TEST_MODELS
        for e in TRANSFORMER_EXPORTERS
        if not transformer_model_path(n, e).is_file()
    ]
    jobs = int(os.environ.get("GRAPHPRUNE_ZOO_JOBS", min(2, os.cpu_count() or 1)))
    if len(missing) > 2 and jobs > 1:
        export_all(sorted({n for n, _ in missing}), tuple(sorted({e for _, e in missing})), jobs=jobs)
    return missing


def _run_ort(path: pathlib.Path, inputs) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------- registry


def test_registry_contents():
    assert TRANSFORMER_MODELS == EXPECTED_MODELS
    assert set(TRANSFORMER_ZOO) == set(TRANSFORMER_MODELS)
    assert len(set(TRANSFORMER_TEST_MODELS)) == len(TRANSFORMER_TEST_MODELS)
    assert set(TRANSFORMER_TEST_MODELS) < set(TRANSFORMER_MODELS)
    import models

    assert not set(TRANSFORMER_ZOO) & set(models.ZOO), "names must not collide with the CNN zoo"
    for name, e in TRANSFORMER_ZOO.items():
        assert e.name == name and e.description
        assert e.modality in ("text", "vision", "audio")
        assert set(e.dynamic) == set(TRANSFORMER_EXPORTERS)
        for exporter, dims in e.dynamic.items():
            assert set(dims) <= {BATCH, SEQ}
            # an export with fewer dynamic dims than the model allows must say why
            if set(dims) != set(e.dynamic["torchscript"]) | set(e.dynamic["dynamo"]):
                assert exporter in e.static_reason, (name, exporter)
        assert set(e.xfail) <= set(TRANSFORMER_EXPORTERS)
        assert e.attn_implementation in (None, "eager", "sdpa")


def test_build_offline_no_network(monkeypatch):
    """Building every model never opens a connection (no hub access)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in TRANSFORMER_MODELS:
        module, inputs = TRANSFORMER_ZOO[name].build(seed=0)
        assert not module.training
        with torch.no_grad():
            outs = module(*inputs)
        assert isinstance(outs, tuple) and len(outs) == len(TRANSFORMER_ZOO[name].output_names)
        assert all(isinstance(t, torch.Tensor) and torch.isfinite(t).all() for t in outs)


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_weights_deterministic_distinct_nontrivial(name):
    entry = TRANSFORMER_ZOO[name]
    hf0, hf0b, hf1 = entry.build_hf(seed=0), entry.build_hf(seed=0), entry.build_hf(seed=1)
    sd0, sd0b, sd1 = hf0.state_dict(), hf0b.state_dict(), hf1.state_dict()
    assert all(torch.equal(sd0[k], sd0b[k]) for k in sd0)
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if sd0[k].is_floating_point())
    x0, x0b = entry.make_inputs(), entry.make_inputs()
    assert all(torch.equal(a, b) for a, b in zip(x0, x0b))

    # pairwise distinct parameters (only genuinely shared tensors are the same)
    params = list(hf0.named_parameters())  # shared tensors are listed once
    seen: dict[bytes, str] = {}
    for pname, p in params:
        key = p.detach().numpy().tobytes()
        assert key not in seen, f"{pname} == {seen[key]}"
        seen[key] = pname
        if p.numel() > 1:
            assert not bool((p == p.reshape(-1)[0]).all()), f"{pname} is constant"
    tied = len(list(hf0.named_parameters(remove_duplicate=False))) > len(params)
    assert tied == (name in TIED_PARAM_MODELS)
    if name == "albert":
        groups = hf0.albert.encoder.albert_layer_groups
        assert len(groups) == 1 and len(groups[0].albert_layers) == 1
        assert hf0.config.num_hidden_layers == 2
    for pname, p in params:
        leaf = pname.rsplit(".", 1)[-1]
        if leaf == "bias":
            assert p.abs().max() > 0, pname
    for m in hf0.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))


@pytest.mark.parametrize("name", TRANSFORMER_MODELS)
def test_wrapper_matches_hf_forward(name):
    """The plain-tensor adapters compute what the Hugging Face model's own forward does."""
    entry = TRANSFORMER_ZOO[name]
    module = _built(name)
    inputs = entry.make_inputs()
    with torch.no_grad():
        outs = module(*inputs)
        if entry.model_class == "WhisperEncoder":
            ref = module.hf(inputs[0])
        else:
            ref = module.hf(**dict(zip(entry.input_names, inputs)))
    if "logits" in entry.output_names:
        torch.testing.assert_close(outs[entry.output_names.index("logits")], ref.logits, rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(outs[0], ref.last_hidden_state, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- export + ORT


def _cases():
    for name in TRANSFORMER_TEST_MODELS:
        for exporter in TRANSFORMER_EXPORTERS:
            reason = TRANSFORMER_ZOO[name].xfail.get(exporter)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            yield pytest.param(name, exporter, marks=marks, id=f"{name}-{exporter}")


@pytest.mark.parametrize("name,exporter", list(_cases()))
def test_export_checker_and_ort_match(name, exporter, prewarmed_cache):
    entry = TRANSFORMER_ZOO[name]
    path = get_transformer_model(name, exporter)
    assert path.suffix == ".onnx" and name in path.name and exporter in path.name
    assert transformer_cache_key() in path.name

    model = onnx.load(os.fspath(path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert not list(path.parent.glob(path.name + "*.data"))
    assert [i.name for i in model.graph.input] == list(entry.input_names)
    assert [o.name for o in model.graph.output] == list(entry.output_names)
    opsets = {o.domain: o.version for o in model.opset_import}
    if exporter == "torchscript":
        assert opsets[""] == TORCHSCRIPT_OPSET
    else:
        assert opsets.get("", opsets.get("ai.onnx", 0)) >= 18
    ops = {n.op_type for n in model.graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), "custom-domain op"
    assert "Dropout" not in ops and ("BatchNormalization" not in ops or name in BATCHNORM_MODELS), ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["graphprune.zoo.name"] == name and meta["graphprune.zoo.exporter"] == exporter

    # no two float initializers hold the same values (the exporters deduplicate identical
    # initializers, which would tie unrelated layers). Exceptions (FOLDED_PER_USE): where dynamo's
    # optimizer constant-folds one shared tensor once per use.
    blobs: dict[bytes, str] = {}
    dups = []
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1:
            key = arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes()
            if key in blobs:
                dups.append((init.name, blobs[key]))
            blobs[key] = init.name
    assert len(dups) == FOLDED_PER_USE.get((name, exporter), 0), dups

    # dynamic dimensions are symbolic, the others fixed
    dyn = entry.dynamic[exporter]
    for vi in model.graph.input:
        d = _dims(vi)
        assert isinstance(d[0], str) == (BATCH in dyn), (vi.name, d)
        if entry.modality in ("text", "audio") and len(d) == 2:
            assert isinstance(d[1], str) == (SEQ in dyn), (vi.name, d)
        assert all(isinstance(x, int) for x in d[2:]), (vi.name, d)

    sizes = [(entry.batch, entry.length)]
    second = entry.check_size(exporter)
    if second is not None:
        assert second != sizes[0]
        sizes.append(second)
    for batch, length in sizes:
        inputs, expected = _reference(name, batch, length)
        got = _run_ort(path, inputs)
        assert len(got) == len(expected)
        for out_name, g, e in zip(entry.output_names, got, expected):
            assert g.shape == e.shape, (out_name, batch, length)
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL, err_msg=f"{out_name} at {batch}x{length}")


def test_get_transformer_model_caches(tmp_path):
    """Second call reuses the file; atomic write leaves only the .onnx; seeds are separate files."""
    p1 = get_transformer_model("convnext", "torchscript", cache_dir=tmp_path)
    mtime = p1.stat().st_mtime_ns
    p2 = get_transformer_model("convnext", "torchscript", cache_dir=tmp_path)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime
    p3 = get_transformer_model("convnext", "torchscript", cache_dir=tmp_path, seed=1)
    assert p3 != p1 and "seed1" in p3.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p1.name, p3.name])
    assert p1.name == f"hf__convnext__torchscript__{transformer_cache_key()}.onnx"
    umask = os.umask(0)
    os.umask(umask)
    assert p1.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    from models.transformers_zoo import main

    assert main(["convnext", "--exporter", "torchscript", "--cache-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p1.name, p3.name])  # cached
    with pytest.raises(KeyError, match="unknown transformer zoo model"):
        get_transformer_model("nope")
    with pytest.raises(ValueError, match="exporter"):
        get_transformer_model("convnext", "tflite")


def test_sdpa_alternative_exports(tmp_path):
    """The entries use eager attention; sdpa exports too (decomposed, with an IsNaN -> Where
    guard after each masked Softmax that eager does not have) and matches PyTorch."""
    from models.transformers_zoo import export_transformer

    entry = TRANSFORMER_ZOO["bert"]
    path = export_transformer("bert", tmp_path / "bert_sdpa.onnx", "torchscript", attn_implementation="sdpa")
    ops = [n.op_type for n in onnx.load(os.fspath(path)).graph.node]
    eager_ops = {n.op_type for n in onnx.load(os.fspath(get_transformer_model("bert"))).graph.node}
    assert ops.count("IsNaN") == entry.config["num_hidden_layers"] and "IsNaN" not in eager_ops
    module, _ = entry.build(attn_implementation="sdpa")
    inputs = entry.make_inputs(3, 11)
    with torch.no_grad():
        expected = [t.numpy() for t in module(*inputs)]
    for g, e in zip(_run_ort(path, [t.numpy() for t in inputs]), expected):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
