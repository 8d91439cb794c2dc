"""graphprune transformer zoo: small Hugging Face ``transformers`` models, exported to ONNX on demand.

>>> from models.transformers_zoo import TRANSFORMER_ZOO, TRANSFORMER_MODELS, get_transformer_model
>>> path = get_transformer_model("llama")                        # TorchScript export
>>> path = get_transformer_model("swin", exporter="dynamo")

Every model is built locally from a ``transformers`` config class with small sizes
(hidden 32-128, 2 layers or stages, 4 heads) and random but deterministic weights: no
``from_pretrained``, nothing touches the Hugging Face hub (``HF_HUB_OFFLINE`` is set
before ``transformers`` is imported unless the caller set it).

Each Hugging Face model is wrapped in a small :class:`torch.nn.Module` whose ``forward``
takes plain tensors (``input_ids, attention_mask`` for text, ``pixel_values`` for vision,
``input_features`` / ``input_values`` for audio) and returns plain tensors
(``last_hidden_state`` and, where the model has a head, ``logits``).

Weights: after construction (``torch.manual_seed(seed)``, then the model's own
initialisation) every bias and every normalisation weight/bias (LayerNorm, RMSNorm,
GroupNorm, BatchNorm) is redrawn from a seeded generator, parameters that are still
constant (zero-initialised tables and tokens, ConvNeXt's 1e-6 layer scale) are redrawn,
and BatchNorm running statistics are randomised. No two parameters hold identical values
(only genuinely shared ones, ALBERT's shared layer and GPT-2's tied embedding, are one
tensor), so the exporters' initializer deduplication never ties unrelated layers.

Export (:func:`export_transformer`): TorchScript (``dynamo=False``, opset 17,
``dynamic_axes``) or dynamo (``dynamo=True``, exporter default opset, ``dynamic_shapes``
built from ``torch.export.Dim``, default onnxscript optimisation). The dimensions each
entry makes dynamic are in :attr:`Entry.dynamic`; an exporter that must export a model
with fewer dynamic dimensions says why in :attr:`Entry.static_reason`. Files are single
``.onnx`` files (no external data), written atomically and checked with
``onnx.checker.check_model(full_check=True)``.

The cache (:func:`get_transformer_model`) shares the CNN zoo's directory
(:func:`models.default_cache_dir`); file names carry the model, the exporter and a hash of
the torch / transformers / onnx / onnxscript versions and of this module's source.
:func:`export_all` fills it, optionally in parallel worker processes; from the shell:
``python -m models.transformers_zoo [NAME ...] [--exporter E] [--jobs N]``.

Attention: every model with an ``attn_implementation`` switch uses ``"eager"`` (see
``_EAGER`` for what ``"sdpa"`` exports to instead; both work under both exporters).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

__all__ = [
    "Entry",
    "TRANSFORMER_ZOO",
    "TRANSFORMER_MODELS",
    "TRANSFORMER_TEST_MODELS",
    "TRANSFORMER_EXPORTERS",
    "NO_ATTENTION",
    "TORCHSCRIPT_OPSET",
    "get_transformer_entry",
    "get_transformer_model",
    "transformer_model_path",
    "export_transformer",
    "export_all",
    "transformer_cache_key",
    "randomize_weights",
    "TransformerWrapper",
]

TRANSFORMER_EXPORTERS = ("torchscript", "dynamo")
TORCHSCRIPT_OPSET = 17

# Entry.attn_note of the architectures without attention (ConvNeXt, PoolFormer, FocalNet): Entry.has_attention
NO_ATTENTION = "no attention"

# dimension names used in Entry.dynamic / dynamic_axes
BATCH, SEQ = "batch", "sequence"


def _transformers():
    """Import ``transformers`` offline (lazily: importing this module stays cheap)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


# --------------------------------------------------------------------------- wrappers


class TransformerWrapper(nn.Module):
    """Plain-tensor front end of a Hugging Face model.

    ``forward(*inputs)`` returns ``adapter(hf_model, *inputs)``: a tuple of tensors. The
    adapters call the base model and the head explicitly (no ``ModelOutput`` objects, no
    keyword-only arguments), which is what both exporters need.
    """

    def __init__(self, hf_model: nn.Module, adapter: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.hf = hf_model
        self._adapter = adapter

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover - overridden
        return self._adapter(self.hf, *inputs)


class TextWrapper(TransformerWrapper):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._adapter(self.hf, input_ids, attention_mask)


class VisionWrapper(TransformerWrapper):
    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._adapter(self.hf, pixel_values)


class AudioWrapper(TransformerWrapper):
    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._adapter(self.hf, audio)


# adapters: (hf_model, *inputs) -> tuple of tensors ------------------------------------


def _seqcls_pooled(base_attr: str):
    """BERT / ALBERT: pooler (tanh dense on [CLS]) -> dropout -> classifier."""

    def adapter(hf, input_ids, attention_mask):
        out = getattr(hf, base_attr)(input_ids=input_ids, attention_mask=attention_mask)
        logits = hf.classifier(hf.dropout(out.pooler_output))
        return out.last_hidden_state, logits

    return adapter


def _seqcls_head(base_attr: str):
    """RoBERTa-style: the classification head (dense-tanh-dense) reads ``h[:, 0]`` itself."""

    def adapter(hf, input_ids, attention_mask):
        h = getattr(hf, base_attr)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return h, hf.classifier(h)

    return adapter


_roberta = _seqcls_head("roberta")


def _distilbert(hf, input_ids, attention_mask):
    h = hf.distilbert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    pooled = torch.relu(hf.pre_classifier(h[:, 0]))
    return h, hf.classifier(hf.dropout(pooled))


def _causal_lm(base_attr: str):
    def adapter(hf, input_ids, attention_mask):
        out = getattr(hf, base_attr)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = out.last_hidden_state
        return h, hf.lm_head(h)

    return adapter


def _encoder_only(hf, input_ids, attention_mask):
    return (hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,)


def _vit(hf, pixel_values):
    h = hf.vit(pixel_values).last_hidden_state
    return h, hf.classifier(h[:, 0, :])


def _deit_teacher(hf, pixel_values):
    h = hf.deit(pixel_values).last_hidden_state
    cls_logits = hf.cls_classifier(h[:, 0, :])
    dist_logits = hf.distillation_classifier(h[:, 1, :])
    return h, (cls_logits + dist_logits) / 2


def _pooled_image(base_attr: str, dropout: bool = False):
    def adapter(hf, pixel_values):
        out = getattr(hf, base_attr)(pixel_values)
        pooled = out.pooler_output
        if dropout:
            pooled = hf.dropout(pooled)
        return out.last_hidden_state, hf.classifier(pooled)

    return adapter


def _dinov2(hf, pixel_values):
    """DINOv2 classifier: [CLS] concatenated with the mean patch token."""
    h = hf.dinov2(pixel_values).last_hidden_state
    return h, hf.classifier(torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1))


def _pvt(hf, pixel_values):
    h = hf.pvt(pixel_values).last_hidden_state
    return h, hf.classifier(h[:, 0, :])


def _poolformer(hf, pixel_values):
    h = hf.poolformer(pixel_values).last_hidden_state
    return h, hf.classifier(hf.norm(h).mean([-2, -1]))


