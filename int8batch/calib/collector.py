"""Streaming per-tensor statistics: |x| histograms and running maxima.

A collector never keeps the arrays it is given: each tensor's state is one
histogram of ``num_bins`` int64 counts plus a few scalars, whatever the number
of batches.  ``collect_many`` takes all the activations of one inference run
in a single kernel call (one thread team for all of them); ``collect`` takes
one tensor, with the same result.  The thresholds (:mod:`int8batch.calib.thresholds`) are computed
afterwards from :class:`TensorStats` snapshots.

(Over 400 lines on purpose: the three range modes, the batching of rows into one
kernel call, merging and growing all work on one state layout, ``_Rows``; split
apart they would each need its internals.)

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
(``tests/calib/test_trt_fidelity.py``); the power-of-two ranges of ``"grow"`` give other
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

from .._kernels_calib import abs_histogram, abs_histogram_many, abs_max, abs_max_many
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


def _threads(num_threads):
    nt = default_num_threads() if num_threads is None else int(num_threads)
    if nt < 1:
        raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
    return nt


def _as_float32(name: str, array) -> np.ndarray:
    """``array`` as a C-contiguous float32 array of its shape (itself when it already is one)."""
    a = np.asarray(array)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        if a.dtype.kind not in "fiub":
            raise CalibrationError(
                f"tensor {name!r}: cannot histogram an array of dtype {a.dtype}; "
                "only numeric (float) tensors are calibrated")
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


class _HostKernels:
    """The CPU kernels of ``int8batch._kernels_calib``, as a collector calls them.

    A collector's ``kernels`` is any object with these methods and results;
    :class:`int8batch.cuda.kernels.DeviceKernels` is the GPU one (data that is
    already on the device, the same numbers).
    """

    @staticmethod
    def prepare(name, array):
        return _as_float32(name, array).reshape(-1)

    abs_max = staticmethod(abs_max)
    abs_max_many = staticmethod(abs_max_many)
    abs_histogram = staticmethod(abs_histogram)
    abs_histogram_many = staticmethod(abs_histogram_many)


HOST_KERNELS = _HostKernels()


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


class _Rows:
    """Every tensor's state as one row of a few arrays (row i: the i-th tensor seen).

    A calibration run hands the collector all of a run's activations at once;
    with the state in arrays, that batch updates every tensor with a handful of
    array operations instead of Python work per tensor.
    """

    def __init__(self, num_bins):
        self.num_bins = num_bins
        self.index: dict[str, int] = {}
        self._alloc(0)

    def _alloc(self, cap):
        old = getattr(self, "hist", None)
        n = len(self.index)
        new = {"hist": np.zeros((cap, self.num_bins), np.int64), "hist_max": np.zeros(cap),
               "amax": np.zeros(cap), "vmin": np.full(cap, math.inf), "vmax": np.full(cap, -math.inf),
               "count": np.zeros(cap, np.int64), "nan": np.zeros(cap, np.int64),
               "inf": np.zeros(cap, np.int64), "over": np.zeros(cap, np.int64)}
        for key, arr in new.items():
            if old is not None:
                arr[:n] = getattr(self, key)[:n]
            setattr(self, key, arr)

    def add(self, name, hist_max):
        r = len(self.index)
        if r == self.hist.shape[0]:
            self._alloc(max(8, 2 * r))
        self.index[name] = r
        self.hist_max[r] = hist_max
        return r

    def clear(self):
        self.index.clear()
        self._alloc(0)

    def add_scalars(self, r, amax, vmin, vmax, nan, inf, over, count):
        """Fold one batch's scalars into row(s) ``r`` (an int, a slice or unique rows).

        A min/max changes only when strictly passed, so a zero min/max keeps the
        sign of the first batch's.
        """
        if isinstance(r, (int, np.integer)):  # one tensor: Python beats NumPy on scalars
            if amax > self.amax[r]:
                self.amax[r] = amax
            if vmin < self.vmin[r]:
                self.vmin[r] = vmin
            if vmax > self.vmax[r]:
                self.vmax[r] = vmax
        else:
            self.amax[r] = np.where(amax > self.amax[r], amax, self.amax[r])
            self.vmin[r] = np.where(vmin < self.vmin[r], vmin, self.vmin[r])
            self.vmax[r] = np.where(vmax > self.vmax[r], vmax, self.vmax[r])
        self.nan[r] += nan
        self.inf[r] += inf
        self.over[r] += over
        self.count[r] += count

    def grow_to(self, r, m, strict=True):
        """Double row ``r``'s ``hist_max`` (merging pairs of bins) until it is > m (``strict``) or >= m."""
        self.hist_max[r] = _grow(self.hist[r], float(self.hist_max[r]), m, strict)

    def warn_nonfinite(self, names, r, nan, inf):
        # Once per tensor: the first batch that holds NaN or inf.
        if not (nan.any() or inf.any()):
            return
        first = ((nan > 0) | (inf > 0)) & (self.nan[r] == 0) & (self.inf[r] == 0)
        for i in np.flatnonzero(first):
            log.warning("tensor %r: %d NaN and %d inf values, left out of its histogram (as are any in later "
                        "batches; calibration.json counts them per tensor: nan_count, inf_count)", names[i], nan[i],
                        inf[i])

    def stats(self, name, hist, width):
        r = self.index[name]
        hist.setflags(write=False)
        return TensorStats(name=name, hist=hist, width=width, amax=float(self.amax[r]),
                           count=int(self.count[r]), nan_count=int(self.nan[r]), inf_count=int(self.inf[r]),
                           over_count=int(self.over[r]), min=float(self.vmin[r]), max=float(self.vmax[r]))


