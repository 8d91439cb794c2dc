"""`graphprune bench ORIGINAL PRUNED`: ONNX Runtime latency of two models, measured interleaved.

Both sessions are built first (same options: intra-op threads = cores unless told, all graph optimisations),
warmed up, then run alternately in ABBA order of blocks (a few runs of the original, of the pruned, of the
pruned, of the original, ...) so that a noisy machine's drift (other jobs, frequency scaling, thermal state)
lands on both models alike. The first run of each block is not counted: it pays for the switch (caches filled
by the other model), and a model in service runs warm. Intra-op thread spinning is off: in an interleaved
measurement the idle session's spinning threads take the cores from the running one (ResNet-50 at batch 1
went from 57 to 97 ms with it on, which hides most of a pruned model's speedup). The result is the median
latency of each and their ratio; speedups should only be compared within one run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .core.runtime import concrete_input_shapes, synthetic_inputs
from .errors import ModelError, UsageError, first_line


@dataclass
class Timing:
    path: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    optimized_ops: dict | None = None  # op counts of ORT's optimized graph (with --ops)


@dataclass
class BenchResult:
    original: Timing
    pruned: Timing
    speedup: float  # median(original) / median(pruned)
    paired_speedup: float  # median over rounds of original/pruned (robust to slow drift)
    threads: int
    warmup: int
    repeat: int
    input_shapes: dict
    provider: str = "CPUExecutionProvider"
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _session(path: str, threads: int, optimized_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from None


def optimized_op_counts(path: str, threads: int = 1) -> dict:
    """Op counts ({domain::op: n}) of the graph ONNX Runtime runs after its optimisations (fusions)."""
    with tempfile.TemporaryDirectory(prefix="graphprune-bench-") as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        _session(path, threads, out)
        m = onnx.load(out, load_external_data=False)
        return dict(sorted(Counter((f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                                   for n in m.graph.node).items()))


def _feeds(path: str, input_shapes: dict, batch: int | None, seed: int) -> tuple[dict, dict]:
    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    inputs = [vi for vi in m.graph.input if vi.name not in inits]
    unknown = sorted(set(input_shapes) - {vi.name for vi in inputs})
    if unknown:
        raise UsageError(f"--input-shape names '{unknown[0]}', which is not an input of {path}")
    shapes = dict(input_shapes)
    if batch is not None:
        for vi in inputs:
            if vi.name in shapes or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
                shapes[vi.name] = [batch] + [None] * (len(dims) - 1)
    concrete = concrete_input_shapes(m, {k: v for k, v in shapes.items() if None not in v})
    for name, dims in shapes.items():  # --batch only fixes axis 0; other dims as concrete_input_shapes says
        if None in dims:
            concrete[name] = [d if d is not None else c for d, c in zip(dims, concrete[name])]
    del m.graph.initializer[:]  # synthetic_inputs only reads the inputs' types
    return synthetic_inputs(m, concrete, seed=seed), concrete


def _timing(path: str, times: list[float], ops: dict | None) -> Timing:
    ms = np.asarray(times) * 1e3
    return Timing(path, round(float(np.median(ms)), 4), round(float(np.percentile(ms, 10)), 4),
                  round(float(np.percentile(ms, 90)), 4), round(float(ms.min()), 4), len(ms), ops)


def bench(original, pruned, *, input_shapes: dict | None = None, batch: int | None = None,
          threads: int | None = None, warmup: int = 5, repeat: int = 30, seed: int = 0,
          ops: bool = False, min_seconds: float = 0.0, block: int = 3) -> BenchResult:
    """Interleaved ONNX Runtime CPU latency of two models (paths) on the same synthetic inputs.

    `batch` fixes a dynamic axis 0 of every input; `input_shapes` fixes whole inputs ({name: dims}).
    `repeat` rounds are run (each one block of `block` runs of each model, the first of a block not counted
    when block > 1), more if `min_seconds` has not passed yet.
    """
    original, pruned = os.fspath(original), os.fspath(pruned)
    for p in (original, pruned):
        if not Path(p).is_file():
            raise ModelError(f"{p}: no such file")
    if warmup < 0 or repeat < 1 or block < 1:
        raise UsageError("--warmup must be >= 0, --repeat and --block >= 1")
    if batch is not None and batch < 1:
        raise UsageError("--batch must be >= 1")
    threads = threads or os.cpu_count() or 1
    feeds, shapes = _feeds(original, input_shapes or {}, batch, seed)
    sessions = [_session(original, threads), _session(pruned, threads)]
    for s, p in zip(sessions, (original, pruned)):
        want = {i.name for i in s.get_inputs()}
        if want != set(feeds):
            raise UsageError(f"{p}: inputs {sorted(want)} differ from the original's {sorted(feeds)}")
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feeds)
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    r = 0
    while r < repeat or time.perf_counter() - start < min_seconds:
        order = (0, 1) if r % 2 == 0 else (1, 0)  # ABBA: drift hits both models alike
        for k in order:
            for j in range(block):
                t = time.perf_counter()
                sessions[k].run(None, feeds)
                if j or block == 1:
                    times[k].append(time.perf_counter() - t)
        r += 1
    del sessions
    op_counts = [optimized_op_counts(p, threads) for p in (original, pruned)] if ops else [None, None]
    a, b = _timing(original, times[0], op_counts[0]), _timing(pruned, times[1], op_counts[1])
    paired = statistics.median(x / y for x, y in zip(times[0], times[1]))
    notes = []
    if op_counts[0] is not None:
        lost = {op: (n, op_counts[1].get(op, 0)) for op, n in op_counts[0].items()
                if op_counts[1].get(op, 0) < n and op not in ("Shape", "Gather", "Unsqueeze", "Concat")}
        if lost:
            notes.append("fewer ops of these kinds after pruning (a lost fusion, or a removed shape computation): "
                         + ", ".join(f"{op} {n}->{m}" for op, (n, m) in lost.items()))
    return BenchResult(a, b, round(a.median_ms / b.median_ms, 4), round(paired, 4), threads, warmup, r,
                       {k: list(v) for k, v in shapes.items()}, notes=notes)


def format_result(res: BenchResult) -> str:
    lines = [f"{'model':<10} {'median ms':>10} {'p10 ms':>9} {'p90 ms':>9} {'runs':>5}  path"]
    for label, t in (("original", res.original), ("pruned", res.pruned)):
        lines.append(f"{label:<10} {t.median_ms:>10.3f} {t.p10_ms:>9.3f} {t.p90_ms:>9.3f} {t.runs:>5}  {t.path}")
    lines.append(f"speedup {res.speedup:.3f}x (median of paired rounds {res.paired_speedup:.3f}x), "
                 f"{res.threads} intra-op threads, {res.warmup} warm-up runs, inputs "
                 + ", ".join(f"{k}={v}" for k, v in res.input_shapes.items()))
    if res.original.optimized_ops is not None:
        ops = sorted(set(res.original.optimized_ops) | set(res.pruned.optimized_ops))
        lines.append("ONNX Runtime optimized graph, op counts (original -> pruned):")
        lines.append("  " + ", ".join(f"{op} {res.original.optimized_ops.get(op, 0)}->{res.pruned.optimized_ops.get(op, 0)}"
                                      for op in ops))
    lines.extend(f"note: {n}" for n in res.notes)
    return "\n".join(lines)
