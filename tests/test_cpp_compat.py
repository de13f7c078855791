"""The C++ reader in tools/ (BatchStream behaviour) reads exactly what BatchSet serves.

``tools/batchstream_reader.cpp`` is compiled with g++ into a temporary folder
(the whole module is skipped when g++ is missing) and run on batch files
written with ``int8batch.format.write_batch_file``.  Its raw float32 output is
compared bit for bit (as uint32) with the batches of ``BatchSet.batches``.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from int8batch.errors import BatchFormatError, ConfigError
from int8batch.format import write_batch_file
from int8batch.reader import BatchSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tools", "batchstream_reader.cpp")
NO_LIMIT = 1_000_000  # "maxBatches" that the data always runs out before

N, C, H, W = 100, 3, 4, 5
FILES = 4  # 400 images

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")


@pytest.fixture(scope="module")
def reader_exe(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("cpp") / "batchstream_reader")
    proc = subprocess.run(["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-o", exe, SOURCE],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ failed:\n{proc.stderr}"
    if sys.byteorder != "little":
        pytest.skip("batch files are little-endian; the C++ reader reads native order")
    return exe


def _make_set(folder, files=FILES, dims=(N, C, H, W), suffix="", seed=0):
    """Write ``files`` batch files with random data (plus special floats) and float labels."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    n, c, h, w = dims
    for k in range(files):
        data = rng.standard_normal((n, c, h, w)).astype(np.float32)
        flat = data.reshape(-1)
        # values whose bits must survive unchanged: -0.0, a denormal, inf, a NaN payload
        flat[:4] = np.array([0x80000000, 0x00000001, 0x7F800000, 0x7FC00123], dtype=np.uint32).view(np.float32)
        labels = rng.integers(0, 1000, n).astype(np.float32) + 1000 * k
        write_batch_file(os.path.join(folder, f"batch{k}{suffix}"), data, labels)
    return folder


def _run(exe, folder, batch, first, max_batches, tmp_path, suffix=""):
    out = str(tmp_path / f"out_{batch}_{first}_{max_batches}.bin")
    args = [exe, os.path.join(folder, "batch"), str(batch), str(first), str(max_batches), out]
    if suffix:
        args.append(suffix)
    proc = subprocess.run(args, capture_output=True, text=True)
    return proc, out


def _expected(folder, batch, first, max_batches, suffix=""):
    """Bits of BatchSet's batches laid out as the C++ tool writes them: data then labels, per batch."""
    with BatchSet(folder, suffix=suffix) as bs:
        parts = []
        for b in bs.batches(batch, first, max_batches):
            parts += [np.array(b.data, dtype="<f4").ravel(), np.array(b.labels, dtype="<f4")]
        count = len(parts) // 2
    bits = np.concatenate(parts).view(np.uint32) if parts else np.zeros(0, np.uint32)
    return count, bits


def _expected_window(folder, batch, first, max_batches):
    """Bits of the batches of ``BatchSet.window(..., skip="batchstream")``; (0, no bits) when it is refused."""
    with BatchSet(folder) as bs:
        try:
            w = bs.window(batch, first, max_batches, skip="batchstream")
        except ConfigError:
            return 0, np.zeros(0, np.uint32), None
        parts = []
        for b in bs.batches(window=w):
            parts += [np.array(b.data, dtype="<f4").ravel(), np.array(b.labels, dtype="<f4")]
    return w.count, np.concatenate(parts).view(np.uint32), w


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory):
    return _make_set(str(tmp_path_factory.mktemp("batches")))


# (batch size, first batch, max batches, batches served -- counted by hand from 4 files of 100)
CASES = [
    (100, 0, NO_LIMIT, 4),   # B == N: one file per batch
    (100, 0, 3, 3),          # maxBatches stops early
    (50, 0, NO_LIMIT, 8),    # B < N: each file gives two batches
    (150, 0, NO_LIMIT, 2),   # B > N: batches straddle files; 100 left over, never half a batch
    (30, 0, NO_LIMIT, 13),   # B does not divide N: 390 images, 10 dropped
    (30, 2, 5, 5),           # first > 0, slow skip path (next() twice), straddles batch0/batch1
    (150, 1, NO_LIMIT, 1),   # skip one straddling batch, one full batch left (images 150..299)
    (100, 2, NO_LIMIT, 2),   # fast skip path: B multiple of N, files 0, 1 never read
    (200, 1, 10, 1),         # fast skip path with B = 2N
    (100, 3, 1, 1),          # fast path, first > maxBatches: still skips all 3
    (50, 0, 1000, 8),        # maxBatches beyond the data
    (7, 0, NO_LIMIT, 57),    # odd size: 399 images, crosses every boundary mid-batch
    (400, 0, NO_LIMIT, 1),   # one batch of the whole set
    (401, 0, NO_LIMIT, 0),   # more than the whole set: nothing, never a half batch
    (50, 8, NO_LIMIT, 0),    # skipped past the end
]


