/* |x| histogram and max of a run of float32 values: the C inner loops of
   int8batch._kernels_calib (csrc/_calib_histogram.pxi calls i8b_chunk on each
   chunk or piece of a tensor; the Python-facing wrappers validate first).

   The data is taken in blocks of I8B_BLOCK (512) values, two passes per block:

   1. a branch-free SIMD pass (SSE2; an AVX2 copy is picked at run time where the
      CPU has it) keeps the raw signed min/max (minps/maxps skip NaN) and counts
      the non-finite values, and writes every bin index to a small buffer (NaN
      and +-inf get the last bin index, no branch).  Blocks holding NaN/inf are
      then redone by an exact scalar loop (their values leave the last bin at the
      end); blocks whose max |x| exceeds hist_max get a second vector pass that
      counts the over values.  Max |x| = max(vmax, -vmin) over finite values.
   2. a scalar scatter adds 1 per index into I8B_NSUB = 4 interleaved uint32
      sub-histograms (index i of the buffer goes to sub-histogram i % 4), so runs
      of equal indices do not serialise on one counter; they are summed into the
      int64 result at the end of the chunk (and before a uint32 could overflow).
      On data with many zeros (ReLU outputs) the AVX2 pass packs away the bin-0
      indexes and just counts them: one very hot counter is the slow case.

   Every count is an integer sum (exact in any order) and min/max do not depend
   on the order either, except the sign of a zero min/max, which is fixed up
   from the data: so the results are bit-identical for any thread count, with or
   without AVX2, and to the earlier plain double-precision loop.

   Bin index: min(|x| * inv, nbins - 1) truncated, with inv = nbins /
   hist_max (double), which equals the documented floor(|x| * inv) with
   values at or above nbins clamped to the last bin.  The product is taken
   in double, except when inv is a power of two (the collector's grow mode
   with a power-of-two num_bins): then the float32 product is exact and so
   gives the same index.  Over count: |x| > hist_max is tested in float32
   against the largest float <= hist_max, which is the same test for a float |x|.
*/
#ifndef INT8BATCH_CALIB_HISTOGRAM_H
#define INT8BATCH_CALIB_HISTOGRAM_H

#include <Python.h>  /* Py_ssize_t (Cython includes it first anyway) */
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

#endif  /* INT8BATCH_CALIB_HISTOGRAM_H */
