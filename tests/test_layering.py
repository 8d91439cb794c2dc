"""The package is layered one way: each module imports only from its own layer or the layers below it.

    errors, core/  ->  analysis/  ->  passes/ (graphprune.passes)  ->  options, report, pipeline
    ->  api, interop  ->  render, html_report, bench  ->  cli

Imports inside functions count too (they are how cycles used to hide); graphprune modules are imported
inside functions only where that keeps start-up light (the CLI, lazy package attributes, networkx).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    ("graphprune.errors", "graphprune.version", "graphprune.core"),
    ("graphprune.analysis",),
    ("graphprune.passes",),
    ("graphprune.options", "graphprune.report"),
    ("graphprune.pipeline",),
    ("graphprune.api", "graphprune.interop"),
    ("graphprune.render", "graphprune.html_report", "graphprune.bench"),
    ("graphprune.cli",),
    ("graphprune",),  # the package's lazy attributes reach everything
]
# Function-local imports of graphprune modules that are deliberate (start-up time, optional dependencies).
LOCAL_IMPORTS_ALLOWED = {"graphprune.cli", "graphprune.analysis.analyzer"}


def _modules():
    out = {}
    for path in sorted((ROOT / "graphprune").rglob("*.py")):
        if "passes" in path.relative_to(ROOT / "graphprune").parts:
            continue  # a symlink in some work trees; passes/ is read below
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = path
    for path in sorted((ROOT / "passes").glob("*.py")):
        out["graphprune.passes" + ("" if path.stem == "__init__" else "." + path.stem)] = path
    return out


MODULES = _modules()


def _layer(name: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"{name} is in no layer"
    return best[0]


def _imports(name: str, path: Path):
    """(imported graphprune module, inside a function?) for every import of a graphprune module."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    funcs = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[:len(parts) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from . import x` may name a submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            if t == "graphprune" or t.startswith("graphprune."):
                yield t, id(node) in funcs


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    mine = _layer(name)
    for target, local in _imports(name, MODULES[name]):
        assert _layer(target) <= mine, f"{name} (layer {mine}) imports {target} (layer {_layer(target)})"
        if local and name not in LOCAL_IMPORTS_ALLOWED and _layer(target) == mine and target != name:
            pytest.fail(f"{name} imports {target} inside a function (a hidden cycle?)")


def test_no_import_cycles():
    g = nx.DiGraph()
    for name, path in MODULES.items():
        g.add_node(name)
        for target, _ in _imports(name, path):
            if target in MODULES and target != name and not name == "graphprune":
                g.add_edge(name, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles[:3]


def test_import_graphprune_is_light():
    code = ("import sys, graphprune; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'networkx', 'onnx_graphsurgeon', "
            "'graphprune.api', 'graphprune.cli') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
