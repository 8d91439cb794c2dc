"""A pruned BERT still fuses in ONNX Runtime's transformer optimizer: with the num_heads and attention width the
report gives, every attention block becomes one com.microsoft Attention node computing what the unfused
pruned model computes; the report says when blocks keep different head counts (then --uniform-heads)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.core.runtime import session

optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
pytest.importorskip("transformers")

from models.transformers_zoo import get_transformer_model  # noqa: E402


@pytest.fixture(scope="module")
def bert():
    return onnx.load(str(get_transformer_model("bert")))


def feeds(n=4, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int64)
    mask[1, 11:] = 0  # padding in one sample
    return {"input_ids": rng.integers(0, 128, (n, seq)).astype(np.int64), "attention_mask": mask}


def fused(model, tmp_path, num_heads, width):
    path = tmp_path / "pruned.onnx"
    onnx.save(model, str(path))
    return optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=width).model


def max_diff(a, b, f):
    return max(float(np.abs(x - y).max()) for x, y in zip(session(a).run(None, f), session(b).run(None, f)))


@pytest.mark.parametrize("options", [dict(ratio=0.5), dict(ratio=0.3, head_ratio=0.25, mlp_ratio=0.5),
                                     dict(ratio=0.5, allocation="sensitivity", uniform_heads=True)])
def test_pruned_bert_fuses_into_attention(bert, tmp_path, options):
    if options.get("allocation") == "sensitivity":
        options = dict(options, calib=feeds(16, seed=1))
    r = graphprune.prune(bert, **options)
    att = r.report.attention
    assert att["uniform"] and len(att["blocks"]) == 2
    heads, width = att["num_heads"], att["blocks"][0]["width"]
    assert heads < 4 and width == heads * 16  # 4 heads of 16 channels in the zoo BERT
    assert {r_["width"] for r_ in r.report.kept if r_["kind"] == "head"} == {width}
    f = fused(r.model, tmp_path, heads, width)
    attention = [n for n in f.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2
    assert all(a.i == heads for n in attention for a in n.attribute if a.name == "num_heads")
    assert max_diff(r.model, f, feeds()) <= 1e-4


def test_report_says_when_one_num_heads_cannot_describe_the_blocks(bert):
    r = graphprune.prune(bert, ratio=0.5)
    plan = r.plan
    head_keys = [k for k in plan.cuts if r.analysis.group(k).kind == "head"]
    plan.cuts[head_keys[1]].removed = plan.cuts[head_keys[1]].removed[:1]  # block 2 keeps 3 heads, block 1 keeps 2
    r2 = graphprune.prune(bert, plan=plan)
    att = r2.report.attention
    assert not att["uniform"] and "num_heads" not in att
    assert sorted(b["num_heads"] for b in att["blocks"]) == [2, 3]
    assert "--uniform-heads" in att["note"]
    rows = {row["group"]: row for row in r2.report.kept}
    assert rows[head_keys[1]]["kept"] == 3 and rows[head_keys[1]]["width"] == 48
