"""BatchSet against an independent reference: raw bytes parsed with struct/np.frombuffer.

Batch files here are written byte by byte with ``struct`` (not with
``int8batch.format``), so a mistake shared by the writer and the reader would
still show.
"""
import json
import os
import struct

import numpy as np
import pytest

from int8batch.errors import BatchFormatError, ConfigError, Int8BatchError, ManifestError
from int8batch.format import write_batch_file
from int8batch.manifest import INCOMPLETE_MARKER, MANIFEST_NAME
from int8batch.reader import BatchSet

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "batches")

# The golden files, by hand: two files of N=2 images of 1x2x3.
GOLDEN = [
    ([0.0, 0.5, 1.0, -1.0, 0.25, 2.0, -0.5, 3.0, 0.125, -2.0, 1.5, 4.0], [7.0, 0.0]),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0], [3.0, 9.0]),
]


# ------------------------------------------------------------------ helpers
def raw_file(dims, data, labels):
    """Bytes of one batch file, built with struct only."""
    return (struct.pack("<4i", *dims) + struct.pack(f"<{len(data)}f", *data)
            + struct.pack(f"<{len(labels)}f", *labels))


def ref_read(path):
    """Reference parser: (dims, data (N,C,H,W) float32, labels (N,)) from plain bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    n, c, h, w = struct.unpack("<4i", raw[:16])
    count = n * c * h * w
    data = np.frombuffer(raw, dtype="<f4", count=count, offset=16).reshape(n, c, h, w)
    labels = np.frombuffer(raw, dtype="<f4", count=n, offset=16 + 4 * count)
    return (n, c, h, w), data, labels


def make_set(folder, files=3, dims=(4, 2, 3, 5), seed=0, prefix="batch", suffix=""):
    """Write ``files`` random batch files; return the reference (data, labels) of the whole set."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    n, c, h, w = dims
    all_data, all_labels = [], []
    for k in range(files):
        data = rng.standard_normal(n * c * h * w).astype("<f4")
        labels = (np.arange(n) + 10 * k).astype("<f4")
        with open(os.path.join(folder, f"{prefix}{k}{suffix}"), "wb") as f:
            f.write(struct.pack("<4i", *dims) + data.tobytes() + labels.tobytes())
        all_data.append(data.reshape(n, c, h, w))
        all_labels.append(labels)
    return np.concatenate(all_data), np.concatenate(all_labels)


