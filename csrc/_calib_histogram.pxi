# |x| histograms and max of float32 arrays: one array (abs_histogram, abs_max) or
# many in one call (abs_histogram_many, abs_max_many).  Included by _calib.pyx.
#
# The hot loops are C, in _calib_histogram.h (how they work, and why the results do
# not depend on the thread count, is written at its top).  Here: the wrappers,
# which validate before the GIL is released, and the split of the data into
# chunks (one array) or pieces (many arrays) that the threads share.

cdef extern from "_calib_histogram.h":
    ctypedef struct i8b_stats:
        float amax
        float vmin
        float vmax
        int64_t nnan
        int64_t ninf
        int64_t nover
    void i8b_chunk(const float *x, Py_ssize_t n, int64_t *hist, Py_ssize_t nbins, int mode,
                   double inv, float thr, Py_ssize_t sub_min, i8b_stats *st) noexcept nogil
    float i8b_float_below(double h) noexcept nogil
    float i8b_first_zero(const float *x, Py_ssize_t n) noexcept nogil
    void i8b_init() noexcept nogil

i8b_init()

# Chunks shorter than this many bins x 4 fill one int64 histogram directly:
# zeroing and summing the sub-histograms would cost more than they save.
cdef Py_ssize_t _SUB_MIN_PER_BIN = 4

# The many-tensor kernels cut their work into about this many pieces per thread,
# handed out dynamically: tensors of unequal sizes, and a thread that the OS
# runs late (ONNX Runtime's pool or another process on the cores), even out.
cdef Py_ssize_t _PIECES_PER_THREAD = 4


cdef Py_ssize_t _num_chunks(Py_ssize_t n, int num_threads):
    cdef Py_ssize_t c = n // _MIN_CHUNK  # every chunk gets at least _MIN_CHUNK values
    if c > num_threads:
        c = num_threads
    return c if c > 0 else 1


cdef int _bin_mode(double hist_max, Py_ssize_t nbins, double* inv) except -1:
    # 1: float32 index math (exact when nbins / hist_max is a power of two in the
    # normal float range), 2: double; raises on a range the kernels cannot bin.
    cdef int mant_exp
    if not (hist_max > 0.0) or isinf(hist_max):
        raise ValueError(f"hist_max must be finite and > 0, got {hist_max!r}")
    inv[0] = nbins / hist_max
    if isinf(inv[0]):
        raise ValueError(f"hist_max {hist_max!r} is too small for {nbins} bins")
    if frexp(inv[0], &mant_exp) == 0.5 and -125 <= mant_exp <= 128 and nbins <= (1 << 24):
        return 1
    return 2


cdef int _check_bins(Py_ssize_t nbins) except -1:
    if nbins < 1:
        raise ValueError("out must have at least one bin")
    if nbins >= 2 ** 31:
        raise ValueError(f"out has {nbins} bins; at most 2**31 - 1 are supported")
    return 0


