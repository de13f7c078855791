"""Packing speed: int8batch vs plain PIL and OpenCV loops vs the decode-only ceiling.

On the same JPEG corpus, in one run (page cache warmed first):

- int8batch pack, imagenet-caffe preset (224), all cores;
- a plain PIL loop doing the same preprocessing and writing the same files;
- a plain OpenCV + NumPy loop doing the same;
- the decode-only ceiling: OpenCV decode of the same files (reduced-size where
  the pack uses it), same thread count, nothing else;

and MNIST IDX -> batch files in GB/s of output.  Prints images/s and ratios.

    python bench/bench_pack.py            # 1000 images (made by tools/make_corpus.py if missing)
    python bench/bench_pack.py --quick    # 60 images, a smoke run
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N = 100
MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)


def corpus(path, count):
    if os.path.isdir(path) and sum(len(f) for _, _, f in os.walk(path)) >= count:
        return
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), path, "--count", str(count),
                    "--seed", "0"], check=True)


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


def pil_loop(files, out):
    from PIL import Image
    buf = np.empty((N, 3, 224, 224), np.float32)
    chunks = []
    for i, p in enumerate(files[:len(files) // N * N]):
        im = Image.open(p).convert("RGB").resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
        a = np.asarray(im, dtype=np.float32)[:, :, ::-1] - MEAN_BGR
        buf[i % N] = a.transpose(2, 0, 1)
        if i % N == N - 1:
            chunks.append((buf.copy(), np.zeros(N)))
    write_batches(out, chunks)


def cv_loop(files, out):
    import cv2
    buf = np.empty((N, 3, 224, 224), np.float32)
    chunks = []
    for i, p in enumerate(files[:len(files) // N * N]):
        im = cv2.resize(cv2.imread(p, cv2.IMREAD_COLOR), (256, 256), interpolation=cv2.INTER_LINEAR)
        buf[i % N] = (im[16:240, 16:240].astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)
        if i % N == N - 1:
            chunks.append((buf.copy(), np.zeros(N)))
    write_batches(out, chunks)


def decode_only(files, workers):
    import cv2
    from int8batch.packing.decode import jpeg_size
    from int8batch.preprocess import preset
    cfg = preset("imagenet-caffe")
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}

    def one(p):
        data = np.fromfile(p, np.uint8)
        return cv2.imdecode(data, flags[cfg.reduction_factor(*jpeg_size(data))]).shape

    n = len(files) // N * N
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, files[:n]))
    finally:
        cv2.setNumThreads(threads)


def decode_resize(files, workers):
    """The packer's own decode + resize step (int8batch.packing.decode), nothing else."""
    import cv2
    from int8batch.packing.decode import decode_image, read_file
    from int8batch.preprocess import preset
    cfg = preset("imagenet-caffe")
    n = len(files) // N * N
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda p: decode_image(p, cfg, read_file(p))[0].shape, files[:n]))
    finally:
        cv2.setNumThreads(threads)


def timed(fn, repeat=2):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--corpus", default=os.path.join(ROOT, ".work", "corpus"))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    try:
        import int8batch
    except ImportError:  # running from a source checkout with in-place kernels
        sys.path.insert(0, ROOT)
        import int8batch

    count = 100 if args.quick else 1000
    path = args.corpus + ("-quick" if args.quick else "")
    corpus(path, count)
    files = files_of(path)
    n = len(files) // N * N
    tmp = tempfile.mkdtemp(prefix="bench_pack_")
    for p in files:  # warm the page cache
        with open(p, "rb") as f:
            f.read()
    repeat = 1 if args.quick else 2
    try:
        t_pack = timed(lambda: int8batch.pack(path, os.path.join(tmp, "pack"), preset="imagenet-caffe",
                                              batch_size=N, workers=args.workers, force=True, labels="none"),
                       repeat)
        t_pil = timed(lambda: pil_loop(files, os.path.join(tmp, "pil")), 1)
        t_cv = timed(lambda: cv_loop(files, os.path.join(tmp, "cv")), 1)
        t_dec = timed(lambda: decode_only(files, args.workers), repeat)
        t_decres = timed(lambda: decode_resize(files, args.workers), repeat)
        # MNIST IDX -> batch files (bundled 60000 training images), decompression excluded
        from int8batch.packing.sources import open_source
        src = open_source("mnist")
        raw = os.path.join(tmp, "train-images-idx3-ubyte")
        with open(raw, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in src.images.shape))
            f.write(src.images.tobytes())
        idx = {}
        for per_file in (100, 1000):
            out = os.path.join(tmp, f"mnist{per_file}")
            t = timed(lambda: int8batch.pack(raw, out, batch_size=per_file, force=True, labels="none"), 3)
            idx[per_file] = (t, sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rate = lambda t: n / t  # noqa: E731
    print(f"corpus: {n} JPEGs from {path}; {args.workers} workers; imagenet-caffe preset (256x256 -> 224)")
    print(f"{'method':<34}{'images/s':>10}")
    for name, t in [("int8batch pack", t_pack), ("plain PIL loop", t_pil), ("plain OpenCV+NumPy loop", t_cv),
                    ("decode-only ceiling (same threads)", t_dec),
                    ("decode + resize, nothing else", t_decres)]:
        print(f"{name:<34}{rate(t):>10.0f}")
    print(f"ratio pack / PIL loop      = {t_pil / t_pack:5.2f}x   (target >= 5x)")
    print(f"ratio pack / OpenCV loop   = {t_cv / t_pack:5.2f}x   (target >= 2x)")
    print(f"ratio pack / decode-only   = {t_dec / t_pack:5.2f}    (target >= 0.85)")
    print(f"ratio pack / decode+resize = {t_decres / t_pack:5.2f}    (the resize alone costs "
          f"{1 - t_dec / t_decres:.0%} of the decode+resize time)")
    for per_file, (t_idx, idx_bytes) in idx.items():
        print(f"MNIST IDX -> batch files of {per_file}: {idx_bytes / t_idx / 1e9:.2f} GB/s of output "
              f"({idx_bytes / 1e6:.0f} MB, {60000 // per_file} files, in {t_idx:.3f} s; target >= 1 GB/s)")


if __name__ == "__main__":
    main()
