"""graphprune: structured pruning of ONNX graphs (find coupled channels, cut them, write a valid model)."""

import importlib  # noqa: E402

from .errors import GraphpruneError, ModelError, OptionError, UsageError, ValidationError  # noqa: E402
from .options import AnalyzeOptions, PruneOptions  # noqa: E402
from .version import __version__  # noqa: E402, F401

# Loaded on first use, so that `import graphprune` (and `graphprune --help`) does not import onnx.
_LAZY = {"PruneResult": ".api", "analyze": ".api", "prune": ".api", "Plan": ".analysis.plan",
         "load_model": ".core.io", "save_model": ".core.io"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["AnalyzeOptions", "GraphpruneError", "ModelError", "OptionError", "Plan", "PruneOptions",
           "PruneResult", "UsageError", "ValidationError", "analyze", "load_model", "prune", "save_model",
           "__version__"]
