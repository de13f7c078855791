# Threshold searches over an |x| histogram: the KL (entropy) search of TensorRT's
# Entropy2 calibrator (kl_search) and the least squared int8 error (mse_search).
# Included by _calib.pyx.

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
    # out[k] = KL(P || Q) for candidate i = start_bin + k, i up to nbins inclusive (see kl_search).
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
    for i in range(start_bin, nbins + 1):
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
    """The KL-optimal number of bins of TensorRT's entropy calibration.

    The search as TensorRT's ``IInt8EntropyCalibrator2`` runs it, established
    from values TensorRT wrote (the caches in sampleINT8's READMEs, which
    ``tests/calib/test_trt_fidelity.py`` reproduces bit for bit; choices no
    published value decides are marked *):

    * candidates ``i = start_bin .. nbins`` **inclusive**: the full-range
      candidate ``i = nbins`` is tried (TensorRT's ``prob`` entry is bin 2048
      of 2048, half a bin above the observed max);
    * reference ``P = hist[:i]`` with the outlier mass ``sum(hist[i:])`` added
      to ``P[i-1]`` (the zero-bin discount ``hist[0] = hist[1]`` is the
      caller's job: :func:`int8batch.calib.thresholds.amax_entropy`);
    * candidate ``Q``: ``hist[:i]`` **without** the outliers, merged into
      ``num_levels`` groups, bin ``j`` going to group ``floor(j * L / i)`` (*
      equal groups when ``i`` is a multiple of ``L``, otherwise sizes differ by
      at most one bin, spread evenly); each group's total is spread evenly over
      the group's bins where ``P`` is non-zero; bins where ``P`` is zero stay
      zero;
    * ``KL(P || Q)`` of the normalised distributions, natural log, **no
      smoothing** (* a candidate whose ``Q`` is zero where ``P`` is not gets
      +inf, i.e. it is never chosen);
    * the smallest ``i`` with minimal divergence wins (* ties within
      ``TIE_RTOL * |min| + TIE_ATOL``).

    The threshold is then ``(i + 0.5) * bin_width`` (the caller does that).
    Cost: O(nbins) prefix sums, then O(num_levels) per candidate (one log per
    non-empty group), not O(nbins) per candidate.

    Parameters
    ----------
    hist : int64 array, shape (nbins,)
        Counts of ``|x|``; non-negative.
    num_levels : int
        Quantization levels (128 for int8).
    start_bin : int
        First candidate; ``num_levels <= start_bin``.
    out : float64 array, shape (nbins - start_bin + 1,), optional
        Receives the divergence of every candidate (+inf where undefined).

    Returns
    -------
    int
        The chosen ``i``, or -1 when there is no candidate (``nbins <
        start_bin``) or every divergence is infinite (an empty histogram).
    """
    cdef Py_ssize_t nbins = hist.shape[0]
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if start_bin < num_levels:
        raise ValueError(f"start_bin ({start_bin}) must be >= num_levels ({num_levels})")
    cdef Py_ssize_t ncand = nbins - start_bin + 1 if nbins >= start_bin else 0
    if out is None:
        out = np.empty(ncand, dtype=np.float64)
    elif out.shape[0] != ncand:
        raise ValueError(f"out must have nbins - start_bin + 1 = {ncand} elements, got {out.shape[0]}")
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