cdef tuple _run_chunks(const float[::1] x, int64_t[::1] out, int mode, double inv, float thr,
                       int num_threads):
    # Split x into at most num_threads chunks; chunk 0 writes into out, the others
    # into rows of `part`, summed afterwards (integer sums: any order is exact).
    # The float stats are min/max (order-free) except the sign of a zero min/max,
    # which is fixed up from the data; so the result never depends on the chunking.
    cdef Py_ssize_t n = x.shape[0], nbins = out.shape[0] if mode else 1
    cdef Py_ssize_t nchunks = _num_chunks(n, num_threads)
    cdef Py_ssize_t c, j, lo, hi, step = (n + nchunks - 1) // nchunks if n else 0
    cdef Py_ssize_t sub_min = _SUB_MIN_PER_BIN * nbins
    cdef int64_t[:, ::1] part
    cdef i8b_stats[64] stbuf
    cdef i8b_stats* st = stbuf
    cdef const float* xp = &x[0] if n else NULL
    cdef int64_t* hp
    if nchunks > 64:
        nchunks = 64
        step = (n + nchunks - 1) // nchunks
    cdef int nt = <int>nchunks  # a team of as many threads as chunks, no idle ones
    if nchunks > 1:
        part = np.empty((nchunks - 1, nbins), dtype=np.int64)
    cdef float amax = 0.0, vmin = INFINITY, vmax = -INFINITY
    cdef int64_t nnan = 0, ninf = 0, nover = 0
    with nogil:
        if nchunks == 1:
            i8b_chunk(xp, n, &out[0] if mode else NULL, nbins, mode, inv, thr, sub_min, &st[0])
        else:
            for c in prange(nchunks, num_threads=nt, schedule="static"):
                lo = c * step
                hi = lo + step
                if hi > n:
                    hi = n
                if lo > n:
                    lo = n
                if mode == 0:
                    hp = NULL
                elif c == 0:
                    hp = &out[0]
                else:
                    hp = &part[c - 1, 0]
                i8b_chunk(xp + lo, hi - lo, hp, nbins, mode, inv, thr, sub_min, &st[c])
            if mode:
                for c in range(nchunks - 1):
                    for j in range(nbins):
                        out[j] += part[c, j]
        for c in range(nchunks):
            amax = st[c].amax if st[c].amax > amax else amax
            vmin = st[c].vmin if st[c].vmin < vmin else vmin
            vmax = st[c].vmax if st[c].vmax > vmax else vmax
            nnan += st[c].nnan
            ninf += st[c].ninf
            nover += st[c].nover
        if vmin == 0.0:
            vmin = i8b_first_zero(xp, n)
        if vmax == 0.0:
            vmax = i8b_first_zero(xp, n)
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
        **Overwritten** with the counts of this array (not accumulated);
        ``1 <= nbins < 2**31``.
    num_threads : int
        Most threads for the OpenMP loop.  The data is split into at most this
        many chunks (and at most 64) of at least 128 Ki values each (one chunk,
        and no thread team, below 256 Ki values), each with its own partial
        histogram, one thread per chunk; counts and
        all returned values are bit-identical for any thread count (and for a
        build without OpenMP, which runs the chunks serially).

    Returns
    -------
    (amax, vmin, vmax, nan_count, inf_count, over_count) : tuple
        ``amax`` = max ``|x|`` over finite values (0.0 when there are none),
        ``vmin``/``vmax`` the signed finite min/max (+inf/-inf when none; a
        zero min/max has the sign of the first zero in ``x``),
        NaN and +-inf counts (those values are not histogrammed), and
        ``over_count`` = number of finite values with ``|x| > hist_max`` (they
        are counted in the last bin).
    """
    cdef Py_ssize_t nbins = out.shape[0]
    cdef double inv
    _check_bins(nbins)
    cdef int mode = _bin_mode(hist_max, nbins, &inv)
    num_threads = _check_threads(num_threads)
    return _run_chunks(x, out, mode, inv, i8b_float_below(hist_max), num_threads)


def abs_max(const float[::1] x, int num_threads=1):
    """Max ``|x|``, signed min/max and NaN/inf counts in one pass (no histogram).

    Same chunking and return tuple as :func:`abs_histogram` (``over_count`` is
    always 0).
    """
    num_threads = _check_threads(num_threads)
    cdef int64_t[::1] dummy = np.zeros(1, dtype=np.int64)
    return _run_chunks(x, dummy, 0, 1.0, INFINITY, num_threads)


# --------------------------------------------------------------------------
# Many tensors in one call
# --------------------------------------------------------------------------
#
# One call per ONNX Runtime run instead of one per tensor: the fixed cost of a
# call (a thread team started, woken and joined; buffers acquired) is paid once
# for all the activations of a run, and the team works on pieces of the tensors
# handed out dynamically.  A piece is a run of one tensor's values done by
# i8b_chunk, as a chunk of the one-tensor kernels is, so every count and every
# stat is the same as theirs whatever the pieces.

cdef struct _piece:
    const float* x
    Py_ssize_t n
    int64_t* hist       # the tensor's row of out (its first piece) or a row of part
    int mode
    double inv
    float thr


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b  # a >= 0, b > 0 (cdivision: C's // truncates)


cdef bint _is_float32(const char* fmt, Py_ssize_t itemsize):
    if fmt == NULL:
        return False
    cdef bytes f = fmt
    return itemsize == 4 and (f in (b"f", b"@f", b"=f") or f == (b"<f" if _LITTLE else b">f"))


cdef bint _LITTLE = __import__("sys").byteorder == "little"


cdef tuple _run_many(object xs, object hist_max, int64_t[:, ::1] out, int num_threads):
    # hist_max None: statistics only (abs_max_many); out is then not touched.
    cdef list arrs = list(xs)
    cdef Py_ssize_t k = len(arrs), i, j, p, b, c, n, lo, step, row
    cdef Py_ssize_t total = 0, npieces, piece, extra
    cdef bint hist = hist_max is not None
    cdef Py_ssize_t nbins = out.shape[1] if hist else 1
    cdef Py_ssize_t sub_min = _SUB_MIN_PER_BIN * nbins
    cdef const double[::1] hm
    cdef Py_buffer* bufs = <Py_buffer*>calloc(k + 1, sizeof(Py_buffer))
    cdef Py_ssize_t got = 0
    cdef _piece* pcs = NULL
    cdef i8b_stats* st = NULL
    cdef int nt = num_threads
    cdef double inv = 1.0
    cdef int mode = 0
    cdef float thr = INFINITY
    cdef Py_ssize_t[::1] first, sizes
    cdef int64_t[:, ::1] part
    if bufs == NULL:
        raise MemoryError()
    try:
        for i in range(k):
            PyObject_GetBuffer(arrs[i], &bufs[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            got += 1
            if not _is_float32(bufs[i].format, bufs[i].itemsize):
                raise ValueError(f"xs[{i}] must be a C-contiguous float32 array, got buffer format "
                                 f"{bufs[i].format.decode()!r} of {bufs[i].itemsize} bytes")
            total += bufs[i].len // 4
        if hist:
            _check_bins(nbins)
            hm = np.ascontiguousarray(hist_max, dtype=np.float64)
            if hm.shape[0] != k or out.shape[0] != k:
                raise ValueError(f"{k} arrays need {k} hist_max values and {k} rows of out, got "
                                 f"{hm.shape[0]} and {out.shape[0]}")
        # Threads by size: each gets at least _MIN_CHUNK values, and no team when one would do.
        if total // _MIN_CHUNK < nt:
            nt = <int>(total // _MIN_CHUNK) if total >= 2 * _MIN_CHUNK else 1
        piece = max(total, 1) if nt == 1 else max(_MIN_CHUNK, _ceil_div(total, nt * _PIECES_PER_THREAD))
        first_a = np.zeros(k + 1, dtype=np.intp)   # pieces of tensor i: first[i] .. first[i + 1] - 1
        first = first_a
        for i in range(k):
            n = bufs[i].len // 4
            first[i + 1] = first[i] + max(1, _ceil_div(n, piece))
        npieces = first[k]
        extra = npieces - k
        part = np.empty((extra if hist else 0, nbins), dtype=np.int64)
        pcs = <_piece*>malloc((npieces + 1) * sizeof(_piece))
        st = <i8b_stats*>malloc((npieces + 1) * sizeof(i8b_stats))
        if pcs == NULL or st == NULL:
            raise MemoryError()
        sizes_a = np.empty(npieces, dtype=np.intp)
        sizes = sizes_a
        row = 0
        for i in range(k):
            n = bufs[i].len // 4
            c = first[i + 1] - first[i]
            step = _ceil_div(n, c)
            if hist:
                try:
                    mode = _bin_mode(hm[i], nbins, &inv)
                except ValueError as exc:
                    raise ValueError(f"xs[{i}]: {exc}") from None
                thr = i8b_float_below(hm[i])
            for j in range(c):
                p = first[i] + j
                lo = min(j * step, n)
                pcs[p].x = <const float*>bufs[i].buf + lo
                pcs[p].n = min(lo + step, n) - lo
                pcs[p].mode, pcs[p].inv, pcs[p].thr = mode, inv, thr
                pcs[p].hist = NULL
                if hist and j == 0:
                    pcs[p].hist = &out[i, 0]
                elif hist:
                    pcs[p].hist = &part[row, 0]
                    row += 1
                sizes[p] = pcs[p].n
        order = np.argsort(-sizes_a, kind="stable") if nt > 1 else sizes_a
        _run_pieces(pcs, st, npieces, order, nbins, sub_min, nt)
        amax = np.empty(k)
        vmin = np.empty(k)
        vmax = np.empty(k)
        nnan = np.empty(k, dtype=np.int64)
        ninf = np.empty(k, dtype=np.int64)
        nover = np.empty(k, dtype=np.int64)
        _merge_pieces(pcs, st, first, k, nbins, hist, amax, vmin, vmax, nnan, ninf, nover)
        return amax, vmin, vmax, nnan, ninf, nover
    finally:
        for i in range(got):
            PyBuffer_Release(&bufs[i])
        free(bufs)
        free(pcs)
        free(st)


cdef void _run_pieces(_piece* pcs, i8b_stats* st, Py_ssize_t npieces, const Py_ssize_t[::1] order,
                      Py_ssize_t nbins, Py_ssize_t sub_min, int nt) noexcept:
    # Largest pieces first, each thread taking the next one when it is done.
    cdef Py_ssize_t j, p
    with nogil:
        if nt == 1:
            for p in range(npieces):
                i8b_chunk(pcs[p].x, pcs[p].n, pcs[p].hist, nbins, pcs[p].mode, pcs[p].inv,
                          pcs[p].thr, sub_min, &st[p])
        else:
            for j in prange(npieces, num_threads=nt, schedule="dynamic"):
                p = order[j]
                i8b_chunk(pcs[p].x, pcs[p].n, pcs[p].hist, nbins, pcs[p].mode, pcs[p].inv,
                          pcs[p].thr, sub_min, &st[p])


cdef void _merge_pieces(_piece* pcs, i8b_stats* st, const Py_ssize_t[::1] first, Py_ssize_t k,
                        Py_ssize_t nbins, bint hist, double[::1] amax, double[::1] vmin,
                        double[::1] vmax, int64_t[::1] nnan, int64_t[::1] ninf,
                        int64_t[::1] nover) noexcept:
    # Per tensor, in piece order: sum the partial histograms into its row, then
    # merge the stats as _run_chunks does (the same sign rule for a zero min/max).
    cdef Py_ssize_t i, p, b, p0
    cdef int64_t* dst
    cdef const int64_t* src
    cdef i8b_stats s
    with nogil:
        for i in range(k):
            p0 = first[i]
            s = st[p0]
            dst = pcs[p0].hist
            for p in range(p0 + 1, first[i + 1]):
                if hist:
                    src = pcs[p].hist
                    for b in range(nbins):
                        dst[b] += src[b]
                s.amax = st[p].amax if st[p].amax > s.amax else s.amax
                s.vmin = st[p].vmin if st[p].vmin < s.vmin else s.vmin
                s.vmax = st[p].vmax if st[p].vmax > s.vmax else s.vmax
                s.nnan += st[p].nnan
                s.ninf += st[p].ninf
                s.nover += st[p].nover
            if s.vmin == 0.0:
                s.vmin = _first_zero_of(pcs, p0, first[i + 1])
            if s.vmax == 0.0:
                s.vmax = _first_zero_of(pcs, p0, first[i + 1])
            amax[i], vmin[i], vmax[i] = s.amax, s.vmin, s.vmax
            nnan[i], ninf[i], nover[i] = s.nnan, s.ninf, s.nover


cdef float _first_zero_of(_piece* pcs, Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    # The pieces of one tensor are consecutive runs of it, in order.
    cdef Py_ssize_t p, i
    for p in range(p0, p1):
        for i in range(pcs[p].n):
            if pcs[p].x[i] == 0.0:
                return pcs[p].x[i]
    return 0.0


def abs_histogram_many(xs, hist_max, int64_t[:, ::1] out, int num_threads=1):
    """:func:`abs_histogram` of many arrays in one call (one thread team for all).

    Parameters
    ----------
    xs : sequence of k float32 arrays, C-contiguous, any shapes
        The values of each array (its elements in memory order); any sizes,
        including 0.
    hist_max : float64 array-like, shape (k,)
        Upper end of each array's range; each finite and > 0.
    out : int64 array, shape (k, nbins)
        Row ``i`` is **overwritten** with the counts of ``xs[i]``.
    num_threads : int
        Most threads.  Each thread is given at least 128 Ki values (no team
        below 256 Ki values in all); the arrays are cut into pieces (small
        arrays whole, large ones in runs of values) that the threads take in
        turn, largest first.  Every count and statistic is bit-identical to
        :func:`abs_histogram` of each array alone, for any thread count.

    Returns
    -------
    (amax, vmin, vmax, nan_count, inf_count, over_count) : tuple of arrays, shape (k,)
        :func:`abs_histogram`'s values for each array: float64 for the first
        three (float32 values), int64 for the counts.
    """
    num_threads = _check_threads(num_threads)
    if hist_max is None:
        raise ValueError("hist_max must give one range per array (abs_max_many takes none)")
    return _run_many(xs, hist_max, out, num_threads)


def abs_max_many(xs, int num_threads=1):
    """:func:`abs_max` of many arrays in one call; the arrays and threads as in :func:`abs_histogram_many`.

    Returns the same tuple of arrays (``over_count`` all 0).
    """
    num_threads = _check_threads(num_threads)
    return _run_many(xs, None, np.zeros((0, 1), dtype=np.int64), num_threads)
