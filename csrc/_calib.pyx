# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Calibration kernels: |x| histograms and the amax searches over them.

Built as ``int8batch._kernels_calib``.  Every kernel works on arrays the caller
allocated, runs without the GIL and allocates nothing inside the hot loop; the
``def`` wrappers validate shapes and values *before* the GIL is released.  The
plain NumPy twins of every kernel live in ``tests/calib/reference_calib.py``.

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
from cython.parallel cimport prange
from libc.math cimport fabs, log, rint, INFINITY, isnan, isinf
from libc.stdint cimport int64_t

import numpy as np

TIE_RTOL = 1e-10
TIE_ATOL = 1e-12

# Below this many values per thread the OpenMP start-up costs more than it saves.
cdef Py_ssize_t _MIN_CHUNK = 1 << 16


# --------------------------------------------------------------------------
# |x| histogram and max
# --------------------------------------------------------------------------

cdef void _hist_chunk(const float[::1] x, Py_ssize_t lo, Py_ssize_t hi, double inv,
                      double hist_max, int64_t* hist, Py_ssize_t nbins, double* stats,
                      int64_t* counts) noexcept nogil:
    # hist: this chunk's own nbins counters (zeroed by the caller).
    # stats: [max|x|, min x, max x]; counts: [nan, inf, over]
    cdef Py_ssize_t i, idx
    cdef double v, a, t
    cdef double amax = 0.0, vmin = INFINITY, vmax = -INFINITY
    cdef int64_t nnan = 0, ninf = 0, nover = 0
    for i in range(lo, hi):
        v = x[i]
        if isnan(v):
            nnan += 1
            continue
        if isinf(v):
            ninf += 1
            continue
        a = fabs(v)
        if a > amax:
            amax = a
        if v < vmin:
            vmin = v
        if v > vmax:
            vmax = v
        t = a * inv
        if t >= nbins:
            idx = nbins - 1
            if a > hist_max:
                nover += 1
        else:
            idx = <Py_ssize_t>t
        hist[idx] += 1
    stats[0] = amax
    stats[1] = vmin
    stats[2] = vmax
    counts[0] = nnan
    counts[1] = ninf
    counts[2] = nover


cdef void _max_chunk(const float[::1] x, Py_ssize_t lo, Py_ssize_t hi, double* stats,
                     int64_t* counts) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v, a
    cdef double amax = 0.0, vmin = INFINITY, vmax = -INFINITY
    cdef int64_t nnan = 0, ninf = 0
    for i in range(lo, hi):
        v = x[i]
        if isnan(v):
            nnan += 1
            continue
        if isinf(v):
            ninf += 1
            continue
        a = fabs(v)
        if a > amax:
            amax = a
        if v < vmin:
            vmin = v
        if v > vmax:
            vmax = v
    stats[0] = amax
    stats[1] = vmin
    stats[2] = vmax
    counts[0] = nnan
    counts[1] = ninf
    counts[2] = 0


cdef Py_ssize_t _num_chunks(Py_ssize_t n, int num_threads):
    cdef Py_ssize_t c = (n + _MIN_CHUNK - 1) // _MIN_CHUNK
    if c > num_threads:
        c = num_threads
    return c if c > 0 else 1


