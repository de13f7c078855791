"""Entry point of the ``int8batch`` command."""
import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import Int8BatchError

# Each module defines add_parser(subparsers) -> parser and run(args) -> int.
SUBCOMMANDS = [
    "pack",
    "inspect",
    "calibrate",
    "qdq",
    "eval",
    "run",
    "export",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="int8batch",
        description="Calibration data and INT8 scales for NVIDIA TensorRT: pack images into "
                    "sampleINT8 batch files, inspect them, calibrate, and reproduce the INT8 samples.")
    parser.add_argument("--version", action="version", version=f"int8batch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except Int8BatchError as exc:
        print(f"int8batch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"int8batch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
