"""Group kinds come from the structure: the idioms transformers use to fuse MLP and attention projections,
on tiny torch modules exported with TorchScript, each checked by the oracle.

- a fused gate/up projection (Phi-3, ModernBERT) split by Split or Slice, then SiLU(gate) * up: "mlp";
- a fused QKV projection viewed as [B, S, 3, H, D] and unbound (ModernBERT), or Split in three (GPT-2): "head",
  one unit per head;
- multi-query / grouped-query attention (GPTBigCode, LLaMA): K/V heads Expanded to the query heads; whole query
  heads are cut, nothing inside a head unless --prune-head-dim;
- heads folded into the batch ([S, B*H, D], as F.multi_head_attention_forward and WavLM do): whole heads;
- ConvBERT's span-based dynamic convolution: per-position, per-head kernels applied with a bmm over
  [B*S*H, D, K], folded back through two reshapes before any weight: whole heads;
- Bloom's and DeBERTa's [B*H, S, D] layout with a dynamic batch: B*H computed as B * num_heads, the batch
  recovered as (B*H) // num_heads, per-head position projections Tiled (B*H) // num_heads times: the rewrite
  sets those constants to the kept head count, checked at another batch size.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphprune
from graphprune.analysis import AnalysisOptions
from graphprune.core.torch_export import from_torch
from tests.oracle import assert_oracle

torch = pytest.importorskip("torch")
nn = torch.nn

D, H, HD, S, B, FF = 32, 4, 8, 6, 2, 24  # hidden, heads, head dim, tokens, batch, MLP width


class FusedGateUp(nn.Module):
    """x + down(silu(gate) * up), gate and up from one Linear, cut apart by chunk (Split) or indexing (Slice)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.gate_up = nn.Linear(D, 2 * FF)
        self.down = nn.Linear(FF, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        gu = self.gate_up(x)
        gate, up = gu.chunk(2, -1) if self.how == "split" else (gu[..., :FF], gu[..., FF:])
        return self.head(x + self.down(nn.functional.silu(gate) * up))


def _attend(q, k, v):
    p = torch.softmax(q @ k.transpose(-1, -2) / HD ** 0.5, -1)
    return p @ v


class FusedQKV(nn.Module):
    """One Linear for q, k and v: viewed [B, S, 3, H, HD] and unbound (ModernBERT), or split in three first."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.qkv = nn.Linear(D, 3 * H * HD)
        self.o = nn.Linear(H * HD, 5)

    def forward(self, x):
        b, n, _ = x.shape
        if self.how == "view":
            q, k, v = self.qkv(x).view(b, n, 3, H, HD).transpose(3, 1).unbind(dim=2)
        else:
            q, k, v = (t.view(b, n, H, HD).transpose(1, 2) for t in self.qkv(x).split(H * HD, -1))
        return self.o(_attend(q, k, v).transpose(1, 2).reshape(b, n, H * HD))


class SharedKV(nn.Module):
    """`kv` K/V heads shared by H query heads: Unsqueeze -> Expand -> Reshape (repeat_kv); kv=1 is MQA."""

    def __init__(self, kv: int):
        super().__init__()
        self.kv = kv
        self.q = nn.Linear(D, H * HD)
        self.k = nn.Linear(D, kv * HD)
        self.v = nn.Linear(D, kv * HD)
        self.o = nn.Linear(H * HD, 5)

    def forward(self, x):
        b, n, _ = x.shape
        rep = H // self.kv
        q = self.q(x).view(b, n, H, HD).transpose(1, 2)
        k, v = (t.view(b, n, self.kv, HD).transpose(1, 2)[:, :, None].expand(b, self.kv, rep, n, HD)
                .reshape(b, H, n, HD) for t in (self.k(x), self.v(x)))
        return self.o(_attend(q, k, v).transpose(1, 2).reshape(b, n, H * HD))


class HeadsInBatch(nn.Module):
    """F.multi_head_attention_forward's layout: [S, B, D] -> [S, B*H, HD] -> bmm over B*H."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.o = nn.Linear(D, 5)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(n, b * H, HD).transpose(0, 1) for t in self.qkv(x.transpose(0, 1)).chunk(3, -1))
        y = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)
        return self.o(y.transpose(0, 1).reshape(n * b, D)).view(n, b, 5)


