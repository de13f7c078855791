# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Per-image kernels of the packer, after decode and resize.

``hwc_to_chw``: crop window + HWC uint8/uint16 -> CHW float32 + channel
selection/swap + normalization, fused into one pass that writes straight into
the caller's buffer (the mapped batch file).  Normalization goes through a
per-channel lookup table computed in float64 by the caller, so the result is
the correctly rounded float32 of ``(pixel * scale - mean) / std`` for every
pixel value -- bit-identical to a float64 reference cast to float32.

``lut_map_u8``: the same table lookup over a flat uint8 array (MNIST IDX
images, which need no resize), parallel over chunks.

``crc32``: ``zlib.crc32`` with PCLMULQDQ folding (csrc/_preprocess_crc32.h) for
the batch files' checksums: same values, 2-3x faster than zlib 1.2's
table-driven loop, GIL released.
"""
import zlib

from cython.parallel cimport prange

cdef extern from "_preprocess_crc32.h" nogil:
    int i8b_crc32_simd_ok()
    unsigned int i8b_crc32_prefix(const unsigned char *buf, size_t n, unsigned int crc, size_t *done)

#: True when this CPU runs the folded CRC (else ``crc32`` is zlib's)
CRC32_SIMD = bool(i8b_crc32_simd_ok())

ctypedef unsigned char uchar
ctypedef unsigned short ushort

ctypedef fused pixel_t:
    uchar
    ushort


cdef void _hwc_to_chw(const pixel_t[:, :, ::1] src, Py_ssize_t y0, Py_ssize_t x0,
                      const int[::1] chan, const float[:, ::1] lut,
                      float[:, :, ::1] out) noexcept nogil:
    cdef Py_ssize_t C = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t c, y, x
    cdef int ci
    for c in range(C):
        ci = chan[c]
        for y in range(H):
            for x in range(W):
                out[c, y, x] = lut[c, src[y0 + y, x0 + x, ci]]


def hwc_to_chw(const pixel_t[:, :, ::1] src, Py_ssize_t y0, Py_ssize_t x0,
               const int[::1] chan, const float[:, ::1] lut, float[:, :, ::1] out):
    """Write ``lut[c, src[y0+y, x0+x, chan[c]]]`` into ``out[c, y, x]``.

    Parameters
    ----------
    src : uint8 or uint16 array, shape (h, w, k), C-contiguous
        The decoded (and resized) image, channels last.
    y0, x0 : int
        Top-left corner of the crop window; the window is ``out``'s H x W.
    chan : int32 array, shape (C,)
        Source channel for each output channel (e.g. [2, 1, 0] for BGR->RGB).
    lut : float32 array, shape (C, 256) for uint8 or (C, 65536) for uint16
        Per-output-channel value table.
    out : float32 array, shape (C, H, W), C-contiguous
        Destination, typically a slice of a mapped batch file.
    """
    cdef Py_ssize_t C = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t c, need = 65536
    if pixel_t is uchar:
        need = 256
    if chan.shape[0] != C or lut.shape[0] != C:
        raise ValueError(f"chan has {chan.shape[0]} and lut {lut.shape[0]} entries for {C} output channels")
    if lut.shape[1] < need:
        raise ValueError(f"lut must have {need} columns for this pixel type, has {lut.shape[1]}")
    if y0 < 0 or x0 < 0 or y0 + H > src.shape[0] or x0 + W > src.shape[1]:
        raise ValueError(f"crop window ({y0}, {x0}) + {H}x{W} outside image {src.shape[0]}x{src.shape[1]}")
    for c in range(C):
        if chan[c] < 0 or chan[c] >= src.shape[2]:
            raise ValueError(f"channel index {chan[c]} outside image with {src.shape[2]} channels")
    with nogil:
        _hwc_to_chw(src, y0, x0, chan, lut, out)


cdef void _lut_map_u8(const unsigned char[::1] src, const float[::1] lut, float[::1] out,
                      int num_threads) noexcept nogil:
    cdef Py_ssize_t n = src.shape[0], i
    if num_threads <= 1:
        for i in range(n):
            out[i] = lut[src[i]]
    else:
        for i in prange(n, num_threads=num_threads, schedule="static"):
            out[i] = lut[src[i]]


def lut_map_u8(const unsigned char[::1] src, const float[::1] lut, float[::1] out, int num_threads=1):
    """``out[i] = lut[src[i]]`` for a flat uint8 array (parallel when ``num_threads > 1``)."""
    if out.shape[0] != src.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, src {src.shape[0]}")
    if lut.shape[0] < 256:
        raise ValueError(f"lut needs 256 entries, has {lut.shape[0]}")
    with nogil:
        _lut_map_u8(src, lut, out, num_threads)


def crc32(buf, unsigned int value=0):
    """``zlib.crc32(buf, value)`` of a C-contiguous buffer (bytes, NumPy array, mmap), folded with PCLMULQDQ."""
    cdef const unsigned char[::1] v = memoryview(buf).cast("B")
    cdef size_t n = v.shape[0], done = 0
    cdef unsigned int crc = value
    if CRC32_SIMD and n >= 64:
        with nogil:
            crc = i8b_crc32_prefix(&v[0], n, crc, &done)
    if done < n:
        crc = zlib.crc32(v[done:], crc)
    return crc
