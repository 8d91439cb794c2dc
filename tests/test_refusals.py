"""Structured refusals: every freeze says what refused, where, and of which kind; a rule that raises is a
bug (kind "internal", listed in `Analysis.internal_errors`, a warning in the CLI; `debug` lets it propagate),
and no model of the zoo hits one."""

from __future__ import annotations

import json
import subprocess

import onnx
import pytest

import graphprune
from graphprune.analysis import registry, rules  # noqa: F401 - rules registers the op rules
from graphprune.analysis.reasons import Refusal

from .graphs import GraphBuilder, group_of, run_analysis, sizes


def _boom_model() -> onnx.ModelProto:
    """c1 -> Relu 'boom' -> c2 -> c3: the rule for 'boom' raises (see the fixture), c2 -> c3 is untouched."""
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y = g.op("Relu", [y], name="boom")
    y = g.conv(y, 16, 12, name="c2")
    g.output(g.conv(y, 12, 4, name="c3"))
    return g.model()


@pytest.fixture
def raising_rule(monkeypatch):
    """The rule for Relu raises on the node named 'boom' (and works everywhere else)."""
    rule = registry.lookup("", "Relu")
    original = rule.analyze

    def analyze(ctx):
        if ctx.name == "boom":
            raise RuntimeError("kaboom\nsecond line not shown")
        return original(ctx)

    monkeypatch.setattr(rule, "analyze", analyze)
    return rule


def test_rule_that_raises_freezes_its_node_as_an_internal_error(raising_rule):
    a = run_analysis(_boom_model())
    grp = group_of(a, "c1", "producer")
    assert grp.frozen
    internal = [r for r in grp.refusals if r.kind == "internal"]
    assert internal, grp.refusals
    why = str(internal[0])
    assert why == ("internal error in the rule for Relu 'boom': RuntimeError: kaboom "
                   "(please report; rerun with --debug)")
    assert why in grp.reasons
    # Listed once, although both analysis passes ran the rule.
    assert a.internal_errors == [internal[0]]
    assert (a.internal_errors[0].node, a.internal_errors[0].op) == ("boom", "Relu")
    # Only the raising node is frozen: the next group is still prunable.
    assert sizes(a.prunable) == [12]


def test_rule_that_raises_propagates_with_debug(raising_rule):
    with pytest.raises(RuntimeError, match="kaboom"):
        run_analysis(_boom_model(), debug=True)
    with pytest.raises(RuntimeError, match="kaboom"):
        graphprune.prune(_boom_model(), ratio=0.5, debug=True)


def test_healthy_model_has_no_internal_errors():
    assert run_analysis(_boom_model()).internal_errors == []


def test_prune_report_lists_internal_errors_and_structured_refusals(raising_rule):
    res = graphprune.prune(_boom_model(), ratio=0.5)
    rep = res.report.to_dict()
    assert [e["node"] for e in rep["internal_errors"]] == ["boom"]
    assert rep["internal_errors"][0]["kind"] == "internal"
    rows = rep["groups_frozen"]
    assert rows and all(set(r) >= {"group", "size", "nodes", "reasons", "refusals"} for r in rows)
    for r in rows:
        assert r["reasons"] == [x["why"] for x in r["refusals"]]
        assert all(set(x) == {"why", "node", "op", "tensor", "axis", "kind"} for x in r["refusals"])
    assert any(x["kind"] == "internal" for r in rows for x in r["refusals"])
    json.dumps(rep)  # the report stays plain JSON


