"""graphprune: structured pruning of ONNX graphs (find coupled channels, cut them, write a valid model)."""

__version__ = "0.1.0"

from .analysis.plan import Plan  # noqa: E402
from .api import PruneResult, analyze, prune  # noqa: E402
from .errors import GraphpruneError, ModelError, UsageError, ValidationError  # noqa: E402
from .options import PruneOptions  # noqa: E402

__all__ = ["GraphpruneError", "ModelError", "Plan", "PruneOptions", "PruneResult", "UsageError",
           "ValidationError", "analyze", "prune", "__version__"]
