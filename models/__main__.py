"""Command line for the model zoo.

    python -m models list [--all]
    python -m models build NAME [--exporter torchscript|dynamo] [--keep-bn] [--dynamic-batch]
                                [--opset N] [--seed N] -o PATH
    python -m models path NAME [--exporter ...] [--keep-bn]      # export into the cache, print path
"""

from __future__ import annotations

import argparse
import sys

from . import CNN_MODELS, EXPORTERS, FULL_MODELS, ZOO, export_model, get_model
from .export import count_ops


def _cmd_list(args: argparse.Namespace) -> int:
    names = CNN_MODELS + (FULL_MODELS if args.all else [])
    width = max(len(n) for n in names)
    for name in names:
        e = ZOO[name]
        print(f"{name:<{width}}  {e.task:<14}  {e.description}")
    return 0


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(ZOO), metavar="NAME", help="zoo model (see `list --all`)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript")
    p.add_argument(
        "--keep-bn", action="store_true", help="keep BatchNormalization nodes (no Conv+BN folding)"
    )


def _cmd_build(args: argparse.Namespace) -> int:
    path = export_model(
        args.name,
        args.output,
        exporter=args.exporter,
        keep_bn=args.keep_bn,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        seed=args.seed,
    )
    if args.verbose:
        ops = ", ".join(f"{k}={v}" for k, v in count_ops(path).items())
        print(f"{path}: {ops}", file=sys.stderr)
    print(path)
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(get_model(args.name, exporter=args.exporter, keep_bn=args.keep_bn))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description="graphprune CNN model zoo")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_list = sub.add_parser("list", help="list zoo models")
    p_list.add_argument("--all", action="store_true", help="include the full-size *_full configurations")
    p_list.set_defaults(func=_cmd_list)

    p_build = sub.add_parser("build", help="export a model to ONNX")
    _add_export_args(p_build)
    p_build.add_argument("-o", "--output", required=True, help="output .onnx path")
    p_build.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p_build.add_argument(
        "--opset", type=int, default=None, help="default: 17 (torchscript), exporter default (dynamo)"
    )
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("-v", "--verbose", action="store_true", help="print op counts to stderr")
    p_build.set_defaults(func=_cmd_build)

    p_path = sub.add_parser("path", help="export into the zoo cache (if needed) and print the path")
    _add_export_args(p_path)
    p_path.set_defaults(func=_cmd_path)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
