"""Models for the speed and scale benchmarks, built locally with random weights (nothing is downloaded).

- CNNs: ``resnet50_full`` / ``mobilenetv2_full`` from the zoo (``models.get_model``).
- BERT-base / ViT-B/16: ``BertConfig()`` / ``ViTConfig()`` defaults (the base sizes), TorchScript export.
- LLaMA-style decoders at ~100M / ~350M / ~1.1B parameters: ``LlamaConfig`` + ``LlamaForCausalLM``, TorchScript
  export; models over 2 GB are written with external data.

Every file lands in ``.cache/bench/`` (ignored by git) and is rebuilt when missing.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"

BERT_SEQ = 128
VIT_IMAGE = 224
LLAMA_SEQ = 128

# name: LlamaConfig keyword arguments (vocab 32000, untied LM head, GQA where the size class uses it).
# Models with "layers_from" are exported with 2 decoder layers and grown to num_hidden_layers by cloning
# layer 1 (same nodes, fresh random weights, streamed to external data): the TorchScript exporter needs
# ~4x the weights in memory, too much for 1B+ parameters on this machine.
LLAMA_SIZES = {
    "llama_100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                       num_key_value_heads=12),
    "llama_350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                       num_key_value_heads=16),
    "llama_1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, layers_from=2),  # the TinyLlama-1.1B shape
}
# Depth series at fixed width (hidden 768, as llama_100m): compiler time against node count.
for _n in (8, 16, 32, 64):
    LLAMA_SIZES[f"llama_768x{_n}"] = dict(LLAMA_SIZES["llama_100m"], num_hidden_layers=_n, layers_from=2)


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


def _perturb(model, seed: int) -> None:
    """HF initialises biases to 0 and norms to 1; make every parameter distinct so the exporter's
    initializer deduplication never ties unrelated layers."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))


def _export(module, inputs, path: pathlib.Path, input_names, output_names, dynamic_axes) -> pathlib.Path:
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=".export.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, os.fspath(tmp), dynamo=False, opset_version=17,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        files = list(tmpdir.iterdir())
        if len(files) == 1:
            os.replace(tmp, path)
        else:  # the exporter wrote external data (one file per tensor): gather it into one file
            m = onnx.load(os.fspath(tmp), load_external_data=True)
            data = path.name + ".data"
            onnx.save_model(m, os.fspath(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
            os.replace(tmpdir / data, path.parent / data)
            os.replace(tmp, path)
    finally:
        for f in tmpdir.iterdir():
            f.unlink()
        tmpdir.rmdir()
    return path


def bert_base(cache: pathlib.Path = CACHE) -> pathlib.Path:
    """BertModel(BertConfig()) — 12 layers, hidden 768, 12 heads, FFN 3072 — dynamic batch, sequence 128."""
    path = cache / "bert_base.onnx"
    if path.exists():
        return path
    import torch

    tf = _transformers()
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(attn_implementation="eager")).eval()
    _perturb(model, 1)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state, out.pooler_output

    ids = torch.randint(0, 30522, (1, BERT_SEQ))
    mask = torch.ones(1, BERT_SEQ, dtype=torch.int64)
    axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "last_hidden_state": {0: "batch"},
            "pooler_output": {0: "batch"}}
    return _export(Wrap(model).eval(), (ids, mask), path, ("input_ids", "attention_mask"),
                   ("last_hidden_state", "pooler_output"), axes)


