"""Image decoding with OpenCV (libjpeg-turbo), reduced-size where it is safe.

``decode_image`` returns a C-contiguous HWC uint8 or uint16 array whose channels
are BGR (3) or gray (1), already resized according to the recipe, and the
reduction factor used.  Every failure raises ``ImageDecodeError`` naming the file.
"""
import os

import numpy as np

from ..errors import ConfigError, ImageDecodeError
from ..format import open_regular

_cv2 = None
_INTERP = None


def cv2():
    """OpenCV, imported once (a core dependency, but heavy to import)."""
    global _cv2, _INTERP
    if _cv2 is None:
        from .._optional import require
        mod = require("cv2")
        try:  # libjpeg warnings on corrupt files would otherwise spam stderr
            mod.utils.logging.setLogLevel(mod.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
        _INTERP = {"linear": mod.INTER_LINEAR, "area": mod.INTER_AREA, "cubic": mod.INTER_CUBIC,
                   "nearest": mod.INTER_NEAREST, "lanczos": mod.INTER_LANCZOS4}
        _cv2 = mod
    return _cv2


def jpeg_size(buf):
    """(height, width) from a JPEG's SOF marker, or None if ``buf`` is not a parsable JPEG."""
    b = memoryview(buf)
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seglen = (b[i + 2] << 8) | b[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h = (b[i + 5] << 8) | b[i + 6]
            w = (b[i + 7] << 8) | b[i + 8]
            return (h, w) if h and w else None
        if marker == 0xDA:  # start of scan before any SOF
            return None
        i += 2 + seglen
    return None


def _jpeg_complete(buf):
    """True when the JPEG in ``buf`` reaches its end-of-image marker (FFD9).

    A JPEG cut short decodes "successfully" with a grey bottom, so truncation
    must be caught here.  Fast path: FFD9 in the last 4 kB (it cannot occur
    inside entropy-coded data, where every FF byte is followed by 00 or a
    restart marker).  Otherwise the file may carry data after its image
    (phones append the video of a "motion photo", some tools a second
    image): walk the marker segments and the entropy-coded scans of the
    primary image to its own FFD9.  An FFD9 inside a header segment (an EXIF
    thumbnail) is skipped over with its segment, so it never counts.
    """
    if b"\xff\xd9" in bytes(buf[-4096:]):
        return True
    return _jpeg_end(bytes(buf)) is not None


def _jpeg_end(b):
    """Offset just past the primary image's EOI marker, or None (truncated or not parsable)."""
    n, i = len(b), 2
    while i + 1 < n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return None
        seglen = (b[i + 2] << 8) | b[i + 3]
        if seglen < 2:
            return None
        i += 2 + seglen
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data of this scan, up to the next real marker
            j = b.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return None
            nxt = b[j + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                i = j + 2
            elif nxt == 0xFF:
                i = j + 1
            else:
                i = j
                break
    return None


#: default cap on the pixels of one image (width x height as stored in the file): Pillow's
#: decompression-bomb limit (2 * 89478485), about 179 megapixels; a 108-megapixel phone photo fits
DEFAULT_MAX_PIXELS = 178_956_970


def _be(b, i, k):
    return int.from_bytes(bytes(b[i:i + k]), "big")


def _le(b, i, k, signed=False):
    return int.from_bytes(bytes(b[i:i + k]), "little", signed=signed)


def image_size(buf):
    """(height, width) read from the file header, or None when the format's header is not parsed here.

    Covers JPEG, PNG, BMP, WebP, TIFF, PNM, Sun raster and JPEG 2000: a few
    bytes read, nothing decoded, so a decompression bomb is refused before
    it costs memory.
    """
    b = memoryview(np.asarray(buf, dtype=np.uint8).reshape(-1)) if not isinstance(buf, (bytes, bytearray)) \
        else memoryview(buf)
    n = len(b)
    if n < 12:
        return None
    head = bytes(b[:32])
    try:
        if head[:2] == b"\xff\xd8":
            return jpeg_size(b)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and n >= 24:
            return _be(b, 20, 4), _be(b, 16, 4)
        if head[:2] == b"BM" and n >= 26:
            if _le(b, 14, 4) == 12:  # BITMAPCOREHEADER
                return _le(b, 20, 2), _le(b, 18, 2)
            return abs(_le(b, 22, 4, True)), abs(_le(b, 18, 4, True))
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and n >= 30:
            kind = head[12:16]
            if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
                return _le(b, 28, 2) & 0x3FFF, _le(b, 26, 2) & 0x3FFF
            if kind == b"VP8L" and head[20] == 0x2F:
                bits = _le(b, 21, 4)
                return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
            if kind == b"VP8X":
                return _le(b, 27, 3) + 1, _le(b, 24, 3) + 1
            return None
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(b, head[:2] == b"II")
        if head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
            return _pnm_size(bytes(b[:4096]))
        if head[:4] == b"\x59\xa6\x6a\x95":  # Sun raster
            return _be(b, 8, 4), _be(b, 4, 4)
        if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # JP2 container: the ihdr box
            k = bytes(b[:4096]).find(b"ihdr")
            return (_be(b, k + 4, 4), _be(b, k + 8, 4)) if k > 0 and k + 12 <= n else None
        if head[:4] == b"\xff\x4f\xff\x51" and n >= 24:  # raw JPEG 2000 codestream: SIZ
            return _be(b, 12, 4) - _be(b, 20, 4), _be(b, 8, 4) - _be(b, 16, 4)
    except (IndexError, ValueError):
        return None
    return None


def _tiff_size(b, little):
    get = (lambda i, k: _le(b, i, k)) if little else (lambda i, k: _be(b, i, k))
    ifd = get(4, 4)
    count = get(ifd, 2)
    dims = {}
    for e in range(min(count, 4096)):
        at = ifd + 2 + 12 * e
        if at + 12 > len(b):
            break
        tag, typ = get(at, 2), get(at + 2, 2)
        if tag in (256, 257):
            dims[tag] = get(at + 8, 2) if typ == 3 else get(at + 8, 4)
    return (dims[257], dims[256]) if len(dims) == 2 else None


def _pnm_size(head):
    tokens, i = [], 2
    while len(tokens) < 2 and i < len(head):
        c = head[i:i + 1]
        if c == b"#":
            i = head.find(b"\n", i)
            if i < 0:
                return None
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < len(head) and head[j:j + 1].isdigit():
                j += 1
            if j == i:
                return None
            tokens.append(int(head[i:j]))
            i = j
    return (tokens[1], tokens[0]) if len(tokens) == 2 else None


def check_max_pixels(max_pixels):
    """``max_pixels`` resolved (None: :data:`DEFAULT_MAX_PIXELS`) and checked: an integer >= 1."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ConfigError(f"max_pixels (--max-pixels) must be a whole number of pixels >= 1, got {max_pixels!r}")
    return int(max_pixels)


def _pixels(n):
    """A pixel count in words: megapixels when large, pixels when small (--max-pixels 1000)."""
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


def _too_large(path, h, w, max_pixels, when):
    gb = 3 * h * w / 1e9
    return ImageDecodeError(
        f"{path}: image is {w}x{h} = {_pixels(h * w)}, more than the limit of {_pixels(max_pixels)} per image "
        f"({when}); decoding it would take {f'about {gb:.1f} GB' if gb >= 0.1 else f'{3 * h * w} bytes'} or more "
        "per worker.  Raise the limit (--max-pixels) if you trust the file, skip it (--skip-bad) or shrink it", path)


def _check_resized(path, cfg, h, w, max_pixels):
    """The resized shape of an h x w image; refused when it exceeds ``max_pixels`` (an extreme aspect ratio:
    a 60000x6 strip whose short side goes to 256 would be 2560000x256)."""
    rh, rw = cfg.resized_shape(h, w)
    max_pixels = max(max_pixels, DEFAULT_MAX_PIXELS)   # a lowered --max-pixels is about the files
    if rh * rw > max_pixels:
        raise ImageDecodeError(
            f"{path}: image is {w}x{h}; the recipe's resize would make it {rw}x{rh} = {_pixels(rh * rw)} (its "
            f"short side to {min(rh, rw)}), more than the limit of {_pixels(max_pixels)} per image; an aspect "
            "ratio this extreme is no photo: skip it (--skip-bad) or crop it",
            path)
    return rh, rw


def read_file(path):
    """The file's bytes as a uint8 array (works with non-ASCII paths).

    Only a regular file is read: a FIFO named like an image would block the
    pack forever, a folder or a device is no image (``ImageDecodeError``).
    """
    fd, _ = open_regular(path, "image file", ImageDecodeError)
    try:
        with os.fdopen(fd, "rb") as f:
            return np.fromfile(f, dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})", path) from exc


def decode_image(path, cfg, data=None, max_pixels=None):
    """Decode and resize one image for recipe ``cfg``.

    ``max_pixels`` (None: :data:`DEFAULT_MAX_PIXELS`) caps width x height as
    stored in the file: checked from the header before decoding for the
    formats :func:`image_size` reads, after decoding for the others (OpenCV
    itself refuses more than 2**30 pixels).

    Returns
    -------
    img : ndarray, uint8 or uint16, shape (h, w, 1 or 3), C-contiguous
        BGR or gray, resized (not yet cropped).
    reduction : int
        1, 2, 4 or 8: the JPEG decode reduction used.
    """
    max_pixels = check_max_pixels(max_pixels)
    cv = cv2()
    if data is None:
        data = read_file(path)
    if data.size == 0:
        raise ImageDecodeError(f"{path}: file is empty", path)
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_large(path, size[0], size[1], max_pixels, "read from its header, nothing decoded")
    if size is not None:
        _check_resized(path, cfg, size[0], size[1], max_pixels)
    gray = cfg.channels == "gray"
    flags = cv.IMREAD_GRAYSCALE if gray else cv.IMREAD_COLOR
    if cfg.exif == "ignore":
        flags |= cv.IMREAD_IGNORE_ORIENTATION
    reduction = 1
    hw = size if data[:2].tobytes() == b"\xff\xd8" else None
    if hw is not None:
        if not _jpeg_complete(data):
            raise ImageDecodeError(f"{path}: JPEG is truncated (no end-of-image marker)", path)
        reduction = cfg.reduction_factor(*hw)
        if reduction > 1:
            flags |= {2: cv.IMREAD_REDUCED_GRAYSCALE_2, 4: cv.IMREAD_REDUCED_GRAYSCALE_4,
                      8: cv.IMREAD_REDUCED_GRAYSCALE_8}[reduction]
    else:
        flags |= cv.IMREAD_ANYDEPTH  # keep 16-bit PNG/TIFF depth
    try:
        img = cv.imdecode(data, flags)
    except cv.error as exc:
        raise ImageDecodeError(f"{path}: OpenCV could not decode it ({str(exc).strip()})", path) from exc
    if img is None or img.size == 0:
        raise ImageDecodeError(f"{path}: not an image OpenCV can decode, or the file is corrupt", path)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"{path}: pixel type {img.dtype} is not supported (8- or 16-bit images only)",
                               path)
    h, w = img.shape[:2]
    if h * w > max_pixels:  # a format whose header is not read here (or a header that lied)
        raise _too_large(path, h, w, max_pixels, "found after decoding")
    rh, rw = _check_resized(path, cfg, h, w, max_pixels)
    if (rh, rw) != (h, w):
        try:
            img = cv.resize(img, (rw, rh), interpolation=_INTERP[cfg.interpolation])
        except cv.error as exc:
            raise ImageDecodeError(f"{path}: OpenCV could not resize it from {w}x{h} to {rw}x{rh} "
                                   f"({str(exc).strip().splitlines()[-1]})", path) from exc
    if img.ndim == 2:
        img = img[:, :, None]
    return np.ascontiguousarray(img), reduction
