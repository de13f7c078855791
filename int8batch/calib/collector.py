"""Streaming per-tensor statistics: |x| histograms and running maxima.

A collector never keeps the arrays it is given: each tensor's state is one
histogram of ``num_bins`` int64 counts plus a few scalars, whatever the number
of batches.  The thresholds (:mod:`int8batch.calib.thresholds`) are computed
afterwards from :class:`TensorStats` snapshots.

Histogram range rule (``mode="grow"``, the default)
---------------------------------------------------
The histogram covers ``[0, hist_max)``; bin ``j`` counts ``j*w <= |x| < (j+1)*w``
with ``w = hist_max / num_bins``.

1. Until a tensor has seen a non-zero finite value, ``hist_max`` is unset
   (0.0) and zeros are counted in bin 0 (bin 0 holds zeros at any range).
2. The first batch with ``m = max|x| > 0`` sets ``hist_max`` to the smallest
   power of two **strictly greater** than ``m``.
3. A later batch with ``m >= hist_max`` doubles ``hist_max`` (bins ``2j`` and
   ``2j+1`` merge into bin ``j``, the upper half starts empty) until
   ``hist_max > m``; then the batch is binned.

As with TensorRT's entropy calibrators, the range only ever grows by powers of
two.  Because ``hist_max`` is a power of two and the default ``num_bins`` is
too, the bin width is a power of two, every bin index is exact, and merging
pairs of bins is the same as binning at the doubled width.  So with a
power-of-two ``num_bins`` the final histogram is exactly the one-shot
histogram of all the data at the final range: **it does not depend on the
order of the batches or how the data was split into batches**, and
:meth:`HistogramCollector.merge` of two collectors equals one collector that
saw both streams.  The price is resolution: the data max lies in the upper half
of the range, so it spans between ``num_bins/2`` and ``num_bins`` bins.

``mode="trt"`` is the rule TensorRT's entropy calibrators follow: the first
batch's max ``|x|`` **itself** is the initial ``hist_max`` (so the data spans
all bins), and a later batch with a larger max doubles the range (merging
pairs of bins) until it covers it; a value equal to ``hist_max`` goes into the
last bin.  TensorRT's documentation says the range grows "by a power of two"
as larger values arrive, and the cache values TensorRT published for its MNIST
sample are reproduced bit for bit with the first batch's max as the range
(reference notes 4.2b); the power-of-two ranges of ``"grow"`` give other
values.  The first batch is the first *calibration* batch: when a model runs
one calibration batch in several sub-batches, pass that batch's maxima as
``ranges`` (the initial ``hist_max`` per tensor; tensors without one take the
first data they see).  The result depends on which batch comes first, as
TensorRT's does.

``mode="fixed"`` uses a given ``hist_max`` per tensor (for instance the exact
maxima of a first pass with :class:`MaxCollector`), so the data spans all bins.
Values with ``|x|`` at or above a fixed ``hist_max`` are counted in the last bin
and, when strictly above it, in ``TensorStats.over_count``.  A fixed range of 0
accepts only zeros.

NaN and +-inf are never histogrammed; they are counted (``nan_count``,
``inf_count``) and logged once per tensor.  Inputs of other float dtypes are
converted to float32 first.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .._kernels_calib import abs_histogram, abs_max
from ..errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

MODES = ("grow", "trt", "fixed")


def default_num_threads() -> int:
    """Threads used when ``num_threads=None``: ``OMP_NUM_THREADS`` if set, else the CPU count."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _as_float32(name: str, array) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "fiub":
        raise CalibrationError(
            f"tensor {name!r}: cannot histogram an array of dtype {a.dtype}; "
            "only numeric (float) tensors are calibrated")
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


def _pow2_above(m: float) -> float:
    """Smallest power of two strictly greater than ``m > 0``."""
    frac, exp = math.frexp(m)  # m = frac * 2**exp, 0.5 <= frac < 1
    return math.ldexp(1.0, exp)