def _check_threads(num_threads):
    num_threads = int(num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads


def _merge_chunk_results(double[:, ::1] st, int64_t[:, ::1] ct):
    # Fixed order (chunk 0, 1, ...) so the result never depends on the thread count.
    cdef Py_ssize_t c
    cdef double amax = 0.0, vmin = INFINITY, vmax = -INFINITY
    cdef int64_t nnan = 0, ninf = 0, nover = 0
    for c in range(st.shape[0]):
        amax = st[c, 0] if st[c, 0] > amax else amax
        vmin = st[c, 1] if st[c, 1] < vmin else vmin
        vmax = st[c, 2] if st[c, 2] > vmax else vmax
        nnan += ct[c, 0]
        ninf += ct[c, 1]
        nover += ct[c, 2]
    return float(amax), float(vmin), float(vmax), int(nnan), int(ninf), int(nover)


def abs_histogram(const float[::1] x, double hist_max, int64_t[::1] out, int num_threads=1):
    """Histogram of ``|x|`` over ``[0, hist_max)`` and the max in one pass.

    Parameters
    ----------
    x : float32 array, shape (n,), C-contiguous
        The values (any n, including 0).
    hist_max : float
        Upper end of the histogram range; finite and > 0.
    out : int64 array, shape (nbins,)
        **Overwritten** with the counts of this array (not accumulated).
    num_threads : int
        Threads for the OpenMP loop.  The data is split into at most this many
        chunks, each with its own partial histogram, summed in chunk order:
        the counts are bit-identical for any thread count (and for a build
        without OpenMP, which runs the chunks serially).

    Returns
    -------
    (amax, vmin, vmax, nan_count, inf_count, over_count) : tuple
        ``amax`` = max ``|x|`` over finite values (0.0 when there are none),
        ``vmin``/``vmax`` the signed finite min/max (+inf/-inf when none),
        NaN and +-inf counts (those values are not histogrammed), and
        ``over_count`` = number of finite values with ``|x| > hist_max`` (they
        are counted in the last bin).
    """
    cdef Py_ssize_t n = x.shape[0], nbins = out.shape[0]
    if nbins < 1:
        raise ValueError("out must have at least one bin")
    if not (hist_max > 0.0) or isinf(hist_max):
        raise ValueError(f"hist_max must be finite and > 0, got {hist_max!r}")
    num_threads = _check_threads(num_threads)
    cdef Py_ssize_t nchunks = _num_chunks(n, num_threads)
    cdef Py_ssize_t c, step = (n + nchunks - 1) // nchunks if n else 0
    cdef int64_t[:, ::1] part = np.zeros((nchunks, nbins), dtype=np.int64)
    cdef double[:, ::1] st = np.zeros((nchunks, 3), dtype=np.float64)
    cdef int64_t[:, ::1] ct = np.zeros((nchunks, 3), dtype=np.int64)
    cdef double inv = nbins / hist_max
    cdef Py_ssize_t j, lo, hi
    cdef int nt = num_threads
    with nogil:
        if nchunks == 1:
            _hist_chunk(x, 0, n, inv, hist_max, &part[0, 0], nbins, &st[0, 0], &ct[0, 0])
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                lo = c * step
                hi = lo + step
                if hi > n:
                    hi = n
                if lo > n:
                    lo = n
                _hist_chunk(x, lo, hi, inv, hist_max, &part[c, 0], nbins, &st[c, 0], &ct[c, 0])
        for j in range(nbins):
            out[j] = 0
        for c in range(nchunks):
            for j in range(nbins):
                out[j] += part[c, j]
    return _merge_chunk_results(st, ct)


def abs_max(const float[::1] x, int num_threads=1):
    """Max ``|x|``, signed min/max and NaN/inf counts in one pass (no histogram).

    Same chunking and return tuple as :func:`abs_histogram` (``over_count`` is
    always 0).
    """
    cdef Py_ssize_t n = x.shape[0]
    num_threads = _check_threads(num_threads)
    cdef Py_ssize_t nchunks = _num_chunks(n, num_threads)
    cdef Py_ssize_t c, lo, hi, step = (n + nchunks - 1) // nchunks if n else 0
    cdef double[:, ::1] st = np.zeros((nchunks, 3), dtype=np.float64)
    cdef int64_t[:, ::1] ct = np.zeros((nchunks, 3), dtype=np.int64)
    cdef int nt = num_threads
    with nogil:
        if nchunks == 1:
            _max_chunk(x, 0, n, &st[0, 0], &ct[0, 0])
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                lo = c * step
                hi = lo + step
                if hi > n:
                    hi = n
                if lo > n:
                    lo = n
                _max_chunk(x, lo, hi, &st[c, 0], &ct[c, 0])
    return _merge_chunk_results(st, ct)


# --------------------------------------------------------------------------
# Threshold searches
# --------------------------------------------------------------------------

cdef double TIE_RTOL_C = TIE_RTOL
cdef double TIE_ATOL_C = TIE_ATOL


cdef Py_ssize_t _pick_first_min(const double[::1] vals) noexcept nogil:
    cdef Py_ssize_t k, n = vals.shape[0], best = -1
    cdef double m = INFINITY, tol
    for k in range(n):
        if vals[k] < m:
            m = vals[k]
    if m == INFINITY:
        return -1
    tol = TIE_RTOL_C * fabs(m) + TIE_ATOL_C
    for k in range(n):
        if vals[k] <= m + tol:
            return k
    return best


cdef void _kl_divergences(const int64_t[::1] hist, Py_ssize_t num_levels, Py_ssize_t start_bin,
                          int64_t[::1] cum, int64_t[::1] cnz, double[::1] chl,
                          double[::1] out) noexcept nogil:
    # out[k] = KL(P || Q) for candidate i = start_bin + k (see kl_search).
    cdef Py_ssize_t nbins = hist.shape[0], j, i, g, b0, b1, nz
    cdef int64_t h, total, outl, last, grp, pg
    cdef double s, plogp, cross, kl
    cum[0] = 0
    cnz[0] = 0
    chl[0] = 0.0
    for j in range(nbins):
        h = hist[j]
        cum[j + 1] = cum[j] + h
        cnz[j + 1] = cnz[j] + (1 if h != 0 else 0)
        chl[j + 1] = chl[j] + (h * log(<double>h) if h > 0 else 0.0)
    total = cum[nbins]
    s = <double>total
    for i in range(start_bin, nbins):
        outl = total - cum[i]
        if cum[i] == 0:
            out[i - start_bin] = INFINITY
            continue
        last = hist[i - 1] + outl
        plogp = chl[i - 1] + (last * log(<double>last) if last > 0 else 0.0)
        cross = 0.0
        kl = 0.0
        b0 = 0
        for g in range(num_levels):
            # Group g holds the bins j with floor(j * L / i) == g.
            b1 = ((g + 1) * i + num_levels - 1) // num_levels
            grp = cum[b1] - cum[b0]
            nz = cnz[b1] - cnz[b0]
            pg = grp
            if g == num_levels - 1:
                pg = grp + outl
                if hist[i - 1] == 0 and outl > 0:
                    nz = nz + 1
            if pg > 0:
                if grp == 0:
                    kl = INFINITY
                    break
                cross = cross + pg * log(<double>grp / nz)
            b0 = b1
        if kl == INFINITY:
            out[i - start_bin] = INFINITY
            continue
        out[i - start_bin] = (plogp - cross) / s - log(s) + log(<double>cum[i])


def kl_search(const int64_t[::1] hist, int num_levels=128, int start_bin=128, double[::1] out=None):
    """TensorRT/GTC-2017 entropy calibration: the KL-optimal number of bins.

    Variant implemented (GTC 2017 S7310 as published, see the reference notes
    section 4.1; choices where the slides are silent are marked *):

    * candidates ``i = start_bin .. nbins - 1`` (``range(128, 2048)``: the
      full-range candidate ``i = nbins`` is not tried, as in the slides);
    * reference ``P = hist[:i]`` with the outlier mass ``sum(hist[i:])`` added
      to ``P[i-1]``; bin 0 is kept as it is (no zero-spike discount);
    * candidate ``Q``: ``hist[:i]`` **without** the outliers, merged into
      ``num_levels`` groups, bin ``j`` going to group ``floor(j * L / i)`` (*
      equal groups when ``i`` is a multiple of ``L``, otherwise sizes differ by
      at most one bin, spread evenly); each group's total is spread evenly over
      the group's bins where ``P`` is non-zero (* ``P`` includes the folded
      outliers, as in MXNet); bins where ``P`` is zero stay zero;
    * ``KL(P || Q)`` of the normalised distributions, natural log, **no
      smoothing** (* a candidate whose ``Q`` is zero where ``P`` is not gets
      +inf, i.e. it is never chosen);
    * the smallest ``i`` with minimal divergence wins (* ties within
      ``TIE_RTOL * |min| + TIE_ATOL``).

    The threshold is then ``(i + 0.5) * bin_width`` (the slides' rule; the
    caller does that).  Cost: O(nbins) prefix sums, then O(num_levels) per
    candidate (one log per non-empty group), not O(nbins) per candidate.

    Parameters
    ----------
    hist : int64 array, shape (nbins,)
        Counts of ``|x|``; non-negative.
    num_levels : int
        Quantization levels (128 for int8).
    start_bin : int
        First candidate; ``num_levels <= start_bin``.
    out : float64 array, shape (nbins - start_bin,), optional
        Receives the divergence of every candidate (+inf where undefined).

    Returns
    -------
    int
        The chosen ``i``, or -1 when there is no candidate (``nbins <=
        start_bin``) or every divergence is infinite (all mass in bin ``nbins-1``
        or above, or an empty histogram).
    """
    cdef Py_ssize_t nbins = hist.shape[0]
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if start_bin < num_levels:
        raise ValueError(f"start_bin ({start_bin}) must be >= num_levels ({num_levels})")
    cdef Py_ssize_t ncand = nbins - start_bin if nbins > start_bin else 0
    if out is None:
        out = np.empty(ncand, dtype=np.float64)
    elif out.shape[0] != ncand:
        raise ValueError(f"out must have nbins - start_bin = {ncand} elements, got {out.shape[0]}")
    if ncand == 0:
        return -1
    if np.asarray(hist).min() < 0:
        raise ValueError("histogram counts must be non-negative")
    cdef int64_t[::1] cum = np.empty(nbins + 1, dtype=np.int64)
    cdef int64_t[::1] cnz = np.empty(nbins + 1, dtype=np.int64)
    cdef double[::1] chl = np.empty(nbins + 1, dtype=np.float64)
    cdef Py_ssize_t best
    with nogil:
        _kl_divergences(hist, num_levels, start_bin, cum, cnz, chl, out)
        best = _pick_first_min(out)
    return -1 if best < 0 else int(start_bin + best)


cdef double _mse_at(const int64_t[::1] hist, Py_ssize_t nb, double amax) noexcept nogil:
    # Sum over bins of count * (centre - fakequant(centre))^2, in bin units.
    cdef Py_ssize_t j
    cdef double s = amax / 127.0, c, r, e, acc = 0.0
    for j in range(nb):
        if hist[j] == 0:
            continue
        c = j + 0.5
        r = rint(c / s)
        if r > 127.0:
            r = 127.0
        e = c - r * s
        acc = acc + hist[j] * (e * e)
    return acc


def mse_search(const int64_t[::1] hist, int start_bin=128, int stride=8, double[::1] out=None):
    """Amax (in bins) minimising the squared int8 quantization error.

    Every bin stands for ``hist[j]`` values at its centre ``c = j + 0.5`` (bin
    units).  For a candidate amax ``A = k`` (the right edge of bin ``k-1``) the
    symmetric int8 fake-quant is ``q(c) = s * min(rint(c / s), 127)`` with
    ``s = A / 127`` (round half to even), so the error holds both the rounding
    error inside ``[0, A]`` and the clipping error ``(c - A)`` above it.  The
    score is ``sum(hist * (c - q(c))**2) / sum(hist)``.

    Candidates: ``kmax = last non-empty bin + 1`` (no clipping, the minmax
    choice) and ``k = lo, lo + stride, ...`` below it, with ``lo =
    min(start_bin, kmax)``; then every ``k`` within ``stride - 1`` of the best
    coarse candidate (clamped to ``[lo, kmax]``).  Ties go to the smallest
    ``k`` (within ``TIE_RTOL``).  Bins above ``kmax`` are empty and skipped.

    Parameters
    ----------
    hist : int64 array, shape (nbins,)
    start_bin : int
        Smallest candidate, >= 1.
    stride : int
        Coarse grid step, >= 1 (1 = exhaustive).
    out : float64 array, shape (nbins + 1,), optional
        Receives the score of each evaluated ``k`` at ``out[k]``; entries not
        evaluated are set to +inf.

    Returns
    -------
    int
        The chosen ``k`` (amax = ``k * bin_width``), or 0 for an empty
        histogram (no counts, hence no candidate).
    """
    cdef Py_ssize_t nbins = hist.shape[0], j, k, kmax = 0, lo, hi, best, fine_lo, fine_hi
    if start_bin < 1:
        raise ValueError(f"start_bin must be >= 1, got {start_bin}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if out is None:
        out = np.empty(nbins + 1, dtype=np.float64)
    elif out.shape[0] != nbins + 1:
        raise ValueError(f"out must have nbins + 1 = {nbins + 1} elements, got {out.shape[0]}")
    if nbins and np.asarray(hist).min() < 0:
        raise ValueError("histogram counts must be non-negative")
    cdef double tot = 0.0, m, tol
    with nogil:
        for k in range(nbins + 1):
            out[k] = INFINITY
        for j in range(nbins):
            tot += hist[j]
            if hist[j] != 0:
                kmax = j + 1
        if kmax == 0:
            best = 0
        else:
            lo = start_bin if start_bin < kmax else kmax
            k = lo
            while k < kmax:
                out[k] = _mse_at(hist, kmax, <double>k) / tot
                k = k + stride
            out[kmax] = _mse_at(hist, kmax, <double>kmax) / tot
            best = _pick_first_min(out)
            fine_lo = best - stride + 1
            fine_hi = best + stride - 1
            if fine_lo < lo:
                fine_lo = lo
            if fine_hi > kmax:
                fine_hi = kmax
            for k in range(fine_lo, fine_hi + 1):
                if out[k] == INFINITY:
                    out[k] = _mse_at(hist, kmax, <double>k) / tot
            best = _pick_first_min(out)
    return int(best)
