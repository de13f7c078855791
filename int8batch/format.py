"""The sampleINT8 batch file layout, and nothing else.

One file::

    int32 N, C, H, W            (16 bytes, little-endian)
    float32 data[N*C*H*W]       (NCHW, C-contiguous, little-endian)
    float32 labels[N]           (class k stored as float k)

A set of files is ``<prefix><k><suffix>`` for k = 0, 1, 2, ... without gaps.
The layout has no version field and says nothing about the images: int8batch
records that in a manifest beside the files (:mod:`int8batch.manifest`).
TensorRT's C++ samples read the files with their ``BatchStream`` helper
(``tools/batchstream_reader.cpp`` reproduces it; :mod:`int8batch.reader`
serves the same batches).
"""
import os
import re
import stat
import zlib

import numpy as np

from .errors import BatchFormatError

HEADER_DTYPE = np.dtype("<i4")
DATA_DTYPE = np.dtype("<f4")
HEADER_BYTES = 16
CHECKSUM_ALGO = "crc32"


#: labels are stored as float32: every integer up to 2**24 is exact, 2**24 + 1 is not
MAX_EXACT_LABEL = 2 ** 24


def float32_exact(value):
    """True when ``value`` is finite and stored exactly as a float32 label (3 -> 3.0; not 16777217, 0.1, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    if value != value or value in (float("inf"), float("-inf")):
        return False
    with np.errstate(over="ignore"):
        return float(np.float32(value)) == value


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


def open_regular(path, what="batch file", error=BatchFormatError):
    """Open the regular file at ``path`` read-only; return ``(fd, os.stat_result)``.

    Opened without blocking, then checked with ``fstat``: a FIFO (which would
    block every reader forever), a folder, a device or a socket is refused,
    and so is a path that cannot be opened (missing, no permission, a link
    loop), each with ``error`` naming the path.  The caller closes the fd.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        dangling = isinstance(exc, FileNotFoundError) and os.path.islink(path)
        why = f"a symbolic link to {os.readlink(path)}, which does not exist" if dangling else exc.strerror or exc
        raise error(f"{path}: cannot open the {what} ({why})", path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                    else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if
                    stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            raise error(f"{path}: the {what} is {kind}, not a regular file; move it away", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_header(path):
    """Read and parse the header of the batch file at ``path`` (a regular file; see :func:`open_regular`)."""
    fd, _ = open_regular(path)
    try:
        return decode_header(read_at(fd, HEADER_BYTES, path), path)
    finally:
        os.close(fd)


def read_at(fd, count, path, offset=0):
    """``os.pread`` with an I/O error raised as ``BatchFormatError`` naming ``path``."""
    try:
        return os.pread(fd, count, offset)
    except OSError as exc:
        raise BatchFormatError(f"{path}: cannot read ({exc.strerror or exc})", path) from exc


def check_name_parts(prefix, suffix, where="prefix/suffix"):
    """Refuse file name parts that would put batch files elsewhere or make their numbers unreadable.

    ``prefix`` and ``suffix`` are parts of one file name in the pack's folder: no path separator
    or NUL byte; the suffix may not start with a digit (``batch1`` + ``2x`` reads back as file 12).
    Raises ``ConfigError`` naming ``where`` (the option or the manifest).
    """
    from .errors import ConfigError
    for name, part in (("prefix", prefix), ("suffix", suffix)):
        if not isinstance(part, str):
            raise ConfigError(f"{where}: the file name {name} must be text, got {part!r}")
        bad = [c for c in ("/", os.sep, os.altsep or "/", "\0") if c in part]
        if bad:
            raise ConfigError(f"{where}: the file name {name} {part!r} contains {bad[0]!r}; batch files are "
                              f"named <prefix><number><suffix> inside the output folder, so it must be part "
                              f"of one file name (give the folder as OUT instead)")
    if suffix[:1].isdigit():
        raise ConfigError(f"{where}: the suffix {suffix!r} starts with a digit, so the file numbers could not be "
                          "read back (batch1 + 2x reads as file 12); start it with another character, e.g. .bin")


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
    except OSError as exc:
        raise BatchFormatError(f"{folder}: cannot list this folder ({exc.strerror or exc})", folder) from exc
    # at most 18 digits: a longer number is no batch file of any set
    pat = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]{0,17})" + re.escape(suffix) + r"\Z")
    ks = sorted(int(m.group(1)) for m in map(pat.match, names) if m)
    if not ks:
        raise BatchFormatError(
            f"{folder}: no batch files named {batch_name(0, prefix, suffix)}, "
            f"{batch_name(1, prefix, suffix)}, ... found", folder)
    if ks[-1] + 1 != len(ks):
        # the first few missing numbers, without building range(largest k): a stray "batch99999999999"
        # must cost nothing
        missing, expect = [], 0
        for k in ks:
            while expect < k and len(missing) < 5:
                missing.append(expect)
                expect += 1
            expect = k + 1
        count = ks[-1] + 1 - len(ks)
        shown = ", ".join(batch_name(k, prefix, suffix) for k in missing)
        more = f" and {count - len(missing)} more" if count > len(missing) else ""
        raise BatchFormatError(
            f"{folder}: batch numbering has a gap: {shown}{more} missing while "
            f"{batch_name(ks[-1], prefix, suffix)} exists; the C++ reader would stop at the gap", folder)
    return [os.path.join(folder, batch_name(k, prefix, suffix)) for k in ks]


def write_batch_file(path, data, labels):
    """Write one complete batch file (not atomically; :mod:`int8batch.packing.writer` does that).

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
    return _crc32(buf, value) & 0xFFFFFFFF


def _crc32(buf, value):
    """zlib.crc32, or the same CRC folded with PCLMULQDQ by the packing kernels when they are built
    with it (2.3x faster, issue 11); bit-identical values."""
    try:
        return _fast_crc32(buf, value)
    except (TypeError, ValueError, BufferError):  # a non-contiguous buffer: zlib takes what it takes
        return zlib.crc32(buf, value)


try:
    from ._kernels_preprocess import crc32 as _fast_crc32
except ImportError:  # kernels not built, or built before crc32 existed
    _fast_crc32 = zlib.crc32


def file_checksum(path, chunk=1 << 24):
    """Checksum of a whole (regular) file, read in chunks."""
    value = 0
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return value
            value = checksum(block, value)