class SpanConv(nn.Module):
    """ConvBERT's conv heads: v unfolded over 3 positions, [B*S*H, HD, 3] @ softmax kernel [B*S*H, 3, 1],
    folded back to [B*S, H*HD], then to [B, S, H, HD] and concatenated with other heads along the head axis."""

    def __init__(self):
        super().__init__()
        self.v = nn.Linear(D, H * HD)
        self.kernel = nn.Linear(D, H * 3)
        self.other = nn.Linear(D, H * HD)
        self.o = nn.Linear(2 * H * HD, 5)

    def forward(self, x):
        b, n, _ = x.shape
        padded = nn.functional.pad(self.v(x), (0, 0, 1, 1))
        unfolded = torch.stack([padded[:, k:k + n] for k in range(3)], -1)  # [B, S, H*HD, 3]
        kernel = torch.softmax(self.kernel(x).view(b * n * H, 3, 1), 1)
        y = torch.bmm(unfolded.reshape(b * n * H, HD, 3), kernel)  # [B*S*H, HD, 1]
        y = y.reshape(b * n, H * HD).reshape(b, n, H, HD)
        heads = torch.cat([self.other(x).view(b, n, H, HD), y], 2)
        return self.o(heads.reshape(b, n, 2 * H * HD))


class BatchTimesHeads(nn.Module):
    """q, k, v reshaped to [B*H, S, HD] (b * H computed at run time), a relative term from per-head position
    projections repeated (B*H) // H times, the output viewed back as [(B*H) // H, H, S, HD]."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * H * HD)
        self.table = nn.Parameter(torch.randn(S, D))
        self.pos = nn.Linear(D, H * HD)
        self.o = nn.Linear(H * HD, 5)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, H, HD).transpose(1, 2).reshape(b * H, n, HD) for t in self.qkv(x).chunk(3, -1))
        rel = self.pos(self.table).view(S, H, HD).transpose(0, 1)  # [H, S, HD]
        rel = rel.repeat(q.size(0) // H, 1, 1)  # [B*H, S, HD]
        scores = torch.bmm(q, k.transpose(1, 2)) + torch.bmm(q, rel.transpose(1, 2))
        y = torch.bmm(torch.softmax(scores, -1), v)
        y = y.view(y.size(0) // H, H, n, HD).transpose(1, 2).reshape(b, n, H * HD)
        return self.o(y)


def _export(module):
    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return from_torch(module.eval(), (torch.randn(B, S, D),))


def _export_dynamic_batch(module):
    import io

    import onnx

    from graphprune.core.torch_export import export_torchscript

    torch.manual_seed(0)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    f = io.BytesIO()
    export_torchscript(module, (torch.randn(B, S, D),), f, input_names=["x"], output_names=["y"],
                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def _weight(model, node):
    return next(n.input[1] for n in model.graph.node if n.name == node)


def _groups(analysis, kind):
    return [g for g in analysis.prunable if g.kind == kind]


@pytest.mark.parametrize("how", ["split", "slice"])
def test_fused_gate_up_is_an_mlp(how):
    model = _export(FusedGateUp(how))
    a, _, _ = assert_oracle(model)
    (mlp,) = _groups(a, "mlp")
    assert mlp.size == FF and not _groups(a, "head")
    # Each neuron is one output of the gate half and one of the up half of the fused weight, one input of down.
    assert [n for n in mlp.producers if "gate_up" in n] and [n for n in mlp.consumers if "down" in n]
    assert mlp.round_multiple == 1
    res = graphprune.prune(model, head_ratio=0.0, mlp_ratio=0.5, round_to=1)
    assert len(res.plan.cuts[mlp.key].removed) == FF // 2
    assert res.report.after.params < res.report.before.params


@pytest.mark.parametrize("how", ["view", "split"])
def test_fused_qkv_heads(how):
    model = _export(FusedQKV(how))
    a, pruned, removed = assert_oracle(model)
    (heads,) = _groups(a, "head")
    assert heads.size == H and not _groups(a, "mlp")
    # A unit is a whole head: HD outputs of each of q, k and v in the fused weight, HD inputs of the output one.
    cut = a.cut(heads.units[:1])
    assert cut.kept(_weight(model, "/qkv/MatMul"), 1).sum() == 3 * (H - 1) * HD
    assert cut.kept(_weight(model, "/o/MatMul"), 0).sum() == (H - 1) * HD
    res = graphprune.prune(model, head_ratio=0.5, mlp_ratio=0.0)
    assert len(res.plan.cuts[heads.key].removed) == H // 2


@pytest.mark.parametrize("kv", [1, 2])
def test_shared_kv_heads_cut_whole_query_heads(kv):
    model = _export(SharedKV(kv))
    a, _, _ = assert_oracle(model)
    # kv=1 (MQA): each query head is a unit, the one K/V head stays; kv=2 (GQA): a K/V head with its query heads.
    (heads,) = [g for g in a.channel_groups if g.kind == "head" and not g.frozen]
    assert heads.size == (H if kv == 1 else kv)
    assert all(g.size != HD for g in a.prunable), "default options cut inside heads"
    if kv == 1:  # the shared K/V head dimension is refused, by design, pointing at --prune-head-dim
        shared = [g for g in a.frozen if g.kind == "head"]
        assert shared and all(r.kind == "by_design" and "--prune-head-dim" in str(r)
                              for g in shared for r in g.refusals)
    a, _, _ = assert_oracle(model, options=AnalysisOptions(prune_head_dim=True))
    dims = _groups(a, "head")
    assert dims and all(g.size == HD for g in dims)


def test_heads_folded_into_batch():
    model = _export(HeadsInBatch())
    a, _, removed = assert_oracle(model)
    (heads,) = _groups(a, "head")
    assert heads.size == H and len(removed) == H // 2
    a, _, _ = assert_oracle(model, options=AnalysisOptions(prune_head_dim=True))
    assert [g.size for g in _groups(a, "head")] == [HD, HD]  # q·k dims, v dims



def test_span_conv_heads():
    model = _export(SpanConv())
    a, _, _ = assert_oracle(model)
    heads = [g for g in a.prunable if g.kind == "head"]
    conv = [g for g in heads if any("kernel" in n for n in g.producers)]
    # One unit per conv head: its HD outputs of v, its 3 kernel outputs, its HD inputs of the output projection.
    assert len(conv) == 1 and conv[0].size == H
    assert all(r.kind == "by_design" for g in a.frozen for r in g.refusals)  # graph input and output only
    cut = a.cut(conv[0].units[:1])
    assert cut.kept(_weight(model, "/v/MatMul"), 1).sum() == (H - 1) * HD
    assert cut.kept(_weight(model, "/kernel/MatMul"), 1).sum() == (H - 1) * 3


def test_batch_times_heads_constants_follow_the_cut():
    from graphprune.core import runtime
    from graphprune.passes import oracle, rewrite

    model = _export_dynamic_batch(BatchTimesHeads())
    a, pruned, removed = assert_oracle(model)  # at batch 1, where the analysis runs
    (heads,) = _groups(a, "head")
    assert heads.size == H and np.isin(removed, heads.units).sum() == H // 2
    x = {"x": np.random.default_rng(1).standard_normal((3, S, D)).astype(np.float32)}
    want = runtime.run(oracle.masked_model(model, a.cut(removed)), x)[0]
    got = runtime.run(rewrite.apply(model, a.cut(removed)), x)[0]  # batch 3: B*H, (B*H) // H, repeats
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
