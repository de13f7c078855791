"""Amax (symmetric clipping threshold) algorithms: pure functions of ``TensorStats``.

Every function takes a :class:`~int8batch.calib.collector.TensorStats` (or any
object with ``hist``, ``width``, ``amax`` and ``count``), never modifies it, and
returns a Python float.  The int8 scale is then ``amax / 127``.

Shared rules
------------
* A tensor that never held a non-zero value (``amax == 0`` or ``width == 0``)
  gets ``amax = 0.0`` from every method; writers of caches and Q/DQ models
  must replace that by a positive placeholder (TensorRT rejects scale 0).
* ``clip=True`` (the default, :attr:`ThresholdConfig.clip_to_observed`) caps
  the result at the observed max ``|x|``: a threshold above every value can
  only waste resolution.  Pass ``clip=False`` for the raw algorithm.
* ``None`` for any parameter means the default in :data:`DEFAULTS`.

Methods
-------
``minmax``
    the observed max ``|x|`` (TensorRT ``MinMaxCalibration``).
``percentile``
    the right edge of the first bin where the cumulative count reaches
    ``percentile`` % of the values (99.99 by default).
``entropy``
    TensorRT's ``IInt8EntropyCalibrator2`` search, reproducing the cache
    values TensorRT published (sampleINT8 READMEs): bin 0 counted as bin 1
    (the zero-spike discount), candidates from bin 128 up to and including the
    full range, outliers folded into the last kept bin, 128 levels, threshold
    ``(i + 0.5) * width``, **not** capped at the observed max (TensorRT's
    softmax entries lie half a bin above it).  The search itself is
    :func:`int8batch._kernels_calib.kl_search`; the histogram it needs is the
    ``"trt"`` mode of :class:`~int8batch.calib.collector.HistogramCollector`.
    Histograms with fewer than ``start_bin`` bins, or with no finite
    divergence, fall back to minmax.
``mse``
    the amax minimising the mean squared int8 fake-quant error of the bin
    centres (rounding inside, clipping outside), see
    :func:`int8batch._kernels_calib.mse_search`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from .._kernels_calib import kl_search, mse_search
from ..errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class ThresholdConfig:
    """Every default of the threshold algorithms, in one place.

    Attributes
    ----------
    percentile : float
        Percentile of ``|x|`` for ``method="percentile"`` (0 < p <= 100).
    num_levels : int
        Quantized levels of the entropy method (128 = int8 symmetric).
    entropy_start_bin : int
        First KL candidate (number of bins kept).
    mse_start_bin : int
        Smallest MSE candidate, in bins.
    mse_stride : int
        Coarse MSE grid step, in bins (refined to 1 around the best).
    clip_to_observed : bool
        Cap every result at the observed max ``|x|``.
    """

    percentile: float = 99.99
    num_levels: int = 128
    entropy_start_bin: int = 128
    mse_start_bin: int = 128
    mse_stride: int = 8
    clip_to_observed: bool = True

    def __post_init__(self):
        if not (0.0 < float(self.percentile) <= 100.0):
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if int(self.num_levels) < 1:
            raise ConfigError(f"num_levels must be >= 1, got {self.num_levels}")
        if int(self.entropy_start_bin) < int(self.num_levels):
            raise ConfigError(f"entropy_start_bin ({self.entropy_start_bin}) must be >= "
                              f"num_levels ({self.num_levels})")
        if int(self.mse_start_bin) < 1 or int(self.mse_stride) < 1:
            raise ConfigError("mse_start_bin and mse_stride must be >= 1, got "
                              f"{self.mse_start_bin} and {self.mse_stride}")

    def replace(self, **changes) -> "ThresholdConfig":
        """A copy with some fields changed (``None`` values are ignored)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ConfigError(f"unknown threshold option(s) {bad}; valid: {sorted(known)}")
        cur = {f.name: getattr(self, f.name) for f in fields(self)}
        cur.update({k: v for k, v in changes.items() if v is not None})
        return ThresholdConfig(**cur)


DEFAULTS = ThresholdConfig()


def _pick(value, default):
    return default if value is None else value


def _empty(stats) -> bool:
    return not (stats.amax > 0.0 and stats.width > 0.0 and stats.count > 0)


def _hist(stats) -> np.ndarray:
    # Contiguous int64 for the kernels; np.array copies, so the input is never touched.
    return np.array(stats.hist, dtype=np.int64, copy=True)


def _finish(stats, amax, clip) -> float:
    amax = float(amax)
    if _pick(clip, DEFAULTS.clip_to_observed):
        amax = min(amax, float(stats.amax))
    return amax


def amax_minmax(stats) -> float:
    """The observed max ``|x|`` (0.0 for an all-zero or empty tensor)."""
    return 0.0 if _empty(stats) else float(stats.amax)


def amax_percentile(stats, percentile: float | None = None, *, clip: bool | None = None) -> float:
    """Right edge of the bin where the cumulative ``|x|`` count reaches ``percentile`` %."""
    p = float(_pick(percentile, DEFAULTS.percentile))
    if not (0.0 < p <= 100.0):
        raise ConfigError(f"percentile must be in (0, 100], got {p}")
    if _empty(stats):
        return 0.0
    cum = np.cumsum(_hist(stats))
    j = int(np.searchsorted(cum, p / 100.0 * float(cum[-1]), side="left"))
    j = min(j, cum.size - 1)
    return _finish(stats, (j + 1) * stats.width, clip)


