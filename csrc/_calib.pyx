# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Calibration kernels: |x| histograms, the amax searches over them, and row sums.

Built as ``int8batch._kernels_calib``, one module from this file and the three
kernel families it includes:

* ``_calib_histogram.pxi``: |x| histogram and max of one array
  (``abs_histogram``, ``abs_max``) or of many in one call
  (``abs_histogram_many``, ``abs_max_many``); their C inner loops are in
  ``_calib_histogram.h``;
* ``_calib_search.pxi``: the amax searches over a histogram (``kl_search``,
  ``mse_search``);
* ``_calib_sums.pxi``: per-column sums of float32 rows in float64
  (``sum_rows``, the input means of bias correction).

Every kernel works on arrays the caller allocated, runs without the GIL and
allocates nothing inside the hot loop (partial histograms are allocated once
per call or per chunk, never per block); the ``def`` wrappers validate
shapes and values *before* the GIL is released.  The plain NumPy twins of
every kernel live in ``tests/calib/reference_calib.py``.

Conventions shared by the kernels
---------------------------------
* A histogram has ``nbins`` int64 counts of ``|x|`` over ``[0, hist_max)``; bin
  ``j`` holds ``j * w <= |x| < (j + 1) * w`` with ``w = hist_max / nbins``.  The
  bin index is computed in double precision as ``floor(|x| * (nbins / hist_max))``
  (exactly this expression, so the NumPy twin gives the same counts), and any
  value at or above ``hist_max`` goes to the last bin.
* NaN and +-inf are not histogrammed and do not move the max; they are counted
  separately and returned, so the caller decides whether to warn or fail.
* Searches return a candidate index; ties (values within
  ``TIE_RTOL * |best| + TIE_ATOL`` of the minimum) go to the **smallest**
  candidate, so a kernel and its twin agree even when rounding differs in the
  last bits.
"""
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release, PyObject_GetBuffer
from cython.parallel cimport prange
from libc.math cimport fabs, log, rint, INFINITY, isnan, isinf, frexp
from libc.stdint cimport int64_t, int32_t
from libc.stdlib cimport calloc, free, malloc

import numpy as np

TIE_RTOL = 1e-10
TIE_ATOL = 1e-12

# Fewest values given to one thread: below that, starting and joining a thread
# costs more than it saves (more so when the cores are busy).
cdef Py_ssize_t _MIN_CHUNK = 1 << 17


def _set_min_chunk(Py_ssize_t values):
    """Set the fewest values a thread is given (default 128 Ki); returns the old value.

    For tests (to exercise the thread split on small arrays) and benchmarks:
    no result depends on it.
    """
    global _MIN_CHUNK
    if values < 1:
        raise ValueError(f"values must be >= 1, got {values}")
    old = _MIN_CHUNK
    _MIN_CHUNK = values
    return old


def _check_threads(num_threads):
    num_threads = int(num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads


# The three kernel families, one file each (textual includes: one module, one
# namespace, so _MIN_CHUNK and _check_threads above are shared).
include "_calib_histogram.pxi"
include "_calib_search.pxi"
include "_calib_sums.pxi"
