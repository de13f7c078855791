"""Option groups shared by several subcommands (preprocessing, progress)."""
import contextlib
import logging
import sys
import time

from ..preprocess import CHANNEL_MODES, CROP_MODES, INTERPOLATIONS, PRESETS, RESIZE_MODES


def _floats(text):
    return tuple(float(x) for x in text.replace(",", " ").split())


def _size(text):
    parts = text.lower().replace("x", " ").replace(",", " ").split()
    vals = tuple(int(p) for p in parts)
    return vals[0] if len(vals) == 1 else vals


def keep_float_value(text):
    """``--keep-float``: a count, or ``auto``."""
    return text if text == "auto" else int(text)


def add_preprocess_options(parser):
    """Preprocessing options; each overrides the preset's value when given."""
    g = parser.add_argument_group("preprocessing (each overrides the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a complete classic recipe (default for IDX "
                   "sources: mnist)")
    g.add_argument("--size", type=_size, metavar="H[xW]", help="output size, e.g. 224 or 224x224")
    g.add_argument("--resize", choices=RESIZE_MODES, help="short side to --resize-size, direct warp, or none")
    g.add_argument("--resize-size", type=_size, metavar="S|HxW", help="short side (short) or HxW (direct)")
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
    """A one-line progress bar with a rate, on stderr, only when it is a terminal."""

    def __init__(self, unit="images", enabled=None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.unit = unit
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._filter = None
        if self.enabled:
            # log lines (e.g. skipped images) clear the bar's line first instead of running into it
            self._filter = _ClearLine(self.stream)
            for h in logging.getLogger().handlers:
                h.addFilter(self._filter)

    def __call__(self, done, total):
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-9)
        width = 30
        filled = int(width * done / max(total, 1))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.unit} "
                          f"{rate:,.0f} {self.unit}/s ")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
            for h in logging.getLogger().handlers:
                h.removeFilter(self._filter)
            self.enabled = False


class _ClearLine(logging.Filter):
    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def filter(self, record):
        self.stream.write("\r\033[K")
        return True
