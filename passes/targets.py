"""Meeting a --target: per-group removal counts searched so that the removed fraction of the channels,
parameters or MACs lands within TOLERANCE of the ratio asked; where it cannot, the most that can be removed,
and what stops the rest (frozen groups, with the share of the cost each reason holds; --max-ratio, --min-keep,
--round-to).

The search works on counts (how many of each group's units go, lowest scored first) and measures every
candidate cut exactly (`Measure`: analysis/costs.CostModel for parameters and MACs, unit counts for
channels). A group's allowed counts (`removal_steps`) respect --max-ratio, --min-keep and --round-to, which
is why one common ratio overshoots or undershoots: rounding moves each group by whole blocks. Scores come in
per unit, already comparable across groups; a per-group weighting plugs in by scaling a group's scores.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np

from graphprune.errors import OptionError

TOLERANCE = 0.02  # a target is met when the achieved fraction is within this of the one asked
AIM = 0.005  # the search stops adjusting groups once this close
UNIFORM_KEEP = 0.01  # a uniform cut (one common ratio) this close to the target is kept as it is
POLISH_LIMIT = 4096  # combinations of counts few enough to measure every one
MENTION = 0.001  # reasons holding less of the cost than this are not listed
REBALANCE_BUDGET = 1000  # cuts `rebalance` measures per round (it narrows its window for many groups)


def group_round_to(g, round_to: int | str) -> int:
    """The channel multiple a group's kept count is rounded to. Whole heads are never rounded (--round-to
    is about channel counts). "auto" (the default) is 16 in groups of at least 32 channels and 8 in groups of
    16 to 31: vectorised CPU kernels work on blocks of channels (ONNX Runtime's NCHWc layout: 8 with AVX2,
    16 with AVX-512) and fall back to slower kernels, with layout conversions around them, for counts that
    are not a multiple; GPU tensor cores want multiples of 8. benchmarks/results/speed.md measured it."""
    if g.kind == "head":
        return 1
    if round_to != "auto":
        return int(round_to)
    channels = g.size * g.round_multiple
    return 16 if channels >= 32 else 8 if channels >= 16 else 1


def quantum(g, round_to: int | str) -> int:
    """The number of units a group's kept count is a multiple of (1: any count): --round-to counts channels,
    and a unit may hold several (g.round_multiple); a group narrower than one block is not rounded."""
    rt = group_round_to(g, round_to)
    q = rt // math.gcd(rt, g.round_multiple) if rt > 1 else 1
    return q if q > 1 and g.size >= q else 1


def removal_steps(g, max_ratio: float | None, round_to: int | str, min_keep: int) -> np.ndarray:
    """The removal counts a group allows, ascending from 0: at least one unit and min_keep kept, at most
    max_ratio removed, and a kept count that is a multiple of the group's quantum (or the whole group)."""
    n = g.size
    floor_keep = max(1, min(min_keep, n))
    if max_ratio is not None:
        floor_keep = max(floor_keep, n - math.floor(n * max_ratio + 1e-9))
    q = quantum(g, round_to)
    if q > 1:
        keeps = np.append(np.arange(max(q, -(-floor_keep // q) * q), n, q), n)
    else:
        keeps = np.arange(floor_keep, n + 1)
    return np.sort(n - keeps).astype(np.int64)


class Measure:
    """The removed fraction of the model's cost (a CostModel) or, without one, of the groups' units, as a
    function of per-group counts: group i loses the first counts[i] units of orders[i]."""

    def __init__(self, analysis, groups, orders, cost=None):
        self.groups, self.cost = list(groups), cost
        self.sizes = np.array([g.size for g in self.groups], dtype=np.int64)
        self._n_ids = analysis.id_count + 1
        if self.groups:
            self._units = np.concatenate([g.units[np.asarray(o, dtype=np.int64)] for g, o in zip(self.groups, orders)])
            self._rank = np.concatenate([np.arange(g.size) for g in self.groups])
            self._gid = np.concatenate([np.full(g.size, i) for i, g in enumerate(self.groups)])
        else:
            self._units = self._rank = self._gid = np.zeros(0, dtype=np.int64)

    def mask(self, counts) -> np.ndarray:
        """The removed units as a boolean mask over unit ids (what CostModel and Cut read)."""
        out = np.zeros(self._n_ids, dtype=bool)
        out[self._units[self._rank < np.asarray(counts, dtype=np.int64)[self._gid]]] = True
        return out

    def __call__(self, counts) -> float:
        if self.cost is None:
            total = int(self.sizes.sum())
            return float(np.sum(counts)) / total if total else 0.0
        return self.cost.removed_fraction(self.mask(counts))


def most(steps) -> np.ndarray:
    """Every group at its largest allowed removal: the most any cut under these limits removes."""
    return np.array([s[-1] for s in steps], dtype=np.int64)


def _floor(steps: np.ndarray, c: int) -> int:
    return int(steps[np.searchsorted(steps, c, "right") - 1])


def _closest(measure, ratio: float, a, b):
    return a if abs(measure(a) - ratio) < abs(measure(b) - ratio) else b


def search_uniform(measure, ratio: float, steps, scores, counts_at, aim: float = AIM) -> np.ndarray:
    """Counts for uniform allocation. The cut at `ratio` itself, where it comes within UNIFORM_KEEP of the
    target (every group then loses the same fraction); else the common per-group ratio whose cut comes
    closest (bisected), kept as well when that close; else groups adjusted from there (`settle`), first
    without emptying a group the ratio itself cuts, and only if that cannot meet the target, freely.
    `counts_at(r)`: the counts of a common ratio r, rounded."""
    plain = counts_at(ratio)
    if abs(measure(plain) - ratio) <= UNIFORM_KEEP:
        return plain
    top = most(steps)
    if measure(top) <= ratio:
        return top  # not reachable (or only just): the most there is
    lo, hi = 0.0, 0.999
    if measure(counts_at(hi)) >= ratio:
        for _ in range(40):
            mid = (lo + hi) / 2
            if measure(counts_at(mid)) >= ratio:
                hi = mid
            else:
                lo = mid
        start = _closest(measure, ratio, counts_at(lo), counts_at(hi))
    else:
        start = counts_at(hi)
    if abs(measure(start) - ratio) <= UNIFORM_KEEP:
        return start
    cut = [st[st > 0] if c > 0 and st[-1] > 0 else st for st, c in zip(steps, plain)]
    kept_cut = settle(measure, ratio, cut, scores, [max(int(c), int(st[0])) for c, st in zip(start, cut)], aim)
    if abs(measure(kept_cut) - ratio) <= TOLERANCE:
        return kept_cut
    free = settle(measure, ratio, steps, scores, start, aim)
    return _closest(measure, ratio, kept_cut, free)


def search_global(measure, ratio: float, steps, scores, aim: float = AIM) -> np.ndarray:
    """Counts for global allocation: the shortest prefix of one ranking of all units (`scores`, ascending
    within each group) whose cut, each group rounded down to an allowed count, reaches `ratio` (or the prefix
    just before it, whichever is closer), then groups adjusted (`settle`)."""
    top = most(steps)
    if not len(steps) or measure(top) <= ratio:
        return top
    flat = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    gid = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    ranked = gid[np.argsort(flat, kind="stable")]

    def at(k: int) -> np.ndarray:
        c = np.bincount(ranked[:k], minlength=len(steps))
        return np.array([_floor(st, int(x)) for st, x in zip(steps, c)], dtype=np.int64)

    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi) // 2
        if measure(at(mid)) >= ratio:
            hi = mid
        else:
            lo = mid + 1
    counts = _closest(measure, ratio, at(max(lo - 1, 0)), at(lo))
    return settle(measure, ratio, steps, scores, counts, aim)


def refine(measure, ratio: float, steps, scores, counts, aim: float = AIM, swaps: int = 12) -> np.ndarray:
    """Move single groups one allowed step at a time until the cut is within `aim` of `ratio`: below it, the
    group whose next units have the lowest mean score loses them; above it, the group whose last removed
    units score highest gets them back. When no single step helps (every one overshoots further), one group
    steps up while another steps down (among the `swaps` best placed of each). Each accepted move brings the
    cut strictly closer, so this ends; it stops when no move helps."""
    counts = np.array(counts, dtype=np.int64)
    got = measure(counts)
    while abs(got - ratio) > aim:
        ups, downs = _moves(steps, scores, counts, True), _moves(steps, scores, counts, False)
        tries = [((i, to),) for _, i, to in (ups if got < ratio else downs)]
        tries += [((i, a), (j, b)) for _, i, a in ups[:swaps] for _, j, b in downs[:swaps] if i != j]
        for moves in tries:
            trial = counts.copy()
            for i, to in moves:
                trial[i] = to
            new = measure(trial)
            if abs(new - ratio) < abs(got - ratio) - 1e-12:
                counts, got = trial, new
                break
        else:
            break
    return counts


def settle(measure, ratio: float, steps, scores, counts, aim: float = AIM) -> np.ndarray:
    """`refine`, then, where that leaves the cut further than `aim` (no single move or swap helps, a
    combination of several would), every combination when there are few (`polish`), else `rebalance`."""
    counts = refine(measure, ratio, steps, scores, counts, aim)
    if abs(measure(counts) - ratio) <= aim:
        return counts
    if math.prod(len(s) for s in steps) <= POLISH_LIMIT:
        return polish(measure, ratio, steps, scores, counts, aim)
    return refine(measure, ratio, steps, scores, rebalance(measure, ratio, steps, scores, counts, aim), aim)


def rebalance(measure, ratio: float, steps, scores, counts, aim: float = AIM, window: int = 4,
              rounds: int = 4) -> np.ndarray:
    """Several groups moved at once: each group's effect of moving to any of its `window` nearest steps is
    measured alone, and the moves are combined as if these effects added up (a knapsack over the change
    still needed: among the combinations within `aim`, the fewest groups moved, then the lowest score
    removed; else the closest); the combination is then measured exactly. Repeated from there (`rounds`;
    the effects of moves in neighbouring groups do not quite add up, so a combination may land off and the
    next corrects it); the closest cut measured wins."""
    cum = [np.concatenate([[0.0], np.cumsum(s)]) for s in scores]
    scale = 1.0 + sum(float(np.abs(s).sum()) for s in scores)  # the score part of a penalty stays below 1
    counts = np.array(counts, dtype=np.int64)
    got = measure(counts)
    best, best_got = counts, got
    res = aim / 4  # the knapsack's resolution
    span = int(math.ceil(1.0 / res))
    window = min(window, REBALANCE_BUDGET // (2 * max(len(steps), 1)))  # measurements per round, bounded
    for _ in range(rounds if window >= 1 else 0):
        if abs(got - ratio) <= aim:
            break
        options = []
        for i, (st, c) in enumerate(zip(steps, counts)):
            here = int(np.searchsorted(st, c))
            near = [int(x) for x in st[max(0, here - window):here + window + 1] if x != c]
            opts = [(0, 0.0, int(c))]
            for to in near:
                trial = counts.copy()
                trial[i] = to
                pen = 1.0 + float(cum[i][to] - cum[i][c]) / scale  # fewest groups moved, then the lowest score
                opts.append((int(round((measure(trial) - got) / res)), pen, to))
            options.append(opts)
        # table[b]: the lowest score removed by moves that change the cut by (b - span) * res
        table = np.full(2 * span + 1, np.inf)
        table[span] = 0.0
        pick = []
        for opts in options:
            new, arg = np.full_like(table, np.inf), np.zeros(len(table), dtype=np.int64)
            for k, (d, pen, _) in enumerate(opts):
                shifted = np.full_like(table, np.inf)
                if d >= 0:
                    shifted[d:] = table[:len(table) - d]
                else:
                    shifted[:d] = table[-d:]
                better = shifted + pen < new
                new[better], arg[better] = shifted[better] + pen, k
            table = new
            pick.append(arg)
        want = span + int(round((ratio - got) / res))
        reach = np.flatnonzero(np.isfinite(table))
        close = reach[np.abs(reach - want) * res <= aim]
        b = int(close[np.argmin(table[close])]) if len(close) else int(reach[np.argmin(np.abs(reach - want))])
        trial = counts.copy()
        for i in range(len(options) - 1, -1, -1):
            d, _, to = options[i][pick[i][b]]
            trial[i] = to
            b -= d
        if np.array_equal(trial, counts):
            break
        counts, got = trial, measure(trial)  # from here, even when not closer: the effects are re-measured
        if abs(got - ratio) < abs(best_got - ratio) - 1e-12:
            best, best_got = counts, got
    return best


def polish(measure, ratio: float, steps, scores, counts, aim: float = AIM) -> np.ndarray:
    """The best of every combination of counts the groups allow (at most POLISH_LIMIT of them: a few narrow
    groups): within `aim` of the ratio with the lowest total score removed, else the closest; `counts`
    when none is better."""
    got = abs(measure(counts) - ratio)
    cum = [np.concatenate([[0.0], np.cumsum(s)]) for s in scores]  # score removed by each count
    best, best_key = counts, (got > aim, got, 0.0)
    for combo in itertools.product(*steps):
        miss = abs(measure(combo) - ratio)
        key = (miss > aim, miss if miss > aim else 0.0, float(sum(c[k] for c, k in zip(cum, combo))))
        if key < best_key:
            best, best_key = np.array(combo, dtype=np.int64), key
    return best


def _moves(steps, scores, counts, up: bool) -> list[tuple[float, int, int]]:
    """(key, group, new count) of every group's next allowed step up (or down), best first: up, the
    lowest mean score of the units it removes; down, the highest of the units it gives back."""
    out = []
    for i, (st, c) in enumerate(zip(steps, counts)):
        j = np.searchsorted(st, c, "right") if up else np.searchsorted(st, c, "left") - 1
        if not 0 <= j < len(st):
            continue
        to = int(st[j])
        lo, hi = min(c, to), max(c, to)
        s = float(np.mean(scores[i][lo:hi])) if hi > lo else 0.0
        out.append((s if up else -s, i, to))
    out.sort()
    return out


# ---- what the target came to, and why ----------------------------------------------------------------
NOUNS = {"macs": "MACs", "params": "parameters", "channels": "prunable channels"}
NO_AXIS = {"macs": "MACs on no channel axis", "params": "weights with no channel axis"}
LIMITS = ("max_ratio", "min_keep", "round_to")


def assess(what: str, asked: float, achieved: float, reachable: float, setting: list) -> dict:
    """The target's record in the allocation info (reasons are added by `explain` when it is missed).
    `setting`: the (option, value) pairs that asked for it, for the message."""
    return {"what": what, "asked": round(asked, 4), "achieved": round(achieved, 4),
            "reachable_max": round(reachable, 4), "met": bool(abs(achieved - asked) <= TOLERANCE),
            "setting": [list(p) for p in setting], "reasons": []}


def explain(t: dict, analysis, measure, steps_with, limits: dict, retry=None) -> None:
    """Fill t["reasons"] for a missed target, largest first: the frozen groups' reasons, each with the share
    of the cost it holds (what no cut of the prunable units can remove), then each limit that binds, with
    what relaxing it alone would add to the reachable maximum; a target within reach but missed says the
    allowed steps are too coarse, and what the search reaches with exact counts (`retry(round_to=1)`, the
    fraction it achieves). `steps_with(**limits)` gives the groups' steps under other limits."""
    if t["reachable_max"] + TOLERANCE >= t["asked"]:  # within reach: the allowed steps are too coarse
        steps = {"kind": "steps", "why": "no cut the allowed channel counts give is closer",
                 "share": round(abs(t["achieved"] - t["asked"]), 4)}
        if limits.get("round_to") not in (None, 1):
            steps["option"], steps["value"] = "round_to", limits["round_to"]
            if retry is not None:
                steps["without"] = round(retry(round_to=1), 4)
        t["reasons"] = [steps]
        return
    reasons, fixed = [], 0.0
    if measure.cost is not None:
        fixed, reasons = frozen_shares(analysis, measure.cost, measure.groups, t["what"])
    if not measure.groups:
        t["reasons"] = reasons or [{"kind": "frozen", "why": "every channel group is frozen", "like": 0,
                                    "share": 1.0}]
        return
    reach = t["reachable_max"]
    for name in LIMITS:
        value = limits[name]
        if value is None or (name == "min_keep" and value <= 1) or (name == "round_to" and value == 1):
            continue
        relaxed = dict(limits, **{name: {"max_ratio": None, "min_keep": 1, "round_to": 1}[name]})
        gain = measure(most(steps_with(**relaxed))) - reach
        if gain >= MENTION:
            reasons.append({"kind": "limit", "option": name, "value": value, "share": round(gain, 4)})
    one = (1.0 - fixed) - measure(most(steps_with(max_ratio=None, min_keep=1, round_to=1)))
    if one >= 5 * MENTION:
        reasons.append({"kind": "limit", "why": "the one channel every group keeps", "share": round(one, 4)})
    t["reasons"] = sorted(reasons, key=lambda r: (r.get("other", False), -r["share"]))


def frozen_shares(analysis, cost, prunable, what: str, top: int = 4) -> tuple[float, list[dict]]:
    """The cost no cut of the prunable groups can remove, in total and per reason: the first refusal of each
    frozen group, refusals that differ only in the names they quote counted together (`like`: how many other
    sentences; `why`: the one holding most); groups that touch no weight and terms on no channel axis get rows
    of their own. The `top` largest rows, then the rest summed in one (`other`)."""
    movable = np.zeros(analysis.id_count + 1, dtype=bool)
    channel = np.zeros(analysis.id_count + 1, dtype=bool)
    label = np.zeros(analysis.id_count + 1, dtype=np.int64)
    names: dict[str, int] = {}
    keys = {g.key for g in prunable}
    for g in analysis.channel_groups:
        channel[g.units] = True
    for g in analysis.groups:
        if g.key in keys:
            movable[g.units] = True
            continue
        why = g.reasons[0] if g.reasons and channel[g.units[0]] else "touches no weight to cut"
        label[g.units] = names.setdefault(why, len(names))
    fixed, shares = cost.fixed_shares(movable, label, len(names), channel)
    by_pattern: dict[str, list[tuple[float, str]]] = {}
    for why, i in names.items():
        by_pattern.setdefault(_QUOTED.sub("'…'", why), []).append((float(shares[i]), why))
    rows = []
    for same in by_pattern.values():
        same.sort(key=lambda x: -x[0])
        rows.append({"kind": "frozen", "why": same[0][1], "like": len(same) - 1, "share": sum(x for x, _ in same)})
    if shares[-1]:
        rows.append({"kind": "frozen", "why": NO_AXIS[what], "like": 0, "share": float(shares[-1])})
    rows = sorted((r for r in rows if r["share"] >= MENTION), key=lambda r: -r["share"])
    if len(rows) > top:
        rest = rows[top:]
        rows = rows[:top] + [{"kind": "frozen", "why": "other reasons", "like": sum(r["like"] + 1 for r in rest) - 1,
                              "share": sum(r["share"] for r in rest), "other": True}]
    for r in rows:
        r["share"] = round(r["share"], 4)
    return fixed, rows


_QUOTED = re.compile(r"'[^']*'")


def _opt(name_of, name: str, value) -> str:
    """An option with its value as the caller writes it: `--ratio 0.3` / `ratio=0.3`."""
    if isinstance(value, str):
        return name_of(name, value)
    flag = name_of(name, "")
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{flag}{text}" if flag.endswith("=") else f"{flag} {text}"


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.095 else f"{x:.1%}"


def miss_lines(t: dict | None, name_of) -> list[str]:
    """One line per missed target (none when it was met; with per-kind ratios, one per missed ratio), naming
    options with `name_of` (errors.python_name or the CLI's cli_name): how far the cut could go, what holds
    the rest and how much of the cost each holds."""
    if not t or t["met"]:
        return []
    if "parts" in t:
        return [_miss_line(p, name_of) for p in t["parts"] if not p["met"]]
    return [_miss_line(t, name_of)]


def _miss_line(t: dict, name_of) -> str:
    ask = " ".join(_opt(name_of, k, v) for k, v in t["setting"])
    noun = NOUNS[t["what"]] + (f" of the {'/'.join(t['groups'])} groups" if t.get("groups") else "")
    frozen, parts = [], []
    for r in t["reasons"]:
        if r["kind"] == "frozen":
            like = f" (+{r['like']} like it)" if r.get("like") and not r.get("other") else ""
            why = r["why"] if r.get("other") else f'"{r["why"]}"'
            frozen.append(f"{_pct(r['share'])}{f' of the {noun}' if not frozen else ''} behind {why}{like}")
        elif r["kind"] == "limit":
            what = _opt(name_of, r["option"], r["value"]) if "option" in r else r["why"]
            parts.append(f"{what} holds {_pct(r['share'])}")
        elif r["kind"] == "steps":
            hint = ""
            if "option" in r:
                hint = f" ({_opt(name_of, r['option'], r['value'])}"
                hint += f"; with {_opt(name_of, r['option'], 1)}: {r['without']:.1%})" if "without" in r else ")"
            parts.append(r["why"] + hint)
    if frozen:
        parts.insert(0, "frozen: " + ", ".join(frozen))
    why = f" ({'; '.join(parts)})" if parts else ""
    if t["reachable_max"] + TOLERANCE < t["asked"]:
        return (f"{ask} is not reachable: at most {t['reachable_max']:.1%} of the {noun} can be removed{why}; "
                f"pruned {t['achieved']:.1%}")
    return f"{ask} was missed: pruned {t['achieved']:.1%} of the {noun}, asked {t['asked']:.1%}{why}"


class TargetError(OptionError):
    """--strict-target and the target was missed: a usage error (exit code 2); nothing is written."""

    def __init__(self, target: dict):
        self.target = target
        super().__init__("")

    def render(self, name_of) -> str:
        return (f"{'; '.join(miss_lines(self.target, name_of))} ({_opt(name_of, 'strict_target', 'True')} makes "
                "a missed target an error; no model written)")
