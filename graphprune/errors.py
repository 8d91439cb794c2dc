"""Error types: every failure a user can cause ends in one of these, with a one-line message."""

import string


class GraphpruneError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 1


class UsageError(GraphpruneError):
    """Bad option values or an impossible combination of options (CLI exit code 2)."""

    exit_code = 2


class OptionError(UsageError):
    """A bad option value or combination, naming each option the way the caller wrote it.

    The message is a template: `{ratio}` names a field, `{target:channels}` a field with a value, and the
    other placeholders are the keyword values given. From Python it reads `ratio= must be ...` and
    `target='channels'`; the CLI renders it as `--ratio must be ...` and `--target channels` (`render`).
    """

    def __init__(self, template: str, **values):
        self.template = template
        self.values = values
        super().__init__(self.render(python_name))

    @property
    def fields(self) -> tuple[str, ...]:
        """The option fields the message names, in order."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.template)
                     if name and name not in self.values)

    def render(self, name_of) -> str:
        """The message with every field named by `name_of(field, value_text)` (value_text may be '')."""
        return self.template.format_map(_Placeholders(self.values, name_of))


def python_name(field: str, value: str) -> str:
    """How a Python caller writes an option: `ratio=`, or `target='channels'` / `global_pruning=True`."""
    if not value:
        return f"{field}="
    return f"{field}={value}" if value in ("True", "False", "None") else f"{field}={value!r}"


class _Placeholders(dict):
    """The template's values; any other placeholder is a field, rendered by `name_of`."""

    def __init__(self, values: dict, name_of):
        super().__init__(values)
        self.name_of = name_of

    def __missing__(self, field: str):
        return _FieldName(field, self.name_of)


class _FieldName:
    def __init__(self, field: str, name_of):
        self.field, self.name_of = field, name_of

    def __format__(self, value: str) -> str:
        return self.name_of(self.field, value)


class ModelError(GraphpruneError):
    """The input model cannot be read or is not a valid ONNX model."""


class ValidationError(GraphpruneError):
    """The pruned model failed validation; nothing was written."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message reduced to its first line (at most `limit` characters), or its type name:
    what the one-line error messages quote of a library's long, multi-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