def write_manifest(folder, **fields):
    man = {"format": "sampleINT8-batch", "manifest_version": 1, "dims": [4, 2, 3, 5], "files": 3,
           "images": 12, "prefix": "batch", "suffix": ""}
    man.update(fields)
    with open(os.path.join(folder, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(man, f)


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path / "set")


# ------------------------------------------------------------------- golden
def test_golden_files_byte_for_byte():
    for k, (data, labels) in enumerate(GOLDEN):
        want = raw_file((2, 1, 2, 3), data, labels)
        assert len(want) == 72 == 16 + 4 * 2 * 6 + 4 * 2
        with open(os.path.join(FIXTURES, f"batch{k}"), "rb") as f:
            assert f.read() == want
    # a few bit patterns spelled out: header N=2, label 7.0 is 0x40E00000
    with open(os.path.join(FIXTURES, "batch0"), "rb") as f:
        raw = f.read()
    assert raw[:4] == b"\x02\x00\x00\x00"
    assert raw[64:68] == bytes.fromhex("0000e040")


def test_golden_files_read():
    with BatchSet(FIXTURES) as bs:
        assert bs.dims == (2, 1, 2, 3)
        assert bs.num_files == 2 and bs.num_images == 4 and bs.manifest is None
        batches = list(bs.batches(3))
        assert len(batches) == 1  # 4 images, batch 3: one batch, one image left over
        b = batches[0]
        np.testing.assert_array_equal(b.data.ravel(), GOLDEN[0][0] + GOLDEN[1][0][:6])
        np.testing.assert_array_equal(b.labels, [7.0, 0.0, 3.0])
        assert b.data.shape == (3, 1, 2, 3) and b.data.dtype == np.float32
        d1, l1 = bs.file_arrays(1)
        np.testing.assert_array_equal(d1[1, 0], [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
        np.testing.assert_array_equal(l1, [3.0, 9.0])


# ------------------------------------------------------- contents and batching
def test_headers_and_labels_match_reference(folder):
    make_set(folder)
    with BatchSet(folder) as bs:
        assert bs.dims == (4, 2, 3, 5) and bs.per_file == 4 and bs.image_shape == (2, 3, 5)
        assert bs.num_files == 3 and bs.num_images == len(bs) == 12
        for k, p in enumerate(bs.paths):
            assert os.path.basename(p) == f"batch{k}"
            dims, data, labels = ref_read(p)
            assert dims == bs.dims
            got_d, got_l = bs.file_arrays(k)
            np.testing.assert_array_equal(got_d, data)
            np.testing.assert_array_equal(got_l, labels)
            assert got_l.dtype == np.float32


# 3 files of 4 images (12 in all): (batch size, first, max) -> batches, counted by hand
COUNTS = [
    ((4, 0, None), 3), ((3, 0, None), 4), ((5, 0, None), 2), ((12, 0, None), 1), ((13, 0, None), 0),
    ((5, 1, None), 1), ((3, 0, 2), 2), ((3, 2, 1), 1), ((1, 11, None), 1), ((2, 6, None), 0),
    ((4, 0, 0), 0), ((6, 0, 100), 2),
]


@pytest.mark.parametrize("args,count", COUNTS)
def test_rebatching_counts_and_contents(folder, args, count):
    ref_data, ref_labels = make_set(folder)
    batch, first, max_batches = args
    with BatchSet(folder) as bs:
        got = list(bs.batches(batch, first, max_batches))
        assert len(got) == count
        assert bs.num_batches(batch, first) >= count
        for i, b in enumerate(got):
            start = (first + i) * batch
            assert b.index == first + i and b.start == start
            assert b.data.shape == (batch, 2, 3, 5) and b.labels.shape == (batch,)
            np.testing.assert_array_equal(b.data, ref_data[start:start + batch])
            np.testing.assert_array_equal(b.labels, ref_labels[start:start + batch])


def test_zero_copy_inside_one_file(folder):
    make_set(folder)
    with BatchSet(folder) as bs:
        maps = [np.frombuffer(bs.file_buffer(k), dtype=np.uint8) for k in range(3)]
        batches = list(bs.batches(2))  # 2 divides 4: every batch inside one file
        for b in batches:
            k = b.start // 4
            assert b.zero_copy
            assert np.shares_memory(b.data, maps[k]) and np.shares_memory(b.labels, maps[k])
            assert not b.data.flags.writeable
        straddling = list(bs.batches(3))[1]  # images 3..5 span batch0 and batch1
        assert not straddling.zero_copy
        assert not any(np.shares_memory(straddling.data, m) for m in maps)
        del maps, batches, straddling


def test_images_with_out_buffer(folder):
    ref_data, ref_labels = make_set(folder)
    with BatchSet(folder) as bs:
        out = np.full((6, 2, 3, 5), np.nan, np.float32)
        data, labels = bs.images(3, 6, out=out)
        assert np.shares_memory(data, out)
        np.testing.assert_array_equal(data, ref_data[3:9])
        np.testing.assert_array_equal(labels, ref_labels[3:9])
        with pytest.raises(IndexError):
            bs.images(10, 3)
        with pytest.raises(ConfigError):
            bs.images(0, 2, out=np.empty((2, 2, 3, 4), np.float32))


def test_prefix_and_suffix(folder):
    ref_data, _ = make_set(folder, files=2, prefix="calib_", suffix=".batch")
    with BatchSet(folder, prefix="calib_", suffix=".batch") as bs:
        assert bs.num_files == 2
        np.testing.assert_array_equal(bs.images(0, 8)[0], ref_data)
    with pytest.raises(BatchFormatError):
        BatchSet(folder)  # no batch0


def test_bad_arguments(folder):
    make_set(folder)
    with BatchSet(folder) as bs:
        with pytest.raises(ConfigError):
            list(bs.batches(0))
        with pytest.raises(ConfigError):
            list(bs.batches(2, first=-1))
    with pytest.raises(ConfigError):
        BatchSet(folder, manifest="sometimes")


def test_feed_is_reiterable_polygraphy_style(folder):
    ref_data, _ = make_set(folder)
    with BatchSet(folder) as bs:
        feed = bs.as_feed("input", batch_size=5, first=0, max_batches=10)
        assert len(feed) == 2
        first_pass = [d["input"].copy() for d in feed]
        second_pass = list(feed)
        assert len(first_pass) == len(second_pass) == 2
        for i, (a, d) in enumerate(zip(first_pass, second_pass)):
            assert list(d) == ["input"]
            np.testing.assert_array_equal(a, d["input"])
            np.testing.assert_array_equal(a, ref_data[5 * i:5 * i + 5])
        default = bs.as_feed("x")  # one file per batch
        assert len(default) == 3 and all(d["x"].shape == (4, 2, 3, 5) for d in default)
        del second_pass, default, feed


def test_iter_gives_one_batch_per_file(folder):
    ref_data, _ = make_set(folder)
    with BatchSet(folder) as bs:
        got = [b.data for b in bs]
        assert len(got) == 3
        np.testing.assert_array_equal(np.concatenate(got), ref_data)
        del got


def test_close_with_live_views(folder):
    ref_data, _ = make_set(folder)
    bs = BatchSet(folder)
    view = next(bs.batches(4)).data
    bs.close()
    np.testing.assert_array_equal(view, ref_data[:4])  # the view keeps its mapping alive


# ------------------------------------------------------------------- errors
def _expect(folder, exc, *needles, **kwargs):
    with pytest.raises(exc) as info:
        BatchSet(folder, **kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert isinstance(info.value, Int8BatchError)
    return info.value


def test_truncated_file(folder):
    make_set(folder)
    path = os.path.join(folder, "batch1")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)  # label block one float short
    err = _expect(folder, BatchFormatError, "batch1", "truncated")
    assert err.path.endswith("batch1")


def test_file_longer_than_header(folder):
    make_set(folder)
    with open(os.path.join(folder, "batch2"), "ab") as f:
        f.write(b"\0\0\0\0")
    _expect(folder, BatchFormatError, "batch2", "longer")


def test_mismatched_header(folder):
    make_set(folder)
    # same size, other dims: 4 x 2 x 5 x 3 instead of 4 x 2 x 3 x 5
    data = np.zeros(4 * 2 * 5 * 3, "<f4")
    with open(os.path.join(folder, "batch1"), "wb") as f:
        f.write(struct.pack("<4i", 4, 2, 5, 3) + data.tobytes() + np.zeros(4, "<f4").tobytes())
    _expect(folder, BatchFormatError, "batch1", "differs")


def test_gap_in_numbering(folder):
    make_set(folder, files=4)
    os.remove(os.path.join(folder, "batch2"))
    _expect(folder, BatchFormatError, "gap", "batch2")


def test_missing_batch0(folder):
    make_set(folder, files=3)
    os.remove(os.path.join(folder, "batch0"))
    _expect(folder, BatchFormatError, "batch0")


def test_empty_and_missing_folder(tmp_path):
    os.makedirs(tmp_path / "empty")
    _expect(str(tmp_path / "empty"), BatchFormatError, "no batch files")
    _expect(str(tmp_path / "nowhere"), BatchFormatError, "no such folder")


@pytest.mark.parametrize("dims", [(0, 1, 2, 2), (2, -1, 2, 2), (2, 1, 0, 2), (2, 1, 2, -3)])
def test_header_with_zero_or_negative_dims(folder, dims):
    os.makedirs(folder)
    with open(os.path.join(folder, "batch0"), "wb") as f:
        f.write(struct.pack("<4i", *dims) + b"\0" * 64)
    _expect(folder, BatchFormatError, "batch0", "<= 0")


def test_file_shorter_than_header(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, "batch0"), "wb") as f:
        f.write(struct.pack("<3i", 2, 1, 2))
    _expect(folder, BatchFormatError, "batch0", "16-byte header")


def test_unfinished_pack_marker(folder):
    make_set(folder)
    write_manifest(folder)
    open(os.path.join(folder, INCOMPLETE_MARKER), "w").close()
    _expect(folder, ManifestError, "unfinished")


def test_manifest_agreeing_is_loaded(folder):
    make_set(folder)
    write_manifest(folder)
    with BatchSet(folder, manifest="require") as bs:
        assert bs.manifest["files"] == 3 and bs.manifest["dims"] == [4, 2, 3, 5]


@pytest.mark.parametrize("fields", [{"files": 4}, {"files": 2}, {"dims": [4, 2, 5, 3]}, {"dims": [8, 2, 3, 5]}])
def test_manifest_disagreeing_with_files(folder, fields):
    make_set(folder)
    write_manifest(folder, **fields)
    _expect(folder, ManifestError, MANIFEST_NAME, "changed after packing")
    with BatchSet(folder, manifest="ignore") as bs:  # the files alone are fine
        assert bs.manifest is None and bs.num_files == 3


def test_manifest_required_or_unreadable(folder):
    make_set(folder)
    _expect(folder, ManifestError, "no manifest.json", manifest="require")
    with open(os.path.join(folder, MANIFEST_NAME), "w") as f:
        f.write("{not json")
    _expect(folder, ManifestError, "unreadable manifest")


def test_release_pages_keeps_views_valid(tmp_path):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((4, 2, 3, 5)).astype(np.float32)
    for k in range(3):
        write_batch_file(tmp_path / f"batch{k}", data + k, np.arange(4, dtype=np.float32))
    with BatchSet(tmp_path) as bs:
        served = [(b.data.copy(), b.data) for b in bs.batches(3, release=True)]
        for k in range(bs.num_files):
            bs.release_pages(k)
        for copy, view in served:  # views fault their pages back in from the page cache
            np.testing.assert_array_equal(copy, view)
        np.testing.assert_array_equal(bs.file_arrays(2)[0], data + 2)


# ------------------------------------------------------------------ windows
class RefBatchStream:
    """TensorRT's C++ ``BatchStream`` (samples/common/BatchStream.h, 5.1.5 to 8.x), line for line.

    A literal state machine over plain Python lists (``files[k] = (data, labels)``,
    a missing file is ``k >= len(files)``); nothing of int8batch is used.
    ``next()`` serves into ``self.batch`` / ``self.labels``.
    """

    def __init__(self, files, batch_size, max_batches):
        self.files = files
        self.mBatchSize, self.mMaxBatches = batch_size, max_batches
        self.n = len(files[0][1])                          # mDims.n(), from batch0's header
        self.mFileBatch, self.mFileLabels = [None] * self.n, [None] * self.n
        self.batch, self.labels = [None] * batch_size, [None] * batch_size
        self.reset(0)

    def reset(self, firstBatch):
        self.mBatchCount = 0
        self.mFileCount = 0
        self.mFileBatchPos = self.n
        self.skip(firstBatch)

    def next(self):
        if self.mBatchCount == self.mMaxBatches:
            return False
        csize, batchPos = 1, 0
        while batchPos < self.mBatchSize:
            assert 0 < self.mFileBatchPos <= self.n
            if self.mFileBatchPos == self.n and not self.update():
                return False
            csize = min(self.mBatchSize - batchPos, self.n - self.mFileBatchPos)
            self.batch[batchPos:batchPos + csize] = self.mFileBatch[self.mFileBatchPos:self.mFileBatchPos + csize]
            self.labels[batchPos:batchPos + csize] = self.mFileLabels[self.mFileBatchPos:self.mFileBatchPos + csize]
            batchPos += csize
            self.mFileBatchPos += csize
        self.mBatchCount += 1
        return True

    def skip(self, skipCount):
        if self.mBatchSize >= self.n and self.mBatchSize % self.n == 0 and self.mFileBatchPos == self.n:
            self.mFileCount += skipCount * self.mBatchSize // self.n
            return
        x = self.mBatchCount
        for _ in range(skipCount):
            self.next()
        self.mBatchCount = x

    def update(self):
        k = self.mFileCount
        self.mFileCount += 1
        if k >= len(self.files):
            return False
        data, labels = self.files[k]
        self.mFileBatch[:], self.mFileLabels[:] = list(data), list(labels)
        self.mFileBatchPos = 0
        return True


def ref_served(ref_data, ref_labels, n, batch_size, first, max_batches):
    """Label lists of the batches RefBatchStream serves after EntropyCalibrator's reset(first)."""
    files = [(ref_data[k * n:(k + 1) * n], ref_labels[k * n:(k + 1) * n]) for k in range(len(ref_labels) // n)]
    s = RefBatchStream(files, batch_size, max_batches)
    s.reset(first)
    out = []
    while s.next():
        out.append((np.array(s.batch), list(s.labels)))
    return out


def _window_error(bs, *args, **kwargs):
    with pytest.raises(ConfigError) as info:
        bs.window(*args, **kwargs)
    return str(info.value)


def test_window_fast_path_skips_whole_files(folder):
    ref_data, _ = make_set(folder, files=6)                # 6 files of N=4: 24 images
    with BatchSet(folder) as bs:
        w = bs.window(4, 2, 1)                             # B == N: first=2 > max_batches=1, all 2 skipped
        assert (w.first, w.skipped, w.count, w.start_image, w.images) == (2, 2, 1, 8, 4)
        assert w.skip == "batchstream" and w.max_batches == 1
        assert w.describe() == "1 batches of size 4 starting at 2 (images 8..11)"
        assert [b.start for b in bs.batches(window=w)] == [8]
        w8 = bs.window(8, 2, 1)                            # B = 2N: two batches skipped = four files
        assert (w8.skipped, w8.count, w8.start_image, w8.last_image) == (2, 1, 16, 23)
        np.testing.assert_array_equal(next(bs.batches(window=w8)).data, ref_data[16:24])
        for b, first, m in ((4, 2, 1), (8, 2, 1), (4, 0, None), (12, 1, 5)):
            e = bs.window(b, first, m, skip="exact")       # the fast path agrees with exact skipping
            f = bs.window(b, first, m)
            assert (f.skipped, f.count, f.start_image) == (e.skipped, e.count, e.start_image)
            assert e.skipped == first and e.start_image == first * b
        assert bs.window(4, 1).count == 5 and bs.window(4, 0).count == 6


def test_window_slow_path_quirk(folder):
    ref_data, ref_labels = make_set(folder)                # 3 files of N=4, labels 10k + i
    with BatchSet(folder) as bs:
        # B=3 is not a multiple of N=4: skip() calls next() 3 times, refused after max_batches=2
        w = bs.window(3, 3, 2)
        assert (w.first, w.skipped, w.count, w.start_image, w.images) == (3, 2, 2, 6, 6)
        assert "BatchStream skipped 2 of the 3 batches asked for" in w.describe()
        served = list(bs.batches(window=w))
        assert [b.index for b in served] == [2, 3] and [b.start for b in served] == [6, 9]
        np.testing.assert_array_equal(np.concatenate([b.data for b in served]), ref_data[6:12])
        # exact semantics skip all 3 (today's batches(3, 3, 2)): one batch left
        e = bs.window(3, 3, 2, skip="exact")
        assert (e.skipped, e.count, e.start_image) == (3, 1, 9)
        assert [b.start for b in bs.batches(3, 3, 2)] == [9]
        # B=6 >= N but not a multiple of 4: the slow path too
        w6 = bs.window(6, 5, 1)
        assert (w6.skipped, w6.count, w6.start_image) == (1, 1, 6)
        assert "after skipping 5 batches" in _window_error(bs, 6, 5, 1, skip="exact")   # images 30.. of 12


def test_window_first_equals_max_batches(folder):
    make_set(folder)
    with BatchSet(folder) as bs:
        w = bs.window(3, 2, 2)                              # min(2, 2) = 2: no quirk
        assert (w.skipped, w.count, w.start_image) == (2, 2, 6) and w == bs.window(3, 2, 2, skip="batchstream")
        assert bs.window(3, 2, 2, skip="exact").start_image == 6
        assert "BatchStream skipped" not in w.describe()


def test_window_errors_name_folder_numbers_and_fit(folder):
    make_set(folder)                                       # 12 images
    with BatchSet(folder) as bs:
        msg = _window_error(bs, 5, 2)                      # images 10..14 of 12
        for needle in (folder, "no full batch of 5 images after skipping 2 batches: batch 2 needs images 10..14",
                       "12 images (3 files of 4)", "2 batches of 5 fit in all (batches 0..1): skip fewer than 2"):
            assert needle in msg, msg
        msg = _window_error(bs, 13)
        assert "not one batch of 13 fits; a batch size of at most 12 would" in msg and folder in msg
        msg = _window_error(bs, 3, 1, 4, strict=True)      # 4 of the 3 batches left
        assert "4 batches of 3 images from batch 1" in msg and "need images 3..14" in msg
        assert "3 batches of 3 fit after skipping 1" in msg
        assert bs.window(3, 1, 4).count == 3               # not strict: what remains
        # the quirk is spelled out when it is what leaves too few images
        msg = _window_error(bs, 5, 9, 3, strict=True)
        assert "skips only 3 of the 9 batches" in msg and "not a multiple of N = 4" in msg
        for args, needle in (((0,), "batch size must be positive, got 0"),
                             ((-2,), "batch size must be positive, got -2"),
                             ((3, -1), "first batch (batches to skip) must be >= 0, got -1"),
                             ((3, 0, 0), "the number of batches must be >= 1"),
                             ((3, 0, None, "sometimes"), "skip must be one of batchstream, exact")):
            msg = _window_error(bs, *args)
            assert needle in msg and folder in msg, msg
        empty = bs.window(5, 2, allow_empty=True)
        assert empty.count == 0 and list(bs.batches(window=empty)) == [] and empty.span() == "no images"
        assert bs.window(3, 0, 0, allow_empty=True).count == 0


def test_batches_takes_a_window(folder):
    ref_data, _ = make_set(folder)
    with BatchSet(folder) as bs:
        w = bs.window(5, 1)
        got = list(bs.batches(window=w))
        assert [b.start for b in got] == [5] and got[0].index == 1
        np.testing.assert_array_equal(got[0].data, ref_data[5:10])
        with pytest.raises(ConfigError, match="not both"):
            bs.batches(5, window=w)
        with pytest.raises(ConfigError, match="needs a batch size or a window"):
            bs.batches()
        feed = bs.as_feed("x", window=w)
        assert len(feed) == 1 and np.array_equal(next(iter(feed))["x"], ref_data[5:10])
    small = os.path.join(folder, "small")
    make_set(small, files=1)
    with BatchSet(small) as other:
        with pytest.raises(ConfigError, match="needs 10 images but the set holds 4"):
            other.batches(window=w)


GRID_N = (1, 3, 4)
GRID_BATCH = (1, 2, 3, 4, 5, 6, 8, 9, 12)
GRID_FIRST = (0, 1, 2, 3, 5, 9)
GRID_MAX = (1, 2, 3, 4, 7, 1000)


@pytest.mark.parametrize("n", GRID_N)
def test_window_matches_reference_batchstream(tmp_path, n):
    """BatchSet.window(skip="batchstream") serves exactly what RefBatchStream serves, over a grid."""
    folder = str(tmp_path / f"n{n}")
    ref_data, ref_labels = make_set(folder, files=12 // n + (n == 4), dims=(n, 1, 2, 1), seed=n)
    checked = quirks = 0
    with BatchSet(folder) as bs:
        for b in GRID_BATCH:
            for first in GRID_FIRST:
                for m in GRID_MAX:
                    want = ref_served(list(ref_data), list(ref_labels), n, b, first, m)
                    w = bs.window(b, first, m, skip="batchstream", allow_empty=True)
                    served = list(bs.batches(window=w))
                    assert len(served) == w.count == len(want), (b, first, m)
                    for got, (data, labels) in zip(served, want):
                        np.testing.assert_array_equal(got.data, data)
                        assert got.labels.tolist() == labels
                    if want:
                        assert w.start_image == w.skipped * b and served[0].index == w.skipped
                        assert bs.window(b, first, m) == w                  # the same, validated
                    else:
                        with pytest.raises(ConfigError, match="no full batch|batches of"):
                            bs.window(b, first, m)
                    if w.skipped != first:
                        quirks += 1
                        assert b % n and m < first
                    checked += 1
    assert checked == len(GRID_BATCH) * len(GRID_FIRST) * len(GRID_MAX)
    assert quirks > 0 or n == 1                                              # N=1: always the fast path


# -------------------------------------------- issue 12: hostile file system
def _unblock_later(path, seconds=5.0):
    """Watchdog: open the FIFO's write end after ``seconds``, so a reader blocked on it returns (EOF)."""
    import threading
    import time

    def run():
        time.sleep(seconds)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader is blocked: nothing to do
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("name", ["batch1", MANIFEST_NAME])
def test_fifo_in_place_of_a_file_is_refused_at_once(folder, name):
    import time
    make_set(folder)
    write_manifest(folder)
    path = os.path.join(folder, name)
    os.remove(path)
    os.mkfifo(path)
    _unblock_later(path)
    t0 = time.monotonic()
    # before issue 12 this blocked forever in open()
    err = _expect(folder, BatchFormatError if name == "batch1" else ManifestError, name, "FIFO")
    assert time.monotonic() - t0 < 3.0 and err.path == path


@pytest.mark.parametrize("name", ["batch1", MANIFEST_NAME])
@pytest.mark.parametrize("kind", ["folder", "link loop", "dangling link"])
def test_folder_or_bad_link_in_place_of_a_file(folder, name, kind):
    make_set(folder)
    write_manifest(folder)
    path = os.path.join(folder, name)
    os.remove(path)
    if kind == "folder":
        os.mkdir(path)
    elif kind == "link loop":
        os.symlink(name, path)
    else:
        os.symlink("nowhere", path)
    exc = BatchFormatError if name == "batch1" else ManifestError
    needle = {"folder": "a folder", "link loop": "symbolic links", "dangling link": "does not exist"}[kind]
    _expect(folder, exc, name, needle)


@pytest.mark.parametrize("text, needle", [
    ("[]", "JSON array, not an object"), ('"x"', "JSON string"), ("3", "JSON number"), ("null", "JSON null"),
    ("true", "JSON boolean"), ("[" * 100000, "unreadable"), ('{"files": NaN}', "NaN"),
    ('{"files": Infinity}', "Infinity"), (b"\xff\xfe{}", "unreadable"),
])
def test_manifest_of_the_wrong_json_type_or_unparsable(folder, text, needle):
    make_set(folder)
    with open(os.path.join(folder, MANIFEST_NAME), "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    _expect(folder, ManifestError, MANIFEST_NAME, needle)


@pytest.mark.parametrize("fields, needle", [
    ({"files": "3"}, "files"), ({"files": 3.0}, "files"), ({"files": True}, "files"),
    ({"images": 13}, "13 images"), ({"images": "12"}, "images"),
    ({"dtype": "float16"}, "dtype"), ({"byte_order": "big"}, "byte_order"), ({"layout": "NHWC"}, "layout"),
    ({"format": "other"}, "format"), ({"prefix": "b"}, "prefix"), ({"suffix": ".bin"}, "suffix"),
    ({"manifest_version": 2}, "newer int8batch"), ({"manifest_version": "1"}, "manifest_version"),
    ({"images_list": [["a.png", 0]] * 11}, "11 entries"), ({"images_list": {"a": 1}}, "JSON object"),
    ({"images_list": [["a.png", 0]] * 11 + [["b.png", 1.5]]}, "entry 11"),
    ({"images_list": [["a.png", 0]] * 11 + [[3, 1]]}, "entry 11"),
    ({"checksums": {"algorithm": "md5", "files": ["00000000"] * 3}}, "checksums"),
    ({"checksums": {"algorithm": "crc32", "files": ["0"] * 3}}, "checksums"),
    ({"checksums": []}, "checksums"),
    ({"labels": []}, "labels"), ({"labels": {"classes": "abc"}}, "labels"),
    ({"labels": {"unlabelled_value": "-1"}}, "labels"),
    ({"preprocess": {"mean": "x"}}, "preprocess"), ({"preprocess": 3}, "preprocess"),
    ({"skipped": {}}, "skipped"),
])
def test_manifest_fields_disagreeing_or_malformed(folder, fields, needle):
    # before issue 12 only the file count and the dims were compared
    make_set(folder)
    write_manifest(folder, **fields)
    _expect(folder, ManifestError, MANIFEST_NAME, needle)
    with BatchSet(folder, manifest="ignore") as bs:
        assert bs.num_images == 12


def test_manifest_size_cap_and_bom(folder, monkeypatch):
    from int8batch import manifest
    make_set(folder)
    write_manifest(folder)
    path = os.path.join(folder, MANIFEST_NAME)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + raw)           # a byte order mark, as some editors save
    with BatchSet(folder) as bs:
        assert bs.manifest["files"] == 3
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 50)
    _expect(folder, ManifestError, "limit")
    assert manifest.read_manifest(path, max_bytes=10 ** 6)["files"] == 3


def test_complete_manifest_and_verify(folder):
    import zlib
    make_set(folder)
    paths = [os.path.join(folder, f"batch{k}") for k in range(3)]
    sums = [f"{zlib.crc32(open(p, 'rb').read()):08x}" for p in paths]
    listing = [[f"img{i}.png", i % 4 + 10 * (i // 4)] for i in range(12)]
    write_manifest(folder, dtype="float32", byte_order="little", layout="NCHW", images_list=listing,
                   checksums={"algorithm": "crc32", "files": sums},
                   labels={"source": "file", "classes": None, "unlabelled_value": None},
                   preprocess={"scale": 1.0, "mean": [0.0], "std": [1.0]}, padded=[], dropped=[], skipped=[])
    with BatchSet(folder, manifest="require", verify=True) as bs:
        assert bs.manifest["images_list"] == listing
    with open(paths[1], "r+b") as f:             # one data byte flipped: same size
        f.seek(40)
        b = f.read(1)
        f.seek(40)
        f.write(bytes([b[0] ^ 1]))
    with BatchSet(folder) as bs:                 # checksums only on request
        pass
    _expect(folder, BatchFormatError, "batch1", "CRC-32", verify=True)
    listing[5][1] = 99
    write_manifest(folder, images_list=listing)
    _expect(folder, BatchFormatError, "batch1", "img5.png", "99", verify=True)


_REWRITE = r"""
import os, sys
import numpy as np
from int8batch.errors import BatchFormatError
from int8batch.reader import BatchSet
bs = BatchSet(sys.argv[1])
bs.images(0, 4)
path = os.path.join(sys.argv[1], "batch1")
with open(path, "r+b") as f:       # rewritten in place: cut short, as 'cp new batch1' does first
    f.truncate(100)
for access in (lambda: bs.images(4, 4), lambda: bs.images(2, 4, out=np.empty((4, 2, 3, 5), np.float32)),
               lambda: list(bs.batches(6)), lambda: bs.file_arrays(1)):
    try:
        access()[0].sum()
    except BatchFormatError as exc:
        assert "changed in place" in str(exc) and exc.path == path, exc
    else:
        raise SystemExit("served data from a rewritten file")
print("refused")
"""


def test_file_rewritten_in_place_is_refused_not_sigbus(folder):
    import subprocess
    import sys
    make_set(folder)
    # in a child process: before issue 12 the access died of SIGBUS, taking the process with it
    r = subprocess.run([sys.executable, "-c", _REWRITE, folder], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "refused", (r.returncode, r.stdout, r.stderr)


def test_file_replaced_by_rename_keeps_serving_the_opened_data(folder):
    ref_data, _ = make_set(folder)
    with BatchSet(folder) as bs:
        tmp = os.path.join(folder, "new")
        write_batch_file(tmp, np.zeros((4, 2, 3, 5), np.float32), np.zeros(4))
        os.replace(tmp, os.path.join(folder, "batch2"))     # as pack --force swaps files in
        np.testing.assert_array_equal(bs.images(8, 4)[0], ref_data[8:12])
        os.remove(os.path.join(folder, "batch1"))
        np.testing.assert_array_equal(bs.images(4, 4)[0], ref_data[4:8])


def test_far_numbered_stray_file_costs_nothing(folder):
    make_set(folder, files=2)
    for name in ("batch99999999999999", "batch" + "9" * 200):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"x")
    # before issue 12: set(range(10**14)) to list the gap (a MemoryError or hours)
    _expect(folder, BatchFormatError, "gap", "batch2, batch3, batch4, batch5, batch6 and 99999999999992 more")


def test_file_names_come_from_the_manifest(folder):
    """A pack made with --prefix/--suffix opens without repeating them (found as a new user: calibrate, eval and
    export could not read one); explicit names still win; a manifest naming files elsewhere is refused."""
    ref_data, _ = make_set(folder, files=2, prefix="calib_", suffix=".bin")
    write_manifest(folder, files=2, images=8, prefix="calib_", suffix=".bin")
    with BatchSet(folder) as bs:
        assert (bs.prefix, bs.suffix) == ("calib_", ".bin") and bs.manifest is not None
        np.testing.assert_array_equal(bs.images(0, 8)[0], ref_data)
    with pytest.raises(BatchFormatError, match="no batch files named batch0"):
        BatchSet(folder, prefix="batch", suffix="")
    write_manifest(folder, files=2, images=8, prefix="../calib_", suffix=".bin")
    _expect(folder, ManifestError, MANIFEST_NAME, "contains '/'")


@pytest.mark.parametrize("prefix, suffix, needle", [("../x", "", "contains '/'"), ("a/b", "", "contains '/'"),
                                                    ("b", "2.bin", "starts with a digit"), ("b\0", "", "contains")])
def test_pack_refuses_file_name_parts_that_are_paths(tmp_path, prefix, suffix, needle):
    import int8batch
    from int8batch.errors import ConfigError
    with pytest.raises(ConfigError, match=needle):
        int8batch.pack("mnist-test", tmp_path / "o", limit=10, prefix=prefix, suffix=suffix)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_a_pack_swapped_in_while_opening_is_never_served_mixed(tmp_path, monkeypatch):
    """Found by a new user: a reader opening the files one by one while `pack --force` swapped a pack in could
    serve old and new files mixed. The set now opens again until it sees one pack throughout."""
    import int8batch
    from int8batch import reader as rd
    out = tmp_path / "p"
    int8batch.pack("mnist-test", out, preset="mnist", limit=40, batch_size=10)
    real_open, calls = rd.fmt.open_regular, []

    def open_and_swap(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:   # after the first file: another process replaces the pack
            int8batch.pack("mnist-test", out, preset="mnist-caffe", limit=40, batch_size=10, force=True)
        return real_open(path, *a, **k)
    monkeypatch.setattr(rd.fmt, "open_regular", open_and_swap)
    with BatchSet(out) as bs:
        got = bs.images(0, 40)[0].copy()
        assert bs.manifest["preprocess"]["preset"] == "mnist-caffe"
    monkeypatch.undo()
    with BatchSet(out) as fresh:
        np.testing.assert_array_equal(got, fresh.images(0, 40)[0])
    assert len(calls) > 4          # opened twice


def test_a_pack_being_written_is_named_as_such(tmp_path, monkeypatch):
    """The unfinished marker with a live writer holding the folder's lock: 'being written', not 'pack again'."""
    import int8batch
    from int8batch import reader as rd
    from int8batch._lock import FolderLock
    out = tmp_path / "p"
    int8batch.pack("mnist-test", out, limit=20)
    (out / INCOMPLETE_MARKER).write_text("")
    monkeypatch.setattr(rd, "SWAP_WAITS", (0.01, None))
    with FolderLock(out, "pack"):
        _expect(str(out), ManifestError, "is writing a pack into this folder right now")
    _expect(str(out), ManifestError, "unfinished pack", "pack again with --force")


def test_closed_sets_and_bad_arguments_say_so(folder):
    make_set(folder)                                        # 12 images
    bs = BatchSet(folder)
    assert bs.images(12, 0)[0].shape == (0, 2, 3, 5)        # an empty range at the end is fine
    with pytest.raises(IndexError, match="images 10..13 asked for, the set holds images 0..11"):
        bs.images(10, 4)
    with pytest.raises(TypeError, match="whole number"):
        bs.images(3.0, 2)
    for args in ((2.5,), (5, 1.5), (5, 0, 1.5), (True,)):
        with pytest.raises(ConfigError, match="must be a whole number"):
            list(bs.batches(*args))
    with pytest.raises(ConfigError, match="the number of batches must be >= 1"):
        bs.window(5, 0, -1)
    with pytest.raises(IndexError, match="no batch file 3"):
        bs.file_arrays(3)
    bs.close()
    assert len(bs) == 12
    for call in (lambda: list(bs.batches(4)), lambda: list(bs), lambda: bs.images(0, 1), bs.verify,
                 lambda: bs.file_arrays(0)):
        with pytest.raises(BatchFormatError, match="was closed"):
            call()


def test_more_files_than_the_soft_open_file_limit(tmp_path):
    """Each mapped file holds a descriptor: the soft limit is raised as far as the hard one allows."""
    import subprocess
    import sys
    code = ("import resource, sys, int8batch; from int8batch.reader import BatchSet; "
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard)); "
            "int8batch.pack('mnist-test', sys.argv[1], limit=300, batch_size=2); "
            "bs = BatchSet(sys.argv[1]); print(bs.num_files, resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 150)")
    # run away from the source tree: the subprocess must import the package under test (installed in CI)
    import int8batch
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(int8batch.__file__)))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["150", "True"], out.stderr[-2000:]
