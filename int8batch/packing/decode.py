"""Image decoding with OpenCV (libjpeg-turbo), reduced-size where it is safe.

``decode_image`` returns a C-contiguous HWC uint8 or uint16 array whose channels
are BGR (3) or gray (1), already resized according to the recipe, and the
reduction factor used.  Every failure raises ``ImageDecodeError`` naming the file.
"""
import numpy as np

from ..errors import ImageDecodeError

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
    # A JPEG cut short decodes "successfully" with a grey bottom; the end-of-image
    # marker FFD9 cannot occur inside entropy-coded data, so its absence near the
    # end means truncation.
    tail = bytes(buf[-4096:])
    return b"\xff\xd9" in tail


def read_file(path):
    """The file's bytes as a uint8 array (works with non-ASCII paths)."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read file ({exc.strerror or exc})", path) from exc


def decode_image(path, cfg, data=None):
    """Decode and resize one image for recipe ``cfg``.

    Returns
    -------
    img : ndarray, uint8 or uint16, shape (h, w, 1 or 3), C-contiguous
        BGR or gray, resized (not yet cropped).
    reduction : int
        1, 2, 4 or 8: the JPEG decode reduction used.
    """
    cv = cv2()
    if data is None:
        data = read_file(path)
    if data.size == 0:
        raise ImageDecodeError(f"{path}: file is empty", path)
    gray = cfg.channels == "gray"
    flags = cv.IMREAD_GRAYSCALE if gray else cv.IMREAD_COLOR
    if cfg.exif == "ignore":
        flags |= cv.IMREAD_IGNORE_ORIENTATION
    reduction = 1
    hw = jpeg_size(data)
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
    rh, rw = cfg.resized_shape(h, w)
    if (rh, rw) != (h, w):
        img = cv.resize(img, (rw, rh), interpolation=_INTERP[cfg.interpolation])
    if img.ndim == 2:
        img = img[:, :, None]
    return np.ascontiguousarray(img), reduction
