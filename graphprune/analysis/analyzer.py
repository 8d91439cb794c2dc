"""The dependency analyzer: run every node's rule, join the ties, and read off groups of coupled channels.

Two passes: pass A runs without the reshape rules' merge/split ties to learn which axes are channel-like
(reach a weight's channel axis) and which are attention axes (the head axis and the head-dim axis of
Q·Kᵀ and softmax·V, marked by the rules that see them); pass B runs everything, letting Reshape/Flatten pick
the channel-carrying axis among the axes they merge or split (NCHW and NHWC flatten, attention heads,
channel shuffle).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from ..core.graph import GraphView
from . import registry
from .context import Role, RuleContext
from .cut import Cut
from .reasons import BY_DESIGN, Refusal, distinct_by_text, internal_error, qualified_op
from .spaces import Space, SpaceTable, connected_components, sorted_unique


@dataclass
class AnalysisOptions:
    exclude: tuple[str, ...] = ()
    prune_head_dim: bool = False
    prune_hidden: bool = False
    input_shapes: dict = field(default_factory=dict)
    debug: bool = False  # a rule that raises propagates (a bug to see), instead of freezing its node


@dataclass
class Group:
    """Units (channels) that are pruned the same way in every space listed: one row of `graphprune analyze`."""

    id: int
    key: str  # the anchor space, "tensor:axis": stable across runs, used by plans
    units: np.ndarray  # unit root ids, in anchor order
    spaces: list[int]
    frozen: bool
    refusals: list[Refusal]  # why it is frozen, each sentence once, at most 3
    nodes: list[str]  # nodes whose weights this group slices
    producers: list[str]
    consumers: list[str]
    round_multiple: int = 1  # channels per unit in the group's data spaces (for --round-to)
    kind: str = "channel"  # "channel", "head" (attention), "mlp" (linear layers), "hidden" (normalised axis)
    # What the units are, normalisation aside: "head", "head_dim" (dimensions inside heads), "mlp" or "channel".
    # A "hidden" group's heads (OLMo 2's q/k RMSNorm over all heads) show here why a model's heads stay whole.
    structure: str = "channel"

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def reasons(self) -> list[str]:
        """The refusals as the sentences users read."""
        return [str(r) for r in self.refusals]


@dataclass
class Analysis:
    view: GraphView
    spaces: SpaceTable
    roots: np.ndarray  # element id -> unit root id
    roles: list[Role]
    groups: list[Group]
    channel_groups: list[Group]  # groups that touch a weight (the ones users care about)
    space_reasons: dict[int, list[tuple[Refusal, bool]]]  # space id -> (refusal, silent)
    internal_errors: list[Refusal] = field(default_factory=list)  # rules that raised: bugs, not limitations

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.channel_groups if not g.frozen]

    @property
    def frozen(self) -> list[Group]:
        return [g for g in self.channel_groups if g.frozen]

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    @property
    def id_count(self) -> int:
        """Unit ids are element ids (a unit is named by its smallest element): arrays indexed by unit id
        have this length."""
        return len(self.roots)

    def space(self, tensor: str, axis: int) -> Space | None:
        """The space of a tensor axis (None for axes of size 1 or unknown size)."""
        return self.spaces.get(tensor, axis)

    def units_of(self, space_or_tensor, axis: int | None = None) -> np.ndarray:
        """The unit (channel) id of every element of a space, in element order: `units_of(space)` or
        `units_of(tensor, axis)`. Elements of one unit are cut together."""
        sp = space_or_tensor if isinstance(space_or_tensor, Space) else self.spaces.get(space_or_tensor, axis)
        return self.roots[sp.offset:sp.offset + sp.size]

    def cut(self, removed_units) -> Cut:
        """The removal of these units (from `Plan.removed_roots`), as passes read it."""
        return Cut(self, removed_units)

    def to_networkx(self):
        """The channel-dependency graph as a networkx.MultiDiGraph (graphprune.analysis.depgraph)."""
        from .depgraph import to_networkx  # networkx loads only when asked for

        return to_networkx(self)


CONTROL_FLOW = ("If", "Loop", "Scan")
ATTENTION_MARKS = ("head", "head_dim")  # marks rules put on attention axes (RuleContext.mark)


def _freeze_control_flow(ctx) -> None:
    """Channels are not followed into or out of control flow: what a subgraph reads (its inputs here; the
    tensors it captures from this scope are frozen in `run_pass`) and what it returns keep every channel."""
    for t in ctx.inputs:
        for ax in ctx.axes(t) if t else ():
            ctx.fix(t, ax, f"flows into {ctx.op} '{ctx.name}' (channels are not pruned through control flow)",
                    BY_DESIGN)
    for t in ctx.outputs:
        for ax in ctx.axes(t) if t else ():
            ctx.fix(t, ax, f"comes out of {ctx.op} '{ctx.name}' (channels are not pruned through control flow)",
                    BY_DESIGN)


class _Analyzer:
    def __init__(self, view: GraphView, options: AnalysisOptions):
        self.view = view
        self.options = options
        self.spaces = SpaceTable()
        for name in self._all_tensors():
            self.spaces.add_tensor(name, view.shape(name), view.is_stored_constant(name))
        self._channel_like: np.ndarray | None = None  # per space id, after pass A
        self._attention: dict[str, np.ndarray] = {}  # mark -> per space id, after pass A (ATTENTION_MARKS)
        self._kept_in_a: np.ndarray | None = None  # per space id, after pass A: tied to an axis pass A froze
        self.internal_errors: list[Refusal] = []  # over both passes, each once
        self._reset()

    def _reset(self):
        self.ties_u: list[np.ndarray] = []
        self.ties_v: list[np.ndarray] = []
        self.roles: list[Role] = []
        self.reasons: dict[int, list[tuple[Refusal, bool]]] = {}
        self.frozen_elements: list[tuple[np.ndarray, Refusal]] = []
        self.marks: dict[int, set[str]] = {}

    def _all_tensors(self):
        seen = dict.fromkeys(self.view.input_names)
        for n in self.view.nodes:
            seen.update(dict.fromkeys(t for t in list(n.input) + list(n.output) if t))
        seen.update(dict.fromkeys(self.view.output_names))
        return list(seen)

    # ---- collecting ---------------------------------------------------------------------------------
    def add_tie(self, e1: np.ndarray, e2: np.ndarray) -> None:
        self.ties_u.append(e1)
        self.ties_v.append(e2)

    def freeze(self, space_id: int, refusal: Refusal, silent: bool = False) -> None:
        """Keep every channel of this space; at most 4 refusals per space, each sentence once."""
        lst = self.reasons.setdefault(space_id, [])
        if len(lst) < 4 and all((str(r), s) != (str(refusal), silent) for r, s in lst):
            lst.append((refusal, silent))

    def mark(self, space_id: int, what: str) -> None:
        self.marks.setdefault(space_id, set()).add(what)

    def freeze_elements(self, elements: np.ndarray, refusal: Refusal) -> None:
        self.frozen_elements.append((np.asarray(elements, dtype=np.int64), refusal))

    def is_channel_like(self, tensor: str, axis: int) -> bool:
        sp = self.spaces.get(tensor, axis)
        if sp is None or self._channel_like is None:
            return False
        return bool(self._channel_like[sp.id])

    def is_kept_in_a(self, tensor: str, axis: int) -> bool:
        sp = self.spaces.get(tensor, axis)
        return sp is not None and self._kept_in_a is not None and bool(self._kept_in_a[sp.id])

    def attention_role(self, tensor: str, axis: int) -> str | None:
        """"head" or "head_dim" when pass A tied this axis to one the rules marked so, else None."""
        sp = self.spaces.get(tensor, axis)
        if sp is None:
            return None
        return next((m for m in ATTENTION_MARKS if m in self._attention and self._attention[m][sp.id]), None)

    # ---- running ------------------------------------------------------------------------------------
    def run_pass(self, pass_name: str) -> None:
        self._reset()
        self.pass_name = pass_name
        view = self.view
        for i, node in enumerate(view.nodes):
            ctx = RuleContext(self, i)
            ctx.pass_name = pass_name
            rule = registry.lookup(node.domain, node.op_type)
            if rule is None and node.domain in ("", "ai.onnx") and node.op_type in CONTROL_FLOW:
                _freeze_control_flow(ctx)
                continue
            if rule is None:
                dom = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
                ctx.freeze_node(f"no rule for op {dom}{node.op_type} (node '{ctx.name}')")
                continue
            try:
                rule.analyze(ctx)
            except Exception as exc:  # noqa: BLE001 - a rule that raises is a bug: frozen, said as one
                if self.options.debug:
                    raise
                refusal = internal_error(ctx.qualified_op, ctx.name, exc)
                if refusal not in self.internal_errors:
                    self.internal_errors.append(refusal)
                ctx.freeze_node(refusal)
            for t in list(node.input) + list(node.output):
                if not t:
                    continue
                for sp in self.spaces.of_tensor(t):
                    if (t, sp.axis) not in ctx.touched:
                        why = f"{node.op_type} '{ctx.name}' does not describe axis {sp.axis} of '{t}'"
                        self.freeze(sp.id, ctx.refusal(why, t, sp.axis))
        for name in view.input_names:
            for sp in self.spaces.of_tensor(name):
                self.freeze(sp.id, Refusal(f"reaches graph input '{name}'", tensor=name, axis=sp.axis,
                                           kind=BY_DESIGN))
        for name in view.output_names:
            p = view.producer.get(name)  # the node that computes it, where one does
            maker, op = (None, None) if p is None else (view.names[p], qualified_op(view.nodes[p]))
            for sp in self.spaces.of_tensor(name):
                self.freeze(sp.id, Refusal(f"reaches graph output '{name}'", node=maker, op=op, tensor=name,
                                           axis=sp.axis, kind=BY_DESIGN))
        op_of = dict(zip(view.names, map(qualified_op, view.nodes))) if view.subgraph_captures else {}
        for name, owner in view.subgraph_captures.items():
            for sp in self.spaces.of_tensor(name):
                self.freeze(sp.id, Refusal(f"read inside the subgraph of '{owner}'", node=owner, op=op_of.get(owner),
                                           tensor=name, axis=sp.axis, kind=BY_DESIGN))
        self._apply_excludes()

    def _apply_excludes(self) -> None:
        pats = self.options.exclude
        if not pats:
            return
        for i, node in enumerate(self.view.nodes):
            name = self.view.names[i]
            hit = next((p for p in pats if fnmatch.fnmatchcase(name, p)), None)
            if hit is None:
                continue
            tensors = [t for t in node.input if t and self.view.is_constant(t)] + [t for t in node.output if t]
            for t in tensors:
                for sp in self.spaces.of_tensor(t):
                    self.freeze(sp.id, Refusal(f"excluded by --exclude '{hit}' (node '{name}')", node=name,
                                               op=qualified_op(node), tensor=t, axis=sp.axis, kind=BY_DESIGN))
        for name in self.view.initializers:
            hit = next((p for p in pats if fnmatch.fnmatchcase(name, p)), None)
            if hit is None:
                continue
            for sp in self.spaces.of_tensor(name):
                self.freeze(sp.id, Refusal(f"excluded by --exclude '{hit}' (initializer '{name}')", tensor=name,
                                           axis=sp.axis, kind=BY_DESIGN))
        # Constants seen through Transpose/Cast: freeze the tensor the consuming node sees as well.

    def components(self) -> np.ndarray:
        u = np.concatenate(self.ties_u) if self.ties_u else np.zeros(0, np.int64)
        v = np.concatenate(self.ties_v) if self.ties_v else np.zeros(0, np.int64)
        return connected_components(self.spaces.total, u, v)

    def analyze(self) -> Analysis:
        self.run_pass("A")
        roots = self.components()
        weight_roots = np.zeros(self.spaces.total, dtype=bool)
        for r in self.roles:
            if r.weight:
                sp = self.spaces.spaces[r.space]
                weight_roots[roots[sp.offset:sp.offset + sp.size]] = True
        self._channel_like = self._reaches(roots, weight_roots)
        for what in ATTENTION_MARKS:
            marked = np.zeros(self.spaces.total, dtype=bool)
            for sid, whats in self.marks.items():
                if what in whats:
                    sp = self.spaces.spaces[sid]
                    marked[roots[sp.offset:sp.offset + sp.size]] = True
            self._attention[what] = self._reaches(roots, marked)
        kept = np.zeros(self.spaces.total, dtype=bool)
        for sid in self.reasons:
            sp = self.spaces.spaces[sid]
            kept[roots[sp.offset:sp.offset + sp.size]] = True
        self._kept_in_a = self._reaches(roots, kept)
        self.run_pass("B")
        roots = self.components()
        return self._build(roots)

    def _reaches(self, roots: np.ndarray, hit_roots: np.ndarray) -> np.ndarray:
        """Per space: does any of its elements belong to a hit component."""
        return np.array([bool(hit_roots[roots[sp.offset:sp.offset + sp.size]].any()) for sp in self.spaces.spaces],
                        dtype=bool)

    # ---- reading off groups -------------------------------------------------------------------------
    def _build(self, roots: np.ndarray) -> Analysis:
        spaces = self.spaces
        sid = spaces.space_of_element()
        # (root, space) incidence, unique.
        key = roots * len(spaces.spaces) + sid if spaces.spaces else roots
        uniq = sorted_unique(key)
        inc_root = uniq // max(len(spaces.spaces), 1)
        inc_space = uniq % max(len(spaces.spaces), 1)
        # Group units by their set of spaces (their signature).
        order = np.lexsort((inc_space, inc_root))
        inc_root, inc_space = inc_root[order], inc_space[order]
        bounds = np.flatnonzero(np.diff(inc_root)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(inc_root)]])
        elem_reason: dict[int, Refusal] = {}
        for elements, why in self.frozen_elements:
            for r in sorted_unique(roots[elements]).tolist():
                elem_reason.setdefault(r, why)
        # Units split by the sentence that freezes their elements; the first refusal saying it speaks for all.
        sig_units: dict[tuple, list[int]] = {}
        sig_refusal: dict[tuple, Refusal | None] = {}
        for s, e in zip(starts, ends):
            root = int(inc_root[s])
            why = elem_reason.get(root)
            sig = (tuple(inc_space[s:e].tolist()), None if why is None else str(why))
            sig_units.setdefault(sig, []).append(root)
            sig_refusal.setdefault(sig, why)

        role_by_space: dict[int, list[Role]] = {}
        for r in self.roles:
            role_by_space.setdefault(r.space, []).append(r)

        # Which group each unit root falls in: "is this space all ours" becomes one gather, not an isin.
        root_group = np.full(len(roots), -1, dtype=np.int64)
        for gi, units in enumerate(sig_units.values()):
            root_group[units] = gi
        groups: list[Group] = []
        for key, units in sig_units.items():
            units_arr = np.array(units, dtype=np.int64)
            g = self._make_group(len(groups), list(key[0]), units_arr, roots, role_by_space, sig_refusal[key],
                                 root_group)
            groups.append(g)
        groups.sort(key=lambda g: min(g.spaces))
        for i, g in enumerate(groups):
            g.id = i
        self._unique_keys(groups, roots)
        channel = [g for g in groups if g.nodes]
        return Analysis(self.view, spaces, roots, self.roles, groups, channel, self.reasons,
                        list(self.internal_errors))

    def _unique_keys(self, groups: list[Group], roots: np.ndarray) -> None:
        """Plans name groups by key, so a key must name one group. Groups with no space of their own can
        share an anchor (overlapping Slices, a single kept channel beside the rest): tell them apart by the
        position of their first unit in it, which is as stable as the anchor."""
        by_key: dict[str, list[Group]] = {}
        for g in groups:
            by_key.setdefault(g.key, []).append(g)
        for key, same in by_key.items():
            if len(same) < 2:
                continue
            tensor, _, axis = key.rpartition(":")
            sp = self.spaces.get(tensor, int(axis))
            r = roots[sp.offset:sp.offset + sp.size]
            for g in same:
                g.key = f"{key}@{int(np.flatnonzero(np.isin(r, g.units))[0])}"

    def _make_group(self, gid, sig, units, roots, role_by_space, elem_why=None, root_group=None) -> Group:
        spaces = [self.spaces.spaces[s] for s in sig]
        unit_set = units
        # Anchor: the smallest space whose every element belongs to this group (exclusive), else smallest.
        def exclusive(sp):
            if root_group is not None:
                return bool((root_group[roots[sp.offset:sp.offset + sp.size]] == gid).all())
            return np.isin(roots[sp.offset:sp.offset + sp.size], unit_set).all()

        cands = sorted(spaces, key=lambda sp: (sp.size, sp.id))
        anchor = next((sp for sp in cands if exclusive(sp)), cands[0])
        r = roots[anchor.offset:anchor.offset + anchor.size]
        # Order units by their first element in the anchor.
        first = {}
        for pos, root in enumerate(r.tolist()):
            first.setdefault(root, pos)
        ordered = np.array(sorted(unit_set.tolist(), key=lambda u: first.get(u, 1 << 60)), dtype=np.int64)

        reasons, silent_reasons = ([elem_why] if elem_why else []), []
        for sp in spaces:
            for why, silent in self.reasons.get(sp.id, []):
                (silent_reasons if silent else reasons).append(why)
        frozen = bool(reasons or silent_reasons)
        shown = distinct_by_text(reasons or silent_reasons)[:3]

        nodes, producers, consumers = [], [], []
        for sp in spaces:
            for role in role_by_space.get(sp.id, []):
                if not role.weight:
                    continue
                nm = self.view.names[role.node]
                if nm not in nodes:
                    nodes.append(nm)
                (producers if role.kind == "producer" else consumers).append(nm)
        # Channels per unit in data spaces decide what --round-to can promise.
        per_unit = [sp.size // max(len(units), 1) for sp in spaces if not sp.constant and exclusive(sp)]
        mult = min(per_unit) if per_unit else 1
        kind, structure = self._kind(spaces, role_by_space)
        return Group(gid, anchor.key, ordered, list(sig), frozen, shown, nodes,
                     list(dict.fromkeys(producers)), list(dict.fromkeys(consumers)), max(mult, 1), kind, structure)

    def _kind(self, spaces, role_by_space) -> tuple[str, str]:
        """(kind, structure): what the units are, for per-kind ratios, read from the structure: an axis marked
        as an attention head (or head dim) by Q·Kᵀ / softmax·V is "head"; a normalised axis is "hidden"; units
        that linear layers produce and linear layers consume (an MLP's hidden neurons, however the layers are
        fused) are "mlp"; the rest (convolutions, a linear layer's output that no linear layer reads) are
        "channel". ``structure`` is the same answer without the "hidden" precedence, heads told apart from
        the dimensions inside them."""
        marks = set().union(*(self.marks.get(sp.id, ()) for sp in spaces))
        structure = self._structure(spaces, role_by_space, marks)
        kind = "hidden" if "hidden" in marks else ("head" if structure in ATTENTION_MARKS else structure)
        return kind, structure

    def _structure(self, spaces, role_by_space, marks) -> str:
        """"head" / "head_dim" (the attention marks, heads first), "mlp" or "channel"."""
        for mark in ATTENTION_MARKS:
            if mark in marks:
                return mark
        produced, consumed, conv = False, False, False
        for sp in spaces:
            for role in role_by_space.get(sp.id, []):
                if not role.weight:
                    continue
                op = self.view.nodes[role.node].op_type
                if op in ("LSTM", "GRU", "RNN"):
                    conv = True  # a recurrent hidden size (its gate blocks included) is channels, not MLP neurons
                elif op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
                    # A depthwise conv inside an MLP (SegFormer's Mix-FFN) only produces: it stays an MLP.
                    conv = conv or role.kind == "consumer"
                elif role.kind == "producer":
                    produced = True
                else:
                    consumed = True
        return "mlp" if produced and consumed and not conv else "channel"


def analyze(model_or_view, options: AnalysisOptions | None = None) -> Analysis:
    """Find the groups of coupled channels of a model (ModelProto or GraphView)."""
    from . import rules  # noqa: F401 - registers the op rules

    options = options or AnalysisOptions()
    view = model_or_view if isinstance(model_or_view, GraphView) else GraphView(model_or_view, options.input_shapes)
    return _Analyzer(view, options).analyze()


__all__ = ["Analysis", "AnalysisOptions", "Group", "analyze"]
