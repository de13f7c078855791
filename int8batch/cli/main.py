"""Entry point of the ``int8batch`` command."""
import argparse
import importlib
import logging
import os
import sys

from .._version import __version__
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

# what a command needs, shown instead of argparse's usage error when a required argument is missing
NEEDS = {
    "int8batch pack": ("needs a SOURCE (a folder of images, an IDX file, or mnist / mnist-test) and an OUT folder",
                       "int8batch pack imgs/ out/batches"),
    "int8batch inspect": ("needs a batch folder (from int8batch pack)", "int8batch inspect out/batches --show 16"),
    "int8batch calibrate": ("needs an FP32 MODEL.onnx and --batches DIR (batch files from int8batch pack)",
                            "int8batch calibrate model.onnx --batches out/batches"),
    "int8batch qdq": ("needs an FP32 MODEL.onnx, --cache FILE (TensorRT cache or dynamic ranges) and -o OUT.onnx",
                      "int8batch qdq model.onnx --cache calibration.cache -o model.qdq.onnx"),
    "int8batch eval": ("needs the FP32 and the INT8 (Q/DQ) model and --batches DIR of labelled batch files",
                       "int8batch eval model.onnx calibration/model.qdq.onnx --batches out/batches"),
    "int8batch export": ("needs a batch folder and an OUT.npy or OUT.npz",
                         "int8batch export out/batches calib.npz --input-name input"),
    "int8batch run": ("needs a sample: mnist (bundled data and model) or imagenet (your model and images)",
                      "int8batch run mnist"),
    "int8batch run imagenet": ("needs --model M.onnx (an ImageNet classifier) and --images DIR",
                               "int8batch run imagenet --model model.onnx --images val/ --labels val.txt"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a missing required argument gets a two-line "what you need" hint (exit status 2)."""

    def error(self, message):
        need = NEEDS.get(self.prog)
        if need and message.startswith("the following arguments are required"):
            self.exit(2, f"{self.prog} {need[0]}; for example (-h lists every option):\n  {need[1]}\n")
        super().error(message)


def build_parser():
    parser = _Parser(
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
        # -v also after the command (int8batch pack ... -v), as -q is; SUPPRESS keeps the top-level value
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
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
        status = int(args._run(args) or 0)
        sys.stdout.flush()    # here, where a closed pipe is caught below, not at the interpreter's exit
        return status
    except Int8BatchError as exc:
        print(f"int8batch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"int8batch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # output piped into a reader that stopped early (| head): not an error to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
