"""format.py against hand-computed bytes: the golden files, headers, sizes, names, listing, checksums."""
import os
import zlib

import numpy as np
import pytest

from int8batch import format as fmt
from int8batch.errors import BatchFormatError, ManifestError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "batches")
# the golden files' contents (tests/test_reader.py spells their bytes out with struct)
GOLDEN = [
    ([0.0, 0.5, 1.0, -1.0, 0.25, 2.0, -0.5, 3.0, 0.125, -2.0, 1.5, 4.0], [7.0, 0.0]),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0], [3.0, 9.0]),
]


def test_writer_reproduces_the_golden_files(tmp_path):
    for k, (data, labels) in enumerate(GOLDEN):
        path = tmp_path / fmt.batch_name(k)
        fmt.write_batch_file(path, np.array(data, np.float64).reshape(2, 1, 2, 3), labels)
        with open(os.path.join(FIXTURES, f"batch{k}"), "rb") as f:
            assert path.read_bytes() == f.read()
        assert fmt.read_header(path) == (2, 1, 2, 3) and path.stat().st_size == fmt.file_size(2, 1, 2, 3) == 72


def test_header_bytes_and_sizes():
    assert fmt.encode_header(2, 1, 28, 28) == bytes.fromhex("02000000 01000000 1c000000 1c000000")
    assert fmt.decode_header(bytes.fromhex("64000000 01000000 1c000000 1c000000") + b"rest") == (100, 1, 28, 28)
    assert fmt.file_size(100, 1, 28, 28) == 16 + 4 * 78400 + 400 == 314016    # MNIST batch files
    for dims in ((0, 1, 1, 1), (1, -1, 1, 1), (1, 1, 1, 2 ** 31)):
        with pytest.raises(BatchFormatError, match="positive int32"):
            fmt.encode_header(*dims)
    with pytest.raises(BatchFormatError, match="shorter than the 16-byte header"):
        fmt.decode_header(b"\x01\x00", "f")
    with pytest.raises(BatchFormatError, match="f: header N,C,H,W = \\(1, 0, 1, 1\\)"):
        fmt.decode_header(bytes.fromhex("01000000 00000000 01000000 01000000"), "f")


def test_names_and_listing(tmp_path):
    assert fmt.batch_name(12) == "batch12" and fmt.batch_name(3, "img_", ".bin") == "img_3.bin"
    for name in ("batch0", "batch1", "batch10", "batch2", "batch01", "batchx", "other0"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(BatchFormatError, match="gap: batch3, batch4, batch5, batch6, batch7 and 2 more missing"):
        fmt.list_batch_files(tmp_path)
    with pytest.raises(BatchFormatError, match="no batch files named img0, img1"):
        fmt.list_batch_files(tmp_path, "img")
    with pytest.raises(BatchFormatError, match="no such folder"):
        fmt.list_batch_files(tmp_path / "nowhere")
    with pytest.raises(BatchFormatError, match="not a folder"):
        fmt.list_batch_files(tmp_path / "batch0")
    (tmp_path / "batch10").unlink()
    # numeric order, and only <prefix><k><suffix> with k written without leading zeros
    assert fmt.list_batch_files(tmp_path) == [str(tmp_path / f"batch{k}") for k in (0, 1, 2)]


def test_checksums_are_zlib_crc32(tmp_path):
    blob = bytes(range(256)) * 1000
    assert fmt.checksum(blob) == zlib.crc32(blob) and fmt.checksum(b"") == 0
    assert fmt.checksum(blob[100:], fmt.checksum(blob[:100])) == zlib.crc32(blob)   # running
    (tmp_path / "f").write_bytes(blob)
    assert fmt.file_checksum(tmp_path / "f", chunk=4096) == zlib.crc32(blob)
    assert f"{fmt.checksum(b'123456789'):08x}" == "cbf43926"                       # the CRC-32 check value


def test_write_batch_file_refuses_mismatched_labels(tmp_path):
    with pytest.raises(BatchFormatError, match="need data \\(N,C,H,W\\) and N labels"):
        fmt.write_batch_file(tmp_path / "b", np.zeros((2, 1, 2, 2)), [1.0])
    assert not (tmp_path / "b").exists()


def test_open_regular_and_float32_exact():
    assert fmt.float32_exact(2 ** 24) and fmt.float32_exact(-1.0) and fmt.float32_exact(3)
    assert not any(fmt.float32_exact(v) for v in (2 ** 24 + 1, 0.1, float("nan"), float("inf"), 1e39, "x", None))
    with pytest.raises(BatchFormatError, match="a device"):
        fmt.open_regular("/dev/null")
    with pytest.raises(ManifestError, match="cannot open the manifest"):
        fmt.open_regular("/no/such/file", "manifest", ManifestError)
