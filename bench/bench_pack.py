"""Packing speed: int8batch vs plain Python pipelines vs the decode-only ceilings (issue 11).

Two corpora made by tools/make_corpus.py: ``default`` (ImageNet-val-like sizes,
about 56 kB per JPEG) and ``mix`` (``--mix``: the photo-folder shape, 4:2:0,
quality 90, 1 in 5 images with a long side of 1000-2000 px).  Per corpus, on
the same files in one run (page cache warmed first), recipe imagenet-torch
(short side 256, centre crop 224, RGB, mean/std), 64 images per file,
``--workers`` threads everywhere:

- int8batch.pack() in-process, and the ``int8batch pack`` command (start-up included);
- a plain PIL loop, a plain OpenCV + NumPy loop (threads);
- the best plain-Python pipeline: IMREAD_REDUCED_* decode + cv2.resize + one
  fused NumPy subtract/scale into the batch slot, threads;
- decode + resize only (the packer's decode.decode_image);
- decode-only ceilings: the packer's decoder (OpenCV, reduced-size as the
  pack uses it), and the fastest decoder importable (simplejpeg with fast
  IDCT/upsampling and DCT scaling; skipped when not installed);
- a stage profile of the packer (thread CPU seconds per stage, page faults);

and MNIST IDX -> batch files in GB/s of output (into a new folder, and replacing
a pack with --force), against the file system's own floor measured in the same
run: the same number of new files of the same size, each written once from a
ready buffer by the same number of threads.  Every timed run starts with the
dirty pages flushed (``sync``, untimed).  Figures from a shared or
busy machine are noise: pin the run (``taskset -c 4,5``) on a quiet one.

    python bench/bench_pack.py                  # 1000 images per corpus
    python bench/bench_pack.py --count 5000     # also 5000 (corpora made if missing)
    python bench/bench_pack.py --quick          # 128 images, a smoke run
"""
import argparse
import collections
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import _paths  # noqa: F401  (int8batch: installed, else this tree)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N = 64
PRESET = "imagenet-torch"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# fused (x / 255 - mean) / std = x * A - B, per RGB channel
A = (1.0 / (255.0 * STD)).astype(np.float32)
B = (MEAN / STD).astype(np.float32)


def corpus(path, count, mix):
    if os.path.isdir(path) and len(files_of(path)) >= count:
        return
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), path, "--count", str(count),
                    "--seed", "0"] + (["--mix"] if mix else []), check=True)


def files_of(path):
    out = []
    for d, _, names in os.walk(path):
        out += [os.path.join(d, n) for n in names if n.lower().endswith((".jpg", ".jpeg"))]
    return sorted(out)


def write_batches(out, chunks):
    os.makedirs(out, exist_ok=True)
    for k, (data, labels) in enumerate(chunks):
        with open(os.path.join(out, f"batch{k}"), "wb") as f:
            f.write(np.array(data.shape, "<i4").tobytes())
            f.write(data.tobytes())
            f.write(labels.astype("<f4").tobytes())


def short_side(w, h, s=256):
    return (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)


