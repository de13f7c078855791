"""The GPU statistics kernels (``int8batch/cuda/kernels.cu``) against the device's copy bandwidth.

Run on a machine with a GPU and cuda-python.  Activations of three shapes of
distribution (``relu``: half exact zeros, the rest half-normal; ``signed``:
normal; ``spiky``: nearly all values in the first bins, a few outliers set the
range), split into ``--jobs`` tensors of geometric sizes (as a network's
activations are: a few large, many small), ``--gb`` GB in all, are measured with
:class:`~int8batch.cuda.kernels.DeviceKernels` as the collectors call it (one
``abs_histogram_many`` over all tensors, the results back on the host):

- ``copy``: ``cudaMemcpy`` device to device of the same bytes (reads and writes
  them once): the baseline of the ratios;
- ``max``: the max pass (``abs_max_many``);
- ``hist``: the 2048-bin histograms, per kernel variant (``--variants``:
  ``vector`` is kernels.cu as built, 16-byte loads; ``scalar`` reads one
  value per load, ``I8B_SCALAR_LOADS=1``) and values per block
  (``--per-block``: fewer blocks mean fewer global atomics on the rows, and
  fewer blocks to fill the device).
- ``--offset``: tensors start 4 bytes past a 16-byte boundary (the unaligned
  head and tail paths of the vector loads).

Measured on an H200 (2 GB per distribution): warp-aggregated shared atomics
(``__match_any_sync``) were 1.5-2.6x slower on ReLU-like and normal data
(faster only when nearly all values share a few bins) and were dropped;
65536 values per block beat 262144 and 1048576.

Every variant's histograms and statistics are compared with the first one's:
they must be identical (a variant that is not is reported as DIFFERENT).

    python bench/bench_gpu_kernels.py --gb 2 --json kernels.json
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

import numpy as np  # noqa: E402

VARIANTS = {"vector": (), "scalar": ("I8B_SCALAR_LOADS=1",)}


def make_values(kind, n, rng):
    """``n`` float32 values of one distribution (host)."""
    if kind == "relu":
        v = np.abs(rng.standard_normal(n, dtype=np.float32))
        v[rng.random(n) < 0.5] = 0.0
    elif kind == "signed":
        v = rng.standard_normal(n, dtype=np.float32)
    elif kind == "spiky":
        v = np.abs(rng.standard_normal(n, dtype=np.float32)) * np.float32(0.01)
        v[rng.random(n) < 1e-4] *= 400.0
    else:
        raise ValueError(kind)
    return v


def job_sizes(total, jobs):
    """``jobs`` sizes in a geometric progression (ratio 1/0.9) summing to about ``total``."""
    w = 0.9 ** np.arange(jobs)
    return np.maximum(1024, (w / w.sum() * total).astype(np.int64))


def timed(fn, reps):
    from int8batch.cuda import runtime as cu
    fn()                                  # warm-up (module load, buffers)
    cu.device_synchronize()
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        cu.device_synchronize()
        sec = time.perf_counter() - t
        best = sec if best is None else min(best, sec)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="GB of activations per distribution")
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--bins", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dists", nargs="*", default=["relu", "signed", "spiky"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--per-block", nargs="*", type=int, default=[1 << 15, 1 << 16, 1 << 18])
    ap.add_argument("--offset", action="store_true", help="tensors start 4 bytes past a 16-byte boundary")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.buffers import DeviceBuffer
    from int8batch.cuda.kernels import DeviceKernels, DeviceTensor

    try:
        cu.ensure_context()
    except Exception as exc:  # noqa: BLE001 - no driver, no device, no cuda-python: one line, no traceback
        raise SystemExit(f"no GPU here for the kernels: {str(exc).splitlines()[0]}") from None
    print(f"device: {cu.device_name()}", flush=True)
    r = cu.rt()
    total = int(args.gb * 1e9 / 4)
    sizes = job_sizes(total, args.jobs)
    total = int(sizes.sum())
    rng = np.random.default_rng(0)
    results = {}
    kernels = {v: DeviceKernels(defines=VARIANTS[v]) for v in args.variants}
    src = DeviceBuffer(4 * total)
    dst = DeviceBuffer(4 * total)
    try:
        for dist in args.dists:
            block = make_values(dist, min(total, 1 << 25), rng)
            for off in range(0, total, block.size):          # tile the block over the device buffer
                n = min(block.size, total - off)
                cu.memcpy_htod(src.ptr + 4 * off, block[:n].ctypes.data, 4 * n)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) // 4 * 4 + (1 if args.offset else 0)
            starts = np.minimum(starts, total - sizes)
            xs = [DeviceTensor(src.ptr + 4 * int(s), (int(n),)) for s, n in zip(starts, sizes)]
            copy, _ = timed(lambda: cu.call("cudaMemcpy", r.cudaMemcpy(dst.ptr, src.ptr, 4 * total,
                                                                       r.cudaMemcpyKind.cudaMemcpyDeviceToDevice)),
                            args.reps)
            row = {"values": total, "copy_s": copy}
            print(f"{dist}: {total / 1e9:.2f} G values in {len(xs)} tensors; copy {1e3 * copy:.2f} ms "
                  f"({8 * total / copy / 1e9:.0f} GB/s read+write)", flush=True)
            k0 = kernels[args.variants[0]]
            mx, stats = timed(lambda: k0.abs_max_many(xs), args.reps)
            hist_max = np.maximum(stats[0], 1e-30)
            row["max_s"] = mx
            print(f"  max pass {1e3 * mx:8.2f} ms = {mx / copy:5.2f}x copy", flush=True)
            ref = None
            for v in args.variants:
                for pb in args.per_block:
                    k = kernels[v]
                    k.per_block = pb
                    out = np.zeros((len(xs), args.bins), dtype=np.int64)
                    sec, res = timed(lambda: k.abs_histogram_many(xs, hist_max, out), args.reps)
                    got = (out.copy(), [np.asarray(a).copy() for a in res])
                    same = ""
                    if ref is None:
                        ref = got
                    else:
                        ok = np.array_equal(ref[0], got[0]) and all(np.array_equal(a, b) for a, b in zip(ref[1], got[1]))
                        same = "identical" if ok else "DIFFERENT"
                    row[f"hist/{v}/{pb}"] = {"seconds": sec, "same": same or "reference"}
                    print(f"  hist {v:9s} per block {pb:8d}: {1e3 * sec:8.2f} ms = {sec / copy:5.2f}x copy "
                          f"({4 * total / sec / 1e9:.0f} GB/s read) {same}", flush=True)
            results[dist] = row
    finally:
        src.close()
        dst.close()
        for k in kernels.values():
            k.close()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": cu.device_name(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
