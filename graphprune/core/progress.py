"""Progress on long steps: a transient rich bar or spinner on stderr while a large model loads or saves,
and while a pruned model is validated.

Shown only when the CLI asked for it (`enable()`; not with --quiet or --json) and both stdout and stderr
are terminals: piped or redirected output, and the Python API, never see it. Transient: the line is
erased when the step ends, so what stays on screen is the report.
"""

from __future__ import annotations

import contextlib
import os
import sys

LARGE_FILE = 64 * 1024**2  # loads and saves of smaller models are too quick to show anything for

_enabled = False


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = bool(on)


def active() -> bool:
    if not _enabled or os.environ.get("GRAPHPRUNE_NO_PROGRESS"):
        return False
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


@contextlib.contextmanager
def step(description: str, total: int | None = None):
    """`with step("validating", total=4) as advance: ... advance()`; a spinner when `total` is None."""
    if not active():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def file_step(description: str, nbytes: int):
    """A step for reading or writing a file: shown only for large ones."""
    if nbytes < LARGE_FILE:
        return contextlib.nullcontext(lambda n=1: None)
    return step(f"{description} ({nbytes / 1024**2:.0f} MiB)")