def _grow(h, hist_max, m, strict=True):
    """Double ``hist_max`` (merging pairs of bins of ``h`` in place) until it is > m (``strict``) or >= m."""
    n = h.shape[0]
    while m >= hist_max if strict else m > hist_max:
        h[: n // 2] = h.reshape(-1, 2).sum(axis=1)
        h[n // 2:] = 0
        hist_max *= 2.0
    return hist_max


def _rows_key(rows):
    """A slice when ``rows`` are consecutive (NumPy then updates views, not gathered copies)."""
    rows = np.asarray(rows, dtype=np.intp)
    if rows.size and (rows == np.arange(rows[0], rows[0] + rows.size)).all():
        return slice(int(rows[0]), int(rows[0]) + rows.size)
    return rows


def _sizes(xs):
    return np.fromiter((x.size for x in xs), np.int64, len(xs))


def _row_array(r):
    return np.arange(r.start, r.stop) if isinstance(r, slice) else r


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
        Most threads for the histogram kernels (None: :func:`default_num_threads`);
        the kernels use fewer on small inputs.  Results are identical for any value.
    kernels : object, optional
        Where the statistics are computed: the CPU kernels (default) or
        :class:`int8batch.cuda.kernels.DeviceKernels`, whose tensors are
        already on the GPU.  The results are the same numbers.

    Notes
    -----
    :meth:`collect_many` (all the activations of one inference run) is the
    fast path: one kernel call, and one thread team, for every tensor, and the
    state of all of them updated by array operations.  The result is the same
    as :meth:`collect` on each tensor in turn.  The kernels release the GIL,
    but one collector is not thread-safe: give each thread its own collector
    and :meth:`merge` them (exact, see above).
    """

    def __init__(self, num_bins: int = 2048, mode: str = "grow",
                 ranges: Mapping[str, float] | None = None, num_threads: int | None = None,
                 kernels=None):
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
        self.num_threads = _threads(num_threads)
        self.kernels = kernels or HOST_KERNELS
        self._rows = _Rows(num_bins)
        self._plans: dict[tuple, object] = {}   # names of a collect_many call -> their rows
        self._tmp = np.empty((1, num_bins), dtype=np.int64)  # one batch's counts, reused

    # -- collection ------------------------------------------------------
    def _row(self, name):
        r = self._rows.index.get(name)
        if r is None:
            if self.mode == "fixed":
                if name not in self.ranges:
                    raise CalibrationError(
                        f"tensor {name!r} has no fixed histogram range; run the max pass over it "
                        "first or use mode='grow'")
                r = self._rows.add(name, self.ranges[name])
            elif self.ranges is not None:  # trt mode with the first batch's maxima
                r = self._rows.add(name, self.ranges.get(name, 0.0))
            else:
                r = self._rows.add(name, 0.0)
        return r

    def _first_range(self, name, amax):
        """``hist_max`` of a tensor's first batch with ``amax > 0``."""
        if self.mode == "fixed":
            raise CalibrationError(
                f"tensor {name!r} has a fixed histogram range of 0 (all zeros in the max pass) "
                f"but now holds |x| up to {amax:g}; the two passes saw different data")
        return amax if self.mode == "trt" else _pow2_above(amax)

    def _grows(self, amax, hist_max):
        """Whether a batch with max ``amax`` grows the range ``hist_max`` (arrays or floats)."""
        if self.mode == "grow":
            return amax >= hist_max
        return amax > hist_max if self.mode == "trt" else amax != amax  # fixed: never

    def collect(self, name: str, array) -> None:
        """Add the values of ``array`` (any shape) to the histogram of ``name``."""
        k = self.kernels
        x = k.prepare(name, array)
        rows, r, nt = self._rows, self._row(name), self.num_threads
        if rows.hist_max[r] == 0.0:
            amax, vmin, vmax, nan, inf, _ = k.abs_max(x, nt)
            finite = x.size - nan - inf
            if amax == 0.0:
                rows.hist[r, 0] += finite
                if nan or inf:
                    rows.warn_nonfinite([name], [r], np.array([nan]), np.array([inf]))
                rows.add_scalars(r, amax, vmin, vmax, nan, inf, 0, finite)
                return
            rows.hist_max[r] = self._first_range(name, amax)
        # One histogram pass per batch.  Checking the max first (abs_max, a cheap
        # SIMD pass) would cost ~20% of a histogram pass on every batch; the
        # re-binning below costs one pass, and only on the few batches that grow
        # the range (the first batch pays the max pass above instead).
        tmp = self._tmp[0]
        amax, vmin, vmax, nan, inf, over = k.abs_histogram(x, rows.hist_max[r], tmp, nt)
        if self._grows(amax, rows.hist_max[r]):
            # Rare (only when the range grows): re-bin this batch at the new range.
            rows.grow_to(r, amax, strict=self.mode == "grow")
            amax, vmin, vmax, nan, inf, over = k.abs_histogram(x, rows.hist_max[r], tmp, nt)
        rows.hist[r] += tmp
        if nan or inf:
            rows.warn_nonfinite([name], [r], np.array([nan]), np.array([inf]))
        rows.add_scalars(r, amax, vmin, vmax, nan, inf, over, x.size - nan - inf)

    def collect_many(self, arrays: Mapping[str, object]) -> None:
        """``collect`` every ``name: array`` of a mapping, with one kernel call for all.

        The same result as :meth:`collect` on each in turn: a tensor's first
        non-zero batch sets its range (one max pass over those tensors), and a
        batch that grows a range is re-binned at the new range, tensor by tensor.
        """
        if not arrays:
            return
        names = tuple(arrays)
        kern = self.kernels
        xs = [kern.prepare(n, a) for n, a in arrays.items()]
        r = self._plans.get(names)
        if r is None:
            if self.mode == "fixed":
                missing = [n for n in names if n not in self._rows.index and n not in self.ranges]
                if missing:
                    self._row(missing[0])  # raises
            r = self._plans[names] = _rows_key([self._row(n) for n in names])
        rows, nt = self._rows, self.num_threads
        sizes = _sizes(xs)
        unset = np.flatnonzero(rows.hist_max[r] == 0.0)
        if unset.size:
            todo = self._first_batches(names, xs, _row_array(r), unset, sizes)
            if not todo.size:
                return
            names = [names[i] for i in todo]
            xs = [xs[i] for i in todo]
            r, sizes = _row_array(r)[todo], sizes[todo]
        k = len(xs)
        if self._tmp.shape[0] < k:
            self._tmp = np.empty((k, self.num_bins), dtype=np.int64)
        tmp = self._tmp[:k]
        hist_max = rows.hist_max[r].copy()
        amax, vmin, vmax, nan, inf, over = kern.abs_histogram_many(xs, hist_max, tmp, nt)
        for i in np.flatnonzero(self._grows(amax, hist_max)):
            # Rare (only when a range grows): re-bin that tensor at its new range.
            ri = _row_array(r)[i]
            rows.grow_to(ri, amax[i], strict=self.mode == "grow")
            res = kern.abs_histogram(xs[i], rows.hist_max[ri], tmp[i], nt)
            amax[i], vmin[i], vmax[i], nan[i], inf[i], over[i] = res
        rows.hist[r] += tmp
        rows.warn_nonfinite(names, r, nan, inf)
        rows.add_scalars(r, amax, vmin, vmax, nan, inf, over, sizes - nan - inf)

    def _first_batches(self, names, xs, r, unset, sizes):
        """Tensors without a range yet: the max first, as :meth:`collect` does; returns what to histogram."""
        rows = self._rows
        ru = r[unset]
        amax, vmin, vmax, nan, inf, _ = self.kernels.abs_max_many([xs[i] for i in unset], self.num_threads)
        zero = amax == 0.0
        rz = ru[zero]
        finite = (sizes[unset] - nan - inf)[zero]
        rows.hist[rz, 0] += finite
        rows.warn_nonfinite([names[i] for i in unset[zero]], rz, nan[zero], inf[zero])
        rows.add_scalars(rz, amax[zero], vmin[zero], vmax[zero], nan[zero], inf[zero], 0, finite)
        for i, m in zip(unset[~zero], amax[~zero]):
            rows.hist_max[r[i]] = self._first_range(names[i], float(m))
        keep = np.ones(len(names), dtype=bool)
        keep[unset[zero]] = False
        return np.flatnonzero(keep)

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
        src, dst = other._rows, self._rows
        for name, s in src.index.items():
            d = self._row(name)
            hist = src.hist[s].copy()
            s_max, d_max = src.hist_max[s], dst.hist_max[d]
            if self.mode == "fixed":
                if s_max != d_max:
                    raise CalibrationError(
                        f"tensor {name!r}: fixed ranges differ ({d_max} vs {s_max})")
            elif s_max != 0.0:
                if self.mode == "trt" and d_max != 0.0:
                    ratio = math.frexp(max(s_max, d_max) / min(s_max, d_max))[0]
                    if ratio != 0.5:
                        raise CalibrationError(
                            f"tensor {name!r}: cannot merge TensorRT-rule histograms whose ranges "
                            f"({d_max} and {s_max}) are not a power of two apart; "
                            "give both collectors the same first-batch ranges")
                if d_max == 0.0:
                    dst.hist_max[d] = s_max
                elif s_max > d_max:
                    dst.grow_to(d, s_max / 2.0)
                elif s_max < d_max:
                    _grow(hist, s_max, d_max / 2.0)
            dst.hist[d] += hist
            dst.add_scalars(d, src.amax[s], src.vmin[s], src.vmax[s], src.nan[s], src.inf[s],
                            src.over[s], src.count[s])
        return self

    def reset(self) -> None:
        """Forget every tensor (the fixed ranges, if any, are kept)."""
        self._rows.clear()
        self._plans.clear()

    def names(self) -> list[str]:
        """Tensor names in first-collected order."""
        return list(self._rows.index)

    def __contains__(self, name) -> bool:
        return name in self._rows.index

    def __len__(self) -> int:
        return len(self._rows.index)

    def stats(self, name: str) -> TensorStats:
        """Snapshot of one tensor (copies; later collection does not change it)."""
        r = self._rows.index.get(name)
        if r is None:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        return self._rows.stats(name, self._rows.hist[r].copy(),
                                float(self._rows.hist_max[r]) / self.num_bins)

    def all_stats(self) -> dict[str, TensorStats]:
        """``{name: stats(name)}`` in first-collected order."""
        return {name: self.stats(name) for name in self._rows.index}


class MaxCollector:
    """Running max ``|x|`` (and signed min/max, NaN/inf counts) per tensor.

    The first pass of the exact two-pass flow::

        mc = MaxCollector()
        for batch in batches: mc.collect(name, out)
        hc = HistogramCollector(mode="fixed", ranges=mc.ranges())
        for batch in batches: hc.collect(name, out)
    """

    def __init__(self, num_threads: int | None = None, kernels=None):
        self.num_threads = _threads(num_threads)
        self.kernels = kernels or HOST_KERNELS
        self._rows = _Rows(0)
        self._plans: dict[tuple, object] = {}

    def _row(self, name):
        r = self._rows.index.get(name)
        return self._rows.add(name, 0.0) if r is None else r

    def collect(self, name: str, array) -> None:
        x = self.kernels.prepare(name, array)
        amax, vmin, vmax, nan, inf, _ = self.kernels.abs_max(x, self.num_threads)
        self._rows.add_scalars(self._row(name), amax, vmin, vmax, nan, inf, 0, x.size - nan - inf)

    def collect_many(self, arrays: Mapping[str, object]) -> None:
        """``collect`` every ``name: array`` of a mapping, with one kernel call for all."""
        if not arrays:
            return
        names = tuple(arrays)
        xs = [self.kernels.prepare(n, a) for n, a in arrays.items()]
        r = self._plans.get(names)
        if r is None:
            r = self._plans[names] = _rows_key([self._row(n) for n in names])
        amax, vmin, vmax, nan, inf, _ = self.kernels.abs_max_many(xs, self.num_threads)
        self._rows.add_scalars(r, amax, vmin, vmax, nan, inf, 0, _sizes(xs) - nan - inf)

    def merge(self, other: "MaxCollector") -> "MaxCollector":
        if not isinstance(other, MaxCollector):
            raise TypeError(f"can only merge a MaxCollector, not {type(other).__name__}")
        src = other._rows
        for name, s in src.index.items():
            self._rows.add_scalars(self._row(name), src.amax[s], src.vmin[s], src.vmax[s], src.nan[s],
                                   src.inf[s], 0, src.count[s])
        return self

    def reset(self) -> None:
        self._rows.clear()
        self._plans.clear()

    def names(self) -> list[str]:
        return list(self._rows.index)

    def amax(self, name: str) -> float:
        """Max ``|x|`` over the finite values of ``name``."""
        if name not in self._rows.index:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        return float(self._rows.amax[self._rows.index[name]])

    def ranges(self) -> dict[str, float]:
        """``{name: max|x|}``, ready for ``HistogramCollector(mode="fixed", ranges=...)``."""
        return {name: float(self._rows.amax[r]) for name, r in self._rows.index.items()}

    def stats(self, name: str) -> TensorStats:
        """Stats with an empty one-bin histogram (only the scalars are meaningful)."""
        if name not in self._rows.index:
            raise KeyError(f"no statistics collected for tensor {name!r}")
        return self._rows.stats(name, np.zeros(1, dtype=np.int64), 0.0)