def vit_base(cache: pathlib.Path = CACHE) -> pathlib.Path:
    """ViTForImageClassification(ViTConfig(num_labels=1000)) — ViT-B/16 at 224x224 — dynamic batch."""
    path = cache / "vit_base.onnx"
    if path.exists():
        return path
    import torch

    tf = _transformers()
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(num_labels=1000, attn_implementation="eager")).eval()
    _perturb(model, 1)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    x = torch.randn(1, 3, VIT_IMAGE, VIT_IMAGE)
    return _export(Wrap(model).eval(), (x,), path, ("pixel_values",), ("logits",),
                   {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


def llama(name: str, cache: pathlib.Path = CACHE) -> pathlib.Path:
    """LlamaForCausalLM at one of LLAMA_SIZES, dynamic batch and sequence; > 2 GB goes to external data."""
    path = cache / f"{name}.onnx"
    if path.exists():
        return path
    size = dict(LLAMA_SIZES[name])
    grow_from = size.pop("layers_from", None)
    if grow_from:  # one 2-layer seed per width, shared by every depth grown from it
        seed_name = "llama_seed_h{hidden_size}_i{intermediate_size}_a{num_attention_heads}_kv{num_key_value_heads}" \
            .format(**size)
        LLAMA_SIZES[seed_name] = dict(size, num_hidden_layers=grow_from)
        seed = llama(seed_name, cache)
        return clone_layers(seed, size["num_hidden_layers"], path)
    import torch

    tf = _transformers()
    cfg = tf.LlamaConfig(vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
                         use_cache=False, attn_implementation="eager", **size)
    torch.manual_seed(0)
    t = time.perf_counter()
    model = tf.LlamaForCausalLM(cfg).eval()
    _perturb(model, 1)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.randint(0, 32000, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    out = _export(Wrap(model).eval(), (ids, mask), path, ("input_ids", "attention_mask"), ("logits",), axes)
    print(f"exported {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params) "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def clone_layers(src: pathlib.Path, n_layers: int, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Grow a TorchScript LLaMA export with layers 0 and 1 to `n_layers` decoder layers.

    Layer 1's nodes (and the Constant nodes only it reads) are copied n_layers - 2 times with renamed
    tensors, each copy reading the previous one's residual output; the final norm reads the last copy.
    Copied weights are fresh random tensors with the template's mean and std. All initializers go to one
    external data file, written tensor by tensor (memory stays at the 2-layer model's size).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    t0 = time.perf_counter()
    m = onnx.load(os.fspath(src))
    g = m.graph
    pre1, pre0 = "/m/model/layers.1/", "/m/model/layers.0/"
    x_in, y_out = pre0 + "Add_1_output_0", pre1 + "Add_1_output_0"
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    layer1 = [i for i, n in enumerate(g.node) if n.name.startswith(pre1)]
    in1 = set(layer1)
    consts = [i for i, n in enumerate(g.node) if n.op_type == "Constant" and not n.input
              and all(c in in1 for o in n.output for c in consumers.get(o, [])) and consumers.get(n.output[0])]
    template = sorted(set(layer1) | set(consts))
    inits = {t.name: t for t in g.initializer}
    t_inits = sorted({t for i in layer1 for t in g.node[i].input if t in inits
                      and all(c in in1 for c in consumers[t])})
    rng = np.random.default_rng(seed)
    new_nodes, new_inits = [], []
    prev = y_out
    for c in range(2, n_layers):
        ren = {}
        for i in template:
            for o in g.node[i].output:
                ren[o] = f"{o}__L{c}"
        for t in t_inits:
            ren[t] = f"{t}__L{c}"
        ren[x_in] = prev
        for i in template:
            n = onnx.NodeProto()
            n.CopyFrom(g.node[i])
            n.name = n.name.replace("layers.1/", f"layers.{c}/") if n.name.startswith(pre1) else f"{n.name}__L{c}"
            for k, t in enumerate(n.input):
                n.input[k] = ren.get(t, t)
            for k, t in enumerate(n.output):
                n.output[k] = ren[t]
            new_nodes.append(n)
        for t in t_inits:
            new_inits.append((ren[t], inits[t]))
        prev = ren[y_out]
    # rewire: everything after layer 1 that read its output now reads the last copy
    last1 = max(layer1)
    for i, n in enumerate(g.node):
        if i > last1 and i not in in1:
            for k, t in enumerate(n.input):
                if t == y_out:
                    n.input[k] = prev
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:last1 + 1] + new_nodes + nodes[last1 + 1:])
    # stream every initializer (old and new) to one external data file
    data_name = path.name + ".data"
    tmp_data = path.parent / f".{data_name}.tmp"
    offset = 0
    with open(tmp_data, "wb") as f:
        def put(t: onnx.TensorProto, arr) -> None:
            nonlocal offset
            raw = np.ascontiguousarray(arr).tobytes()
            pad = (-offset) % 4096
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            t.ClearField("raw_data")
            del t.float_data[:], t.int64_data[:], t.int32_data[:], t.double_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)

        stats = {}
        for name, tmpl in new_inits:
            if tmpl.name not in stats:
                ref = numpy_helper.to_array(tmpl)
                stats[tmpl.name] = (ref.shape, ref.dtype, float(ref.mean()), float(ref.std()))
        for t in list(g.initializer):
            arr = numpy_helper.to_array(t)
            if arr.size >= 1024:
                put(t, arr)
        for name, tmpl in new_inits:
            shape, dtype, mean, std = stats[tmpl.name]
            arr = (rng.standard_normal(shape, dtype=np.float32) * std + mean).astype(dtype)
            t = numpy_helper.from_array(arr, name)
            if arr.size >= 1024:
                put(t, arr)
            g.initializer.append(t)
    m.doc_string = f"{src.name} grown to {n_layers} decoder layers by graphprune benchmarks/bench_models.py"
    tmp = path.parent / f".{path.name}.tmp"
    onnx.save_model(m, os.fspath(tmp))
    os.replace(tmp_data, path.parent / data_name)
    os.replace(tmp, path)
    params = sum(int(np.prod(t.dims)) for t in g.initializer)
    print(f"grew {src.name} to {n_layers} layers ({params / 1e6:.0f}M params, {len(g.node)} nodes) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def cnn(name: str) -> pathlib.Path:
    from models import get_model

    return get_model(name)


def get(name: str) -> pathlib.Path:
    if name == "bert_base":
        return bert_base()
    if name == "vit_base":
        return vit_base()
    if name in LLAMA_SIZES:
        return llama(name)
    return cnn(name)


def weight_bytes(path: pathlib.Path) -> int:
    """Bytes of the model's initializers (inline and external)."""
    import onnx

    m = onnx.load(os.fspath(path), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next(e.value for e in t.external_data if e.key == "length"))
        else:
            total += len(t.raw_data) if t.raw_data else t.ByteSize()
    return total


if __name__ == "__main__":
    import sys

    for n in sys.argv[1:]:
        t = time.perf_counter()
        print(n, get(n), f"{time.perf_counter() - t:.1f} s", flush=True)
