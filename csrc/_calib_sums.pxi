# Per-column sums of the rows of a float32 matrix, in float64 (sum_rows): the input
# means of bias correction.  Included by _calib.pyx.

def sum_rows(const float[:, ::1] x, double[::1] acc, int num_threads=1):
    """``acc += x.sum(axis=0)``: add the rows of ``x`` into ``acc`` in double precision.

    ``x`` is ``(images, values per image)``; the columns are cut into tiles
    of 1024 that the threads share out (``num_threads`` of them from 256 Ki
    values of ``x`` on, one below), each column is summed in row order and
    then added to ``acc``, so the result does not depend on the thread count.  NumPy twin:
    ``acc + x.sum(axis=0, dtype=np.float64)`` (equal up to the summation order
    of NumPy's pairwise sum).
    """
    num_threads = _check_threads(num_threads)
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    if acc.shape[0] != cols:
        raise ValueError(f"acc has {acc.shape[0]} values, x rows have {cols}")
    cdef Py_ssize_t total = rows * cols
    cdef int nt = num_threads if total >= 2 * _MIN_CHUNK else 1
    cdef Py_ssize_t ntiles = (cols + _SUM_TILE - 1) // _SUM_TILE
    cdef Py_ssize_t c
    with nogil:
        for c in prange(ntiles, num_threads=nt, schedule="static"):
            _sum_tile(x, acc, c * _SUM_TILE, min(cols, (c + 1) * _SUM_TILE))


cdef enum:
    _SUM_TILE = 1024


cdef void _sum_tile(const float[:, ::1] x, double[::1] acc, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # The tile's partial sums stay in a small local buffer (L1) while every row
    # adds into it; the large float64 accumulator is read and written once.
    cdef double t[_SUM_TILE]
    cdef Py_ssize_t r, j, n = hi - lo
    cdef const float* row
    for j in range(n):
        t[j] = 0.0
    for r in range(x.shape[0]):
        row = &x[r, lo]
        for j in range(n):
            t[j] += row[j]
    for j in range(n):
        acc[lo + j] += t[j]
