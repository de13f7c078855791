/* int8batch's CUDA kernels, compiled at first use with NVRTC (int8batch/cuda/kernels.py).

   They compute on the device what the CPU kernels of csrc/_calib_histogram.h and
   csrc/_calib_sums.pxi compute on the host, with the same arithmetic, so that the
   results are the same numbers:

   i8b_abs_hist   per job (one tensor), over its finite values: the |x| histogram
                  (bin = trunc(min((double)|x| * inv, nbins - 1)), inv = nbins /
                  hist_max in double, as the CPU kernel defines it), the count of
                  values with |x| > thr (thr: the largest float <= hist_max), the
                  signed min and max, and the NaN and +-inf counts.  With inv == 0
                  only the statistics are computed (the max pass).  Counts are
                  integer sums, min/max do not depend on the order: the results are
                  exact whatever the launch shape.  One difference: a min or max of
                  zero is -0.0 when the data holds a -0.0 (the CPU keeps the first
                  zero it meets); nothing downstream reads that sign.
   i8b_sum_rows   acc[j] += sum over i of x[i, j], each column summed in row order
                  in double and then added to acc, as the CPU's sum_rows does.
   i8b_lattice    largest |x/step - rint(x/step)| (as float bits); 1 for NaN or +-inf.
   i8b_patch_gram H[g] += sum over patches p of p p^T for the input patches of a Conv
                  (2-D or 1-D, any group, stride, padding, dilation) or a Gemm: the
                  second moments of int8batch/calib/rounding.py, patches in its
                  (image, position) order, values in the weight's (channel, tap)
                  order.  Each block sums 1024 patches in float (as the host's
                  float32 matmul does) and adds them to H in double; only the tiles
                  on or below the diagonal are computed (the host mirrors them).

   The grid of i8b_abs_hist is (blocks per job, jobs): job j uses the first
   min(gridDim.x, ceil(n_j / per_block)) blocks of its column, the others return.
   Values are read 16 bytes at a time (measured on an H200 by bench/bench_gpu_kernels.py
   against one value per load, which I8B_SCALAR_LOADS=1 compiles).
   Each block counts into a shared-memory histogram of nbins uint32 (zeros, the
   common case after a ReLU, are counted in a register instead), then adds its
   non-empty bins to the job's global uint64 row.
*/

typedef unsigned long long u64;

struct i8b_job {          /* 32 bytes; the NumPy dtype JOB in kernels.py mirrors it */
    const float *x;
    long long n;
    double inv;           /* nbins / hist_max; 0: statistics only */
    float thr;            /* over count: |x| > thr */
    int pad;
};

/* Order-preserving map of float32 bits onto uint32 (for atomicMin / atomicMax). */
__device__ __forceinline__ unsigned int i8b_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ T i8b_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One value into a thread's running statistics (the arithmetic of the CPU kernel). */
struct i8b_acc {
    float vmin, vmax;
    u64 nnan, ninf, nover, nzero;
};

__device__ __forceinline__ void i8b_take(float v, i8b_acc &s, bool on, double inv, double lastd, float thr,
                                         unsigned int *sh) {
    float a = fabsf(v);
    if (!(a <= 3.402823466e38f)) {                   /* NaN or +-inf: not binned */
        if (v != v) s.nnan++; else s.ninf++;
        return;
    }
    s.vmin = fminf(s.vmin, v);
    s.vmax = fmaxf(s.vmax, v);
    if (on) {
        if (a > thr) s.nover++;
        double t = fmin((double)a * inv, lastd);
        int b = (int)t;
        if (b == 0) s.nzero++;
        else atomicAdd(&sh[b], 1u);
    }
}

extern "C" __global__ void i8b_abs_hist(const i8b_job *jobs, int nbins, long long per_block,
                                        u64 *hist, unsigned int *minkey, unsigned int *maxkey,
                                        u64 *counts /* 3 per job: nan, inf, over */) {
    extern __shared__ unsigned int sh[];
    const int j = blockIdx.y;
    const i8b_job jb = jobs[j];
    long long want = (jb.n + per_block - 1) / per_block;
    long long nblk = want < (long long)gridDim.x ? want : (long long)gridDim.x;
    if (nblk < 1) nblk = 1;
    if ((long long)blockIdx.x >= nblk) return;      /* the whole block leaves together */
    const bool on = jb.inv != 0.0;
    if (on)
        for (int b = threadIdx.x; b < nbins; b += blockDim.x) sh[b] = 0u;
    __syncthreads();

    const float *x = jb.x;
    const long long n = jb.n;
    const double inv = jb.inv, lastd = (double)(nbins - 1);
    const float thr = jb.thr;
    i8b_acc s;
    s.vmin = __int_as_float(0x7f800000);
    s.vmax = -__int_as_float(0x7f800000);
    s.nnan = s.ninf = s.nover = s.nzero = 0;
    const long long stride = nblk * (long long)blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
#if I8B_SCALAR_LOADS
    for (long long i = tid; i < n; i += stride) i8b_take(x[i], s, on, inv, lastd, thr, sh);
#else
    /* 16-byte loads (four values in flight per thread): the values before the first 16-byte
       boundary and the last n % 4 after it are taken one by one by the first threads */
    long long head = (long long)(((16u - ((unsigned int)(size_t)x & 15u)) & 15u) >> 2);
    if (head > n) head = n;
    if (tid < head) i8b_take(x[tid], s, on, inv, lastd, thr, sh);
    const float4 *x4 = reinterpret_cast<const float4 *>(x + head);
    const long long n4 = (n - head) >> 2;
    for (long long i = tid; i < n4; i += stride) {
        float4 q = x4[i];
        i8b_take(q.x, s, on, inv, lastd, thr, sh);
        i8b_take(q.y, s, on, inv, lastd, thr, sh);
        i8b_take(q.z, s, on, inv, lastd, thr, sh);
        i8b_take(q.w, s, on, inv, lastd, thr, sh);
    }
    const long long done = head + 4 * n4;
    if (tid < n - done) i8b_take(x[done + tid], s, on, inv, lastd, thr, sh);
#endif
    float vmin = s.vmin, vmax = s.vmax;
    u64 nnan = s.nnan, ninf = s.ninf, nover = s.nover, nzero = s.nzero;
    /* warp reductions, then one atomic per warp */
    for (int o = 16; o > 0; o >>= 1) {
        vmin = fminf(vmin, __shfl_xor_sync(0xffffffffu, vmin, o));
        vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, o));
    }
    nnan = i8b_warp_sum(nnan);
    ninf = i8b_warp_sum(ninf);
    nover = i8b_warp_sum(nover);
    nzero = i8b_warp_sum(nzero);
    if ((threadIdx.x & 31) == 0) {
        if (vmin <= vmax) {                           /* the warp saw a finite value */
            atomicMin(&minkey[j], i8b_key(vmin));
            atomicMax(&maxkey[j], i8b_key(vmax));
        }
        if (nnan) atomicAdd(&counts[3 * j], nnan);
        if (ninf) atomicAdd(&counts[3 * j + 1], ninf);
        if (nover) atomicAdd(&counts[3 * j + 2], nover);
        if (on && nzero) atomicAdd(&hist[(long long)j * nbins], nzero);
    }
    if (!on) return;
    __syncthreads();
    u64 *row = hist + (long long)j * nbins;
    for (int b = threadIdx.x; b < nbins; b += blockDim.x) {
        unsigned int c = sh[b];
        if (c) atomicAdd(&row[b], (u64)c);
    }
}

