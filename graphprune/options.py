"""PruneOptions and AnalyzeOptions: the options of `graphprune MODEL` / `prune()` and of `graphprune analyze` /
`analyze()`, one dataclass each.

Each field's metadata (`option(...)`: flag, help, metavar, parser, choices, hidden) is the one source of its
command-line flag: cli.py builds its parsers from it (`add_options`) and the dataclass from the parsed flags
(`from_args`). Errors name a field as the caller wrote it (errors.OptionError): `ratio=` from Python,
`--ratio` on the command line (`cli_name`).
"""

from __future__ import annotations

import argparse
import numbers
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

from .errors import OptionError, UsageError
from .passes.choices import ALLOCATIONS, IMPORTANCES, METRICS, MODES, NORMALIZATIONS, REDUCTIONS, TARGETS
from .passes.images import parse_preprocess

_CLI = "cli"  # the metadata key of a field's Option


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line. A bool field is a switch (`--flag` sets True; a field that
    defaults to True gets a `--no-...` flag that sets False); `repeat` collects every use of the flag in a
    list, which `from_cli` (if given) turns into the field's value."""

    flags: tuple[str, ...] = ()  # default: --field-name
    help: str = ""
    metavar: str | None = None
    type: object = None  # argparse's per-value parser: float, int, ...
    choices: tuple[str, ...] | None = None  # checked by check() (the CLI's own message), not by argparse
    repeat: bool = False
    from_cli: object = None  # the parsed flag value -> the field value
    hidden: bool = False  # accepted, but not listed in --help


def option(default=MISSING, *, factory=MISSING, **cli):
    """A dataclass field with its command-line metadata (the keywords of `Option`)."""
    return field(default=default, default_factory=factory, metadata={_CLI: Option(**cli)})


def _round_to_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got '{text}'")
    return value


