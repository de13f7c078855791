#!/usr/bin/env python
"""File -> GPU bandwidth of batch files, and the calibrator's get_batch overhead.

All on the same batch files in one run, page cache hot:

(a) ``np.fromfile`` + pageable ``cudaMemcpy`` per file (what the C++ sample and
    most Python calibrators do);
(b) pinned host buffer -> device with ``cudaMemcpyAsync`` (the PCIe ceiling);
(c) each DeviceFeeder strategy and some of its settings: the first pass with
    construction (registration) included, the same until background
    registration has finished too, and the second pass right after the first.

Then the median wall time of a calibrator ``get_batch`` call when the next
batch is already resident (a fake ``tensorrt`` base class when TensorRT is not
installed).  Prints GB/s (1e9 bytes/s) and ratios to (a) and (b).

    python bench/bench_feed.py              # 48 files of 64x3x224x224 float32 (1.85 GB)
    python bench/bench_feed.py --quick      # tiny smoke run
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import types

import numpy as np

import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

from int8batch import format as fmt  # noqa: E402
from int8batch.cuda import runtime as cu  # noqa: E402
from int8batch.cuda.buffers import DeviceBuffer, PinnedBuffer  # noqa: E402
from int8batch.cuda.feeder import DeviceFeeder  # noqa: E402
from int8batch.reader import BatchSet  # noqa: E402


def make_files(folder, files, n, c, h, w):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, c, h, w)).astype(np.float32)
    for k in range(files):
        fmt.write_batch_file(os.path.join(folder, fmt.batch_name(k)), base + np.float32(k),
                             np.arange(n, dtype=np.float32))


def warm(folder, files):
    for k in range(files):
        with open(os.path.join(folder, fmt.batch_name(k)), "rb") as f:
            while f.read(1 << 24):
                pass


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_way(folder, files, dims, dev):
    n, c, h, w = dims
    count = n * c * h * w
    for k in range(files):
        arr = np.fromfile(os.path.join(folder, fmt.batch_name(k)), dtype="<f4", count=count, offset=16)
        cu.memcpy_htod(dev.ptr, arr.ctypes.data, arr.nbytes)


def pinned_ceiling(files, nbytes, pinned, devs, stream):
    for k in range(files):
        cu.memcpy_htod_async(devs[k % 2].ptr, pinned.ptr, nbytes, stream.handle)
    stream.synchronize()


def feeder_passes(bs, batch_size, repeats, **kw):
    """Medians over ``repeats`` fresh feeders, in seconds: first pass incl. construction, second pass
    (right after), close; first pass until background registration is also done (separate feeders);
    plus bytes per pass, strategy and the staged share of the first pass."""
    first, second, close, regdone, staged = [], [], [], [], []
    nbytes = strategy = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        feeder = DeviceFeeder(bs, batch_size, **kw)
        try:
            for _b in feeder:
                pass
            t1 = time.perf_counter()
            staged.append(feeder.stats["staged_bytes"])
            for _b in feeder:
                pass
            t2 = time.perf_counter()
            nbytes, strategy = feeder.num_batches * feeder.nbytes, feeder.strategy
        finally:
            t3 = time.perf_counter()
            feeder.close()
            t4 = time.perf_counter()
        first.append(t1 - t0)
        second.append(t2 - t1)
        close.append(t4 - t3)
    if strategy == "registered":
        for _ in range(repeats):
            t0 = time.perf_counter()
            with DeviceFeeder(bs, batch_size, **kw) as feeder:
                for _b in feeder:
                    pass
                feeder.wait_registered()
                regdone.append(time.perf_counter() - t0)
    med = statistics.median
    return (med(first), med(second), med(close), med(regdone) if regdone else None, nbytes, strategy,
            med(staged) / nbytes if nbytes else 0.0)


def probe_registration(bs, threads, chunks=1, dma=False):
    """GB/s of cudaHostRegister(ReadOnly) and cudaHostUnregister over every file, on ``threads`` threads,
    each file in ``chunks`` page-aligned pieces; with ``dma`` a pinned->device copy loop runs meanwhile
    (its GB/s is returned third)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from int8batch.cuda.buffers import host_address

    ctx = cu.current_context()
    readonly = cu.readonly_registration_supported()
    ranges = []
    for k in range(bs.num_files):
        base, size = host_address(bs.file_buffer(k)), bs.file_buffer(k).size()
        size = -(-size // 4096) * 4096
        step = -(-size // (chunks * 4096)) * 4096
        ranges += [(base + a, min(step, size - a)) for a in range(0, size, step)]
    stop, moved = threading.Event(), [0, 0.0]

    def copy_loop():
        cu.set_current_context(ctx)
        nb = bs.file_buffer(0).size()
        with PinnedBuffer(nb) as src, DeviceBuffer(nb) as dst:
            s = cu.Stream()
            t0 = time.perf_counter()
            while not stop.is_set():
                for _ in range(4):
                    cu.memcpy_htod_async(dst.ptr, src.ptr, nb, s.handle)
                s.synchronize()
                moved[0] += 4 * nb
            moved[1] = time.perf_counter() - t0
            s.close()

    copier = threading.Thread(target=copy_loop) if dma else None
    with ThreadPoolExecutor(threads, initializer=lambda: cu.set_current_context(ctx)) as pool:
        if copier:
            copier.start()
            time.sleep(0.02)
        t0 = time.perf_counter()
        list(pool.map(lambda r: cu.host_register(r[0], r[1], readonly=readonly), ranges))
        t1 = time.perf_counter()
        if copier:
            stop.set()
            copier.join()
        list(pool.map(lambda r: cu.host_unregister(r[0]), ranges))
        t2 = time.perf_counter()
    total = sum(r[1] for r in ranges)
    return total / (t1 - t0) / 1e9, total / (t2 - t1) / 1e9, (moved[0] / moved[1] / 1e9 if copier else None)


def probe_host_copy(bs, threads, chunk=8 << 20):
    """GB/s of copying every file from its mapping into pinned chunks (no DMA) on ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    bufs = [PinnedBuffer(chunk) for _ in range(threads)]
    srcs = [bs.file_arrays(k)[0].reshape(-1).view(np.uint8) for k in range(bs.num_files)]
    jobs = [src[a:a + chunk] for src in srcs for a in range(0, src.nbytes, chunk)]
    try:
        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda ij: np.copyto(bufs[ij[0] % threads].array[:ij[1].nbytes], ij[1]),
                          enumerate(jobs)))
            dt = time.perf_counter() - t0
    finally:
        for b in bufs:
            b.close()
    return sum(j.nbytes for j in jobs) / dt / 1e9


def get_batch_overhead(bs, batch_size, calls):
    """Median and 90th percentile microseconds of get_batch when the next batch is resident."""
    try:
        import tensorrt  # noqa: F401
        using = "tensorrt " + tensorrt.__version__
    except ImportError:
        fake = types.ModuleType("tensorrt")
        fake.__version__ = "10.3.0"
        for name in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator",
                     "IInt8LegacyCalibrator"):
            setattr(fake, name, type(name, (), {"__init__": lambda self: None}))
        sys.modules["tensorrt"] = fake
        using = "fake tensorrt base class"
    from int8batch.trt.calibrator import make_calibrator

    samples = []
    with make_calibrator(bs, "data", batch_size=batch_size) as cal:
        while cal.get_batch(["data"]):        # first pass: registers every file
            pass
        cal.feeder.reset()
        for _ in range(calls):
            cu.rt().cudaStreamSynchronize(cal.feeder._stream.handle)   # the next batch has landed
            t0 = time.perf_counter()
            ptrs = cal.get_batch(["data"])
            samples.append(time.perf_counter() - t0)
            if not ptrs:
                samples.pop()
                cal.feeder.reset()
        cal.raise_if_failed()
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.9)] * 1e6, using


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--n", type=int, default=64, help="images per file")
    ap.add_argument("--shape", default="3x224x224", help="C x H x W")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000, help="get_batch calls timed")
    ap.add_argument("--dir", help="folder for the files (default: a temporary folder, removed after)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 6 files of 8x3x32x32")
    ap.add_argument("--fake-cuda", action="store_true", help=argparse.SUPPRESS)   # CPU smoke test of the script
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.n, args.shape, args.repeats, args.calls = 6, 8, "3x32x32", 2, 50
    if args.fake_cuda:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "cuda"))
        from fake_cudart import NAMES, FakeCuda
        fake = FakeCuda()
        for name in NAMES:
            setattr(cu, name, getattr(fake, name))
        cu.rt = lambda: types.SimpleNamespace(cudaStreamSynchronize=lambda h: fake._stream(h).synchronize())
    c, h, w = (int(v) for v in args.shape.lower().split("x"))
    dims = (args.n, c, h, w)
    folder = args.dir or tempfile.mkdtemp(prefix="bench_feed_")
    os.makedirs(folder, exist_ok=True)
    try:
        make_files(folder, args.files, *dims)
        warm(folder, args.files)
        cu.ensure_context()
        gpu = "fake" if args.fake_cuda else cu.device_name()
        nbytes = 4 * args.n * c * h * w
        total = nbytes * args.files
        print(f"GPU: {gpu}; {args.files} files of {args.n}x{c}x{h}x{w} float32 "
              f"({nbytes / 1e6:.1f} MB each, {total / 1e9:.2f} GB), page cache hot, median of {args.repeats}")

        rows = []
        with DeviceBuffer(nbytes) as dev:
            t_a = timed(lambda: sample_way(folder, args.files, dims, dev), args.repeats)
        gbs_a = total / t_a / 1e9
        stream = cu.Stream()
        with PinnedBuffer(nbytes) as pinned, DeviceBuffer(nbytes) as d0, DeviceBuffer(nbytes) as d1:
            pinned.array[:] = 1
            pinned_ceiling(2, nbytes, pinned, [d0, d1], stream)
            t_b = timed(lambda: pinned_ceiling(args.files, nbytes, pinned, [d0, d1], stream), args.repeats)
        stream.close()
        gbs_b = total / t_b / 1e9
        rows.append(("(a) np.fromfile + pageable cudaMemcpy", gbs_a))
        rows.append(("(b) pinned -> device (ceiling)", gbs_b))

        results = {}
        with BatchSet(folder) as bs:
            later = dict(register_during_copies=False)
            configs = [
                ("auto (default)", dict()),
                ("registered, register_threads=0", dict(strategy="registered", register_threads=0)),
                ("registered, register_threads=2", dict(strategy="registered", register_threads=2)),
                ("auto, depth=2", dict(depth=2)),
                ("auto, register after copies, copy_threads=8", dict(later, copy_threads=8)),
                ("auto, register after copies, copy_threads=12", dict(later, copy_threads=12)),
                ("pinned, copy_threads=8", dict(strategy="pinned", copy_threads=8)),
                ("pinned, copy_threads=12", dict(strategy="pinned", copy_threads=12)),
                ("pageable", dict(strategy="pageable")),
            ]
            if args.quick:
                configs = configs[:2] + configs[-3:]
            notes = []
            for name, kw in configs:
                first, second, close, regdone, moved, strategy, staged = feeder_passes(bs, args.n, args.repeats, **kw)
                results[name] = (first, second, close, moved)
                rows.append((f"(c) {name} [{strategy}] first pass incl. setup", moved / first / 1e9))
                if regdone:
                    rows.append((f"(c) {name} first pass until all registered", moved / regdone / 1e9))
                rows.append((f"(c) {name} first pass incl. setup + close", moved / (first + close) / 1e9))
                rows.append((f"(c) {name} second pass (right after)", moved / second / 1e9))
                notes.append(f"{name}: {100 * staged:.0f}% of the first pass staged")
            straddle = args.n * 3 // 2
            first, second, close, regdone, moved, strategy, staged = feeder_passes(bs, straddle, args.repeats)
            rows.append((f"(c) auto, batch {straddle} (straddles files) [{strategy}] first pass", moved / first / 1e9))
            rows.append((f"(c) auto, batch {straddle} second pass", moved / second / 1e9))
            med, p90, using = get_batch_overhead(bs, args.n, args.calls)
            probes = [(t, ch, dma, *probe_registration(bs, t, ch, dma))
                      for t, ch, dma in ((1, 1, False), (2, 1, False), (1, 1, True))]
            host = [(t, probe_host_copy(bs, t)) for t in (4, 8, 12, 16)]
            t0 = time.perf_counter()
            PinnedBuffer(64 << 20).close()
            alloc = (64 << 20) / (time.perf_counter() - t0) / 1e9

        width = max(len(r[0]) for r in rows)
        print(f"{'path':<{width}}  {'GB/s':>7}  {'vs (a)':>7}  {'vs (b)':>7}")
        for name, gbs in rows:
            print(f"{name:<{width}}  {gbs:7.2f}  {gbs / gbs_a:6.1f}x  {100 * gbs / gbs_b:6.1f}%")
        print(f"calibrator get_batch, next batch resident ({using}): median {med:.1f} us, p90 {p90:.1f} us "
              f"over {args.calls} calls")
        for t, ch, dma, reg, unreg, dma_gbs in probes:
            print(f"raw cudaHostRegister(ReadOnly) of all files, {t} thread(s), {ch} piece(s) per file"
                  + (f", pinned->device copies running meanwhile at {dma_gbs:.1f} GB/s" if dma else "")
                  + f": register {reg:.1f} GB/s, unregister {unreg:.1f} GB/s")
        print("host copy mapping -> pinned (no DMA): "
              + ", ".join(f"{t} thread(s) {gbs:.1f} GB/s" for t, gbs in host))
        print(f"cudaHostAlloc + cudaFreeHost of 64 MiB (staging memory set-up): {alloc:.1f} GB/s")
        print("staged share: " + "; ".join(notes))
        first, second, close, moved = results["auto (default)"]
        d_first = moved / first / 1e9
        print("targets: default feeder first pass incl. registration "
              f"{d_first:.1f} GB/s (>= 40: {'met' if d_first >= 40 else 'MISSED'}), "
              f"{d_first / gbs_a:.1f}x (a) (>= 10x: {'met' if d_first >= 10 * gbs_a else 'MISSED'}); "
              f"second pass {100 * moved / second / 1e9 / gbs_b:.0f}% of (b) "
              f"(>= 90%: {'met' if moved / second / 1e9 >= 0.9 * gbs_b else 'MISSED'}); "
              f"get_batch {med:.1f} us (< 50: {'met' if med < 50 else 'MISSED'})")
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
