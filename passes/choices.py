"""The values the passes accept for their user-facing options, with no heavy imports: options.py reads them
for validation and the CLI's help without loading onnx (`graphprune --help` stays fast)."""

IMPORTANCES = ("auto", "l2", "l1", "random", "dead", "wanda", "fluctuation", "reconstruction")  # scoring.py
REDUCTIONS = ("mean", "sum", "max")  # scoring.py: how a unit's consumers/slices combine
NORMALIZATIONS = ("lamp", "mean", "zscore", "none")  # scoring.py: per-group normalisation for global ranking
TARGETS = ("channels", "params", "macs")  # allocation.py: what the ratio measures
ALLOCATIONS = ("auto", "uniform", "global", "sensitivity")  # allocation.py / sensitivity.py: how groups share it
MODES = ("auto", "none", "bias", "lstsq", "all")  # compensation.py
METRICS = ("rel", "cosine", "top1")  # fidelity.py / --max-error: relative error, 1 - cosine, 1 - top-1 agreement
