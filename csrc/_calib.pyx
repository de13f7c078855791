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


# --------------------------------------------------------------------------
# |x| histogram and max
# --------------------------------------------------------------------------
#
# The hot loops are C (the verbatim block below), on blocks of I8B_BLOCK (512) values,
# in two passes per block:
#
# 1. a branch-free SIMD pass (SSE2; an AVX2 copy is picked at run time where the
#    CPU has it) keeps the raw signed min/max (minps/maxps skip NaN) and counts
#    the non-finite values, and writes every bin index to a small buffer (NaN
#    and +-inf get the last bin index, no branch).  Blocks holding NaN/inf are
#    then redone by an exact scalar loop (their values leave the last bin at the
#    end); blocks whose max |x| exceeds hist_max get a second vector pass that
#    counts the over values.  Max |x| = max(vmax, -vmin) over finite values.
# 2. a scalar scatter adds 1 per index into I8B_NSUB = 4 interleaved uint32
#    sub-histograms (index i of the buffer goes to sub-histogram i % 4), so runs
#    of equal indices do not serialise on one counter; they are summed into the
#    int64 result at the end of the chunk (and before a uint32 could overflow).
#    On data with many zeros (ReLU outputs) the AVX2 pass packs away the bin-0
#    indexes and just counts them: one very hot counter is the slow case.
#
# Every count is an integer sum (exact in any order) and min/max do not depend
# on the order either, except the sign of a zero min/max, which is fixed up
# from the data: so the results are bit-identical for any thread count, with or
# without AVX2, and to the earlier plain double-precision loop.
#
# Bin index: ``min(|x| * inv, nbins - 1)`` truncated, with ``inv = nbins /
# hist_max`` (double), which equals the documented ``floor(|x| * inv)`` with
# values at or above ``nbins`` clamped to the last bin.  The product is taken
# in double, except when ``inv`` is a power of two (the collector's grow mode
# with a power-of-two ``num_bins``): then the float32 product is exact and so
# gives the same index.  Over count: ``|x| > hist_max`` is tested in float32
# against the largest float <= hist_max, which is the same test for a float |x|.
cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <math.h>
    #include <float.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define I8B_SSE2 1
    #endif
    /* An AVX2 copy of the block pass, picked at run time (GCC / clang on x86). */
    #if defined(I8B_SSE2) && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) \
        && !defined(I8B_NO_AVX2)
    #include <immintrin.h>
    #define I8B_AVX2 1
    #endif

    #if defined(_MSC_VER)
    #define I8B_INLINE static __forceinline
    #define I8B_RESTRICT __restrict
    #else
    #define I8B_INLINE static inline __attribute__((always_inline))
    #define I8B_RESTRICT __restrict__
    #endif

    #define I8B_BLOCK 512
    #define I8B_NSUB 4
    /* software prefetch distance (values) in the AVX2 pass: the scatter between
       two blocks stalls the hardware prefetcher on data streamed from memory */
    #define I8B_PREFETCH 4096
    /* flush the uint32 sub-histograms before any counter can overflow */
    #define I8B_FLUSH_EVERY ((int64_t)1 << 31)

    /* i8b_lut[k]: the positions of the set bits of k, one per byte, packed to the
       front (a lane shuffle for _mm256_permutevar8x32_epi32). */
    static uint64_t i8b_lut[256];

    static void i8b_init(void) {
        int k, b, c;
        for (k = 0; k < 256; k++) {
            uint64_t v = 0;
            for (b = 0, c = 0; b < 8; b++)
                if (k >> b & 1) v |= (uint64_t)b << (8 * c++);
            i8b_lut[k] = v;
        }
    }

    typedef struct {
        float amax, vmin, vmax;
        int64_t nnan, ninf, nover;
    } i8b_stats;

    static void i8b_stats_init(i8b_stats *s) {
        s->amax = 0.0f; s->vmin = INFINITY; s->vmax = -INFINITY;
        s->nnan = s->ninf = s->nover = 0;
    }

    /* Exact stats of a block, the slow way (blocks holding NaN/inf or over values). */
    static void i8b_block_exact(const float *x, Py_ssize_t n, i8b_stats *st, float thr) {
        Py_ssize_t i;
        float amax = st->amax, vmin = st->vmin, vmax = st->vmax;
        for (i = 0; i < n; i++) {
            float v = x[i], a = fabsf(v);
            if (v != v) { st->nnan++; continue; }
            if (a == INFINITY) { st->ninf++; continue; }
            if (a > amax) amax = a;
            if (v < vmin) vmin = v;
            if (v > vmax) vmax = v;
            if (a > thr) st->nover++;
        }
        st->amax = amax; st->vmin = vmin; st->vmax = vmax;
    }

    /* Number of |x| > thr in a block without NaN or inf (vectorized by the compiler). */
    static Py_ssize_t i8b_count_over(const float *x, Py_ssize_t n, float thr) {
        Py_ssize_t i;
        int32_t c = 0;  /* n <= I8B_BLOCK */
        for (i = 0; i < n; i++) c += fabsf(x[i]) > thr;
        return c;
    }

    /* One block: stats into st, and (mode 1: float32 product, inv a power of two;
       mode 2: double product; mode 0: none) the bin index of every value into idx,
       NaN and +-inf getting the last bin.  The fast loop keeps only the raw
       min/max (NaN is ignored by minps/maxps) and a non-finite count; a block
       with non-finite values is redone exactly, and one whose max |x| exceeds thr
       gets a second (vector) pass that counts the values over thr. */
    #ifdef I8B_SSE2
    #define I8B_STEP(OFF)                                                         \
        v = _mm_loadu_ps(x + i + OFF);                                          \
        a = _mm_and_ps(v, absm);                                                \
        mn##OFF = _mm_min_ps(v, mn##OFF);                                       \
        mx##OFF = _mm_max_ps(v, mx##OFF);                                       \
        nf = _mm_sub_epi32(nf, _mm_castps_si128(_mm_cmpnle_ps(a, vfmax)));      \
        if (mode == 1) {                                                        \
            t = _mm_min_ps(_mm_mul_ps(a, vinvf), vlastf);                       \
            _mm_storeu_si128((__m128i *)(idx + i + OFF), _mm_cvttps_epi32(t));  \
        } else if (mode == 2) {                                                 \
            tl = _mm_min_pd(_mm_mul_pd(_mm_cvtps_pd(a), vinv), vlastd);         \
            th = _mm_min_pd(_mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(a, a)), vinv), vlastd); \
            _mm_storeu_si128((__m128i *)(idx + i + OFF),                        \
                             _mm_unpacklo_epi64(_mm_cvttpd_epi32(tl), _mm_cvttpd_epi32(th))); \
        }
    #endif

    I8B_INLINE void i8b_block_m(const float *x, Py_ssize_t n, i8b_stats *st, int32_t *idx, const int mode,
                     float invf, double inv, float lastf, double lastd, float thr) {
        Py_ssize_t i = 0;
        float vmin = INFINITY, vmax = -INFINITY, a1;
        int64_t nonfin = 0;
    #ifdef I8B_SSE2
        const __m128 absm = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        const __m128 vfmax = _mm_set1_ps(FLT_MAX);
        const __m128 vinvf = _mm_set1_ps(invf), vlastf = _mm_set1_ps(lastf);
        const __m128d vinv = _mm_set1_pd(inv), vlastd = _mm_set1_pd(lastd);
        __m128 mn0 = _mm_set1_ps(INFINITY), mx0 = _mm_set1_ps(-INFINITY);
        __m128 mn4 = mn0, mx4 = mx0;
        __m128i nf = _mm_setzero_si128();
        __m128 v, a, t;
        __m128d tl, th;
        (void)t; (void)tl; (void)th;
        for (; i + 8 <= n; i += 8) {
            I8B_STEP(0)
            I8B_STEP(4)
        }
        {
            float f[4]; int32_t c[4]; int k;
            _mm_storeu_ps(f, _mm_min_ps(mn0, mn4));
            for (k = 0; k < 4; k++) if (f[k] < vmin) vmin = f[k];
            _mm_storeu_ps(f, _mm_max_ps(mx0, mx4));
            for (k = 0; k < 4; k++) if (f[k] > vmax) vmax = f[k];
            _mm_storeu_si128((__m128i *)c, nf);
            nonfin = (int64_t)c[0] + c[1] + c[2] + c[3];
        }
    #endif
        for (; i < n; i++) {
            float v1 = x[i], t1;
            double td;
            a1 = fabsf(v1);
            if (v1 < vmin) vmin = v1;
            if (v1 > vmax) vmax = v1;
            if (!(a1 <= FLT_MAX)) nonfin++;
            if (mode == 1) {
                t1 = a1 * invf;
                idx[i] = (int32_t)(t1 < lastf ? t1 : lastf);
            } else if (mode == 2) {
                td = (double)a1 * inv;
                idx[i] = (int32_t)(td < lastd ? td : lastd);
            }
        }
        a1 = vmax > -vmin ? vmax : -vmin;
        if (nonfin) {
            i8b_block_exact(x, n, st, thr);
            return;
        }
        if (a1 > thr) st->nover += i8b_count_over(x, n, thr);
        if (n) {  /* all finite: a1 = max |x| of the block */
            if (a1 > st->amax) st->amax = a1;
            if (vmin < st->vmin) st->vmin = vmin;
            if (vmax > st->vmax) st->vmax = vmax;
        }
    }

    #ifdef I8B_AVX2
    #define I8B_STEP8(OFF)                                                        \
        v = _mm256_loadu_ps(x + i + OFF);                                       \
        a = _mm256_and_ps(v, absm);                                             \
        mn##OFF = _mm256_min_ps(v, mn##OFF);                                    \
        mx##OFF = _mm256_max_ps(v, mx##OFF);                                    \
        nf = _mm256_sub_epi32(nf, _mm256_castps_si256(_mm256_cmp_ps(a, vfmax, _CMP_NLE_UQ))); \
        if (mode == 1) {                                                        \
            t = _mm256_min_ps(_mm256_mul_ps(a, vinvf), vlastf);                 \
            ii = _mm256_cvttps_epi32(t);                                        \
        } else if (mode == 2) {                                                 \
            tl = _mm256_min_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), vinv), vlastd); \
            th = _mm256_min_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), vinv), vlastd); \
            ii = _mm256_set_m128i(_mm256_cvttpd_epi32(th), _mm256_cvttpd_epi32(tl)); \
        }                                                                       \
        if (mode && !compact) {                                                 \
            _mm256_storeu_si256((__m256i *)(idx + w), ii);                      \
            w += 8;                                                             \
        } else if (mode) {  /* keep the lanes whose index is not 0, packed */   \
            keep = 0xff & ~_mm256_movemask_ps(_mm256_castsi256_ps(              \
                _mm256_cmpeq_epi32(ii, _mm256_setzero_si256())));               \
            perm = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)i8b_lut[keep])); \
            _mm256_storeu_si256((__m256i *)(idx + w), _mm256_permutevar8x32_epi32(ii, perm)); \
            w += __builtin_popcount(keep);                                      \
        }

    /* Same contract as i8b_block_m; only the vector loop differs (8 lanes). */
    static inline __attribute__((always_inline, target("avx2,popcnt")))
    Py_ssize_t i8b_block_avx2_m(const float *x, Py_ssize_t n, i8b_stats *st, int32_t *idx,
                          const int mode, const int compact, float invf, double inv,
                          float lastf, double lastd, float thr) {
        Py_ssize_t i = 0;
        float vmin = INFINITY, vmax = -INFINITY, a1;
        int64_t nonfin = 0;
        const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256 vfmax = _mm256_set1_ps(FLT_MAX);
        const __m256 vinvf = _mm256_set1_ps(invf), vlastf = _mm256_set1_ps(lastf);
        const __m256d vinv = _mm256_set1_pd(inv), vlastd = _mm256_set1_pd(lastd);
        __m256 mn0 = _mm256_set1_ps(INFINITY), mx0 = _mm256_set1_ps(-INFINITY);
        __m256 mn8 = mn0, mx8 = mx0;
        __m256i nf = _mm256_setzero_si256();
        __m256 v, a, t;
        __m256d tl, th;
        __m256i ii = _mm256_setzero_si256(), perm;
        int keep;
        Py_ssize_t w = 0;
        (void)t; (void)tl; (void)th; (void)perm; (void)keep;
        for (; i + 16 <= n; i += 16) {
            __builtin_prefetch(x + i + I8B_PREFETCH);  /* one 64-byte line per step */
            I8B_STEP8(0)
            I8B_STEP8(8)
        }
        {
            float f[8]; int32_t c[8]; int k;
            _mm256_storeu_ps(f, _mm256_min_ps(mn0, mn8));
            for (k = 0; k < 8; k++) if (f[k] < vmin) vmin = f[k];
            _mm256_storeu_ps(f, _mm256_max_ps(mx0, mx8));
            for (k = 0; k < 8; k++) if (f[k] > vmax) vmax = f[k];
            _mm256_storeu_si256((__m256i *)c, nf);
            for (k = 0; k < 8; k++) nonfin += c[k];
        }
        for (; i < n; i++) {
            float v1 = x[i], t1;
            double td;
            a1 = fabsf(v1);
            if (v1 < vmin) vmin = v1;
            if (v1 > vmax) vmax = v1;
            if (!(a1 <= FLT_MAX)) nonfin++;
            if (mode == 1) {
                t1 = a1 * invf;
                idx[w++] = (int32_t)(t1 < lastf ? t1 : lastf);
            } else if (mode == 2) {
                td = (double)a1 * inv;
                idx[w++] = (int32_t)(td < lastd ? td : lastd);
            }
        }
        a1 = vmax > -vmin ? vmax : -vmin;
        if (nonfin) {
            i8b_block_exact(x, n, st, thr);
            return w;
        }
        if (a1 > thr) st->nover += i8b_count_over(x, n, thr);
        if (n) {
            if (a1 > st->amax) st->amax = a1;
            if (vmin < st->vmin) st->vmin = vmin;
            if (vmax > st->vmax) st->vmax = vmax;
        }
        return w;
    }

    static __attribute__((target("avx2,popcnt")))
    Py_ssize_t i8b_block_avx2(const float *x, Py_ssize_t n, i8b_stats *st, int32_t *idx,
                              int mode, int compact, float invf, double inv, float lastf,
                              double lastd, float thr) {
        if (mode == 1 && compact)
            return i8b_block_avx2_m(x, n, st, idx, 1, 1, invf, inv, lastf, lastd, thr);
        if (mode == 1)
            return i8b_block_avx2_m(x, n, st, idx, 1, 0, invf, inv, lastf, lastd, thr);
        if (mode == 2 && compact)
            return i8b_block_avx2_m(x, n, st, idx, 2, 1, invf, inv, lastf, lastd, thr);
        if (mode == 2)
            return i8b_block_avx2_m(x, n, st, idx, 2, 0, invf, inv, lastf, lastd, thr);

        return i8b_block_avx2_m(x, n, st, idx, 0, 0, invf, inv, lastf, lastd, thr);
    }
    #endif

    typedef Py_ssize_t (*i8b_block_fn)(const float *, Py_ssize_t, i8b_stats *, int32_t *, int,
                                       int, float, double, float, double, float);

    static Py_ssize_t i8b_block(const float *x, Py_ssize_t n, i8b_stats *st, int32_t *idx,
                                int mode, int compact, float invf, double inv, float lastf, double lastd,
                                float thr) {
        if (mode == 1) i8b_block_m(x, n, st, idx, 1, invf, inv, lastf, lastd, thr);
        else if (mode == 2) i8b_block_m(x, n, st, idx, 2, invf, inv, lastf, lastd, thr);
        else i8b_block_m(x, n, st, idx, 0, invf, inv, lastf, lastd, thr);
        return n;
    }

    static void i8b_scatter_sub(const int32_t *I8B_RESTRICT idx, Py_ssize_t n, uint32_t *I8B_RESTRICT s0,
                                uint32_t *I8B_RESTRICT s1, uint32_t *I8B_RESTRICT s2,
                                uint32_t *I8B_RESTRICT s3) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            s0[idx[i]]++; s1[idx[i + 1]]++; s2[idx[i + 2]]++; s3[idx[i + 3]]++;
            s0[idx[i + 4]]++; s1[idx[i + 5]]++; s2[idx[i + 6]]++; s3[idx[i + 7]]++;
        }
        for (; i < n; i++) s0[idx[i]]++;
    }

    static void i8b_scatter_direct(const int32_t *I8B_RESTRICT idx, Py_ssize_t n, int64_t *I8B_RESTRICT h) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) h[idx[i]]++;
    }

    static void i8b_flush(uint32_t *sub, int64_t *hist, Py_ssize_t nbins) {
        Py_ssize_t j;
        uint32_t *s1 = sub + nbins, *s2 = sub + 2 * nbins, *s3 = sub + 3 * nbins;
        for (j = 0; j < nbins; j++)
            hist[j] += (int64_t)sub[j] + s1[j] + s2[j] + s3[j];
        memset(sub, 0, (size_t)I8B_NSUB * nbins * sizeof(uint32_t));
    }

    /* One chunk: hist (nbins int64) is overwritten with this chunk's counts
       (mode 1 or 2), or left alone (mode 0).  Returns st with nover fixed. */
    static void i8b_chunk(const float *x, Py_ssize_t n, int64_t *hist, Py_ssize_t nbins,
                          int mode, double inv, float thr, Py_ssize_t sub_min, i8b_stats *st) {
        int32_t idx[I8B_BLOCK + 8];
        Py_ssize_t w, zeros = 0;
        int probe, compact = 0;
        uint32_t *sub = NULL;
        Py_ssize_t i, m;
        int64_t since = 0;
        float invf = (float)inv, lastf = (float)(nbins - 1);
        double lastd = (double)(nbins - 1);
        i8b_block_fn block = i8b_block;
    #ifdef I8B_AVX2
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
            block = i8b_block_avx2;
    #endif
        i8b_stats_init(st);
        if (mode != 0) {
            memset(hist, 0, (size_t)nbins * sizeof(int64_t));
            if (n >= sub_min)
                sub = (uint32_t *)calloc((size_t)I8B_NSUB * nbins, sizeof(uint32_t));
        }
        for (i = 0; i < n; i += I8B_BLOCK) {
            m = n - i < I8B_BLOCK ? n - i : I8B_BLOCK;
            /* w <= m indexes come back; the other m - w values are in bin 0 */
            /* Dropping the bin-0 indexes pays off for data with many zeros (ReLU
               outputs: one hot counter is slow to increment); every 16th block
               drops them anyway, to see whether the next 15 should. */
            probe = (i / I8B_BLOCK) % 16 == 0;
            w = block(x + i, m, st, idx, mode, probe || compact, invf, inv, lastf, lastd, thr);
            if (mode == 0) continue;
            if (probe) compact = (m - w) * 8 >= m;
            zeros += m - w;
            if (sub) {
                if (since + w >= I8B_FLUSH_EVERY) { i8b_flush(sub, hist, nbins); since = 0; }
                i8b_scatter_sub(idx, w, sub, sub + nbins, sub + 2 * nbins, sub + 3 * nbins);
                since += w;
            } else {
                i8b_scatter_direct(idx, w, hist);
            }
        }
        if (sub) { i8b_flush(sub, hist, nbins); free(sub); }
        if (mode != 0) {
            hist[0] += zeros;
            hist[nbins - 1] -= st->nnan + st->ninf;
        }
        if (mode == 0) st->nover = 0;
    }

    /* Largest float <= h (so that, for a float a, a > h  <=>  a > result). */
    static float i8b_float_below(double h) {
        float f = (float)h;
        if ((double)f > h) f = nextafterf(f, -INFINITY);
        return f;
    }

    /* Sign fix-up for a min or max of 0: the old one-pass loop kept the first
       zero it met (-0.0 and 0.0 compare equal), so return that one. */
    static float i8b_first_zero(const float *x, Py_ssize_t n) {
        Py_ssize_t i;
        for (i = 0; i < n; i++) if (x[i] == 0.0f) return x[i];
        return 0.0f;
    }
    """
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


cdef Py_ssize_t _num_chunks(Py_ssize_t n, int num_threads):
    cdef Py_ssize_t c = n // _MIN_CHUNK  # every chunk gets at least _MIN_CHUNK values
    if c > num_threads:
        c = num_threads
    return c if c > 0 else 1


def _check_threads(num_threads):
    num_threads = int(num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return num_threads


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
        many chunks of at least 128 Ki values (one chunk, and no thread team,
        below 256 Ki values), each with its own partial histogram; counts and
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
    from values TensorRT wrote (the sampleINT8 README caches, reference notes
    4.2b; choices no published value decides are marked *):

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


# --------------------------------------------------------------------------
# Input sums for bias correction
# --------------------------------------------------------------------------

def sum_rows(const float[:, ::1] x, double[::1] acc, int num_threads=1):
    """``acc += x.sum(axis=0)``: add the rows of ``x`` into ``acc`` in double precision.

    ``x`` is ``(images, values per image)``; the columns are cut into tiles
    of 1024 that the threads share out, each column is summed in row order and
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