def amax_entropy(stats, num_levels: int | None = None, start_bin: int | None = None, *,
                 clip: bool = False) -> float:
    """TensorRT's Entropy2 threshold: ``(i + 0.5) * width`` of the KL-best ``i``.

    ``hist[0]`` is replaced by ``hist[1]`` (in a copy) before the search, and
    the result is not capped at the observed max unless ``clip=True``.
    """
    levels = int(_pick(num_levels, DEFAULTS.num_levels))
    start = int(_pick(start_bin, DEFAULTS.entropy_start_bin))
    if levels < 1 or start < levels:
        raise ConfigError(f"entropy needs 1 <= num_levels <= start_bin, got {levels} and {start}")
    if _empty(stats):
        return 0.0
    hist = _hist(stats)
    if hist.size < start:
        log.debug("tensor %r: %d bins leave no entropy candidate from bin %d; using minmax",
                  getattr(stats, "name", ""), hist.size, start)
        return float(stats.amax)
    if hist.size > 1:
        hist[0] = hist[1]  # TensorRT's zero-bin discount (a ReLU's zeros would dominate P otherwise)
    i = kl_search(hist, levels, start)
    if i < 0:
        log.debug("tensor %r: no finite KL divergence; using minmax", getattr(stats, "name", ""))
        return float(stats.amax)
    return _finish(stats, (i + 0.5) * stats.width, clip)


def amax_mse(stats, start_bin: int | None = None, stride: int | None = None, *,
             clip: bool | None = None) -> float:
    """Amax minimising the mean squared int8 quantization error over the histogram."""
    start = int(_pick(start_bin, DEFAULTS.mse_start_bin))
    step = int(_pick(stride, DEFAULTS.mse_stride))
    if start < 1 or step < 1:
        raise ConfigError(f"mse start_bin and stride must be >= 1, got {start} and {step}")
    if _empty(stats):
        return 0.0
    k = mse_search(_hist(stats), start, step)
    return _finish(stats, k * stats.width, clip)


# method -> (function, {parameter name: ThresholdConfig field})
_DISPATCH = {
    "minmax": (amax_minmax, {}),
    "percentile": (amax_percentile, {"percentile": "percentile", "clip": "clip_to_observed"}),
    "entropy": (amax_entropy, {"num_levels": "num_levels", "start_bin": "entropy_start_bin"}),
    "mse": (amax_mse, {"start_bin": "mse_start_bin", "stride": "mse_stride",
                       "clip": "clip_to_observed"}),
}


def _resolve(method, config, params):
    if method not in _DISPATCH:
        raise ConfigError(f"unknown calibration method {method!r}; valid methods: "
                          f"{', '.join(METHODS)}")
    func, mapping = _DISPATCH[method]
    bad = sorted(set(params) - set(mapping))
    if bad:
        raise ConfigError(f"method {method!r} takes no parameter(s) {bad}; it takes "
                          f"{sorted(mapping) or 'none'}")
    cfg = DEFAULTS if config is None else config
    kwargs = {p: getattr(cfg, f) for p, f in mapping.items()}
    kwargs.update({k: v for k, v in params.items() if v is not None})
    return func, kwargs


def compute_amax(method: str, stats, config: ThresholdConfig | None = None, **params) -> float:
    """Amax of one tensor by ``method`` (one of :data:`METHODS`).

    ``config`` supplies defaults; keyword ``params`` (the chosen function's
    parameters, e.g. ``percentile=99.9``) override them.
    """
    func, kwargs = _resolve(method, config, params)
    return func(stats, **kwargs)


def compute_amaxes(method: str, stats: Mapping[str, object],
                   config: ThresholdConfig | None = None, **params) -> dict[str, float]:
    """``{name: compute_amax(method, s)}`` for a mapping of stats, in its order."""
    func, kwargs = _resolve(method, config, params)
    return {name: func(s, **kwargs) for name, s in stats.items()}


def saturation(stats, amax: float) -> float:
    """Approximate fraction of the finite values with ``|x| > amax``.

    From the histogram, assuming values are spread uniformly inside each bin:
    whole bins above ``amax`` count fully and the bin holding ``amax`` counts in
    proportion to its part above ``amax``.  Exact 0.0 when ``amax`` is at or
    above the observed max; values beyond a fixed range (``over_count``) are
    always counted as saturated.
    """
    amax = float(amax)
    if stats.count == 0 or _empty(stats) or amax >= stats.amax:
        return 0.0
    if amax <= 0.0:
        return 1.0
    h = np.asarray(stats.hist, dtype=np.float64).copy()
    over = float(getattr(stats, "over_count", 0))
    h[-1] -= over
    pos = amax / stats.width
    j = int(math.floor(pos))
    above = over
    if j < h.size:
        above += float(h[j + 1:].sum()) + float(h[j]) * (j + 1 - pos)
    return float(min(1.0, max(0.0, above / stats.count)))
