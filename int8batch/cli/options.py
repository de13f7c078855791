"""Option groups shared by several subcommands (preprocessing, progress)."""
import argparse
import contextlib
import logging
import os
import sys
import threading

from ..preprocess import CHANNEL_MODES, CROP_MODES, INTERPOLATIONS, PRESETS, RESIZE_MODES


def _floats(text):
    """``--mean``/``--std``: one number or one per channel, separated by commas or spaces."""
    try:
        vals = tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        vals = ()
    if not vals:
        raise argparse.ArgumentTypeError(f"expected numbers such as 0.485,0.456,0.406, got {text!r}")
    return vals


def size_value(text):
    """``--size``/``--resize-size``: ``224`` or ``224x224`` (H x W)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x224 (height x width), got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def keep_float_value(text):
    """``--keep-float``: a count, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count of tensors or auto, got {text!r}") from None


def refuse_existing(path, force, option="OUT", inputs=(), example="NAME"):
    """One output file of a command: an existing one is replaced only with ``--force``.

    ``inputs``: the command's input files, named in the error when ``path`` is one of them.
    """
    from ..errors import OutputExistsError
    if os.path.isdir(path):   # --force replaces a file, never a folder
        raise OutputExistsError(f"{path} is a folder; give a file name for {option} (e.g. "
                                f"{os.path.join(path, example)})", path)
    if force or not os.path.lexists(path):
        return
    same = [i for i in inputs if os.path.exists(i) and os.path.exists(path) and os.path.samefile(i, path)]
    raise OutputExistsError(f"{path} already exists{' (it is an input of this command)' if same else ''}; "
                            f"choose another {option} or pass --force to replace it", path)


def add_device_option(parser, what="the models"):
    """``--device auto|cpu|cuda``: where ONNX Runtime runs ``what`` (calibrate, eval, run)."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help=f"where ONNX Runtime runs {what}: cuda needs onnxruntime-gpu, cuda-python and a GPU; "
                             "auto (default): cuda when they are usable, else cpu. The output says which ran")


def add_preprocess_options(parser):
    """Preprocessing options; each overrides the preset's value when given."""
    g = parser.add_argument_group("preprocessing (each changes one field of the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the recipe the other options start from (default: "
                   "imagenet-caffe, sampleINT8's ImageNet recipe; mnist for IDX sources)")
    g.add_argument("--size", type=size_value, metavar="H[xW]", help="output size, e.g. 224 or 224x224")
    g.add_argument("--resize", choices=RESIZE_MODES, help="short side to --resize-size, direct warp, or none")
    g.add_argument("--resize-size", type=size_value, metavar="S|HxW", help="short side (short) or HxW (direct)")
    g.add_argument("--crop", choices=CROP_MODES)
    g.add_argument("--interpolation", choices=INTERPOLATIONS)
    g.add_argument("--channels", choices=CHANNEL_MODES, help="output channel order, or gray")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean (output channel order)")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std")
    g.add_argument("--scale", type=float, help="multiplier applied to pixels before mean/std, e.g. 0.00392157")
    g.add_argument("--exif", choices=("respect", "ignore"), help="EXIF orientation (default: respect)")
    g.add_argument("--exact-decode", dest="reduced_decode", action="store_const", const=False,
                   help="always decode JPEGs at full size (slower; bit-exact with a full-size pipeline)")
    return g


def preprocess_overrides(args):
    """The preprocessing fields the user set, as keyword arguments for ``int8batch.pack``."""
    keys = ("size", "resize", "resize_size", "crop", "interpolation", "channels", "mean", "std", "scale",
            "exif", "reduced_decode")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


@contextlib.contextmanager
def log_level(level):
    """Temporarily set the level of the ``int8batch`` loggers (None: leave it)."""
    logger = logging.getLogger("int8batch")
    old = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


class ProgressBar:
    """Progress bars with rate and ETA (tqdm) on stderr, one per phase; silent unless stderr is a terminal.

    Call it as ``bar(done, total)`` or, from phase-aware library code
    (:mod:`int8batch._progress`), ``bar(done, total, phase=..., unit=...)``:
    each new phase closes the previous bar and starts its own.  While a bar
    is shown, console log lines are written above it (``tqdm.write``)
    instead of running into it.  ``tqdm`` is imported only when a bar is
    actually drawn, so ``-q`` and redirected output cost nothing.
    """

    def __init__(self, unit="images", enabled=None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.unit = unit
        self._bar = self._phase = self._handlers = None
        self._lock = threading.Lock()

    def __call__(self, done, total, phase=None, unit=None):
        if not self.enabled:
            return
        with self._lock:
            if self._bar is None or phase != self._phase or total != self._bar.total or done < self._bar.n:
                self._start(total, phase, unit)
                if self._bar is None:
                    return
            self._bar.update(done - self._bar.n)

    def _start(self, total, phase, unit):
        self._close_bar()
        try:
            from tqdm import tqdm
        except ImportError:  # a core dependency; without it the command still runs, without bars
            logging.getLogger(__name__).warning("no progress bars: tqdm is not installed (pip install tqdm)")
            self.enabled = False
            return
        if self._handlers is None:
            # not tqdm.contrib.logging: it imports asyncio and ssl (about 12 ms) for these few lines
            root = logging.getLogger()
            self._handlers = list(root.handlers)
            root.handlers = [_WriteAbove(h, tqdm.write) if _console(h, self.stream) else h for h in root.handlers]
        # a terminal that reports no size (a bare pty) would hide the bar: assume 80x24
        width = {} if _columns(self.stream) else {"ncols": 80, "nrows": 24}
        self._bar = tqdm(total=total, desc=phase, unit=" " + (unit or self.unit), file=self.stream,
                         dynamic_ncols=not width, mininterval=0.1, smoothing=0.1, leave=True, **width)
        self._phase = phase

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self):
        """Finish the current bar and restore the log handlers (safe to call twice)."""
        with self._lock:
            self._close_bar()
            if self._handlers is not None:
                logging.getLogger().handlers = self._handlers
                self._handlers = None
            self.enabled = False


class _WriteAbove(logging.Handler):
    """Stands in for a console log handler while a bar is shown: each line goes above the bar."""

    def __init__(self, handler, write):
        super().__init__(handler.level)
        self.setFormatter(handler.formatter)
        self.filters = list(handler.filters)
        self.stream, self._write = handler.stream, write

    def emit(self, record):
        try:
            self._write(self.format(record), file=self.stream)
        except Exception:  # logging's own rule: a failing handler must not break the program
            self.handleError(record)


def _console(handler, stream):
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout, stream)


def _columns(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
