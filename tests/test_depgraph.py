"""The channel-dependency graph: what networkx reads back from GraphML/GEXF is the analysis; DOT has every
group; ties follow the ops; `graphprune analyze --graph` writes it with the --html path checks."""

from __future__ import annotations

import re

import networkx
import onnx
import pytest

import graphprune
from graphprune.analysis.depgraph import to_dot, write_graph
from models import get_model
from tests.corpus import cnn_model


@pytest.fixture(scope="module")
def mobilenet():
    model = onnx.load(str(get_model("mobilenetv2")))
    return model, graphprune.analyze(model)


def _groups(G) -> set[tuple[str, int, bool]]:
    return {(d["group_key"], d["size"], d["frozen"]) for _, d in G.nodes(data=True)
            if d["kind"] == "group" and d["channel"]}


def _expected(analysis) -> set[tuple[str, int, bool]]:
    return {(g.key, g.size, g.frozen) for g in analysis.channel_groups}


def test_graphml_read_back_has_the_analysis_groups(mobilenet, tmp_path):
    _, a = mobilenet
    path = tmp_path / "deps.graphml"
    write_graph(a, path)
    G = networkx.read_graphml(path)
    assert _groups(G) == _expected(a) and len(_expected(a)) > 10
    assert G.graph["groups"] == len(a.channel_groups) and G.graph["model"] == a.view.graph.name
    assert G.graph["frozen"] == len(a.frozen) >= 1
    # every space node names the group its channels are in, with that group's flags
    by_key = {g.key: g for g in a.groups}
    spaces = {d["label"]: d for _, d in G.nodes(data=True) if d["kind"] == "space"}
    assert len(spaces) == len(a.spaces.spaces)
    for g in a.channel_groups:
        for s in g.spaces:
            d = spaces[a.spaces.spaces[s].key]
            assert g.key in d["group_keys"].split(" ")
            if d["group_key"]:
                assert by_key[d["group_key"]].frozen == d["frozen"] and d["group"] == by_key[d["group_key"]].id
    # reasons survive as text
    frozen = next(g for g in a.frozen)
    node = next(d for _, d in G.nodes(data=True) if d["kind"] == "group" and d["group_key"] == frozen.key)
    assert frozen.reasons[0] in node["reasons"]


def test_gexf_read_back_has_the_analysis_groups(mobilenet, tmp_path):
    _, a = mobilenet
    write_graph(a, tmp_path / "deps.gexf")
    G = networkx.read_gexf(tmp_path / "deps.gexf")
    assert _groups(G) == _expected(a)


def test_ties_follow_the_ops():
    """conv2's weight axis 1 is tied to its input's channel axis; axis 0 to its output's; the Add ties its
    two inputs; the graph is an Analysis method and the data-flow layer is the ONNX graph."""
    a = graphprune.analyze(cnn_model())
    G = a.to_networkx()
    assert isinstance(G, networkx.MultiDiGraph)
    ties = {(u, v, d["via"]) for u, v, d in G.edges(data=True) if d["kind"] == "tie"}
    conv2 = next(n for n in a.view.nodes if n.name == "conv2")
    x, w, y = conv2.input[0], conv2.input[1], conv2.output[0]
    assert (f"space:{x}:1", f"space:{w}:1", "conv2") in ties
    assert (f"space:{w}:0", f"space:{y}:1", "conv2") in ties
    # conv1's input and output channels are different groups: no tie across it ...
    conv1 = next(n for n in a.view.nodes if n.name == "conv1")
    assert not any(u == f"space:{conv1.input[0]}:1" and v == f"space:{conv1.output[0]}:1" for u, v, _ in ties)
    # ... while the residual Add around conv2 makes its input and output one group (module docstring)
    assert (f"space:{x}:1", f"space:{y}:1", "conv2") in ties
    add = next(n for n in a.view.nodes if n.name == "add")
    assert (f"space:{add.input[0]}:1", f"space:{add.input[1]}:1", "add") in ties
    ops = {d["label"]: d["op_type"] for _, d in G.nodes(data=True) if d["kind"] == "op"}
    assert ops == {name: n.op_type for name, n in zip(a.view.names, a.view.nodes)}
    assert G.has_edge(f"tensor:{w}", "op:conv2") and G.has_edge("op:conv2", f"tensor:{y}")
    # a group's member spaces are the group's spaces
    g = next(g for g in a.prunable)
    members = {v for _, v, d in G.out_edges(f"group:{g.key}", data=True) if d["kind"] == "member"}
    assert members == {f"space:{a.spaces.spaces[s].key}" for s in g.spaces}


_DOT_LINE = re.compile(r'^\s*(digraph "(?:[^"\\]|\\.)*" \{|\}|(graph|node) \[.*\];|'
                       r'"(?:[^"\\]|\\.)*"( -> "(?:[^"\\]|\\.)*")? \[.*\];)$')


@pytest.mark.parametrize("ext", [".dot", ".gv"])
def test_dot_has_every_group(mobilenet, tmp_path, ext):
    _, a = mobilenet
    path = tmp_path / f"deps{ext}"
    write_graph(a, path)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("digraph ") and lines[-1] == "}"
    assert all(_DOT_LINE.match(line) for line in lines), next(x for x in lines if not _DOT_LINE.match(x))
    node_ids = set(re.findall(r'^\s*"((?:[^"\\]|\\.)*)" \[', text, re.M))
    for g in a.groups:
        assert f"group:{g.key}" in node_ids
    frozen = a.frozen[0]
    line = next(x for x in lines if x.strip().startswith(f'"group:{frozen.key}" ['))
    assert 'frozen="true"' in line and 'color="red"' in line
    n_edges = sum(1 for x in lines if '" -> "' in x)
    assert n_edges == a.to_networkx().number_of_edges()


def test_dot_quotes_names():
    G = networkx.MultiDiGraph(model='a "b"')
    G.add_node('x"\\y', kind="op", label="l\nm")
    text = to_dot(G)
    assert r'"x\"\\y" [kind="op", label="l\nm"' in text and text.startswith(r'digraph "a \"b\"" {')


def test_unknown_extension_is_a_usage_error(tmp_path):
    a = graphprune.analyze(cnn_model())
    with pytest.raises(graphprune.UsageError, match=r"\.graphml, \.gexf, \.dot, \.gv"):
        write_graph(a, tmp_path / "deps.txt")
    assert not (tmp_path / "deps.txt").exists()


def test_cli_analyze_graph(tmp_path):
    from graphprune.cli import main

    model = tmp_path / "m.onnx"
    onnx.save_model(cnn_model(), str(model))
    out = tmp_path / "deps.graphml"
    assert main(["analyze", str(model), "--graph", str(out), "--quiet"]) == 0
    a = graphprune.analyze(str(model))
    assert _groups(networkx.read_graphml(out)) == _expected(a)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("where, message", [
    ("nofolder/deps.graphml", "folder does not exist"),
    (".", "is a directory"),
    ("m.onnx", "would overwrite the input model"),
    ("deps.png", "unknown graph format '.png'"),
])
def test_cli_graph_path_checks(tmp_path, capsys, where, message):
    from graphprune.cli import main

    model = tmp_path / "m.onnx"
    onnx.save_model(cnn_model(), str(model))
    before = model.read_bytes()
    assert main(["analyze", str(model), "--graph", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert "--graph" in err and message in err
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