@pytest.fixture
def cli(capsys, tmp_path):
    """`graphprune.cli.main` in this process (the patched rule must be seen), on the boom model."""
    from graphprune.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_boom_model(), str(path))

    def call(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = main([str(a).replace("MODEL", str(path)) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err)

    return call


WARNING = "warning: 1 internal error(s) in graphprune's op rules froze their nodes: internal error in the rule"


def test_cli_prune_and_analyze_warn_of_internal_errors(raising_rule, cli):
    p = cli("MODEL", "--ratio", "0.5", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert WARNING in " ".join(p.stdout.split())
    p = cli("analyze", "MODEL")
    assert p.returncode == 0, p.stderr
    assert WARNING in " ".join(p.stdout.split())
    p = cli("analyze", "MODEL", "--json")
    assert [e["node"] for e in json.loads(p.stdout)["internal_errors"]] == ["boom"]


def test_cli_says_nothing_without_internal_errors(cli):
    p = cli("analyze", "MODEL")
    assert p.returncode == 0 and "internal error" not in p.stdout
    p = cli("MODEL", "--ratio", "0.5", "--dry-run")
    assert p.returncode == 0 and "internal error" not in p.stdout


def test_cli_debug_lets_the_rule_error_through(raising_rule, cli):
    with pytest.raises(RuntimeError, match="kaboom"):
        cli("MODEL", "--ratio", "0.5", "--dry-run", "--debug")
    with pytest.raises(RuntimeError, match="kaboom"):
        cli("analyze", "MODEL", "--debug")


# ---- the fields of a refusal --------------------------------------------------------------------------


def _refusal(grp, starts: str) -> Refusal:
    hits = [r for r in grp.refusals if r.why.startswith(starts)]
    assert hits, grp.refusals
    return hits[0]


def test_graph_output_refusal_names_tensor_axis_and_producer():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y1 = g.conv(x, 8, 16, name="c1")
    g.output(g.conv(y1, 16, 4, name="c2"), y1)  # c1's output is also a graph output
    a = run_analysis(g.model())
    r = _refusal(group_of(a, "c1", "producer"), "reaches graph output 'c1_out'")
    assert (r.node, r.op, r.tensor, r.axis, r.kind) == ("c1", "Conv", "c1_out", 1, "by_design")
    r = _refusal(group_of(a, "c1", "consumer"), "reaches graph input 'x'")
    assert (r.tensor, r.axis, r.kind) == ("x", 1, "by_design")


def test_no_rule_refusal_names_node_op_tensor_axis():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y = g.declare(g.op("MyOp", [y], name="custom", domain="com.example"), [1, 16, 5, 5])
    g.output(g.conv(y, 16, 4, name="c2"))
    a = run_analysis(g.model(check=False))
    r = _refusal(group_of(a, "c1", "producer"), "no rule for op com.example::MyOp")
    assert (r.node, r.op, r.kind) == ("custom", "com.example::MyOp", "unsupported")
    assert r.tensor in ("c1_out", "custom_out") and r.axis == 1
    assert str(r) == "no rule for op com.example::MyOp (node 'custom')"


def test_exclude_and_norm_refusals_are_by_design():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 5, 5])
    y = g.conv(x, 8, 16, name="c1")
    y = g.conv(y, 16, 12, name="c2")
    y = g.op("Softmax", [y], name="sm", axis=1)
    g.output(g.conv(y, 12, 4, name="head/conv"))
    a = run_analysis(g.model(), exclude=("head/*",))
    r = _refusal(group_of(a, "head/conv", "consumer"), "excluded by --exclude 'head/*'")
    assert (r.node, r.op, r.kind) == ("head/conv", "Conv", "by_design")
    r = _refusal(group_of(a, "c2", "producer"), "Softmax 'sm' normalises over axis 1")
    assert (r.node, r.op, r.tensor, r.axis, r.kind) == ("sm", "Softmax", "c2_out", 1, "by_design")
    assert sizes(a.prunable) == [16]


def test_refusal_kind_is_checked():
    with pytest.raises(ValueError, match="kind"):
        Refusal("x", kind="maybe")


# ---- no zoo model hits a rule bug ---------------------------------------------------------------------


def _zoo_cases():
    from models import CNN_MODELS, EXPORTERS
    from models.transformers_zoo import TRANSFORMER_EXPORTERS, TRANSFORMER_TEST_MODELS

    cnn = [pytest.param("cnn", n, e, id=f"cnn-{n}-{e}") for n in CNN_MODELS for e in EXPORTERS]
    hf = [pytest.param("hf", n, e, id=f"hf-{n}-{e}") for n in TRANSFORMER_TEST_MODELS for e in TRANSFORMER_EXPORTERS]
    return cnn + hf


@pytest.mark.parametrize("family,name,exporter", _zoo_cases())
def test_zoo_has_no_internal_errors(family, name, exporter):
    """Analysis only (exports come from the shared zoo cache, built on first use)."""
    if family == "cnn":
        from models import get_model

        path = get_model(name, exporter=exporter)
    else:
        from models.transformers_zoo import get_transformer_model

        path = get_transformer_model(name, exporter=exporter)
    a = graphprune.analyze(str(path))
    assert not a.internal_errors, [str(r) for r in a.internal_errors]