extern "C" __global__ void i8b_sum_rows(const float *x, long long rows, long long cols, double *acc) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double t = 0.0;
    for (long long r = 0; r < rows; r++) t += (double)x[r * cols + c];
    acc[c] += t;
}

extern "C" __global__ void i8b_lattice(const float *x, long long n, double step, unsigned int *worst) {
    float w = 0.0f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        if (!(fabsf(v) <= 3.402823466e38f)) { w = 1.0f; continue; }   /* off any lattice */
        double k = (double)v / step;
        w = fmaxf(w, (float)fabs(k - rint(k)));
    }
    for (int o = 16; o > 0; o >>= 1) w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, o));
    if ((threadIdx.x & 31) == 0) atomicMax(worst, __float_as_uint(w));   /* w >= 0: bits order as floats */
}

/* The geometry of one layer's patches (i8b_patch_gram); the NumPy dtype GEO in kernels.py mirrors it. */
struct i8b_geo {
    int c, h, w;            /* input channels and spatial size (a Gemm: K, 1, 1) */
    int cg, kh, kw;         /* channels per group, kernel */
    int sh, sw, ph, pw;     /* strides, padding at the start */
    int dh, dw, oh, ow;     /* dilations, output size */
    int d, rows_per_block;  /* values per patch (cg * kh * kw), patches summed by one block */
};

#define I8B_GT 16

__device__ __forceinline__ float i8b_patch_value(const float *x, const i8b_geo &g, int grp, long long r,
                                                 long long rows, int v) {
    if (r >= rows || v >= g.d) return 0.0f;
    int khw = g.kh * g.kw;
    long long ohw = (long long)g.oh * g.ow;
    long long n = r / ohw;
    int p = (int)(r - n * ohw);
    int oy = p / g.ow, ox = p - (p / g.ow) * g.ow;
    int cl = v / khw, t = v - cl * khw;
    int ky = t / g.kw, kx = t - ky * g.kw;
    int iy = oy * g.sh - g.ph + ky * g.dh, ix = ox * g.sw - g.pw + kx * g.dw;
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.0f;
    int c = grp * g.cg + cl;
    return x[((n * g.c + c) * g.h + iy) * (long long)g.w + ix];
}

/* grid (row blocks, tiles * tiles, groups), block (16, 16); h: groups x d x d doubles */
extern "C" __global__ void i8b_patch_gram(const float *x, i8b_geo g, long long rows, double *h) {
    __shared__ float a[I8B_GT][I8B_GT + 1], b[I8B_GT][I8B_GT + 1];
    int tiles = (g.d + I8B_GT - 1) / I8B_GT;
    int ti = blockIdx.y / tiles, tj = blockIdx.y - ti * tiles;
    if (tj > ti) return;
    int grp = blockIdx.z, tx = threadIdx.x, ty = threadIdx.y;
    long long r0 = (long long)blockIdx.x * g.rows_per_block;
    long long r1 = min(rows, r0 + g.rows_per_block);
    float acc = 0.0f;
    for (long long r = r0; r < r1; r += I8B_GT) {
        a[ty][tx] = i8b_patch_value(x, g, grp, r + ty, r1, ti * I8B_GT + tx);
        b[ty][tx] = i8b_patch_value(x, g, grp, r + ty, r1, tj * I8B_GT + tx);
        __syncthreads();
        for (int k = 0; k < I8B_GT; k++) acc += a[k][ty] * b[k][tx];
        __syncthreads();
    }
    int i = ti * I8B_GT + ty, j = tj * I8B_GT + tx;
    if (i < g.d && j < g.d) atomicAdd(&h[((long long)grp * g.d + i) * g.d + j], (double)acc);
}