@dataclass(frozen=True, eq=False)
class TensorStats:
    """Read-only snapshot of one tensor's statistics.

    Attributes
    ----------
    name : str
    hist : numpy.ndarray of int64, shape (num_bins,)
        Counts of ``|x|`` (a read-only copy).
    width : float
        Bin width; ``hist_max = width * num_bins``.  0.0 when no non-zero value
        was seen (then every count is in bin 0).
    amax : float
        Observed max ``|x|`` over finite values.
    count : int
        Finite values histogrammed (``hist.sum()``).
    nan_count, inf_count : int
        NaN and +-inf values seen (not histogrammed).
    over_count : int
        Values above a fixed ``hist_max`` (counted in the last bin); 0 in grow mode.
    min, max : float
        Signed min and max of the finite values (+inf / -inf when none).
    """

    name: str
    hist: np.ndarray
    width: float
    amax: float
    count: int
    nan_count: int = 0
    inf_count: int = 0
    over_count: int = 0
    min: float = math.inf
    max: float = -math.inf

    @property
    def num_bins(self) -> int:
        return int(self.hist.shape[0])

    @property
    def hist_max(self) -> float:
        return self.width * self.num_bins

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, float64, shape (num_bins + 1,)."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * self.width

    @classmethod
    def from_histogram(cls, hist, width, amax=None, name="", **extra):
        """Stats from a bare histogram; ``amax`` defaults to the top of the last non-empty bin."""
        h = np.array(hist, dtype=np.int64)
        if h.ndim != 1 or (h < 0).any():
            raise ConfigError(f"histogram of {name!r} must be 1-D with non-negative counts")
        h.setflags(write=False)
        if amax is None:
            nz = np.flatnonzero(h)
            amax = float((nz[-1] + 1) * width) if nz.size else 0.0
        return cls(name=name, hist=h, width=float(width), amax=float(amax), count=int(h.sum()),
                   **extra)