def _ridge_arg(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number, got '{text}'") from None


def parse_input_shapes(specs: list[str]) -> dict[str, list[int]]:
    """`name:1,3,224,224` (onnxsim style); several may be given."""
    out = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shape '{spec}' must look like name:1,3,224,224")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise UsageError(f"--input-shape '{spec}': dims must be integers") from None
        if any(d <= 0 for d in out[name]):
            raise UsageError(f"--input-shape '{spec}': dims must be positive")
    return out


# The fields both commands share, one definition each.
def _exclude():
    return option((), metavar="GLOB", repeat=True, from_cli=tuple,
                  help="node or initializer names never pruned (repeatable)")


def _input_shapes():
    return option(factory=dict, flags=("--input-shape",), metavar="NAME:DIMS", repeat=True,
                  from_cli=parse_input_shapes,
                  help="fix dynamic input dims for analysis, e.g. input:1,3,224,224 (repeatable)")


def _prune_head_dim():
    return option(False, help="cut inside attention heads instead of whole heads")


def _prune_hidden():
    return option(False, help="allow cutting axes normalised by LayerNorm")


def _seed():
    return option(0, type=int, help="seed for random scores and synthetic inputs")


# Calibration sources (passes/calib_sources.py, passes/images.py).
CALIB_FORMS = ("an .npz of arrays keyed by input name (samples on axis 0), a folder of .npz/.npy files (one "
               "sample each, sorted by name), or a data loader loader.py[:function] (default load_data) returning "
               "feed dicts; an input given in its exact shape (a scalar, a state) is fed unchanged to every batch")


def _calib_images():
    return option(None, metavar="DIR", help="calibration images (subfolders included) for the model's image "
                  "input, read with Pillow and shaped by --preprocess; the model's other inputs come from --calib")


def _preprocess():
    return option(None, metavar="SPEC", help="how --calib-images become the input: size=WxH (default: the "
                  "model's), scale=1/255, mean=R,G,B, std=R,G,B, layout=NCHW|NHWC (default: from the model), "
                  "rgb (default) or bgr, e.g. \"size=320x320,scale=1/255,mean=0.5,0.5,0.5,std=0.5,0.5,0.5\"")


def _check_calib_sources(options) -> None:
    """calib as a path (or, from Python, data), calib_images a folder, preprocess only with calib_images
    (its spec parsed here, so a bad one fails before the model is read)."""
    for name in ("calib", "calib_images"):
        if isinstance(getattr(options, name), os.PathLike):
            setattr(options, name, os.fspath(getattr(options, name)))
    if options.calib_images is not None and not isinstance(options.calib_images, str):
        raise OptionError("{calib_images} must be a path to a folder of images, got {value}",
                          value=type(options.calib_images).__name__)
    if options.preprocess is not None:
        if options.calib_images is None:
            raise OptionError("{preprocess} applies to {calib_images}")
        parse_preprocess(options.preprocess)


@dataclass
class PruneOptions:
    ratio: float = option(0.5, type=float, help="fraction of the channels of every group to remove")
    head_ratio: float | None = option(None, type=float,
                                      help="fraction of attention heads to remove (default: --ratio)")
    mlp_ratio: float | None = option(None, type=float, help="fraction of MLP neurons to remove (default: --ratio)")
    max_ratio: float | None = option(None, type=float, help="never remove more than this fraction of a group")
    # "auto": 16 (8 in groups of 16-31 channels), see passes/allocation.py
    round_to: int | str = option("auto", type=_round_to_arg, metavar="N|auto",
                                 help="kept channel counts are multiples of N (1: exact counts); auto (default): "
                                 "16, or 8 in groups of 16-31 channels (fast kernels work on channel blocks; see "
                                 "benchmarks/results/speed.md)")
    exclude: tuple[str, ...] = _exclude()
    importance: str = option("auto", choices=IMPORTANCES,  # see passes/scoring.py
                             help="auto (default: reconstruction with --calib, BatchNorm-aware fluctuation without "
                             "it when the model has BatchNorm, else l2), l2, l1, random, dead, wanda, fluctuation, "
                             "reconstruction")
    input_shapes: dict = _input_shapes()
    seed: int = _seed()
    validate: bool = option(True, flags=("--no-validate",), hidden=True)
    prune_head_dim: bool = _prune_head_dim()
    prune_hidden: bool = _prune_hidden()
    # Post-training quality (passes/calibration.py, scoring.py, allocation.py, compensation.py).
    # calib: a path (.npz, folder, loader.py[:function]) or, from Python, a dict of arrays keyed by input name, an
    # iterable of feed dicts or a function returning either
    calib: object = option(None, metavar="SOURCE", help="calibration samples: " + CALIB_FORMS)
    calib_images: str | None = _calib_images()
    preprocess: str | None = _preprocess()
    calib_samples: int | None = option(None, type=int, metavar="N",
                                       help="calibration samples to use (default 256; the rest, up to 256, are "
                                       "held out)")
    reduction: str = option("mean", choices=REDUCTIONS,
                            help="how a channel's scores over layers combine: mean, sum, max")
    normalize: str = option("lamp", choices=NORMALIZATIONS,
                            help="per-group score normalisation for --global: lamp (default), mean, zscore, none")
    global_pruning: bool = option(False, flags=("--global",),
                                  help="rank channels of all groups together instead of cutting each group by "
                                  "--ratio")
    allocation: str = option("auto", choices=ALLOCATIONS,  # see passes/allocation.py, passes/sensitivity.py
                             help="how the budget is shared out: uniform (--ratio of every group), global (one "
                             "ranking of all channels, as --global), sensitivity (cutting each group is measured "
                             "on the calibration samples; fragile layers keep more); auto (default): uniform, "
                             "global with --global")
    uniform_heads: bool = option(False, help="every attention block keeps the same number of heads (for runtimes "
                                 "that take one num_heads)")
    target: str = option("channels", choices=TARGETS,
                         help="what --ratio removes: channels (default), params or macs (of the whole model)")
    strict_target: bool = option(False, help="fail (exit code 2, nothing written) when --target/--ratio is missed "
                                 "by more than 2 points; by default the most reachable is pruned, with a warning")
    min_keep: int = option(1, type=int, metavar="N", help="keep at least N channels in every group")
    compensate: str = option("auto", choices=MODES,
                             help="none, bias, lstsq or all (default: all with --calib; without it bias from "
                             "BatchNorm statistics where the model has BatchNorm, else none)")
    ridge: float | None = option(None, type=_ridge_arg, metavar="R|auto",
                                 help="least-squares pull toward the pruned weights (relative to the input "
                                 "variance); auto (default): chosen per layer on held-out calibration samples")
    atol: float | None = option(None, type=float, help="fidelity check: absolute output tolerance")
    rtol: float | None = option(None, type=float, help="fidelity check: relative output tolerance")
    # The accuracy guard (pipeline.py's search stage): the largest cut whose held-out error stays within it.
    max_error: float | None = option(None, type=float, metavar="E",
                                     help="with --calib: prune as much as possible (global allocation under "
                                     "--target) while the held-out error (--metric) stays <= E; --ratio is "
                                     "then the largest ratio tried")
    metric: str = option("rel", choices=METRICS,
                         help="what --max-error bounds: rel (relative output error, default), cosine "
                         "(1 - cosine) or top1 (drop in top-1 agreement)")
    # --debug: tracebacks instead of one-line errors, and a rule that raises propagates instead of freezing its node
    debug: bool = option(False, flags=("--debug",), help="show tracebacks")

    def check(self) -> PruneOptions:
        # The API passes Python values straight in: a wrong type must be a UsageError, not a TypeError deep
        # inside allocation, and a lone string for `exclude` must not become one pattern per character.
        self.exclude = _globs(self.exclude)
        for name in ("ratio", "head_ratio", "mlp_ratio", "max_ratio", "ridge", "atol", "rtol", "max_error"):
            setattr(self, name, _number(name, getattr(self, name)))
        for name in ("round_to", "seed", "min_keep", "calib_samples"):
            v = getattr(self, name)
            if (v is None and name == "calib_samples") or (v == "auto" and name == "round_to"):
                continue
            setattr(self, name, _integer(name, v, "an integer or 'auto'" if name == "round_to" else "an integer"))
        for name in ("ratio", "head_ratio", "mlp_ratio", "max_ratio"):
            _fraction(name, getattr(self, name))
        if self.round_to != "auto" and self.round_to < 1:
            raise OptionError("{round_to} must be 'auto' or a positive integer, got {value}", value=self.round_to)
        _one_of(self, "importance")
        self._check_quality()
        return self

    def _check_quality(self) -> None:
        for name in ("reduction", "normalize", "target", "compensate", "metric", "allocation"):
            _one_of(self, name, quote=repr)
        if self.max_error is not None:
            if self.max_error < 0:
                raise OptionError("{max_error} must be >= 0, got {value}", value=self.max_error)
            if self.calib is None:
                raise OptionError("{max_error} needs calibration data ({calib}): the error is measured on "
                                  "held-out samples")
            if self.head_ratio is not None or self.mlp_ratio is not None:
                raise OptionError("{max_error} searches one global ratio; it does not take {head_ratio}/{mlp_ratio}")
        if not isinstance(self.debug, (bool, np.bool_)):
            raise OptionError("{debug} must be True or False, got {value!r}", value=self.debug)
        self.debug = bool(self.debug)
        if not isinstance(self.strict_target, (bool, np.bool_)):
            raise OptionError("{strict_target} must be True or False, got {value!r}", value=self.strict_target)
        self.strict_target = bool(self.strict_target)
        if not isinstance(self.global_pruning, (bool, np.bool_)):
            raise OptionError("{global_pruning} must be True or False, got {value!r}", value=self.global_pruning)
        self.global_pruning = bool(self.global_pruning)
        self._check_allocation()
        if self.min_keep < 1:
            raise OptionError("{min_keep} must be a positive integer, got {value}", value=self.min_keep)
        if self.calib_samples is not None and self.calib_samples < 1:
            raise OptionError("{calib_samples} must be a positive integer, got {value}", value=self.calib_samples)
        if self.calib_samples is not None and self.calib is None and self.calib_images is None:
            raise OptionError("{calib_samples} needs calibration data ({calib} or {calib_images})")
        for name in ("ridge", "atol", "rtol"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise OptionError("{" + name + "} must be >= 0, got {value}", value=v)
        if self.target != "channels" and (self.head_ratio is not None or self.mlp_ratio is not None):
            raise OptionError("{head_ratio}/{mlp_ratio} only apply with {target:channels}")
        if self.global_pruning and (self.head_ratio is not None or self.mlp_ratio is not None):
            raise OptionError("{head_ratio}/{mlp_ratio} only apply to uniform allocation (not {global_pruning:True})")
        _check_calib_sources(self)

    def _check_allocation(self) -> None:
        """--global is --allocation global; the two must not disagree."""
        if self.global_pruning and self.allocation not in ("auto", "global"):
            raise OptionError("{global_pruning:True} means {allocation:global}; it cannot be combined with "
                              "{allocation:" + str(self.allocation) + "}")
        if self.global_pruning or self.allocation == "global":
            self.allocation, self.global_pruning = "global", True
        if not isinstance(self.uniform_heads, (bool, np.bool_)):
            raise OptionError("{uniform_heads} must be True or False, got {value!r}", value=self.uniform_heads)
        self.uniform_heads = bool(self.uniform_heads)
        if self.uniform_heads and self.allocation == "global":
            raise OptionError("{uniform_heads} applies to uniform and sensitivity allocation, not "
                              "{allocation:global}")
        if self.uniform_heads and self.target != "channels":
            raise OptionError("{uniform_heads} needs {target:channels} (heads are cut by {head_ratio} or {ratio})")
        if self.allocation == "sensitivity" and self.calib is None:
            raise OptionError("{allocation:sensitivity} needs calibration data ({calib})")

    def ratio_for(self, kind: str) -> float:
        """The ratio a group of this kind gets: --head-ratio / --mlp-ratio where given, else --ratio."""
        if kind == "head" and self.head_ratio is not None:
            return self.head_ratio
        if kind == "mlp" and self.mlp_ratio is not None:
            return self.mlp_ratio
        return self.ratio

    def to_dict(self) -> dict:
        calib = self.calib
        self.calib = None  # asdict would deep-copy (and a report would embed) the calibration arrays
        try:
            d = asdict(self)
        finally:
            self.calib = calib
        d["exclude"] = list(self.exclude)
        d["calib"] = calib if calib is None or isinstance(calib, str) else f"<{type(calib).__name__}>"
        return d

    @classmethod
    def from_kwargs(cls, **kwargs) -> PruneOptions:
        return cls(**_known(cls, kwargs)).check()


@dataclass
class AnalyzeOptions:
    """`graphprune analyze` / `analyze()`. The analysis reads exclude, input_shapes, prune_head_dim and
    prune_hidden; ratio, importance and seed ask the CLI for the plan a prune would make (`plan_options`),
    calib for per-group sensitivity curves. `analyze()` returns the analysis only and does not read those."""

    exclude: tuple[str, ...] = _exclude()
    input_shapes: dict = _input_shapes()
    prune_head_dim: bool = _prune_head_dim()
    prune_hidden: bool = _prune_hidden()
    ratio: float | None = option(None, type=float,
                                 help="also compute the plan at this ratio (what `graphprune MODEL --ratio R` would "
                                 "cut); no model is written")
    importance: str | None = option(None, choices=IMPORTANCES, help="scores for the plan (see `graphprune --help`)")
    seed: int = _seed()
    calib: str | None = option(None, metavar="SOURCE", help="calibration samples for per-group sensitivity "
                               "curves (output error vs ratio; the first 32 samples): " + CALIB_FORMS)
    calib_images: str | None = _calib_images()
    preprocess: str | None = _preprocess()
    debug: bool = option(False, flags=("--debug",), help="show tracebacks")

    def check(self) -> AnalyzeOptions:
        self.exclude = _globs(self.exclude)
        if self.input_shapes is None:
            self.input_shapes = {}
        if not isinstance(self.input_shapes, dict):
            raise OptionError("{input_shapes} must be a dict of input name to dims, got {value!r}",
                              value=self.input_shapes)
        self.input_shapes = dict(self.input_shapes)
        self.ratio = _number("ratio", self.ratio)
        self.seed = _integer("seed", self.seed, "an integer")
        self.debug = bool(self.debug)
        _fraction("ratio", self.ratio)
        if self.importance is not None:
            _one_of(self, "importance")
        _check_calib_sources(self)
        if self.calib is not None and not isinstance(self.calib, str):
            raise OptionError("{calib} must be a path (.npz, a folder, loader.py[:function]), got {value}",
                              value=type(self.calib).__name__)
        return self

    def plan_options(self) -> PruneOptions | None:
        """The options of the prune whose plan `graphprune analyze --ratio/--importance` shows (nothing is
        validated or written), or None when no plan was asked for."""
        if self.ratio is None and self.importance is None:
            return None
        extra = {"importance": self.importance} if self.importance is not None else {}
        return PruneOptions(ratio=0.5 if self.ratio is None else self.ratio, exclude=self.exclude,
                            input_shapes=self.input_shapes, seed=self.seed, validate=False,
                            prune_head_dim=self.prune_head_dim, prune_hidden=self.prune_hidden, debug=self.debug,
                            **extra).check()

    @classmethod
    def from_kwargs(cls, **kwargs) -> AnalyzeOptions:
        return cls(**_known(cls, kwargs)).check()


OPTION_CLASSES = (PruneOptions, AnalyzeOptions)


# ---- checks shared by both dataclasses ----------------------------------------------------------------
def _known(cls, kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - {f.name for f in fields(cls)})
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    return kwargs


def _globs(value) -> tuple[str, ...]:
    value = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(p, str) for p in value):
        raise OptionError("{exclude} must be glob strings, got {value!r}", value=list(value))
    return value


def _number(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError("{" + name + "} must be a number, got {value!r}", value=value)
    return float(value)


def _integer(name: str, value, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError("{" + name + "} must be {kind}, got {value!r}", kind=kind, value=value)
    return int(value)


def _fraction(name: str, value) -> None:
    if value is not None and not (0.0 <= value < 1.0):
        raise OptionError("{" + name + "} must be in [0, 1), got {value}", value=value)


def _one_of(options, name: str, quote=lambda v: f"'{v}'") -> None:
    """The field's value is one of its `choices` (the passes' own constants, passes/choices.py)."""
    allowed = next(f for f in fields(options) if f.name == name).metadata[_CLI].choices
    value = getattr(options, name)
    if value not in allowed:
        raise OptionError("{" + name + "} must be one of {allowed}, got {value}", allowed=", ".join(allowed),
                          value=quote(value))


# ---- the command line ----------------------------------------------------------------------------------
def cli_fields(cls) -> list:
    """The fields of an options dataclass that have a command-line flag, in field order."""
    return [f for f in fields(cls) if _CLI in f.metadata]


def flags_of(f) -> tuple[str, ...]:
    opt = f.metadata[_CLI]
    return opt.flags or ("--" + f.name.replace("_", "-"),)


def add_options(parser: argparse.ArgumentParser, cls, names=None) -> None:
    """Add the flags of `cls`'s fields to `parser`: the fields named, in that order, or (names=None) every
    field not added yet, in field order."""
    by_name = {f.name: f for f in cli_fields(cls)}
    if names is None:
        added = {a.dest for a in parser._actions}
        names = [n for n in by_name if n not in added]
    for name in names:
        f = by_name[name]
        opt = f.metadata[_CLI]
        kwargs = {"dest": f.name, "help": argparse.SUPPRESS if opt.hidden else opt.help}
        if f.type in ("bool", bool):
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["default"] = [] if opt.repeat else f.default
            if opt.repeat:
                kwargs["action"] = "append"
            if opt.type is not None:
                kwargs["type"] = opt.type
            if opt.metavar is not None:
                kwargs["metavar"] = opt.metavar
        parser.add_argument(*flags_of(f), **kwargs)


def from_args(cls, args: argparse.Namespace):
    """The checked options dataclass from a namespace `add_options` flags were parsed into."""
    values = {}
    for f in cli_fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            convert = f.metadata[_CLI].from_cli
            values[f.name] = convert(value) if convert is not None else value
    return cls(**values).check()


def cli_name(name: str, value: str = "") -> str:
    """How the command line writes an option (`OptionError.render`): `--ratio`, `--target channels`, and a
    switch by its flag alone (`--global`)."""
    for cls in OPTION_CLASSES:
        f = next((f for f in cli_fields(cls) if f.name == name), None)
        if f is not None:
            flag = flags_of(f)[0]
            return f"{flag} {value}" if value and f.type not in ("bool", bool) else flag
    return "--" + name.replace("_", "-")
