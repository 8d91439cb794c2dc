"""Error types: every failure a user can cause ends in one of these, with a one-line message."""


class GraphpruneError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 1


class UsageError(GraphpruneError):
    """Bad option values or an impossible combination of options (CLI exit code 2)."""

    exit_code = 2


class ModelError(GraphpruneError):
    """The input model cannot be read or is not a valid ONNX model."""


class ValidationError(GraphpruneError):
    """The pruned model failed validation; nothing was written."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message reduced to its first line (at most `limit` characters), or its type name:
    what the one-line error messages quote of a library's long, multi-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
