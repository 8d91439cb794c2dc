"""Running a model forward in steps: each step computes only the nodes its wanted tensors need that no
earlier step ran, from the tensors earlier steps kept.

Compensation fits a pruned model's layers in dependency order, and each fit changes the weights the next
layers' inputs are computed with. Running the whole model again for every wave computes every node once
per wave; running it in steps computes every node once in all, over the same fixed batches: a step is a
small ONNX model of the nodes not yet run (its inputs are the tensors kept from earlier steps), and only
the tensors later steps will read stay stored (in memory, or in a temporary file beyond STORE_BUDGET).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from .runtime import session

STORE_BUDGET = 2 << 30  # bytes of kept tensors held in memory; more go to memory-mapped temporary files


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names an If/Loop/Scan node's bodies read (an over-estimate: every name they read)."""
    out: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                out.update(t for t in n.input if t)
                out |= _subgraph_reads(n)
    return out


class _Index:
    """Producers and reads of a model's nodes; `static` tensors depend on no graph input (constants, and
    what nodes compute from them only): steps recompute them instead of storing them."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {t.name for t in model.graph.initializer}
        self.inputs = {i.name for i in model.graph.input} - self.inits
        self.producer: dict[str, int] = {}
        self.reads: list[list[str]] = []
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            self.reads.append(list(dict.fromkeys([t for t in n.input if t] + sorted(_subgraph_reads(n)))))
        self.static: set[str] = set()
        for i, n in enumerate(self.nodes):  # graph order is topological
            if all(t in self.inits or t in self.static or (t not in self.producer and t not in self.inputs)
                   for t in self.reads[i]):
                self.static.update(o for o in n.output if o)

    def closure(self, wanted, available) -> list[int]:
        """Nodes (in graph order) that compute `wanted` from the `available` tensors and constants."""
        need: set[int] = set()
        stack = [t for t in wanted if t not in available]
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in available or t in self.inits:
                continue
            seen.add(t)
            p = self.producer.get(t)
            if p is None:
                if t in self.inputs:
                    raise KeyError(f"graph input '{t}' was not kept")
                continue  # an outer-scope name of a subgraph that is defined inside it
            if p not in need:
                need.add(p)
                stack.extend(self.reads[p])
        return sorted(need)


class _Store:
    """Tensors kept between steps, one array per batch; past STORE_BUDGET bytes they go to temporary .npy
    files that are read back memory-mapped."""

    def __init__(self, budget: int):
        self.values: dict[str, list] = {}
        self.budget, self.bytes = budget, 0
        self.dir: tempfile.TemporaryDirectory | None = None
        self.files = 0

    def put(self, name: str, parts: list[np.ndarray]) -> None:
        size = sum(p.nbytes for p in parts)
        if self.bytes + size > self.budget and size > 0:
            parts = [self._spill(p) for p in parts]
        else:
            self.bytes += size
        self.values[name] = parts

    def _spill(self, a: np.ndarray):
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="graphprune-steps-")
        self.files += 1
        path = os.path.join(self.dir.name, f"{self.files}.npy")
        np.save(path, a)
        return np.load(path, mmap_mode="r")

    def drop(self, name: str) -> None:
        parts = self.values.pop(name)
        self.bytes -= sum(p.nbytes for p in parts if not isinstance(p, np.memmap))

    def close(self) -> None:
        self.values.clear()
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None


class Stepwise:
    """One model (which may change between steps, upstream of what steps still have to compute) run
    forward over fixed batches of feeds, step by step."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], make_session=session, budget: int | None = None):
        self.n = len(feeds)
        self.store = _Store(STORE_BUDGET if budget is None else budget)
        for k in feeds[0]:
            self.store.put(k, [f[k] for f in feeds])
        self.make_session = make_session
        self.sessions = 0  # sub-models run
        self.nodes_run = 0

    def step(self, model: onnx.ModelProto, wanted: list[str], later: list[str] = ()) -> dict[str, list]:
        """The `wanted` tensors of `model`, one array per batch. `later` names the tensors later steps will
        want: what they need stays stored, the rest is dropped."""
        wanted = list(dict.fromkeys(wanted))
        idx = _Index(model)
        kept = self.store.values
        nodes = idx.closure(wanted, kept)
        produced = {o for i in nodes for o in idx.nodes[i].output if o}
        # what later steps read from here on: the frontier of their closure over kept and new tensors
        avail = set(kept) | produced
        frontier = set()
        for i in idx.closure(later, avail):
            frontier.update(t for t in idx.reads[i] if t in avail and t not in idx.static)
        frontier.update(t for t in later if t in avail)
        outputs = [t for t in dict.fromkeys(wanted + sorted(frontier - idx.static)) if t in produced]
        if nodes:
            self._run(idx, nodes, outputs)
        got = {t: kept[t] if t in kept else None for t in wanted}
        for t in [t for t in kept if t not in frontier]:
            self.store.drop(t)
        missing = [t for t, v in got.items() if v is None]
        if missing:
            raise KeyError(f"tensor '{missing[0]}' was not computed")
        return got

    def _run(self, idx: _Index, nodes: list[int], outputs: list[str]) -> None:
        kept = self.store.values
        reads = list(dict.fromkeys(t for i in nodes for t in idx.reads[i]))
        produced = {o for i in nodes for o in idx.nodes[i].output if o}
        inputs = [t for t in reads if t in kept and t not in produced]
        sub = _sub_model(idx, nodes, inputs, [kept[t][0] for t in inputs], outputs)
        sess = self.make_session(sub)
        self.sessions += 1
        self.nodes_run += len(nodes)
        results: dict[str, list] = {t: [] for t in outputs}
        for b in range(self.n):
            vals = sess.run(outputs, {t: _contiguous(kept[t][b]) for t in inputs})
            for t, v in zip(outputs, vals):
                results[t].append(v)
        for t, parts in results.items():
            self.store.put(t, parts)

    def close(self) -> None:
        self.store.close()


def _contiguous(a) -> np.ndarray:
    """A C-contiguous ndarray of the same shape (np.ascontiguousarray would turn a scalar into shape [1])."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _sub_model(idx: _Index, nodes: list[int], inputs: list[str], examples: list[np.ndarray],
               outputs: list[str]) -> onnx.ModelProto:
    """The given nodes as a model: the kept tensors they read are inputs (rank from the stored arrays, every
    dim symbolic), the initializers they read are copied, `outputs` are its outputs."""
    model = idx.model
    sub = onnx.ModelProto()
    for f, value in model.ListFields():
        if f.name == "graph":
            continue
        if getattr(f, "is_repeated", None) or getattr(f, "label", None) == f.LABEL_REPEATED:
            getattr(sub, f.name).extend(value)
        elif f.type == f.TYPE_MESSAGE:
            getattr(sub, f.name).CopyFrom(value)
        else:
            setattr(sub, f.name, value)
    g = sub.graph
    g.name = model.graph.name or "step"
    g.node.extend(idx.nodes[i] for i in nodes)
    reads = {t for i in nodes for t in idx.reads[i]}
    g.initializer.extend(t for t in model.graph.initializer if t.name in reads)
    g.sparse_initializer.extend(t for t in model.graph.sparse_initializer if t.values.name in reads)
    for j, (t, a) in enumerate(zip(inputs, examples)):
        dtype = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
        g.input.append(onnx.helper.make_tensor_value_info(t, dtype, [f"step_in{j}_{k}" for k in range(a.ndim)]))
    g.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
    return sub


__all__ = ["STORE_BUDGET", "Stepwise"]