def pil_loop(files, out):
    from PIL import Image
    buf = np.empty((N, 3, 224, 224), np.float32)
    chunks = []
    for i, p in enumerate(files[:len(files) // N * N]):
        im = Image.open(p).convert("RGB")
        w, h = short_side(*im.size)
        im = im.resize((w, h), Image.BILINEAR)
        x0, y0 = (w - 224) // 2, (h - 224) // 2
        a = np.asarray(im.crop((x0, y0, x0 + 224, y0 + 224)), dtype=np.float32)
        buf[i % N] = ((a / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        if i % N == N - 1:
            chunks.append((buf.copy(), np.zeros(N)))
    write_batches(out, chunks)


def _threaded_loop(files, out, workers, one):
    """Fill batch buffers with ``one(path, slot)`` on ``workers`` threads, write each when full."""
    import cv2
    n = len(files) // N * N
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    os.makedirs(out, exist_ok=True)
    try:
        with ThreadPoolExecutor(workers) as pool:
            buf = np.empty((N, 3, 224, 224), np.float32)
            for k in range(n // N):
                list(pool.map(lambda j: one(files[k * N + j], buf[j]), range(N)))
                write_batches_one(os.path.join(out, f"batch{k}"), buf)
    finally:
        cv2.setNumThreads(threads)


def write_batches_one(path, buf):
    with open(path, "wb") as f:
        f.write(np.array(buf.shape, "<i4").tobytes())
        f.write(buf.tobytes())
        f.write(np.zeros(len(buf), "<f4").tobytes())


def cv_loop(files, out, workers):
    """Plain OpenCV + NumPy: full decode, resize, crop, float maths, transpose (threads)."""
    import cv2

    def one(p, slot):
        im = cv2.imread(p, cv2.IMREAD_COLOR)
        im = cv2.resize(im, short_side(im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR)
        y0, x0 = (im.shape[0] - 224) // 2, (im.shape[1] - 224) // 2
        a = im[y0:y0 + 224, x0:x0 + 224, ::-1].astype(np.float32) / 255.0
        slot[...] = ((a - MEAN) / STD).transpose(2, 0, 1)
    _threaded_loop(files, out, workers, one)


REDUCED = None


def _reduced_flag(data):
    """IMREAD_REDUCED_COLOR_k for the largest k keeping the short side >= 256 (the best Python can do)."""
    import cv2
    from int8batch.packing.decode import jpeg_size
    hw = jpeg_size(data)
    k = 1
    if hw is not None:
        while k < 8 and min(hw) // (2 * k) >= 256:
            k *= 2
    return {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[k]


def best_python(files, out, workers):
    """Reduced-size decode + resize + one fused NumPy subtract/scale into the batch slot (threads)."""
    import cv2

    def one(p, slot):
        data = np.fromfile(p, np.uint8)
        im = cv2.imdecode(data, _reduced_flag(data))
        im = cv2.resize(im, short_side(im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR)
        y0, x0 = (im.shape[0] - 224) // 2, (im.shape[1] - 224) // 2
        crop = im[y0:y0 + 224, x0:x0 + 224]
        for c in range(3):  # BGR -> RGB, x * A - B, straight into the slot
            np.multiply(crop[:, :, 2 - c], A[c], out=slot[c], dtype=np.float32)
            slot[c] -= B[c]
    _threaded_loop(files, out, workers, one)


def _pool_map(files, workers, fn):
    import cv2
    n = len(files) // N * N
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, files[:n]))
    finally:
        cv2.setNumThreads(threads)


def decode_only(files, workers):
    """The packer's decoder (OpenCV, reduced-size exactly as the pack uses it), nothing else."""
    import cv2
    from int8batch.packing.decode import jpeg_size
    from int8batch.preprocess import preset
    cfg = preset(PRESET)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}

    def one(p):
        data = np.fromfile(p, np.uint8)
        return cv2.imdecode(data, flags[cfg.reduction_factor(*jpeg_size(data))]).shape
    _pool_map(files, workers, one)


def fastest_decoder():
    try:
        import simplejpeg  # noqa: F401
        return "simplejpeg " + getattr(simplejpeg, "__version__", "")
    except ImportError:
        return None


def decode_only_fastest(files, workers):
    """simplejpeg (libjpeg-turbo): DCT scaling to the same size, fast IDCT + upsampling, per-thread buffers."""
    import simplejpeg
    from int8batch.packing.decode import jpeg_size
    from int8batch.preprocess import preset
    cfg = preset(PRESET)
    local = threading.local()

    def one(p):
        data = np.fromfile(p, np.uint8)
        h, w = jpeg_size(data)
        r = cfg.reduction_factor(h, w)
        oh, ow = -(-h // r), -(-w // r)
        buf = getattr(local, "buf", None)
        if buf is None or buf.size < oh * ow * 3:
            buf = local.buf = np.empty(max(oh * ow * 3, 1 << 22), np.uint8)
        return simplejpeg.decode_jpeg(data, colorspace="BGR", fastdct=True, fastupsample=True,
                                      min_height=oh, min_width=ow, buffer=buf).shape
    _pool_map(files, workers, one)


def decode_resize(files, workers):
    """The packer's own decode + resize step (int8batch.packing.decode), nothing else."""
    from int8batch.packing.decode import decode_image, read_file
    from int8batch.preprocess import preset
    cfg = preset(PRESET)
    _pool_map(files, workers, lambda p: decode_image(p, cfg, read_file(p))[0].shape)


def stage_profile(run):
    """Run ``run()`` with the packer's stages wrapped: {stage: [thread CPU s, calls]}, wall, CPU, faults."""
    import int8batch.format as fmt
    import int8batch.packing.packer as pk
    import int8batch.packing.writer as wr
    from int8batch.packing.decode import cv2
    cv = cv2()
    acc = collections.defaultdict(lambda: [0.0, 0])
    lock = threading.Lock()
    undo = []

    def wrap(obj, name, stage):
        f = getattr(obj, name)

        def w(*a, **k):
            t = time.thread_time()
            try:
                return f(*a, **k)
            finally:
                d = time.thread_time() - t
                with lock:
                    acc[stage][0] += d
                    acc[stage][1] += 1
        setattr(obj, name, w)
        undo.append((obj, name, f))
    wrap(pk, "read_file", "read file")
    wrap(cv, "imdecode", "decode")
    wrap(cv, "resize", "resize")
    wrap(pk, "hwc_to_chw", "kernel (crop/CHW/normalize)")
    wrap(pk, "lut_map_u8", "kernel (IDX lookup)")
    wrap(fmt, "checksum", "checksum")
    wrap(wr.BatchFile, "__init__", "file create+fallocate+map")
    wrap(wr, "_write_new_file", "file create+write (buffered)")
    wrap(wr.PackWriter, "prepare", "start: lock/recover/check")
    wrap(pk, "_manifest", "manifest build")
    wrap(wr.PackWriter, "finish", "manifest write + swap (renames)")
    settle()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        run()
    finally:
        for o, n, f in reversed(undo):
            setattr(o, n, f)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(acc), wall, cpu, r1.ru_minflt - r0.ru_minflt, r1.ru_majflt - r0.ru_majflt


def print_profile(prof, images):
    acc, wall, cpu, minflt, majflt = prof
    print(f"  stage profile of int8batch.pack ({images} images; thread CPU seconds, shared machine):")
    total = 0.0
    for k, (t, n) in sorted(acc.items(), key=lambda x: -x[1][0]):
        print(f"    {k:<34}{t:8.3f} s  {t / cpu:5.1%}  ({n} calls)")
        total += t
    print(f"    {'other (Python, threads, waits)':<34}{cpu - total:8.3f} s  {(cpu - total) / cpu:5.1%}")
    print(f"    {'process CPU / wall':<34}{cpu:8.3f} s / {wall:.3f} s; page faults {minflt} minor, {majflt} major")


def child(argv, **kw):
    """Run ``argv`` (a fresh interpreter) on the int8batch this benchmark measures, away from the source tree."""
    import int8batch
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(int8batch.__file__))))
    return subprocess.run(argv, cwd=tempfile.gettempdir(), env=env, **kw)


def startup_seconds():
    """`int8batch pack --help`-free start-up: importing the package and OpenCV in a fresh interpreter."""
    t = time.perf_counter()
    child([sys.executable, "-c", "import int8batch.cli.main, int8batch.packing.packer, cv2"], check=True)
    return time.perf_counter() - t


def _cpu():
    """CPU seconds of this process and its finished children (the command runs in one)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def settle():
    """Flush dirty pages before a timed run (untimed): otherwise a run pays for the writeback of the previous
    run's output (the kernel throttles writers past its dirty limits; measured: the same MNIST pack 0.23-0.63 s
    depending on what ran before it)."""
    if hasattr(os, "sync"):
        os.sync()


def timed(fn, repeat=2):
    """Best wall time and the CPU time of that run (each run starts with the dirty pages flushed)."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        settle()
        t, c = time.perf_counter(), _cpu()
        fn()
        w = time.perf_counter() - t
        if w < best[0]:
            best = (w, _cpu() - c)
    return best


def peak_rss_mb(cmd):
    """Peak resident memory (MB) of ``cmd``, read by a wrapper process whose only child it is."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = child([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024   # Linux reports kB


def bench_corpus(name, path, count, workers, repeat, tmp):
    import int8batch
    files = files_of(path)[:count]
    n = len(files) // N * N
    src = os.path.join(tmp, f"src-{name}-{count}")  # exactly these files, as a folder for the pack
    os.makedirs(src, exist_ok=True)
    for p in files:
        dst = os.path.join(src, os.path.basename(p))
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(p), dst)
    for p in files:  # warm the page cache
        with open(p, "rb") as f:
            f.read()
    out = os.path.join(tmp, "out")
    kw = dict(preset=PRESET, batch_size=N, workers=workers, force=True, labels="none")
    rows = []
    rows.append(("int8batch.pack() in-process", timed(lambda: int8batch.pack(src, out, **kw), repeat)))
    cmd = [sys.executable, "-m", "int8batch.cli.main", "pack", src, out, "--preset", PRESET, "--workers",
           str(workers), "--labels", "none", "--batch-size", str(N), "--force"]
    rows.append(("int8batch pack (the command)",
                 timed(lambda: child(cmd, check=True, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL), repeat)))
    rows.append(("plain PIL loop (1 thread)", timed(lambda: pil_loop(files, os.path.join(tmp, "pil")), 1)))
    rows.append(("plain OpenCV+NumPy loop", timed(lambda: cv_loop(files, os.path.join(tmp, "cv"), workers), 1)))
    rows.append(("best plain Python (reduced+fused)",
                 timed(lambda: best_python(files, os.path.join(tmp, "py"), workers), repeat)))
    rows.append(("decode + resize only (packer's)", timed(lambda: decode_resize(files, workers), repeat)))
    rows.append(("decode-only ceiling, packer's decoder", timed(lambda: decode_only(files, workers), repeat)))
    fastest = fastest_decoder()
    if fastest:
        rows.append((f"decode-only ceiling, {fastest}", timed(lambda: decode_only_fastest(files, workers), repeat)))
    rss = peak_rss_mb(cmd)
    prof = stage_profile(lambda: int8batch.pack(src, out, **kw))
    for d in ("pil", "cv", "py", "out"):
        shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)

    size = sum(os.path.getsize(p) for p in files) / len(files) / 1e3
    print(f"\ncorpus {name}: {n} JPEGs ({size:.0f} kB each on average) from {path}; {workers} workers; "
          f"{PRESET}, {N} per file  [shared machine]")
    print(f"  {'pipeline':<44}{'images/s':>10}{'CPU s':>8}")
    for label, (t, c) in rows:
        print(f"  {label:<44}{n / t:>10.0f}{c:>8.2f}")
    t = dict((label, w) for label, (w, _) in rows)
    pack_t = t["int8batch.pack() in-process"]
    dec_t, decres_t = t["decode-only ceiling, packer's decoder"], t["decode + resize only (packer's)"]
    print(f"  ratio pack / best plain Python       = {t['best plain Python (reduced+fused)'] / pack_t:5.2f}x"
          "  (target >= 1.5x)")
    print(f"  ratio pack / OpenCV loop             = {t['plain OpenCV+NumPy loop'] / pack_t:5.2f}x")
    print(f"  ratio pack / PIL loop                = {t['plain PIL loop (1 thread)'] / pack_t:5.2f}x")
    print(f"  ratio pack / decode-only (packer's)  = {dec_t / pack_t:5.2f}"
          "   (target >= 0.85)")
    if fastest:
        print(f"  ratio pack / decode-only (fastest)   = {t[f'decode-only ceiling, {fastest}'] / pack_t:5.2f}"
              "   (target >= 0.75)")
    print(f"  ratio pack / decode+resize           = {decres_t / pack_t:5.2f}")
    print(f"  peak RSS of the command              = {rss:.0f} MB  (target < 300 MB, flat in the image count)")
    print_profile(prof, n)


def write_floor(tmp, files, size, workers, repeat=3):
    """Best seconds to create ``files`` new files of ``size`` bytes, one ``write`` each from a ready buffer.

    The file system's own cost of the files a pack must make (no decode, no
    checksum, no manifest, no swap): the floor under an IDX pack's time.
    """
    from concurrent.futures import ThreadPoolExecutor
    buf = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    best = float("inf")
    for r in range(repeat):
        d = os.path.join(tmp, f"floor{r}")
        os.makedirs(d)

        def one(k):
            fd = os.open(os.path.join(d, f"f{k}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, buf)
            finally:
                os.close(fd)
        settle()
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, range(files)))
        best = min(best, time.perf_counter() - t)
        shutil.rmtree(d)
    return best


def bench_mnist(tmp, workers):
    import int8batch
    from int8batch.packing.sources import open_source
    src = open_source("mnist")
    raw = os.path.join(tmp, "train-images-idx3-ubyte")
    with open(raw, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in src.images.shape))
        f.write(src.images.tobytes())
    for per_file in (100, 1000):
        nfiles = 60000 // per_file
        fresh, best = [], (float("inf"), 0.0)
        for r in range(3):   # into a new folder each time (the usual first pack); removed untimed
            fresh.append(os.path.join(tmp, f"mnist{per_file}-{r}"))
            w, c = timed(lambda: int8batch.pack(raw, fresh[-1], batch_size=per_file, labels="none",
                                                workers=workers), 1)
            best = min(best, (w, c))
            if r < 2:
                shutil.rmtree(fresh[-1])
        out = fresh[-1]
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        tf, cf = timed(lambda: int8batch.pack(raw, out, batch_size=per_file, force=True, labels="none",
                                              workers=workers), 3)
        floor = write_floor(tmp, nfiles, size // nfiles, workers)
        t, c = best
        print(f"MNIST IDX -> batch files of {per_file}: {size / t / 1e9:.2f} GB/s of output into a new folder "
              f"({size / 1e6:.0f} MB, {nfiles} files, in {t:.3f} s, CPU {c:.3f} s; target >= 1 GB/s); replacing "
              f"a pack (--force: the old files moved out and removed too) {size / tf / 1e9:.2f} GB/s "
              f"(CPU {cf:.3f} s)  [shared machine]")
        print(f"  file-writing floor, same file system: {nfiles} new files of {size // nfiles} bytes, one write "
              f"each from a ready buffer, {workers} threads: {size / floor / 1e9:.2f} GB/s; pack / floor = "
              f"{floor / t:.2f} (new folder), {floor / tf:.2f} (--force)")
        if per_file == 100:
            print_profile(stage_profile(lambda: int8batch.pack(raw, out, batch_size=per_file, force=True,
                                                               labels="none", workers=workers)), 60000)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128 images per corpus, one repeat")
    ap.add_argument("--count", type=int, action="append",
                    help="images per corpus (repeatable; default 1000; e.g. --count 1000 --count 5000)")
    ap.add_argument("--corpora", default="default,mix", help="comma-separated: default, mix")
    ap.add_argument("--work", default=os.path.join(ROOT, ".work"), help="where the corpora live")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="threads everywhere (default: the cores this process may use)")
    ap.add_argument("--no-mnist", action="store_true")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)   # the command runs in another folder
    counts = [128] if args.quick else (args.count or [1000])
    repeat = 1 if args.quick else 2
    tmp = tempfile.mkdtemp(prefix="bench_pack_", dir=args.work if os.path.isdir(args.work) else None)
    try:
        print(f"start-up (fresh interpreter importing int8batch + OpenCV): {startup_seconds():.2f} s  [shared machine]")
        for name in args.corpora.split(","):
            mix = name == "mix"
            path = os.path.join(args.work, "corpus-mix" if mix else "corpus")
            make = max(counts)
            if os.path.isdir(path) and len(files_of(path)) < make and make > 1000:
                path += f"-{make}"
            corpus(path, make, mix)
            for count in counts:
                bench_corpus(name, path, count, args.workers, repeat, tmp)
        if not args.no_mnist:
            print()
            bench_mnist(tmp, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
