"""Calibration: streaming |x| statistics, amax algorithms and TensorRT artefacts.

- :mod:`.collector` -- :class:`HistogramCollector`, :class:`MaxCollector`,
  :class:`TensorStats` (O(bins) state per tensor, never raw activations).
- :mod:`.thresholds` -- pure functions ``stats -> amax`` (minmax, percentile,
  entropy, mse) and :class:`ThresholdConfig`.
- :mod:`.cache` -- TensorRT calibration cache, sampleINT8API dynamic-range file,
  calibration JSON.  TensorRT's version numbers, calibrator names and scale
  rule live in :mod:`int8batch.trt.vocab`.
"""
from .cache import (CacheData, calibration_entry, read_calibration_json, read_dynamic_range,
                    read_trt_cache, trt_cache_text, write_calibration_json, write_dynamic_range,
                    write_trt_cache)
from .collector import HistogramCollector, MaxCollector, TensorStats
from .thresholds import (METHODS, ThresholdConfig, amax_entropy, amax_minmax, amax_mse,
                         amax_percentile, compute_amax, compute_amaxes, saturation)

__all__ = [
    "HistogramCollector", "MaxCollector", "TensorStats",
    "METHODS", "ThresholdConfig", "amax_minmax", "amax_percentile", "amax_entropy", "amax_mse",
    "compute_amax", "compute_amaxes", "saturation",
    "CacheData", "write_trt_cache", "read_trt_cache", "trt_cache_text",
    "write_dynamic_range", "read_dynamic_range", "write_calibration_json",
    "read_calibration_json", "calibration_entry",
]