def _segformer(hf, pixel_values):
    out = hf.segformer(pixel_values, output_hidden_states=True)
    return out.last_hidden_state, hf.decode_head(out.hidden_states)


def _whisper_encoder(hf, input_features):
    return (hf(input_features).last_hidden_state,)


def _audio_base(hf, input_values):
    return (hf(input_values).last_hidden_state,)


def _wav2vec2_ctc(hf, input_values):
    h = hf.wav2vec2(input_values).last_hidden_state
    return h, hf.lm_head(hf.dropout(h))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Entry:
    """One transformer zoo model.

    ``config`` (keyword arguments of ``transformers.<config_class>``) and ``model_class``
    (built with ``model_class(config)``) define the Hugging Face model; ``adapter`` maps it
    to plain tensors. ``length`` is the example sequence length for text (tokens), the
    number of frames for Whisper, the number of samples for wav2vec2, and the image side
    for vision. ``check_batch`` / ``check_length`` is the second input size the tests run
    through ONNX Runtime (the dimensions not in ``dynamic`` keep their example size).
    """

    name: str
    description: str
    modality: str  # text | vision | audio
    config_class: str
    config: Mapping[str, Any] = field(repr=False)
    model_class: str
    adapter: Callable[..., tuple[torch.Tensor, ...]] = field(repr=False)
    output_names: tuple[str, ...]
    attn_implementation: str | None  # "eager" | "sdpa" | None (no attention / no switch)
    attn_note: str = ""
    batch: int = 2
    length: int = 16
    channels: int = 3  # image channels / mel bins
    check_batch: int = 3
    check_length: int | None = None  # None: same as length
    max_length: int | None = None  # upper bound of the dynamic length dimension
    dynamic: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({"torchscript": (BATCH,), "dynamo": (BATCH,)})
    )
    static_reason: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    xfail: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    # ------------------------------------------------------------------ inputs

    @property
    def has_attention(self) -> bool:
        """Whether the architecture has attention heads (the coverage bar expects them cut)."""
        return self.attn_note != NO_ATTENTION

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.modality == "text":
            return ("input_ids", "attention_mask")
        if self.modality == "vision":
            return ("pixel_values",)
        return ("input_features",) if self.model_class == "WhisperEncoder" else ("input_values",)

    def make_inputs(
        self, batch: int | None = None, length: int | None = None, seed: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """Deterministic example inputs (``batch``/``length`` default to the export size).

        Text: random token ids and an int64 attention mask with right padding (row ``b``
        masks its last ``(3 * b) % (length // 2)`` tokens, so row 0 is unpadded and no row
        is all padding). Vision: N(0, 1) pixels. Audio: N(0, 1) mel features / samples.
        """
        batch = self.batch if batch is None else batch
        length = self.length if length is None else length
        gen = torch.Generator().manual_seed(10_007 + seed)
        if self.modality == "text":
            vocab = int(self.config.get("vocab_size"))
            ids = torch.randint(0, vocab, (batch, length), generator=gen, dtype=torch.int64)
            mask = torch.ones(batch, length, dtype=torch.int64)
            for b in range(batch):
                pad = (3 * b) % max(length // 2, 1)
                if pad:
                    mask[b, length - pad :] = 0
            return ids, mask
        if self.modality == "vision":
            return (torch.randn(batch, self.channels, length, length, generator=gen),)
        if self.model_class == "WhisperEncoder":
            return (torch.randn(batch, self.channels, length, generator=gen),)
        return (torch.randn(batch, length, generator=gen),)

    @property
    def second_size(self) -> tuple[int, int]:
        """(batch, length) of the second check: differs in every dimension dynamic under
        *some* exporter (callers keep a dimension at its example size where an export is
        static in it, see :meth:`check_size`)."""
        return self.check_batch, self.length if self.check_length is None else self.check_length

    def check_size(self, exporter: str) -> tuple[int, int] | None:
        """The second (batch, length) to run an ``exporter`` export at; None if fully static."""
        dyn = self.dynamic[exporter]
        if not dyn:
            return None
        b, n = self.second_size
        return (b if BATCH in dyn else self.batch, n if SEQ in dyn else self.length)

    # ------------------------------------------------------------------ model

    def hf_config(self, attn_implementation: str | None = None) -> Any:
        tf = _transformers()
        kw = dict(self.config)
        attn = attn_implementation or self.attn_implementation
        if attn is not None:
            kw["attn_implementation"] = attn
        return getattr(tf, self.config_class)(**kw)

    def build_hf(self, seed: int = 0, attn_implementation: str | None = None) -> nn.Module:
        """The bare Hugging Face model, seeded, weights randomised, eval mode."""
        tf = _transformers()
        config = self.hf_config(attn_implementation)
        torch.manual_seed(seed)
        if self.model_class == "WhisperEncoder":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            model = WhisperEncoder(config)
        else:
            model = getattr(tf, self.model_class)(config)
        randomize_weights(model, torch.Generator().manual_seed(seed + 1_000_003))
        return model.eval()

    def build(
        self, seed: int = 0, attn_implementation: str | None = None
    ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """(wrapped model in eval mode, example inputs at the export size)."""
        hf = self.build_hf(seed, attn_implementation)
        wrapper_cls = {"text": TextWrapper, "vision": VisionWrapper, "audio": AudioWrapper}[self.modality]
        return wrapper_cls(hf, self.adapter).eval(), self.make_inputs(seed=seed)

    def dynamic_axes(self, exporter: str, module: nn.Module | None = None) -> dict[str, dict[int, str]]:
        """TorchScript-style ``{input/output name: {axis: dim name}}`` for the dynamic dims.

        Inputs: axis 0 is ``batch``, axis 1 ``sequence`` (tokens; samples for wav2vec2).
        Output axes are found by running ``module`` (built if not given) at sizes that
        differ in one dimension at a time: an output axis that follows the batch is
        ``batch``, one that equals the input length ``sequence``, and one that follows the
        length but differs from it (wav2vec2 frames) ``frames``.
        """
        dyn = self.dynamic[exporter]
        axes: dict[str, dict[int, str]] = {}
        for name in self.input_names:
            a = {}
            if BATCH in dyn:
                a[0] = BATCH
            if SEQ in dyn:
                a[1] = SEQ
            if a:
                axes[name] = a
        if not dyn:
            return axes
        if module is None:
            module, _ = self.build()
        b0, n0 = self.batch, self.length
        b1, n1 = self.second_size
        with torch.no_grad():
            base = [tuple(t.shape) for t in module(*self.make_inputs(b0, n0))]
            by_batch = [tuple(t.shape) for t in module(*self.make_inputs(b1, n0))] if BATCH in dyn else base
            by_len = [tuple(t.shape) for t in module(*self.make_inputs(b0, n1))] if SEQ in dyn else base
        for name, s0, sb, sn in zip(self.output_names, base, by_batch, by_len):
            a = {}
            for i, (d0, db, dn) in enumerate(zip(s0, sb, sn)):
                if d0 != db:
                    a[i] = BATCH
                elif d0 != dn:
                    a[i] = SEQ if (d0, dn) == (n0, n1) else "frames"
            if a:
                axes[name] = a
        return axes


def _mp(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType(kw)


# Checked for every attention model with torch 2.13 / transformers 5.23: "sdpa" exports too,
# under both exporters, and matches ORT; neither exporter emits a fused attention op at these
# opsets (17 / 20), so sdpa is decomposed, with extras that eager does not have.
_EAGER = (
    "eager (plain MatMul -> Mul(1/sqrt(d)) -> Add(mask) -> Softmax -> MatMul, K^T one Transpose); "
    "sdpa also exports under both exporters but adds IsNaN -> Where(0) after every Softmax "
    "(TorchScript: only when there is a mask, with a -inf Where mask per layer), "
    "scales Q and K by sqrt(1/sqrt(d)) each, and under dynamo transposes K through a "
    "Shape-driven Reshape(3-D) -> Transpose -> Reshape"
)


_TEXT_DYN = _mp(torchscript=(BATCH, SEQ), dynamo=(BATCH, SEQ))
_BATCH_DYN = _mp(torchscript=(BATCH,), dynamo=(BATCH,))

_ENTRIES: list[Entry] = [
    # ----------------------------------------------------------------- text encoders
    Entry(
        "bert",
        "BERT: post-LN encoder, learned absolute + token-type embeddings, GELU MLP, tanh pooler + "
        "classifier; hidden 64, 2 layers, 4 heads, FFN 128, vocab 128, seq 16",
        "text",
        "BertConfig",
        _mp(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64, type_vocab_size=2, num_labels=3),
        "BertForSequenceClassification",
        _seqcls_pooled("bert"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "distilbert",
        "DistilBERT: 2-layer BERT without token types/pooler, [CLS] -> pre_classifier -> ReLU -> "
        "classifier; dim 64, 4 heads, FFN 128, vocab 128, seq 16",
        "text",
        "DistilBertConfig",
        _mp(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64,
            num_labels=3),
        "DistilBertForSequenceClassification",
        _distilbert,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "roberta",
        "RoBERTa: BERT encoder with padding-aware position ids (cumsum of input_ids != pad), "
        "dense-tanh-dense classification head on <s>; hidden 64, 2 layers, 4 heads, FFN 128",
        "text",
        "RobertaConfig",
        _mp(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
            num_labels=3),
        "RobertaForSequenceClassification",
        _roberta,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "albert",
        "ALBERT: factorised embedding (32 -> 64 projection), ONE transformer layer's weights shared "
        "by both layers (num_hidden_groups=1), pooler + classifier; hidden 64, 4 heads, FFN 128",
        "text",
        "AlbertConfig",
        _mp(vocab_size=128, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_hidden_groups=1,
            inner_group_num=1, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
            num_labels=3),
        "AlbertForSequenceClassification",
        _seqcls_pooled("albert"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "t5_encoder",
        "T5 v1.1 encoder (T5EncoderModel): RMS LayerNorm (no bias), relative position bias "
        "(32 log buckets) computed in layer 0 and reused by layer 1, gated-GELU FFN, no biases; "
        "d_model 64, 4 heads x d_kv 16, d_ff 128",
        "text",
        "T5Config",
        _mp(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=64,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False),
        "T5EncoderModel",
        _encoder_only,
        ("last_hidden_state",),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    # ----------------------------------------------------------------- decoders
    Entry(
        "gpt2",
        "GPT-2: pre-LN decoder, Conv1D layers (weight [in, out]), fused QKV c_attn split in 3, "
        "causal mask, gelu_new MLP, LM head tied to the token embedding; n_embd 64, 2 layers, "
        "4 heads, FFN 256, vocab 128",
        "text",
        "GPT2Config",
        _mp(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256, bos_token_id=0,
            eos_token_id=0, pad_token_id=0),
        "GPT2LMHeadModel",
        _causal_lm("transformer"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "llama",
        "LLaMA: RMSNorm, RoPE, SwiGLU MLP, GQA (4 query heads, 2 KV heads, repeat_kv), no "
        "biases, untied LM head; hidden 64, head_dim 16, 2 layers, FFN 128, vocab 128",
        "text",
        "LlamaConfig",
        _mp(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False, use_cache=False),
        "LlamaForCausalLM",
        _causal_lm("model"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "qwen2",
        "Qwen2: LLaMA-style decoder (RMSNorm, RoPE, SwiGLU) with q/k/v biases, GQA 4 query / 2 KV "
        "heads; hidden 64, 2 layers, FFN 128, vocab 128",
        "text",
        "Qwen2Config",
        _mp(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False, use_cache=False, use_sliding_window=False),
        "Qwen2ForCausalLM",
        _causal_lm("model"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "phi",
        "Phi: parallel attention + MLP blocks sharing one LayerNorm, partial RoPE (half of each "
        "head), biased q/k/v/dense, gelu_new MLP, final LayerNorm, biased LM head; hidden 64, "
        "2 layers, 4 heads, FFN 128, vocab 128",
        "text",
        "PhiConfig",
        _mp(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, partial_rotary_factor=0.5,
            tie_word_embeddings=False, use_cache=False),
        "PhiForCausalLM",
        _causal_lm("model"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    # ----------------------------------------------------------------- vision
    Entry(
        "vit",
        "ViT: 8x8 patch conv on 3x32x32 (16 patches + [CLS]), pre-LN encoder, final LayerNorm, "
        "classifier on [CLS]; hidden 64, 2 layers, 4 heads, FFN 128, 10 classes",
        "vision",
        "ViTConfig",
        _mp(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, num_labels=10),
        "ViTForImageClassification",
        _vit,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        length=32,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "deit",
        "DeiT (with distillation token): [CLS] + [DIST] tokens, two heads averaged; 8x8 patches on "
        "3x32x32, hidden 64, 2 layers, 4 heads, FFN 128, 10 classes",
        "vision",
        "DeiTConfig",
        _mp(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, num_labels=10),
        "DeiTForImageClassificationWithTeacher",
        _deit_teacher,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        length=32,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "swin",
        "Swin: 2x2 patches on 3x32x32, 2 stages x 2 blocks (W-MSA then shifted SW-MSA with "
        "attention mask), window 4, relative position bias table gathered per window, patch "
        "merging; dims 64 -> 128, 4 heads per stage, MLP ratio 2, 10 classes",
        "vision",
        "SwinConfig",
        _mp(image_size=32, patch_size=2, num_channels=3, embed_dim=64, depths=[2, 2], num_heads=[4, 4],
            window_size=4, mlp_ratio=2.0, num_labels=10),
        "SwinForImageClassification",
        _pooled_image("swin"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        length=32,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "convnext",
        "ConvNeXt: 4x4 patchify stem, depthwise 7x7 conv + channels-last LayerNorm + pointwise "
        "MLP (Linear) + layer scale, downsampling LayerNorm + 2x2 conv; dims 32 -> 64, 2 x 2 blocks, "
        "3x32x32, 10 classes (no attention)",
        "vision",
        "ConvNextConfig",
        _mp(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[32, 64], depths=[2, 2],
            image_size=32, num_labels=10),
        "ConvNextForImageClassification",
        _pooled_image("convnext"),
        ("last_hidden_state", "logits"),
        None,
        NO_ATTENTION,
        length=32,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "mobilevit",
        "MobileViT: MobileNetV2 blocks (BN, SiLU) + MobileViT blocks (unfold 2x2 patches -> "
        "transformer -> fold, conv fusion with concat); 3x64x64, transformer dims 32/48/64, "
        "4 heads, 10 classes",
        "vision",
        "MobileViTConfig",
        _mp(image_size=64, patch_size=2, num_channels=3, hidden_sizes=[32, 48, 64],
            neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96], num_attention_heads=4, mlp_ratio=2.0,
            expand_ratio=2.0, num_labels=10),
        "MobileViTForImageClassification",
        _pooled_image("mobilevit", dropout=True),
        ("last_hidden_state", "logits"),
        None,
        "MobileViT's attention has no attn_implementation switch: always its own eager MatMul/Softmax",
        length=64,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "segformer",
        "SegFormer: 2-stage Mix Transformer (overlapping patch embeds, efficient self-attention "
        "with spatial-reduction conv + LayerNorm on keys/values, Mix-FFN with depthwise 3x3), "
        "all-MLP decode head with bilinear upsampling + concat; dims 32/64, 2 blocks per stage, "
        "3x64x64 -> 5 classes at 16x16",
        "vision",
        "SegformerConfig",
        _mp(num_channels=3, num_encoder_blocks=2, depths=[2, 2], sr_ratios=[2, 1], hidden_sizes=[32, 64],
            patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 4], mlp_ratios=[2, 2],
            decoder_hidden_size=64, num_labels=5),
        "SegformerForSemanticSegmentation",
        _segformer,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        length=64,
        dynamic=_BATCH_DYN,
    ),
    # ----------------------------------------------------------------- audio
    Entry(
        "whisper_encoder",
        "Whisper encoder: 2 x Conv1d + GELU (stride 2) on 80 mel bins x 32 frames, sinusoidal "
        "positions (16), pre-LN encoder, final LayerNorm; d_model 64, 2 layers, 4 heads, FFN 128; the "
        "frame count is fixed (the HF encoder rejects inputs other than 2 x max_source_positions)",
        "audio",
        "WhisperConfig",
        _mp(vocab_size=128, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
            max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1),
        "WhisperEncoder",
        _whisper_encoder,
        ("last_hidden_state",),
        "eager",
        _EAGER,
        length=32,
        channels=80,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "wav2vec2",
        "wav2vec2: conv feature encoder (3 x Conv1d, GroupNorm on the first, GELU) on raw audio, "
        "feature projection, weight-normed grouped positional conv, post-LN encoder, CTC head; "
        "conv dims 32, hidden 64, 2 layers, 4 heads, FFN 128, 400 samples -> 19 frames",
        "audio",
        "Wav2Vec2Config",
        _mp(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
            do_stable_layer_norm=False, mask_time_prob=0.0),
        "Wav2Vec2ForCTC",
        _wav2vec2_ctc,
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        length=400,
        check_length=320,
        max_length=4000,
        dynamic=_TEXT_DYN,
    ),
]

# Architectures whose attention or MLP idioms the first 17 do not have (fused gate/up, fused [3, H, D] QKV,
# multi-query attention, ALiBi, relative attention, heads folded into the batch, einsum attention, span
# convolutions, GRN). The MoE entries further down export only with batched experts: with torch 2.13 /
# transformers 5.23 the default expert dispatch (aten::histc, aten::_grouped_mm) does not export with TorchScript.
_ENTRIES += [
    Entry(
        "phi3",
        "Phi-3: fused qkv_proj (Slice into q/k/v), GQA 4 query / 2 KV heads, RoPE, RMSNorm, fused gate_up_proj "
        "(chunk, SiLU(gate) * up); hidden 64, 2 layers, FFN 128, vocab 128",
        "text",
        "Phi3Config",
        _mp(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, tie_word_embeddings=False, use_cache=False),
        "Phi3ForCausalLM",
        _causal_lm("model"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "falcon",
        "Falcon (7B layout): multi-query attention (one K/V head) from one fused query_key_value, parallel "
        "attention + MLP blocks sharing one LayerNorm, RoPE, GELU MLP; hidden 64, 2 layers, 4 heads",
        "text",
        "FalconConfig",
        _mp(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False, alibi=False,
            max_position_embeddings=64, bos_token_id=1, eos_token_id=2, use_cache=False),
        "FalconForCausalLM",
        _causal_lm("transformer"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "bloom",
        "BLOOM: ALiBi (per-head linear biases, no position embeddings), fused query_key_value viewed "
        "[B, S, H, 3, D], embedding LayerNorm, GELU MLP; hidden 64, 2 layers, 4 heads, vocab 128",
        "text",
        "BloomConfig",
        _mp(vocab_size=128, hidden_size=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, use_cache=False),
        "BloomForCausalLM",
        _causal_lm("transformer"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "gptbigcode",
        "GPTBigCode (SantaCoder/StarCoder): multi-query attention (c_attn = q + one K/V head, K/V expanded "
        "to the query heads), learned positions, GELU MLP; n_embd 64, 2 layers, 4 heads, FFN 128",
        "text",
        "GPTBigCodeConfig",
        _mp(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64, multi_query=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=False),
        "GPTBigCodeForCausalLM",
        _causal_lm("transformer"),
        ("last_hidden_state", "logits"),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "deberta_v2",
        "DeBERTa-v2: disentangled relative attention (c2p + p2c, log position buckets, per-head position "
        "projections tiled over a [B*H, ...] layout, gathered by relative index), shared key/query position "
        "projection; hidden 64, 2 layers, 4 heads, FFN 128",
        "text",
        "DebertaV2Config",
        _mp(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, relative_attention=True, position_buckets=16,
            pos_att_type=["p2c", "c2p"], pad_token_id=0),
        "DebertaV2Model",
        _encoder_only,
        ("last_hidden_state",),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "modernbert",
        "ModernBERT: fused Wqkv viewed [B, S, 3, H, D] and unbound, RoPE, pre-LN without biases, fused "
        "GeGLU Wi (chunk, GELU(input) * gate); hidden 64, 2 layers (global attention), 4 heads, FFN 128",
        "text",
        "ModernBertConfig",
        _mp(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, global_attn_every_n_layers=1, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, cls_token_id=1, sep_token_id=2),
        "ModernBertModel",
        _encoder_only,
        ("last_hidden_state",),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "convbert",
        "ConvBERT: half the heads self-attention, half span-based dynamic convolution (per-position kernels "
        "from a depthwise-separable conv, applied over [B*S*H, D, K] with a bmm), concatenated as heads; "
        "hidden 64, 2 layers, 2 + 2 heads, FFN 128",
        "text",
        "ConvBertConfig",
        _mp(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, embedding_size=64, head_ratio=2, conv_kernel_size=3, pad_token_id=0),
        "ConvBertModel",
        _encoder_only,
        ("last_hidden_state",),
        "eager",
        _EAGER,
        max_length=64,
        check_length=11,
        dynamic=_TEXT_DYN,
    ),
    Entry(
        "funnel",
        "Funnel Transformer (base): attention written as einsums with relative positional attention and "
        "token-type bias, sequence pooling between blocks; d_model 32, 2 blocks of 1 layer, 4 heads x 8",
        "text",
        "FunnelConfig",
        _mp(vocab_size=128, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1],
            num_decoder_layers=1, max_position_embeddings=64),
        "FunnelBaseModel",
        _encoder_only,
        ("last_hidden_state",),
        None,
        "Funnel has no attn_implementation switch: always its own einsum attention",
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "wavlm",
        "WavLM: conv feature encoder (LayerNorm), gated relative position bias (per-head gates computed "
        "from the hidden state), F.multi_head_attention_forward layout [S, B*H, D]; hidden 32, 2 layers, "
        "4 heads, FFN 64, 1600 samples",
        "audio",
        "WavLMConfig",
        _mp(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            num_buckets=16, max_bucket_distance=32, do_stable_layer_norm=True, feat_extract_norm="layer",
            mask_time_prob=0.0),
        "WavLMModel",
        _audio_base,
        ("last_hidden_state",),
        None,
        "WavLM's attention has no attn_implementation switch: F.multi_head_attention_forward",
        length=1600,
        dynamic=_BATCH_DYN,
    ),
    Entry(
        "convnextv2",
        "ConvNeXt V2: ConvNeXt blocks with Global Response Normalization (ReduceL2 over space, divided by "
        "its mean over channels) in the pointwise MLP; dims 16 -> 32, 2 x 1 blocks, 3x32x32, 10 classes",
        "vision",
        "ConvNextV2Config",
        _mp(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32,
            num_labels=10),
        "ConvNextV2ForImageClassification",
        _pooled_image("convnextv2"),
        ("last_hidden_state", "logits"),
        None,
        NO_ATTENTION,
        length=32,
        dynamic=_BATCH_DYN,
    ),
]


def _decoder(name, description, config_class, config, model_class, base_attr="model", **kw) -> Entry:
    """A causal-LM zoo entry: text, dynamic batch and sequence, eager attention, LM head on the last state."""
    return Entry(name, description, "text", config_class, _mp(**config), model_class, _causal_lm(base_attr),
                 ("last_hidden_state", "logits"), kw.pop("attn", "eager"), kw.pop("attn_note", _EAGER),
                 max_length=64, check_length=11, dynamic=_TEXT_DYN, **kw)


def _encoder(name, description, config_class, config, model_class, adapter=_encoder_only, **kw) -> Entry:
    """A text-encoder zoo entry: dynamic batch and sequence, eager attention."""
    outputs = ("last_hidden_state",) if adapter is _encoder_only else ("last_hidden_state", "logits")
    return Entry(name, description, "text", config_class, _mp(**config), model_class, adapter, outputs,
                 kw.pop("attn", "eager"), kw.pop("attn_note", _EAGER), max_length=64, check_length=11,
                 dynamic=_TEXT_DYN, **kw)


def _image(name, description, config_class, config, model_class, adapter, attn="eager", **kw) -> Entry:
    """A vision zoo entry: 3 x side x side images (side 32 unless ``length`` says), dynamic batch."""
    note = kw.pop("attn_note", _EAGER if attn == "eager" else "")
    return Entry(name, description, "vision", config_class, _mp(**config), model_class, adapter,
                 ("last_hidden_state", "logits"), attn, note, length=kw.pop("length", 32), dynamic=_BATCH_DYN,
                 **kw)


def _speech(name, description, config_class, config, model_class, attn="eager", **kw) -> Entry:
    """A raw-audio encoder zoo entry (1600 samples), dynamic batch."""
    note = kw.pop("attn_note", _EAGER if attn == "eager" else "")
    return Entry(name, description, "audio", config_class, _mp(**config), model_class, _audio_base,
                 ("last_hidden_state",), attn, note, length=1600, dynamic=_BATCH_DYN, **kw)


_LM = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64, tie_word_embeddings=False, use_cache=False, pad_token_id=0, bos_token_id=1,
           eos_token_id=2)
_BERTLIKE = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 max_position_embeddings=66, pad_token_id=1)
_SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
               conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
               mask_time_prob=0.0)
# MoE entries run their experts batched (experts_implementation="batched_mm": each token's expert weights
# gathered from [E, 2I, H] / [E, H, I] tables, then batched MatMuls), the form both exporters can trace; the
# default ("eager") loops over the experts a batch routes to, a data-dependent loop.
_MOE = "batched_mm"

# Issue 12's wider zoo: decoders with GQA / MQA / ALiBi / fused QKV / parallel blocks, MoE with batched experts,
# encoders with relative attention, vision transformers with pooling and hierarchies, speech encoders.
_ENTRIES += [
    _decoder("mistral", "Mistral: LLaMA-style decoder with GQA 4 query / 2 KV heads and a sliding window (32); "
             "hidden 64, 2 layers, FFN 128", "MistralConfig", dict(_LM, num_key_value_heads=2, sliding_window=32),
             "MistralForCausalLM"),
    _decoder("gemma", "Gemma: multi-query attention (1 KV head), head_dim 16, GeGLU MLP, RMSNorm (1 + w), "
             "embeddings scaled by sqrt(hidden), tied LM head; hidden 64, 2 layers, FFN 128", "GemmaConfig",
             dict(_LM, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True), "GemmaForCausalLM"),
    _decoder("gpt_neox", "GPT-NeoX (Pythia): fused query_key_value viewed [B, S, H, 3D], partial RoPE (25%), "
             "parallel attention + MLP with two LayerNorms, GELU MLP; hidden 64, 2 layers, 4 heads, FFN 128",
             "GPTNeoXConfig", dict(_LM, rotary_pct=0.25, use_parallel_residual=True), "GPTNeoXForCausalLM",
             "gpt_neox"),
    _decoder("gptj", "GPT-J: parallel attention + MLP sharing one LayerNorm, interleaved rotary on 8 of 16 head "
             "dims, no q/k/v biases; n_embd 64, 2 layers, 4 heads, FFN 128",
             "GPTJConfig", dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, rotary_dim=8,
                                n_positions=64, tie_word_embeddings=False, use_cache=False, bos_token_id=1,
                                eos_token_id=2, pad_token_id=0), "GPTJForCausalLM", "transformer"),
    _decoder("opt", "OPT: pre-LN decoder, learned positions with offset 2, ReLU MLP, biased q/k/v/out; hidden 64, "
             "2 layers, 4 heads, FFN 128", "OPTConfig",
             dict(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                  word_embed_proj_dim=64, max_position_embeddings=64, tie_word_embeddings=False, use_cache=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2), "OPTForCausalLM"),
    _decoder("olmo", "OLMo: LLaMA-style decoder with non-parametric LayerNorm (no weight, no bias), SwiGLU, "
             "RoPE; hidden 64, 2 layers, 4 heads, FFN 128", "OlmoConfig", dict(_LM), "OlmoForCausalLM"),
    _decoder("olmo2", "OLMo 2: post-norm RMSNorm blocks, q/k RMSNorm over all heads together (before the "
             "head split), SwiGLU, RoPE; hidden 64, 2 layers, 4 heads, FFN 128", "Olmo2Config", dict(_LM),
             "Olmo2ForCausalLM"),
    _decoder("stablelm", "StableLM: LayerNorm decoder with partial RoPE (25%), GQA 4 query / 2 KV heads, "
             "SwiGLU; hidden 64, 2 layers, FFN 128", "StableLmConfig",
             dict(_LM, num_key_value_heads=2, partial_rotary_factor=0.25), "StableLmForCausalLM"),
    _decoder("xglm", "XGLM: pre-LN decoder, sinusoidal positions with offset, embeddings scaled by "
             "sqrt(d_model), GELU MLP; d_model 64, 2 layers, 4 heads, FFN 128", "XGLMConfig",
             dict(vocab_size=128, d_model=64, ffn_dim=128, num_layers=2, attention_heads=4,
                  max_position_embeddings=64, use_cache=False, pad_token_id=1, bos_token_id=0, eos_token_id=2),
             "XGLMForCausalLM"),
    _decoder("mpt", "MPT: ALiBi (no position embeddings), fused Wqkv chunked into q/k/v, LayerNorm without "
             "bias, GELU MLP (ratio 2); d_model 64, 2 layers, 4 heads", "MptConfig",
             dict(vocab_size=128, d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64,
                  use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2), "MptForCausalLM",
             "transformer"),
    _decoder("codegen", "CodeGen: fused qkv_proj in 4 model-parallel blocks (reshape [B, S, 4, 3 * H/4 * D], "
             "split, merge), interleaved rotary on 8 dims, parallel attention + MLP; n_embd 64, 2 layers, 4 heads",
             "CodeGenConfig", dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, rotary_dim=8,
                                   n_positions=64, n_ctx=64, tie_word_embeddings=False, use_cache=False,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0), "CodeGenForCausalLM",
             "transformer"),
    # ----------------------------------------------------------------- mixture of experts
    _decoder("mixtral", "Mixtral: 4 experts, top-2 softmax router, SwiGLU experts stored batched, GQA 4 / 2 "
             "heads; hidden 64, 2 layers, expert FFN 64", "MixtralConfig",
             dict(_LM, intermediate_size=64, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                  experts_implementation=_MOE), "MixtralForCausalLM"),
    _decoder("qwen2_moe", "Qwen2-MoE: 4 routed experts (top-2) plus a sigmoid-gated shared expert, q/k/v biases, "
             "GQA 4 / 2 heads; hidden 64, 2 layers, expert FFN 32, shared FFN 64", "Qwen2MoeConfig",
             dict(_LM, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                  shared_expert_intermediate_size=64, decoder_sparse_step=1, use_sliding_window=False,
                  experts_implementation=_MOE), "Qwen2MoeForCausalLM"),
    _decoder("olmoe", "OLMoE: 4 experts (top-2), q/k RMSNorm over all heads, SwiGLU experts stored batched; "
             "hidden 64, 2 layers, 4 heads, expert FFN 32", "OlmoeConfig",
             dict(_LM, intermediate_size=32, num_experts=4, num_experts_per_tok=2, experts_implementation=_MOE),
             "OlmoeForCausalLM"),
    # ----------------------------------------------------------------- encoders
    _encoder("electra", "ELECTRA discriminator: factorised embedding (32 -> 64 projection), BERT encoder, "
             "dense-GELU-dense classification head on [CLS]; hidden 64, 2 layers, 4 heads, FFN 128",
             "ElectraConfig", dict(_BERTLIKE, embedding_size=32, num_labels=3), "ElectraForSequenceClassification",
             _seqcls_head("electra")),
    _encoder("mpnet", "MPNet: BERT-like encoder with a T5-style relative position bias (32 buckets) shared by "
             "all layers, classification head on <s>; hidden 64, 2 layers, 4 heads, FFN 128", "MPNetConfig",
             dict(_BERTLIKE, relative_attention_num_buckets=32, num_labels=3), "MPNetForSequenceClassification",
             _seqcls_head("mpnet"), attn=None, attn_note="MPNet has no attn_implementation switch: eager"),
    _encoder("xlm_roberta", "XLM-RoBERTa: RoBERTa encoder (padding-aware positions), classification head on <s>; "
             "hidden 64, 2 layers, 4 heads, FFN 128", "XLMRobertaConfig",
             dict(_BERTLIKE, type_vocab_size=1, num_labels=3), "XLMRobertaForSequenceClassification",
             _seqcls_head("roberta")),
    _encoder("deberta", "DeBERTa (v1): fused in_proj for q/k/v, disentangled c2p + p2c relative attention with "
             "separate q/v biases; hidden 64, 2 layers, 4 heads, FFN 128", "DebertaConfig",
             dict(_BERTLIKE, max_position_embeddings=64, relative_attention=True, max_relative_positions=16,
                  pos_att_type=["c2p", "p2c"], pad_token_id=0), "DebertaModel",
             attn=None, attn_note="DeBERTa has no attn_implementation switch: its own disentangled attention"),
    # ----------------------------------------------------------------- vision
    _image("beit", "BEiT: per-layer relative position bias tables, layer scale, mean-pooled patch tokens "
           "(pooler LayerNorm) -> classifier; 8x8 patches on 3x32x32, hidden 64, 2 layers, 4 heads, FFN 128",
           "BeitConfig", dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, use_relative_position_bias=True, use_mean_pooling=True,
                              layer_scale_init_value=0.1, num_labels=10), "BeitForImageClassification",
           _pooled_image("beit")),
    _image("dinov2", "DINOv2: interpolated position embeddings, layer scale, SwiGLU-free MLP, classifier on "
           "[CLS] + mean patch token; 8x8 patches on 3x32x32, hidden 64, 2 layers, 4 heads, FFN 128",
           "Dinov2Config", dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, mlp_ratio=2, num_labels=10), "Dinov2ForImageClassification",
           _dinov2),
    _image("levit", "LeViT: conv stem (4 x stride 2), attention with BatchNorm-folded linears, per-head "
           "attention biases gathered by offset, subsampling attention between stages, hardswish; 3 stages "
           "16/32/48, 3x64x64, 10 classes", "LevitConfig",
           dict(image_size=64, patch_size=16, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
                depths=[1, 1, 1], key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2],
                num_labels=10), "LevitForImageClassification", _pooled_image("levit"), attn=None,
           attn_note="LeViT has no attn_implementation switch", length=64),
    _image("swinv2", "Swin V2: scaled cosine attention (normalised q and k, learned per-head logit scale), "
           "continuous relative position bias from a small MLP, post-norm, patch merging; 2x2 patches on 3x32x32, "
           "dims 32 -> 64, 2 stages x 2 blocks, window 4, 2/4 heads", "Swinv2Config",
           dict(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4,
                mlp_ratio=2.0, num_labels=10), "Swinv2ForImageClassification", _pooled_image("swinv2"), attn=None,
           attn_note="Swin V2 has no attn_implementation switch: cosine attention"),
    _image("poolformer", "PoolFormer: MetaFormer blocks with average-pool token mixing (pool - x), GroupNorm(1, C), "
           "1x1-conv MLP, layer scale; dims 16 -> 32, 2 stages x 1 block, 3x32x32 (no attention)",
           "PoolFormerConfig", dict(hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3],
                                    strides=[4, 2], padding=[2, 1], pool_size=3, mlp_ratio=2.0, num_labels=10),
           "PoolFormerForImageClassification", _poolformer, attn=None, attn_note=NO_ATTENTION),
    _image("focalnet", "FocalNet: focal modulation instead of attention (depthwise convs at 2 focal levels, "
           "gated aggregation, a 1x1 modulator), MLP, patch embeddings between stages; dims 16 -> 32, 2 stages x "
           "1 block, 3x32x32 (no attention)", "FocalNetConfig",
           dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], hidden_sizes=[16, 32],
                focal_levels=[2, 2], focal_windows=[3, 3], mlp_ratio=2.0, num_labels=10),
           "FocalNetForImageClassification", _pooled_image("focalnet"), attn=None, attn_note=NO_ATTENTION),
    _image("pvt", "PVT: pyramid of 2 stages with spatial-reduction attention (keys/values from a strided conv + "
           "LayerNorm), [CLS] token in the last stage -> classifier; dims 16/32, 1/2 heads, 3x32x32",
           "PvtConfig", dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                             hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                             mlp_ratios=[2, 2], num_labels=10), "PvtForImageClassification", _pvt, attn=None,
           attn_note="PVT has no attn_implementation switch"),
    # ----------------------------------------------------------------- speech
    _speech("hubert", "HuBERT: wav2vec2-style conv feature encoder (GroupNorm), feature projection, grouped "
            "positional conv, post-LN encoder; conv dims 16, hidden 32, 2 layers, 4 heads, FFN 64, 1600 samples",
            "HubertConfig", dict(_SPEECH, feat_extract_norm="group", do_stable_layer_norm=False), "HubertModel"),
    _speech("data2vec_audio", "data2vec-audio: conv feature encoder with LayerNorm, 5 stacked positional convs "
            "(LayerNorm each), pre-LN encoder; conv dims 16, hidden 32, 2 layers, 4 heads, FFN 64, 1600 samples",
            "Data2VecAudioConfig", dict(_SPEECH, num_conv_pos_embeddings=5, num_conv_pos_embedding_groups=4,
                                        conv_pos_kernel_size=5, num_conv_pos_embedding_layers=2),
            "Data2VecAudioModel"),
    _speech("sew", "SEW: squeezed encoder (sequence pooled by 2 before the transformer, upsampled after), grouped "
            "positional conv with stride; conv dims 16, hidden 32, 2 layers, 4 heads, FFN 64, 1600 samples",
            "SEWConfig", dict(_SPEECH, squeeze_factor=2, feat_extract_norm="group"), "SEWModel"),
]

TRANSFORMER_ZOO: dict[str, Entry] = {e.name: e for e in _ENTRIES}
TRANSFORMER_MODELS: list[str] = [e.name for e in _ENTRIES]
# What the test suite exports and prunes: the first 27 entries and, of issue 12's wider zoo, one entry per idiom
# the 27 lack (multi-query attention with its own head_dim, ALiBi with a chunked fused QKV, batched MoE
# experts, DeBERTa v1's fused in_proj, cosine attention, BatchNorm-folded attention, GroupNorm(1, C)). A cold
# CI run exports from scratch (the dynamo exporter takes 5-20 s a model), so the rest of the wider zoo runs in
# benchmarks/coverage.py, which covers every entry.
TRANSFORMER_TEST_MODELS: list[str] = TRANSFORMER_MODELS[:27] + [
    "gemma", "mpt", "mixtral", "deberta", "swinv2", "levit", "poolformer"]


def get_transformer_entry(name: str) -> Entry:
    try:
        return TRANSFORMER_ZOO[name]
    except KeyError:
        raise KeyError(f"unknown transformer zoo model {name!r}; known: {', '.join(TRANSFORMER_ZOO)}") from None


# --------------------------------------------------------------------------- weights

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    cls = type(module).__name__.lower()
    return "layernorm" in cls or "rmsnorm" in cls or cls.endswith("norm")


@torch.no_grad()
def randomize_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Make a freshly initialised model's parameters non-trivial and pairwise distinct.

    * every bias: ``N(0, 0.05^2)``
    * every normalisation weight (LayerNorm, RMSNorm, T5's LayerNorm, GroupNorm, BatchNorm):
      ``1 + N(0, 0.1^2)``; BatchNorm running mean ``N(0, 0.1^2)``, variance ``U(0.5, 1.5)``
    * any other parameter still holding one repeated value (zero-initialised tokens and
      bias tables, ConvNeXt's ``1e-6`` layer scale): ``N(0, 0.05^2)``, or ``0.5 + N(0, 0.1^2)``
      for scale parameters (so residual branches are not switched off)
    * finally, any parameter equal to an earlier *distinct* parameter gets ``N(0, 0.01^2)`` noise.

    Shared parameters (the same tensor reached twice, e.g. tied embeddings) stay shared.
    """
    owner: dict[int, nn.Module] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owner.setdefault(id(p), mod)

    def draw(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(mean + std * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))

    for name, p in model.named_parameters():  # shared parameters appear once
        leaf = name.rsplit(".", 1)[-1]
        mod = owner[id(p)]
        if _is_norm(mod) and leaf == "weight":
            draw(p, 0.1, 1.0)
        elif leaf == "bias" or leaf.endswith("_bias"):
            draw(p, 0.05)
        elif p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
            if "scale" in leaf or leaf in ("gamma", "lambda1", "lambda2"):
                draw(p, 0.1, 0.5)
            else:
                draw(p, 0.05)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            draw(mod.running_mean, 0.1)
            mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=gen))
    seen: dict[bytes, int] = {}
    for p in model.parameters():
        key = p.detach().cpu().contiguous().numpy().tobytes()
        if key in seen:
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
            key = p.detach().cpu().contiguous().numpy().tobytes()
        seen[key] = id(p)


# --------------------------------------------------------------------------- export


@functools.cache
def transformer_cache_key() -> str:
    """Hash of torch / transformers / onnx / onnxscript versions and of this module's source."""
    parts = [f"torch={torch.__version__}"]
    for mod in ("transformers", "onnx", "onnxscript"):
        try:
            parts.append(f"{mod}={__import__(mod).__version__}")
        except Exception:  # pragma: no cover - optional
            parts.append(f"{mod}=none")
    parts.append("src=" + hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def transformer_model_path(
    name: str,
    exporter: str = "torchscript",
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> pathlib.Path:
    """Where :func:`get_transformer_model` keeps the export (it may not exist yet).

    The cache is :func:`models.default_cache_dir` (``$GRAPHPRUNE_ZOO_CACHE`` or
    ``<repo>/.cache/zoo``) unless ``cache_dir`` is given; the file is
    ``hf__<name>__<exporter>[__seed<k>]__<hash>.onnx``.
    """
    get_transformer_entry(name)
    if exporter not in TRANSFORMER_EXPORTERS:
        raise ValueError(f"exporter must be one of {TRANSFORMER_EXPORTERS}, got {exporter!r}")
    if cache_dir is None:
        from . import default_cache_dir

        root = default_cache_dir()
    else:
        root = pathlib.Path(cache_dir)
    parts = ["hf", name, exporter] + ([f"seed{seed}"] if seed else [])
    return root / f"{'__'.join(parts)}__{transformer_cache_key()}.onnx"


def get_transformer_model(
    name: str,
    exporter: str = "torchscript",
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> pathlib.Path:
    """Path of the exported ONNX model, exporting it into the cache on first use
    (see :func:`transformer_model_path` for where)."""
    path = transformer_model_path(name, exporter, cache_dir, seed=seed)
    if not path.is_file():
        export_transformer(name, path, exporter=exporter, seed=seed)
    return path


def export_all(
    names: list[str] | None = None,
    exporters: tuple[str, ...] = TRANSFORMER_EXPORTERS,
    cache_dir: str | os.PathLike | None = None,
    *,
    jobs: int = 1,
    seed: int = 0,
) -> dict[tuple[str, str], pathlib.Path | str]:
    """Export (into the cache) every ``(name, exporter)`` that is not cached yet.

    ``jobs > 1`` exports the missing ones in that many spawned worker processes (one torch
    thread each), dynamo exports first (they take 5-20 s each, TorchScript well under 2 s). Returns
    ``{(name, exporter): path}``, with the error as a one-line string for any failure.
    """
    names = list(TRANSFORMER_MODELS if names is None else names)
    pairs = [(n, e) for e in sorted(exporters, key=lambda e: e != "dynamo") for n in names]
    for n, e in pairs:
        get_transformer_entry(n)
        if e not in TRANSFORMER_EXPORTERS:
            raise ValueError(f"exporter must be one of {TRANSFORMER_EXPORTERS}, got {e!r}")
    results: dict[tuple[str, str], pathlib.Path | str] = {}
    todo = []
    for n, e in pairs:
        path = transformer_model_path(n, e, cache_dir, seed=seed)
        if path.is_file():
            results[(n, e)] = path
        else:
            todo.append((n, e))
    if jobs <= 1 or len(todo) <= 1:
        for n, e in todo:
            results[(n, e)] = _export_job(n, e, cache_dir, seed)
        return {p: results[p] for p in pairs}
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(_export_job, n, e, cache_dir, seed): (n, e) for n, e in todo}
        for fut in concurrent.futures.as_completed(futures):
            try:
                results[futures[fut]] = fut.result()
            except Exception as exc:  # a worker died (e.g. out of memory)
                results[futures[fut]] = f"{type(exc).__name__}: {exc}"
    return {p: results[p] for p in pairs}


def _worker_init() -> None:
    torch.set_num_threads(1)


def _export_job(name: str, exporter: str, cache_dir, seed: int) -> pathlib.Path | str:
    try:
        return get_transformer_model(name, exporter, cache_dir, seed=seed)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}"


def export_transformer(
    name: str,
    path: str | os.PathLike,
    exporter: str = "torchscript",
    *,
    seed: int = 0,
    attn_implementation: str | None = None,
    dynamic: bool = True,
    check: bool = True,
) -> pathlib.Path:
    """Build zoo model ``name`` (seeded, eval mode) and export it to ``path`` atomically.

    TorchScript: opset 17, ``dynamic_axes`` for the entry's dynamic dims. Dynamo: the
    exporter's default opset, ``dynamic_shapes`` with ``torch.export.Dim`` for them, the
    exporter's default optimisation. ``dynamic=False`` exports every dimension static;
    ``attn_implementation`` overrides the entry's choice (for experiments).
    """
    import onnx

    entry = get_transformer_entry(name)
    if exporter not in TRANSFORMER_EXPORTERS:
        raise ValueError(f"exporter must be one of {TRANSFORMER_EXPORTERS}, got {exporter!r}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module, inputs = entry.build(seed=seed, attn_implementation=attn_implementation)
    dyn = entry.dynamic[exporter] if dynamic else ()

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        t0 = time.perf_counter()
        with torch.no_grad(), _quiet():
            if exporter == "torchscript":
                _export_torchscript(module, inputs, tmp, entry, dyn)
            else:
                _export_dynamo(module, inputs, tmp, entry, dyn)
        seconds = time.perf_counter() - t0
        model = onnx.load(os.fspath(tmp))
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise RuntimeError(f"initializer {init.name!r} was saved as external data")
        model.doc_string = entry.description
        meta = {
            "graphprune.zoo.name": name,
            "graphprune.zoo.family": "transformers",
            "graphprune.zoo.exporter": exporter,
            "graphprune.zoo.seed": str(seed),
            "graphprune.zoo.dynamic": ",".join(dyn),
            "graphprune.zoo.attn_implementation": str(
                attn_implementation or entry.attn_implementation or "none"
            ),
            "graphprune.zoo.export_seconds": f"{seconds:.2f}",
            "graphprune.zoo.torch": torch.__version__,
            "graphprune.zoo.transformers": _transformers().__version__,
        }
        existing = {p.key for p in model.metadata_props}
        for k, v in meta.items():
            if k not in existing:
                model.metadata_props.add(key=k, value=v)
        if check:
            onnx.checker.check_model(model, full_check=True)
        onnx.save(model, os.fspath(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _export_torchscript(module, inputs, path, entry: Entry, dyn: tuple[str, ...]) -> None:
    axes = entry.dynamic_axes("torchscript", module) if dyn else None
    torch.onnx.export(
        module,
        inputs,
        os.fspath(path),
        dynamo=False,
        opset_version=TORCHSCRIPT_OPSET,
        input_names=list(entry.input_names),
        output_names=list(entry.output_names),
        dynamic_axes=axes or None,
        do_constant_folding=True,
    )


def _export_dynamo(module, inputs, path, entry: Entry, dyn: tuple[str, ...]) -> None:
    dims = {}
    if BATCH in dyn:
        dims[0] = torch.export.Dim(BATCH, min=1, max=1024)
    if SEQ in dyn:
        dims[1] = torch.export.Dim(SEQ, min=2, max=entry.max_length or 4096)
    dynamic_shapes = tuple(dict(dims) for _ in inputs) if dims else None
    program = torch.onnx.export(
        module,
        inputs,
        None,
        dynamo=True,
        input_names=list(entry.input_names),
        output_names=list(entry.output_names),
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        verbose=False,
    )
    assert program is not None
    program.save(os.fspath(path), external_data=False)


class _quiet:
    """Silence known-harmless exporter noise (tracer warnings, op-registry chatter)."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # TorchScript, HF padding masks index with aranges (never negative): harmless here
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        # dynamo: inputs share one Dim per axis on purpose; the exporter says it keeps one name
        warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used.*")
        self._loggers = []
        for name in ("torch.onnx._internal.exporter._registration", "torch.onnx"):
            lg = logging.getLogger(name)
            self._loggers.append((lg, lg.level))
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in self._loggers:
            lg.setLevel(level)
        self._w.__exit__(*exc)
        return False


def main(argv: list[str] | None = None) -> int:
    """``python -m models.transformers_zoo [NAME ...] [--exporter E] [--jobs N] [--cache-dir D]``:
    export (or find in the cache) and print one line per model: export seconds, node
    count, dynamic dims, path."""
    import argparse

    import onnx

    ap = argparse.ArgumentParser(prog="python -m models.transformers_zoo", description=main.__doc__)
    ap.add_argument("names", nargs="*", help=f"models (default: all): {', '.join(TRANSFORMER_MODELS)}")
    ap.add_argument("--exporter", choices=TRANSFORMER_EXPORTERS, action="append")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache-dir")
    args = ap.parse_args(argv)
    exporters = tuple(args.exporter or TRANSFORMER_EXPORTERS)
    results = export_all(args.names or None, exporters, args.cache_dir, jobs=args.jobs)
    failed = 0
    for (name, exporter), res in sorted(results.items(), key=lambda kv: TRANSFORMER_MODELS.index(kv[0][0])):
        if isinstance(res, str):
            failed += 1
            print(f"{name:16s} {exporter:11s} FAILED {res}")
            continue
        model = onnx.load(os.fspath(res), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        print(
            f"{name:16s} {exporter:11s} {meta.get('graphprune.zoo.export_seconds', '?'):>6s}s "
            f"{len(model.graph.node):5d} nodes  dynamic={meta.get('graphprune.zoo.dynamic') or '-':16s} {res}"
        )
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    # run the package module (not this __main__ copy), so spawned workers unpickle its functions
    import importlib

    raise SystemExit(importlib.import_module("models.transformers_zoo").main())