class _State:
    __slots__ = ("hist", "hist_max", "amax", "count", "nan", "inf", "over", "vmin", "vmax")

    def __init__(self, num_bins, hist_max=0.0):
        self.hist = np.zeros(num_bins, dtype=np.int64)
        self.hist_max = float(hist_max)
        self.amax = 0.0
        self.count = 0
        self.nan = self.inf = self.over = 0
        self.vmin, self.vmax = math.inf, -math.inf

    def add_scalars(self, amax, vmin, vmax, nan, inf, over, count):
        self.amax = max(self.amax, amax)
        self.vmin = min(self.vmin, vmin)
        self.vmax = max(self.vmax, vmax)
        self.nan += nan
        self.inf += inf
        self.over += over
        self.count += count

    def grow_to(self, m, strict=True):
        """Double ``hist_max`` (merging pairs of bins) until it is > m (``strict``) or >= m."""
        n = self.hist.shape[0]
        while m >= self.hist_max if strict else m > self.hist_max:
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist[: n // 2] = merged
            self.hist[n // 2:] = 0
            self.hist_max *= 2.0


class HistogramCollector:
    """Per-tensor |x| histograms, streamed batch by batch.

    Parameters
    ----------
    num_bins : int
        Bins per histogram, even (default 2048, the TensorRT entropy setting;
        keep it a power of two for the exact order-independence above).
    mode : {"grow", "trt", "fixed"}
        Range rule, see the module docstring.
    ranges : mapping of str to float, optional
        ``mode="fixed"``: ``hist_max`` per tensor (e.g.
        ``MaxCollector.ranges()``); collecting a tensor without a range
        raises :class:`~int8batch.errors.CalibrationError`.  ``mode="trt"``:
        the initial ``hist_max`` per tensor (the first calibration batch's
        maxima); optional.
    num_threads : int, optional
        Threads for the histogram kernel (None: :func:`default_num_threads`).
        Results are identical for any value.

    Notes
    -----
    The kernels release the GIL, but one collector is not thread-safe: give
    each thread its own collector and :meth:`merge` them (exact, see above).
    """

    def __init__(self, num_bins: int = 2048, mode: str = "grow",
                 ranges: Mapping[str, float] | None = None, num_threads: int | None = None):
        num_bins = int(num_bins)
        if num_bins < 2 or num_bins % 2:
            raise ConfigError(f"num_bins must be an even number >= 2, got {num_bins}")
        if mode not in MODES:
            raise ConfigError(f"unknown histogram mode {mode!r}; valid modes: {', '.join(MODES)}")
        if mode == "fixed" and ranges is None:
            raise ConfigError("mode='fixed' needs ranges={tensor: hist_max}, e.g. from a first "
                              "pass with MaxCollector().ranges()")
        if mode == "grow" and ranges is not None:
            raise ConfigError("ranges are only used with mode='fixed' or mode='trt'")
        self.num_bins = num_bins
        self.mode = mode
        self.ranges = None
        if ranges is not None:
            self.ranges = {}
            for k, v in ranges.items():
                v = float(v)
                if not (math.isfinite(v) and v >= 0.0):
                    raise ConfigError(
                        f"fixed range of tensor {k!r} must be finite and >= 0, got {v}")
                self.ranges[str(k)] = v
        self.num_threads = default_num_threads() if num_threads is None else int(num_threads)
        if self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        self._states: dict[str, _State] = {}
        self._tmp = np.empty(num_bins, dtype=np.int64)  # one batch's counts, reused

    # -- collection ------------------------------------------------------
    def _state(self, name):
        st = self._states.get(name)
        if st is None:
            if self.mode == "fixed":
                if name not in self.ranges:
                    raise CalibrationError(
                        f"tensor {name!r} has no fixed histogram range; run the max pass over it "
                        "first or use mode='grow'")
                st = _State(self.num_bins, self.ranges[name])
            elif self.ranges is not None:  # trt mode with the first batch's maxima
                st = _State(self.num_bins, self.ranges.get(name, 0.0))
            else:
                st = _State(self.num_bins)
            self._states[name] = st
        return st

    def collect(self, name: str, array) -> None:
        """Add the values of ``array`` (any shape) to the histogram of ``name``."""
        x = _as_float32(name, array)
        st = self._state(name)
        nt = self.num_threads
        if st.hist_max == 0.0:
            amax, vmin, vmax, nan, inf, _ = abs_max(x, nt)
            finite = x.size - nan - inf
            if amax == 0.0:
                st.hist[0] += finite
                self._warn_nonfinite(name, st, nan, inf)
                st.add_scalars(amax, vmin, vmax, nan, inf, 0, finite)
                return
            if self.mode == "fixed":
                raise CalibrationError(
                    f"tensor {name!r} has a fixed histogram range of 0 (all zeros in the max pass) "
                    f"but now holds |x| up to {amax:g}; the two passes saw different data")
            st.hist_max = amax if self.mode == "trt" else _pow2_above(amax)
        # One histogram pass per batch.  Checking the max first (abs_max, a cheap
        # SIMD pass) would cost ~20% of a histogram pass on every batch; the
        # re-binning below costs one pass, and only on the few batches that grow
        # the range (the first batch pays the max pass above instead).
        tmp = self._tmp
        amax, vmin, vmax, nan, inf, over = abs_histogram(x, st.hist_max, tmp, nt)
        if (self.mode == "grow" and amax >= st.hist_max) or (self.mode == "trt" and amax > st.hist_max):
            # Rare (only when the range grows): re-bin this batch at the new range.
            st.grow_to(amax, strict=self.mode == "grow")
            amax, vmin, vmax, nan, inf, over = abs_histogram(x, st.hist_max, tmp, nt)
        st.hist += tmp
        self._warn_nonfinite(name, st, nan, inf)
        st.add_scalars(amax, vmin, vmax, nan, inf, over, x.size - nan - inf)

    def collect_many(self, arrays: Mapping[str, object]) -> None:
        """``collect`` every ``name: array`` of a mapping, in its order."""
        for name, array in arrays.items():
            self.collect(name, array)

    @staticmethod
    def _warn_nonfinite(name, st, nan, inf):
        # Once per tensor: the first batch that holds NaN or inf.
        if (nan or inf) and not (st.nan or st.inf):
            log.warning("tensor %r: ignoring %d NaN and %d inf values (and any in later batches); "
                        "they are counted in TensorStats.nan_count/inf_count", name, nan, inf)

    # -- bookkeeping -----------------------------------------------------
    def merge(self, other: "HistogramCollector") -> "HistogramCollector":
        """Add ``other``'s statistics into this collector (``other`` is unchanged); returns self."""
        if not isinstance(other, HistogramCollector):
            raise TypeError(f"can only merge a HistogramCollector, not {type(other).__name__}")
        if other.num_bins != self.num_bins or other.mode != self.mode:
            raise CalibrationError(
                "cannot merge collectors with different settings "
                f"({self.num_bins} bins/{self.mode} "
                f"vs {other.num_bins} bins/{other.mode})")
        for name, src in other._states.items():
            dst = self._state(name)
            hist = src.hist.copy()
            if self.mode == "fixed":
                if src.hist_max != dst.hist_max:
                    raise CalibrationError(
                        f"tensor {name!r}: fixed ranges differ ({dst.hist_max} vs {src.hist_max})")
            elif src.hist_max != 0.0:
                if self.mode == "trt" and dst.hist_max != 0.0:
                    ratio = math.frexp(max(src.hist_max, dst.hist_max) / min(src.hist_max, dst.hist_max))[0]
                    if ratio != 0.5:
                        raise CalibrationError(
                            f"tensor {name!r}: cannot merge TensorRT-rule histograms whose ranges "
                            f"({dst.hist_max} and {src.hist_max}) are not a power of two apart; "
                            "give both collectors the same first-batch ranges")
                if dst.hist_max == 0.0:
                    dst.hist_max = src.hist_max
                elif src.hist_max > dst.hist_max:
                    dst.grow_to(src.hist_max / 2.0)
                elif src.hist_max < dst.hist_max:
                    tmp = _State(self.num_bins, src.hist_max)
                    tmp.hist = hist
                    tmp.grow_to(dst.hist_max / 2.0)
                    hist = tmp.hist
            dst.hist += hist
            dst.add_scalars(src.amax, src.vmin, src.vmax, src.nan, src.inf, src.over, src.count)
        return self

    def reset(self) -> None:
        """Forget every tensor (the fixed ranges, if any, are kept)."""
        self._states.clear()

    def names(self) -> list[str]:
        """Tensor names in first-collected order."""
        return list(self._states)

    def __contains__(self, name) -> bool:
        return name in self._states

    def __len__(self) -> int:
        return len(self._states)

    def stats(self, name: str) -> TensorStats:
        """Snapshot of one tensor (copies; later collection does not change it)."""
        st = self._states.get(name)
        if st is None:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        hist = st.hist.copy()
        hist.setflags(write=False)
        return TensorStats(name=name, hist=hist, width=st.hist_max / self.num_bins,
                           amax=st.amax, count=st.count, nan_count=st.nan, inf_count=st.inf,
                           over_count=st.over, min=st.vmin, max=st.vmax)

    def all_stats(self) -> dict[str, TensorStats]:
        """``{name: stats(name)}`` in first-collected order."""
        return {name: self.stats(name) for name in self._states}


class MaxCollector:
    """Running max ``|x|`` (and signed min/max, NaN/inf counts) per tensor.

    The first pass of the exact two-pass flow::

        mc = MaxCollector()
        for batch in batches: mc.collect(name, out)
        hc = HistogramCollector(mode="fixed", ranges=mc.ranges())
        for batch in batches: hc.collect(name, out)
    """

    def __init__(self, num_threads: int | None = None):
        self.num_threads = default_num_threads() if num_threads is None else int(num_threads)
        if self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        self._states: dict[str, _State] = {}

    def collect(self, name: str, array) -> None:
        x = _as_float32(name, array)
        st = self._states.get(name)
        if st is None:
            st = self._states[name] = _State(0)
        amax, vmin, vmax, nan, inf, _ = abs_max(x, self.num_threads)
        st.add_scalars(amax, vmin, vmax, nan, inf, 0, x.size - nan - inf)

    def collect_many(self, arrays: Mapping[str, object]) -> None:
        for name, array in arrays.items():
            self.collect(name, array)

    def merge(self, other: "MaxCollector") -> "MaxCollector":
        if not isinstance(other, MaxCollector):
            raise TypeError(f"can only merge a MaxCollector, not {type(other).__name__}")
        for name, src in other._states.items():
            dst = self._states.get(name)
            if dst is None:
                dst = self._states[name] = _State(0)
            dst.add_scalars(src.amax, src.vmin, src.vmax, src.nan, src.inf, 0, src.count)
        return self

    def reset(self) -> None:
        self._states.clear()

    def names(self) -> list[str]:
        return list(self._states)

    def amax(self, name: str) -> float:
        """Max ``|x|`` over the finite values of ``name``."""
        if name not in self._states:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        return self._states[name].amax

    def ranges(self) -> dict[str, float]:
        """``{name: max|x|}``, ready for ``HistogramCollector(mode="fixed", ranges=...)``."""
        return {name: st.amax for name, st in self._states.items()}

    def stats(self, name: str) -> TensorStats:
        """Stats with an empty one-bin histogram (only the scalars are meaningful)."""
        st = self._states.get(name)
        if st is None:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        hist = np.zeros(1, dtype=np.int64)
        hist.setflags(write=False)
        return TensorStats(name=name, hist=hist, width=0.0, amax=st.amax, count=st.count,
                           nan_count=st.nan, inf_count=st.inf, min=st.vmin, max=st.vmax)
