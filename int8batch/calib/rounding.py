"""Weight rounding that compensates its own error (GPTQ-style), from the calibration inputs.

Nearest rounding quantizes each weight on its own.  But a layer's output
error from rounding one output channel's weights ``w`` (in units of the
channel's scale ``s``, integers ``q``) is

    E[(x . s(w - q))^2] = s^2 (w - q)^T H (w - q),   H = E[x x^T]

where ``x`` runs over the input patches the layer reads (im2col rows of a
Conv, input rows of a Gemm).  When the inputs are correlated, the error of
one rounded weight can be compensated by nudging the weights not rounded yet:
this is the optimal-brain-quantization update of GPTQ (Frantar et al., 2022),
taken one column at a time through the upper Cholesky factor ``U`` of
``H^-1``:

    q_j = clip(rint(w_j), -127, 127)
    w_k -= (w_j - q_j) / U_jj * U_jk      for every later column k

The scales do not change (``max|W| / 127`` per output channel), and each
channel's largest weight is kept at exactly +-127 (never updated), so
TensorRT's own ``max / 127`` rule finds the same scale and the same int8
values in ``model.corrected.onnx``.  Only the integer values the Q/DQ model
stores change; bias correction then works on those.

:class:`MomentCollector` adds up ``H`` per layer in the calibration pass
(first ``ROUNDING_IMAGES`` images), :func:`round_weights` turns it into
``{weight name: int8 array}`` for :func:`int8batch.onnx.qdq.insert_qdq_with_report`.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np

from ..errors import CalibrationError
from ..onnx.layers import conv_geometry, conv_output_size
from ..onnx.qdq import weight_scales

log = logging.getLogger(__name__)

#: second moments from the first calibration images only
ROUNDING_IMAGES = 64
#: a layer whose H saw fewer patches than this many per patch value keeps nearest rounding: with a
#: rank-deficient H the compensation fits those few images (LeNet's 800-input Gemm on 32 images: the
#: output error on other images doubled)
MIN_ROWS_PER_VALUE = 2
#: layers whose patch has more values than this keep nearest rounding (H is d x d float64)
MAX_PATCH = 256
#: relative damping of H's diagonal (GPTQ's default)
DAMP = 0.01
#: columns rounded between two block updates
BLOCK = 64
#: patch values unfolded at once (at least one image): bounds the patch matrices to 16 MB, small enough
#: for the allocator to reuse their memory (a fresh 100-300 MB matrix per chunk spent most of its time in
#: page faults: 0.4-0.7 s against 0.06 s for the copies on a Lite0 depthwise layer)
CHUNK_VALUES = 1 << 22
#: a layer stops adding patches once it has this many per patch value (early layers have thousands
#: of positions per image: a few images estimate their small H well)
ROWS_PER_VALUE = 128
MIN_ROWS = 1 << 12


def _patches(x, layer, w_shape):
    """The layer's input patches as float32 ``(groups, d, rows)``: column ``r`` of group ``g`` is one patch,
    its values in the weight's (channel, kernel) order, columns in (image, position) order.

    The input is padded once with the channels first; each kernel tap is then one strided copy of
    whole output rows (measured on EfficientNet-Lite0's depthwise layers, one image per chunk:
    1.2-2.9x faster than one copy of a sliding-window view, whose innermost runs are a tap row)."""
    x = np.asarray(x, dtype=np.float32)
    if layer.op == "Gemm":
        if x.ndim != 2:
            raise CalibrationError(f"Gemm {layer.key!r}: input {layer.input!r} has shape {x.shape}, expected 2-D")
        return np.ascontiguousarray(x.T)[None]
    kernel, strides, dil, begin, end = conv_geometry(layer, w_shape, x.shape)
    n, c = x.shape[:2]
    g = max(1, int(layer.group))
    padded = tuple(p + b + e for p, b, e in zip(x.shape[2:], begin, end))
    out = conv_output_size(layer, w_shape, x.shape)
    if min(out) <= 0:
        raise CalibrationError(f"Conv {layer.key!r}: kernel {kernel} is larger than the padded input")
    xt = np.zeros((c, n) + padded, np.float32)                  # channels first, padded
    xt[(slice(None), slice(None)) + tuple(slice(b, b + p) for b, p in zip(begin, x.shape[2:]))] = np.moveaxis(x, 1, 0)
    taps = list(itertools.product(*(range(k) for k in kernel)))
    p = np.empty((c, len(taps), n) + tuple(out), np.float32)
    for t, tap in enumerate(taps):
        window = (slice(None), slice(None)) + tuple(slice(a * d, a * d + (o - 1) * s + 1, s)
                                                    for a, d, o, s in zip(tap, dil, out, strides))
        p[:, t] = xt[window]
    return p.reshape(g, (c // g) * len(taps), -1)


def patch_moments(x, layer, w_shape):
    """``H = sum of patch patch^T`` over the patches of ``x``: float64 ``(groups, d, d)``, and the row count."""
    a = _patches(x, layer, w_shape)
    return np.matmul(a, np.swapaxes(a, 1, 2)).astype(np.float64), a.shape[2]


def rows_per_image(layer, w_shape, x_shape):
    """Patches one image gives a layer (a Conv: its output positions; a Gemm: one row)."""
    if layer.op != "Conv":
        return 1
    return max(1, int(np.prod([max(0, o) for o in conv_output_size(layer, w_shape, x_shape)])))


class MomentCollector:
    """Second moments ``H = E[patch patch^T]`` of each weighted layer's input patches.

    Takes the same ``{tensor: array}`` dicts as the histogram collector.  Of
    each tensor only the images some layer still needs are read (at most the
    first ``max_images``; fewer where a layer's row cap is met earlier), and
    of a device tensor only those are copied to the host
    (:class:`DeviceMomentCollector` sums them on the device instead).  Layers
    with a patch of more than ``MAX_PATCH`` values are skipped.
    """

    def __init__(self, layers, weight_shapes, max_images=ROUNDING_IMAGES):
        self.max_images = max_images
        self.layers = []
        self._cap = {}
        self._shapes = dict(weight_shapes)
        for ly in layers:
            w = self._shapes[ly.weight]
            # a Conv's patch: (in channels / group) x kernel; a Gemm's: its K
            d = int(np.prod(w[1:])) if ly.op == "Conv" else int(w[1] if ly.trans_b else w[0])
            if d <= MAX_PATCH:
                self.layers.append(ly)
                self._cap[ly.key] = max(ROWS_PER_VALUE * d, MIN_ROWS)
        self.h = {}
        self.rows = {}
        self._images = {}
        self._by_input = {}
        for ly in self.layers:
            self._by_input.setdefault(ly.input, []).append(ly)

    def _plan(self, arrays):
        """``[(tensor, images needed, [(layer, its images)])]``: what this run adds to each layer.

        A layer takes the tensor's images until it has ``max_images`` of them or its row cap is met
        (in whole images); the tensor's images needed are the most any of its layers takes."""
        plan = []
        for t, x in arrays.items():
            avail = min(len(x), self.max_images - self._images.get(t, 0))
            users = [ly for ly in self._by_input.get(t, ()) if self.rows.get(ly.key, 0) < self._cap[ly.key]]
            if not users or avail <= 0:
                continue
            shape = tuple(x.shape)
            takes = [(ly, min(avail, -(-(self._cap[ly.key] - self.rows.get(ly.key, 0))
                                      // rows_per_image(ly, self._shapes[ly.weight], shape))))
                     for ly in users]
            self._images[t] = self._images.get(t, 0) + avail
            plan.append((t, max(k for _, k in takes), takes))
        return plan

    def collect_many(self, arrays):
        self._add([(_host(arrays[t], need), takes) for t, need, takes in self._plan(arrays)])

    def _add(self, work):
        for x, takes in work:
            for ly, k in takes:
                w = self._shapes[ly.weight]
                values = rows_per_image(ly, w, x.shape) * (
                    int(np.prod(w[1:])) * max(1, int(ly.group)) if ly.op == "Conv" else x.shape[1])
                step = max(1, CHUNK_VALUES // values)
                for a in range(0, k, step):
                    h, r = patch_moments(x[a:min(k, a + step)], ly, w)
                    if ly.key in self.h:
                        self.h[ly.key] += h
                        self.rows[ly.key] += r
                    else:
                        self.h[ly.key], self.rows[ly.key] = h, r

    def wait(self):
        """Until every moment is in :attr:`h` (the host collector adds them as it goes)."""

    def close(self):
        """Frees what the collector holds (nothing on the host)."""


class DeviceMomentCollector(MomentCollector):
    """:class:`MomentCollector` on activations that are on the GPU (:class:`~int8batch.cuda.kernels.DeviceTensor`).

    Each layer's ``H`` is summed on the device by the ``i8b_patch_gram`` kernel
    (``kernels.patch_gram``: the same patches and rows as the host, float sums
    of 1024 patches added in double) into a float64 device buffer; :meth:`wait`
    brings them back once.  Only the images the host path would read are read.
    A layer the kernel does not take (a 3-D Conv) is computed on the host from a
    copy of its images.  :meth:`close` frees the buffers.
    """

    def __init__(self, layers, weight_shapes, kernels, max_images=ROUNDING_IMAGES):
        super().__init__(layers, weight_shapes, max_images=max_images)
        self.kernels = kernels
        self._dev = {}              # layer key -> device buffer of its H (float64)
        self._gram_shapes = {}      # layer key -> (groups, d, d)

    def collect_many(self, arrays):
        host = []
        for t, need, takes in self._plan(arrays):
            x = arrays[t]
            fallback = [(ly, k) for ly, k in takes if not self._device_add(x, ly, k)]
            if fallback:
                host.append((_host(x, need), fallback))
        self._add(host)

    def _device_add(self, x, ly, images):
        """Launch ``ly``'s patch sums over the first ``images`` of ``x``; False where the kernel does not apply."""
        w = self._shapes[ly.weight]
        shape = tuple(x.shape)
        geo = _geometry(ly, w, shape)
        if geo is None:
            return False
        rows = images * rows_per_image(ly, w, shape)
        groups = 1 if ly.op == "Gemm" else max(1, int(ly.group))
        buf = self._dev.get(ly.key)
        if buf is None:
            hshape = (groups, int(geo["d"]), int(geo["d"]))
            buf = self._dev[ly.key] = self.kernels.zeros(8 * int(np.prod(hshape)))
            self._gram_shapes[ly.key] = hshape
        self.kernels.patch_gram(x[:images], geo, rows, groups, buf.ptr)
        self.rows[ly.key] = self.rows.get(ly.key, 0) + rows
        return True

    def wait(self):
        self.kernels.synchronize()
        for key, buf in self._dev.items():
            h = np.empty(self._gram_shapes[key], dtype=np.float64)
            buf.copy_to_host(h.reshape(-1).view(np.uint8), h.nbytes)
            low = np.tril(h)                        # the kernel fills the tiles on and below the diagonal
            h = low + np.swapaxes(np.tril(h, -1), 1, 2)
            self.h[key] = self.h[key] + h if key in self.h else h
            buf.close()
        self._dev.clear()

    def close(self):
        for buf in self._dev.values():
            buf.close()
        self._dev.clear()
        super().close()


def _host(x, images):
    """The first ``images`` of ``x`` as a host array (a device tensor copies only those)."""
    return x[:images].to_host() if hasattr(x, "to_host") else np.asarray(x)[:images]


def _geometry(ly, w_shape, x_shape):
    """The ``kernels.GEO`` record of a layer's patches on input ``x_shape``; None for a 3-D Conv."""
    from ..cuda.kernels import GEO
    geo = np.zeros((), dtype=GEO)
    if ly.op == "Gemm":
        if len(x_shape) != 2:
            raise CalibrationError(f"Gemm {ly.key!r}: input {ly.input!r} has shape {x_shape}, expected 2-D")
        k = int(x_shape[1])
        vals = dict(c=k, h=1, w=1, cg=k, kh=1, kw=1, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1, oh=1, ow=1, d=k)
    else:
        nd = len(x_shape) - 2
        if nd not in (1, 2):
            return None
        kernel, strides, dil, begin, _ = conv_geometry(ly, w_shape, x_shape)
        out = conv_output_size(ly, w_shape, x_shape)
        if min(out) <= 0:
            raise CalibrationError(f"Conv {ly.key!r}: kernel {kernel} is larger than the padded input")
        def two_d(v, one):      # a 1-D Conv is a 2-D one of height 1
            return (one,) + tuple(v) if nd == 1 else tuple(v)
        (h, w), (kh, kw), (sh, sw) = two_d(x_shape[2:], 1), two_d(kernel, 1), two_d(strides, 1)
        (ph, pw), (dh, dw), (oh, ow) = two_d(begin, 0), two_d(dil, 1), two_d(out, 1)
        c = int(x_shape[1])
        cg = c // max(1, int(ly.group))
        vals = dict(c=c, h=h, w=w, cg=cg, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, oh=oh, ow=ow,
                    d=cg * kh * kw)
    for f, v in vals.items():
        geo[f] = int(v)
    return geo


def gptq_round(w, h, damp=DAMP):
    """Integers for ``w`` (in units of its scale) that compensate each rounding error through ``h``.

    Parameters
    ----------
    w : ndarray, (groups, rows, d)
        Weights divided by their per-row scale; |w| <= 127 (up to float error).
    h : ndarray, (groups, d, d)
        Second moments of the inputs each group's rows see.

    Returns
    -------
    int8 array of ``w``'s shape.  Each row's largest |w| (exactly +-127) is rounded alone and never
    moved; a column no input ever reaches (zero diagonal) keeps nearest rounding.
    """
    w = np.array(w, dtype=np.float64)
    g, rows, d = w.shape
    h = np.array(h, dtype=np.float64)
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    h[:, np.arange(d), np.arange(d)] += damp * np.maximum(diag.mean(axis=1, keepdims=True), 1e-30) + dead
    try:
        hinv = np.linalg.inv(h)
        u = np.swapaxes(np.linalg.cholesky(hinv), 1, 2)          # upper: Hinv = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.rint(w), -127, 127).astype(np.int8)
    frozen = np.abs(w) >= np.abs(w).max(axis=2, keepdims=True)   # each row's max: +-127 exactly
    fixed = w.copy()
    q = np.zeros_like(w)
    for b0 in range(0, d, BLOCK):            # GPTQ's lazy batches: the block column by column,
        b1 = min(d, b0 + BLOCK)              # the rest with one product per block
        errs = np.zeros((g, rows, b1 - b0))
        for j in range(b0, b1):
            qj = np.clip(np.rint(w[:, :, j]), -127, 127)
            q[:, :, j] = qj
            err = (w[:, :, j] - qj) / u[:, j, j][:, None]
            err[dead[:, j]] = 0.0
            errs[:, :, j - b0] = err
            w[:, :, j + 1:b1] -= err[:, :, None] * u[:, None, j, j + 1:b1]
            f = frozen[:, :, j + 1:b1]
            w[:, :, j + 1:b1][f] = fixed[:, :, j + 1:b1][f]
        if b1 < d:
            w[:, :, b1:] -= np.matmul(errs, u[:, b0:b1, b1:])
            f = frozen[:, :, b1:]
            w[:, :, b1:][f] = fixed[:, :, b1:][f]
    return q.astype(np.int8)


def round_weights(moments, values, weights_axes):
    """``{weight name: int8 array}`` for the layers ``moments`` (a :class:`MomentCollector`) saw.

    ``values`` holds the weight arrays, ``weights_axes`` the per-channel axis of each weight name
    (the Q/DQ placement's); per-tensor weights keep nearest rounding.
    """
    out = {}
    for ly in moments.layers:
        if ly.key not in moments.h or ly.weight in out:
            continue
        if moments.rows[ly.key] < MIN_ROWS_PER_VALUE * moments.h[ly.key].shape[1]:
            log.debug("%s: %d patches for %d values each: nearest rounding", ly.key, moments.rows[ly.key],
                      moments.h[ly.key].shape[1])
            continue
        axis = weights_axes.get(ly.weight)
        if axis is None:
            continue
        w = np.asarray(values[ly.weight], dtype=np.float32)
        s = weight_scales(w, axis)
        rows = np.moveaxis(w, axis, 0)
        shape = rows.shape
        rows = rows.reshape(shape[0], -1) / s[:, None].astype(np.float32)
        h = moments.h[ly.key]
        groups = h.shape[0]
        q = gptq_round(rows.reshape(groups, shape[0] // groups, -1), h)
        out[ly.weight] = np.moveaxis(q.reshape(shape), 0, axis)
    log.debug("error-compensating rounding of %d weights", len(out))
    return out
