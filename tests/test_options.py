"""Options as the one source of the CLI flags: the generated parsers, their defaults, and errors that name
an option as the caller wrote it (`--ratio` on the command line, `ratio=` from Python)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import fields

import pytest

import graphprune
from graphprune.cli import analyze_parser, main, prune_parser
from graphprune.errors import OptionError, UsageError
from graphprune.options import AnalyzeOptions, PruneOptions, cli_fields, cli_name, flags_of, from_args
from graphprune.passes import allocation, compensation, scoring
from tests import corpus

PARSERS = [(PruneOptions, prune_parser), (AnalyzeOptions, analyze_parser)]


@pytest.mark.parametrize("cls, make_parser", PARSERS, ids=["prune", "analyze"])
def test_every_field_has_its_flag(cls, make_parser):
    parser = make_parser()
    assert [f.name for f in cli_fields(cls)] == [f.name for f in fields(cls)]  # no field left off the CLI
    for f in cli_fields(cls):
        for flag in flags_of(f):
            assert parser._option_string_actions[flag].dest == f.name, flag


@pytest.mark.parametrize("cls, make_parser", PARSERS, ids=["prune", "analyze"])
def test_parsed_defaults_are_the_dataclass_defaults(cls, make_parser):
    args = make_parser().parse_args(["m.onnx"])
    assert from_args(cls, args) == cls().check()


def test_flags_reach_the_fields():
    args = prune_parser().parse_args(["m.onnx", "--ratio", "0.25", "--global", "--no-validate", "--exclude", "a*",
                                      "--exclude", "b", "--input-shape", "x:1,3,8,8", "--round-to", "8",
                                      "--target", "macs", "--calib", "c.npz", "--calib-samples", "4"])
    opts = from_args(PruneOptions, args)
    assert (opts.ratio, opts.global_pruning, opts.validate, opts.exclude) == (0.25, True, False, ("a*", "b"))
    assert (opts.input_shapes, opts.round_to, opts.target) == ({"x": [1, 3, 8, 8]}, 8, "macs")
    assert (opts.calib, opts.calib_samples) == ("c.npz", 4)
    a = from_args(AnalyzeOptions, analyze_parser().parse_args(["m.onnx", "--ratio", "0.3", "--prune-hidden"]))
    assert a == AnalyzeOptions(ratio=0.3, prune_hidden=True)
    plan = a.plan_options()
    assert (plan.ratio, plan.prune_hidden, plan.validate, plan.importance) == (0.3, True, False, "auto")
    assert AnalyzeOptions().plan_options() is None


def test_choices_are_the_passes_constants():
    choices = {f.name: f.metadata["cli"].choices for f in fields(PruneOptions)}
    assert choices["importance"] is scoring.IMPORTANCES
    assert choices["reduction"] is scoring.REDUCTIONS and choices["normalize"] is scoring.NORMALIZATIONS
    assert choices["target"] is allocation.TARGETS and choices["compensate"] is compensation.MODES


@pytest.mark.parametrize("make_parser, command", [(prune_parser, []), (analyze_parser, ["analyze"])],
                         ids=["prune", "analyze"])
def test_help_lists_every_visible_flag(make_parser, command, capsys):
    cls = PruneOptions if make_parser is prune_parser else AnalyzeOptions
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    for f in cli_fields(cls):
        for flag in flags_of(f):
            assert (flag in out) != f.metadata["cli"].hidden, flag
            if not f.metadata["cli"].hidden:
                assert f.metadata["cli"].help.split()[0] in out


# The same bad value: the flag on the command line, the keyword from Python (checked before any model is read).
BAD = [
    (["--ratio", "1.5"], dict(ratio=1.5), "--ratio must be in [0, 1), got 1.5",
     "ratio= must be in [0, 1), got 1.5"),
    (["--head-ratio", "2"], dict(head_ratio=2.0), "--head-ratio must be in [0, 1), got 2.0",
     "head_ratio= must be in [0, 1), got 2.0"),
    (["--target", "flops"], dict(target="flops"), "--target must be one of channels, params, macs, got 'flops'",
     "target= must be one of channels, params, macs, got 'flops'"),
    (["--importance", "magic"], dict(importance="magic"), "--importance must be one of",
     "importance= must be one of"),
    (["--min-keep", "0"], dict(min_keep=0), "--min-keep must be a positive integer, got 0",
     "min_keep= must be a positive integer, got 0"),
    (["--calib-samples", "8"], dict(calib_samples=8),
     "--calib-samples needs calibration data (--calib or --calib-images)",
     "calib_samples= needs calibration data (calib= or calib_images=)"),
    (["--target", "macs", "--mlp-ratio", "0.5"], dict(target="macs", mlp_ratio=0.5),
     "--head-ratio/--mlp-ratio only apply with --target channels",
     "head_ratio=/mlp_ratio= only apply with target='channels'"),
    (["--global", "--head-ratio", "0.5"], dict(global_pruning=True, head_ratio=0.5),
     "--head-ratio/--mlp-ratio only apply to uniform allocation (not --global)",
     "head_ratio=/mlp_ratio= only apply to uniform allocation (not global_pruning=True)"),
    (["--ridge", "-1"], dict(ridge=-1), "--ridge must be >= 0, got -1.0", "ridge= must be >= 0, got -1.0"),
]


@pytest.mark.parametrize("argv, kwargs, on_cli, in_python", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_prune_errors_name_the_option_as_written(argv, kwargs, on_cli, in_python, tmp_path, capsys):
    model = str(tmp_path / "never_read.onnx")
    assert main([model, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graphprune: error: {on_cli}"), err
    with pytest.raises(OptionError) as exc:
        graphprune.prune(model, **kwargs)
    assert str(exc.value).startswith(in_python)
    with pytest.raises(OptionError):  # and the same through an options object
        graphprune.prune(model, PruneOptions(**kwargs))


@pytest.mark.parametrize("argv, kwargs, on_cli, in_python", [
    (["--ratio", "1.5"], dict(ratio=1.5), "--ratio must be in [0, 1), got 1.5", "ratio= must be in [0, 1)"),
    (["--importance", "x"], dict(importance="x"), "--importance must be one of", "importance= must be one of"),
], ids=["ratio", "importance"])
def test_analyze_errors_name_the_option_as_written(argv, kwargs, on_cli, in_python, tmp_path, capsys):
    model = str(tmp_path / "never_read.onnx")
    assert main(["analyze", model, *argv]) == 2
    assert capsys.readouterr().err.startswith(f"graphprune: error: {on_cli}")
    with pytest.raises(OptionError, match="^" + re.escape(in_python)):
        graphprune.analyze(model, **kwargs)


def test_option_error_renders_both_ways():
    e = OptionError("{calib_samples} needs {calib}; {global_pruning:True} with {target:macs}, got {value!r}",
                    value="x")
    assert e.fields == ("calib_samples", "calib", "global_pruning", "target")
    assert str(e) == "calib_samples= needs calib=; global_pruning=True with target='macs', got 'x'"
    assert e.render(cli_name) == "--calib-samples needs --calib; --global with --target macs, got 'x'"
    assert isinstance(e, UsageError)


def test_analyze_keywords_are_analyze_options():
    model = corpus.cnn_model()
    a = graphprune.analyze(model, exclude="conv1*", input_shapes=None, prune_head_dim=False, prune_hidden=False)
    b = graphprune.analyze(model, AnalyzeOptions(exclude=("conv1*",)))
    assert [g.key for g in a.channel_groups] == [g.key for g in b.channel_groups]
    assert [g.frozen for g in a.channel_groups] == [g.frozen for g in b.channel_groups]
    assert not graphprune.analyze(model).group("conv1.W:0").frozen
    assert a.group("conv1.W:0").frozen and b.group("conv1.W:0").frozen  # the exclude glob reached the analysis
    with pytest.raises(UsageError, match="unknown option.*: no_such"):
        graphprune.analyze(model, no_such=1)
    with pytest.raises(UsageError, match="either options or keyword"):
        graphprune.analyze(model, AnalyzeOptions(), exclude=())
    with pytest.raises(UsageError, match="must be an AnalyzeOptions"):
        graphprune.analyze(model, ("conv1*",))
    with pytest.raises(OptionError, match="^exclude= must be glob strings"):
        graphprune.analyze(model, exclude=[1])


def test_prune_keywords_unchanged():
    with pytest.raises(UsageError, match="unknown option.*: no_such"):
        PruneOptions.from_kwargs(no_such=1)
    assert PruneOptions.from_kwargs(exclude="a", ratio=1 / 4) == PruneOptions(exclude=("a",), ratio=0.25)


def test_help_does_not_import_onnx():
    code = ("import sys, contextlib, io, graphprune.cli as c\n"
            "for argv in (['--help'], ['analyze', '--help'], ['--version']):\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(io.StringIO()): c.main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_parser_dest_is_a_field_or_a_cli_switch():
    cli_only = {"help", "model", "output", "report", "json", "quiet", "save_plan", "plan", "dry_run",
                "overwrite", "version", "summary", "html", "graph"}
    for cls, make_parser in PARSERS:
        names = {f.name for f in fields(cls)}
        for action in make_parser()._actions:
            assert action.dest in names | cli_only, action.dest
            if action.dest in names:
                assert isinstance(action, argparse.Action)
