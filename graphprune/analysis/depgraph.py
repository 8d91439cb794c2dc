"""The channel-dependency graph of an analysis as a networkx graph, and files of it (GraphML, GEXF, DOT).

The graph is a `networkx.MultiDiGraph` with two layers. The data-flow layer has one node per ONNX node
(kind "op") and per tensor (kind "tensor"), with edges tensor -> op ("input") and op -> tensor ("output").
The channel layer has one node per channel space, a tensor axis (kind "space"), and per group of coupled
channels (kind "group"), with edges tensor -> space ("axis"), group -> space ("member") and space -> space
("tie": the two axes are cut together through the op named in `via`). Directed, because data flow has a
direction (a tie is symmetric and stored once, in data-flow order: use `G.to_undirected()` to walk ties);
a multigraph, because one op can read a tensor twice (`Add(x, x)`) and two axes can be tied through more
than one op. Spaces rather than tensors carry the ties because one tensor's axes belong to different
groups (a conv weight's axis 0 to its output channels, axis 1 to its input channels).

The analysis keeps unit roots, not the rules' ties, so ties are derived: two axes of one op's tensors are
tied through it when their channels share a group. That is the op's own tie, except where the group also
reaches both axes another way (a residual Add around a Conv makes the Conv's input and output one group).

Every attribute is a str, int, float or bool (what GraphML and GEXF store); lists are joined into strings.
"""

from __future__ import annotations

from pathlib import Path

import networkx
import numpy as np
import onnx

from ..core.io import write_text_atomic
from ..errors import UsageError
from .spaces import sorted_unique

GRAPH_FORMATS = (".graphml", ".gexf", ".dot", ".gv")


def to_networkx(analysis) -> networkx.MultiDiGraph:
    """The analysis as a graph: ops, tensors, channel spaces and groups (see the module docstring)."""
    view = analysis.view
    G = networkx.MultiDiGraph(model=view.graph.name or "", groups=len(analysis.channel_groups),
                              prunable=len(analysis.prunable), frozen=len(analysis.frozen),
                              all_groups=len(analysis.groups))
    space_groups = _space_groups(analysis)
    groups = analysis.groups
    channel = {g.id for g in analysis.channel_groups}

    slicing: dict[str, list[str]] = {}
    for g in analysis.channel_groups:
        for name in g.nodes:
            slicing.setdefault(name, []).append(g.key)
    op_ids = _op_ids(view.names)
    for i, node in enumerate(view.nodes):
        name = view.names[i]
        G.add_node(op_ids[i], kind="op", label=name, op_type=node.op_type, domain=node.domain, index=i,
                   groups=" ".join(slicing.get(name, [])))
    for t in _tensors(view):
        G.add_node(_tensor_id(t), kind="tensor", label=t, dims=_shape_text(view.shape(t)),
                   dtype=_dtype_text(view.dtype(t)), constant=view.is_stored_constant(t), role=_role(view, t))
    for i, node in enumerate(view.nodes):
        for k, t in enumerate(node.input):
            if t:
                G.add_edge(_tensor_id(t), op_ids[i], kind="input", index=k)
        for k, t in enumerate(node.output):
            if t:
                G.add_edge(op_ids[i], _tensor_id(t), kind="output", index=k)

    for sp in analysis.spaces.spaces:
        gids = space_groups[sp.id]
        mine = [groups[g] for g in gids]
        one = mine[0] if len(mine) == 1 else None
        G.add_node(_space_id(sp.key), kind="space", label=sp.key, tensor=sp.tensor, axis=sp.axis, size=sp.size,
                   constant=sp.constant, groups=",".join(str(g) for g in gids),
                   group_keys=" ".join(g.key for g in mine), group=one.id if one else -1,
                   group_key=one.key if one else "", group_kind=",".join(dict.fromkeys(g.kind for g in mine)),
                   frozen=any(g.frozen for g in mine), channel=any(g.id in channel for g in mine),
                   reasons=_joined(r for g in mine for r in g.reasons),
                   own_reasons=_joined(why for why, silent in analysis.space_reasons.get(sp.id, []) if not silent))
        G.add_edge(_tensor_id(sp.tensor), _space_id(sp.key), kind="axis", index=sp.axis)
    for g in groups:
        G.add_node(_group_id(g.key), kind="group", label=g.key, group=g.id, group_key=g.key, size=g.size,
                   group_kind=g.kind, frozen=g.frozen, channel=g.id in channel, reasons=_joined(g.reasons),
                   nodes=" ".join(g.nodes), round_multiple=g.round_multiple, n_spaces=len(g.spaces))
        for s in g.spaces:
            G.add_edge(_group_id(g.key), _space_id(analysis.spaces.spaces[s].key), kind="member")

    for i, node in enumerate(view.nodes):
        for a, b, shared in _ties(analysis, node, space_groups):
            G.add_edge(_space_id(a.key), _space_id(b.key), kind="tie", via=view.names[i], op_type=node.op_type,
                       groups=",".join(str(g) for g in shared))
    return G