@pytest.mark.parametrize("batch,first,max_batches,served", CASES)
def test_cpp_reads_what_batchset_serves(reader_exe, batch_folder, tmp_path, batch, first, max_batches, served):
    proc, out = _run(reader_exe, batch_folder, batch, first, max_batches, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:4] == ["served", str(served), "batch", str(batch)]
    assert proc.stdout.split()[4:] == ["image", str(C), str(H), str(W), "file_n", str(N)]
    count, want = _expected(batch_folder, batch, first, max_batches)
    assert count == served
    got = np.fromfile(out, dtype="<u4")
    assert got.size == served * batch * (C * H * W + 1)
    np.testing.assert_array_equal(got, want)
    # the window owner with BatchStream semantics agrees too (no quirk in these cases)
    count, bits, _ = _expected_window(batch_folder, batch, first, max_batches)
    assert count == served
    np.testing.assert_array_equal(got, bits)


# (batch size, first, max batches, batches skipped, served) where BatchStream's slow skip stops at maxBatches
QUIRK_CASES = [
    (30, 7, 3, 3, 3),       # skips 3 of 7: images 90..179
    (50, 5, 2, 2, 2),       # B < N: images 100..199
    (150, 3, 1, 1, 1),      # B > N, not a multiple: images 150..299
    (7, 40, 10, 10, 10),    # odd size: images 70..139
    (30, 13, 12, 12, 1),    # skips 12 of 13; only one full batch (images 360..389) left before the data ends
]


@pytest.mark.parametrize("batch,first,max_batches,skipped,served", QUIRK_CASES)
def test_slow_skip_is_bounded_by_max_batches(reader_exe, batch_folder, tmp_path, batch, first, max_batches,
                                             skipped, served):
    """A BatchStream quirk: skip() without the fast path calls next(), which is refused
    once maxBatches batches are counted, so at most maxBatches batches are skipped.
    ``BatchSet.window(skip="batchstream")`` reproduces it; ``batches(B, first, max)``
    (exact skipping) skips all ``first`` batches."""
    proc, out = _run(reader_exe, batch_folder, batch, first, max_batches, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == str(served)
    got = np.fromfile(out, dtype="<u4")
    count, bits, w = _expected_window(batch_folder, batch, first, max_batches)
    assert (w.first, w.skipped, w.count, w.start_image) == (first, skipped, served, skipped * batch)
    assert count == served
    np.testing.assert_array_equal(got, bits)
    _, want = _expected(batch_folder, batch, skipped, max_batches)   # exact skipping of `skipped` batches
    np.testing.assert_array_equal(got, want)
    _, exact = _expected(batch_folder, batch, first, max_batches)    # what exact skipping of `first` serves
    assert not np.array_equal(got, exact)


def test_suffix(reader_exe, tmp_path):
    folder = _make_set(str(tmp_path / "sfx"), files=2, dims=(10, 1, 3, 2), suffix=".batch", seed=3)
    proc, out = _run(reader_exe, folder, 4, 1, NO_LIMIT, tmp_path, suffix=".batch")
    assert proc.returncode == 0, proc.stderr
    count, want = _expected(folder, 4, 1, None, suffix=".batch")
    assert proc.stdout.split()[1] == str(count) == "4"
    np.testing.assert_array_equal(np.fromfile(out, dtype="<u4"), want)


def test_mismatched_header_is_refused_by_both(reader_exe, tmp_path):
    folder = _make_set(str(tmp_path / "bad"), files=2, dims=(10, 1, 2, 2), seed=5)
    # batch2 holds 10 images of 1x4x1: same file size, different header
    rng = np.random.default_rng(6)
    write_batch_file(os.path.join(folder, "batch2"), rng.standard_normal((10, 1, 4, 1)),
                     np.zeros(10, np.float32))
    proc, _ = _run(reader_exe, folder, 10, 0, NO_LIMIT, tmp_path)
    assert proc.returncode == 3
    assert "batch2" in proc.stderr and "differs" in proc.stderr
    with pytest.raises(BatchFormatError, match="batch2"):
        BatchSet(folder)


def test_missing_first_file(reader_exe, tmp_path):
    os.makedirs(tmp_path / "empty")
    proc, _ = _run(reader_exe, str(tmp_path / "empty"), 10, 0, 1, tmp_path)
    assert proc.returncode == 4
    assert "batch0" in proc.stderr


def test_zero_dim_header_is_refused(reader_exe, tmp_path):
    folder = tmp_path / "zero"
    folder.mkdir()
    (folder / "batch0").write_bytes(np.array([0, 1, 2, 2], "<i4").tobytes())
    proc, _ = _run(reader_exe, str(folder), 1, 0, 1, tmp_path)
    assert proc.returncode == 3
    assert "<= 0" in proc.stderr
