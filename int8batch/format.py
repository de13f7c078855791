"""The sampleINT8 batch file layout, and nothing else.

One file::

    int32 N, C, H, W            (16 bytes, little-endian)
    float32 data[N*C*H*W]       (NCHW, C-contiguous, little-endian)
    float32 labels[N]           (class k stored as float k)

A set of files is ``<prefix><k><suffix>`` for k = 0, 1, 2, ... without gaps.
See ``shared/docs/batch-format.md`` in the project for the whole story.
"""
import os
import re
import zlib

import numpy as np

from .errors import BatchFormatError

HEADER_DTYPE = np.dtype("<i4")
DATA_DTYPE = np.dtype("<f4")
HEADER_BYTES = 16
CHECKSUM_ALGO = "crc32"


def file_size(n, c, h, w):
    """Exact size in bytes of a batch file holding ``n`` images of ``c x h x w``."""
    return HEADER_BYTES + 4 * n * c * h * w + 4 * n


def encode_header(n, c, h, w):
    """The 16 header bytes for dims ``(n, c, h, w)``."""
    dims = (n, c, h, w)
    if any(int(d) <= 0 or int(d) >= 2**31 for d in dims):
        raise BatchFormatError(f"batch dims must be positive int32 values, got {dims}")
    return np.array(dims, dtype=HEADER_DTYPE).tobytes()


def decode_header(raw, path=None):
    """Parse 16 header bytes into ``(n, c, h, w)``; raise ``BatchFormatError`` if invalid."""
    where = f"{path}: " if path else ""
    if len(raw) < HEADER_BYTES:
        raise BatchFormatError(
            f"{where}file is {len(raw)} bytes, shorter than the 16-byte header; "
            "it is truncated or not a batch file", path)
    dims = tuple(int(v) for v in np.frombuffer(raw[:HEADER_BYTES], dtype=HEADER_DTYPE))
    if any(d <= 0 for d in dims):
        raise BatchFormatError(
            f"{where}header N,C,H,W = {dims} has a value <= 0; not a sampleINT8 batch file", path)
    return dims


def read_header(path):
    """Read and parse the header of the batch file at ``path``."""
    with open(path, "rb") as f:
        return decode_header(f.read(HEADER_BYTES), path)


def batch_name(k, prefix="batch", suffix=""):
    """File name of batch file number ``k``: ``batch0``, ``batch1``, ..."""
    return f"{prefix}{int(k)}{suffix}"


def list_batch_files(folder, prefix="batch", suffix=""):
    """Paths of the batch files in ``folder``, in order of k.

    Raises ``BatchFormatError`` when there are none, when ``<prefix>0`` is
    missing, or when the numbering has a gap (the C++ reader would silently
    stop at the gap and lose every later file).
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise BatchFormatError(f"{folder}: no such folder", folder) from None
    except NotADirectoryError:
        raise BatchFormatError(f"{folder}: not a folder; give the folder that holds batch0, batch1, ...",
                               folder) from None
    pat = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]*)" + re.escape(suffix) + r"\Z")
    ks = sorted(int(m.group(1)) for m in map(pat.match, names) if m)
    if not ks:
        raise BatchFormatError(
            f"{folder}: no batch files named {batch_name(0, prefix, suffix)}, "
            f"{batch_name(1, prefix, suffix)}, ... found", folder)
    missing = sorted(set(range(ks[-1] + 1)) - set(ks))
    if missing:
        shown = ", ".join(batch_name(k, prefix, suffix) for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BatchFormatError(
            f"{folder}: batch numbering has a gap: {shown}{more} missing while "
            f"{batch_name(ks[-1], prefix, suffix)} exists; the C++ reader would stop at the gap", folder)
    return [os.path.join(folder, batch_name(k, prefix, suffix)) for k in ks]


def write_batch_file(path, data, labels):
    """Write one complete batch file (not atomically; see ``pack.writer`` for that).

    ``data`` is float32 ``(N, C, H, W)``, ``labels`` has N entries.
    """
    data = np.ascontiguousarray(data, dtype=DATA_DTYPE)
    labels = np.ascontiguousarray(labels, dtype=DATA_DTYPE)
    if data.ndim != 4 or labels.shape != (data.shape[0],):
        raise BatchFormatError(f"{path}: need data (N,C,H,W) and N labels, got {data.shape} and {labels.shape}",
                               path)
    with open(path, "wb") as f:
        f.write(encode_header(*data.shape))
        f.write(data.tobytes())
        f.write(labels.tobytes())


def checksum(buf, value=0):
    """Running checksum (CRC-32) of a bytes-like object, as recorded in manifests."""
    return zlib.crc32(buf, value) & 0xFFFFFFFF


def file_checksum(path, chunk=1 << 24):
    """Checksum of a whole file, read in chunks."""
    value = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return value
            value = checksum(block, value)
