"""What the benchmark scripts share: their resumable raw-measurement caches, the CPU they ran on, and the
hand-written sections of a results file that survive regeneration."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def load_raw(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_raw(path: Path, raw: dict) -> None:
    """Atomically (an interrupted run resumes from the last complete measurement)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=1))
    os.replace(tmp, path)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def kept_section(path: Path, name: str) -> str:
    """The hand-written text between `<!-- name -->` and `<!-- /name -->` in the current results file, with
    the markers, so that regenerating the numbers around it keeps it."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    inner = text[text.index(start) + len(start):text.index(end)].strip("\n") if start in text and end in text else ""
    return f"{start}\n{inner}\n{end}\n"