def write_graph(analysis, path) -> None:
    """Write the dependency graph to `path`; the extension picks the format: .graphml, .gexf, .dot/.gv."""
    ext = check_graph_path(path)
    G = to_networkx(analysis)
    if ext == ".graphml":
        text = "\n".join(networkx.generate_graphml(G))
    elif ext == ".gexf":
        text = "\n".join(networkx.generate_gexf(G))
    else:
        text = to_dot(G)
    write_text_atomic(path, text + "\n")


def check_graph_path(path, flag: str = "") -> str:
    """The format extension of a graph file path, or a UsageError naming the ones written (`flag`: the
    option the path came from, for the message)."""
    ext = Path(path).suffix.lower()
    if ext not in GRAPH_FORMATS:
        raise UsageError(f"{flag + ' ' if flag else ''}{path}: unknown graph format '{ext or '(no extension)'}'; "
                         f"use one of {', '.join(GRAPH_FORMATS)}")
    return ext


# ---- DOT --------------------------------------------------------------------------------------------
_DOT_LOOK = {"op": 'shape="box"', "tensor": 'shape="ellipse"', "space": 'shape="note"', "group": 'shape="hexagon"'}


def to_dot(G: networkx.MultiDiGraph) -> str:
    """Graphviz DOT text of the graph, every attribute kept (networkx writes DOT only through pydot or
    pygraphviz, which graphprune does not depend on). Frozen groups and spaces are drawn red."""
    lines = [f"digraph {_quote(G.graph.get('model') or 'graphprune')} {{", f"  graph [{_attrs(G.graph)}];",
             "  node [fontsize=10];"]
    for n, d in G.nodes(data=True):
        look = _DOT_LOOK.get(d.get("kind"), "")
        if d.get("kind") in ("space", "group"):
            look += ', color="red"' if d.get("frozen") else ', color="darkgreen"'
        lines.append(f"  {_quote(n)} [{_attrs(d)}{', ' + look if look else ''}];")
    for u, v, d in G.edges(data=True):
        style = ' style="dashed" dir="none"' if d.get("kind") == "tie" else ""
        lines.append(f"  {_quote(u)} -> {_quote(v)} [{_attrs(d)}{style}];")
    lines.append("}")
    return "\n".join(lines)


def _quote(value) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _attrs(d: dict) -> str:
    return ", ".join(f"{k}={_quote(str(v).lower() if isinstance(v, bool) else v)}" for k, v in d.items())


# ---- reading the analysis ---------------------------------------------------------------------------
def _space_groups(analysis) -> list[list[int]]:
    """The group ids of every space's channels (a Concat output holds the channels of several groups)."""
    root_group = np.full(analysis.id_count, -1, dtype=np.int64)
    for g in analysis.groups:
        root_group[g.units] = g.id
    out = []
    for sp in analysis.spaces.spaces:
        ids = sorted_unique(root_group[analysis.units_of(sp)])
        out.append([int(i) for i in ids if i >= 0])
    return out


def _ties(analysis, node: onnx.NodeProto, space_groups):
    """(space, space, shared group ids) for the axes of one op's tensors whose channels share a group."""
    seen, spaces = set(), []
    for t in list(node.input) + list(node.output):
        if t and t not in seen:
            seen.add(t)
            spaces += analysis.spaces.of_tensor(t)
    for i, a in enumerate(spaces):
        ga = set(space_groups[a.id])
        for b in spaces[i + 1:]:
            shared = ga.intersection(space_groups[b.id]) if b.tensor != a.tensor else ()
            if shared:
                yield a, b, sorted(shared)


def _tensors(view) -> list[str]:
    seen = dict.fromkeys(view.input_names)
    for n in view.nodes:
        seen.update(dict.fromkeys(t for t in list(n.input) + list(n.output) if t))
    seen.update(dict.fromkeys(view.output_names))
    return list(seen)


def _role(view, t: str) -> str:
    if t in view.input_names:
        return "input"
    if t in view.output_names:
        return "output"
    if t in view.initializers:
        return "initializer"
    if t in view.producer:
        return "constant" if view.nodes[view.producer[t]].op_type == "Constant" else "activation"
    return "undefined"


def _op_ids(names: list[str]) -> list[str]:
    """Node ids for ops: 'op:NAME', with '#INDEX' added where two nodes share a name."""
    count: dict[str, int] = {}
    for n in names:
        count[n] = count.get(n, 0) + 1
    return [f"op:{n}" if count[n] == 1 else f"op:{n}#{i}" for i, n in enumerate(names)]


def _tensor_id(t: str) -> str:
    return f"tensor:{t}"


def _space_id(key: str) -> str:
    return f"space:{key}"


def _group_id(key: str) -> str:
    return f"group:{key}"


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def _dtype_text(dtype) -> str:
    try:
        return onnx.TensorProto.DataType.Name(dtype).lower() if dtype else ""
    except ValueError:  # a data type this onnx does not name
        return str(dtype)


def _joined(reasons) -> str:
    return "; ".join(dict.fromkeys(str(r) for r in reasons))


__all__ = ["GRAPH_FORMATS", "check_graph_path", "to_dot", "to_networkx", "write_graph"]
