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
from ..onnx.layers import conv_geometry
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
#: input values unfolded at once (bounds the memory of the patch matrices)
CHUNK_VALUES = 1 << 24
#: a layer stops adding patches once it has this many per patch value (early layers have thousands
#: of positions per image: a few images estimate their small H well)
ROWS_PER_VALUE = 128
MIN_ROWS = 1 << 12


def _patches(x, layer, w_shape):
    """The layer's input patches as float32 ``(groups, d, rows)``: column ``k`` of group ``g`` is one patch,
    its values in the weight's (channel, kernel) order (one copy of the data; one per kernel tap)."""
    x = np.asarray(x, dtype=np.float32)
    if layer.op == "Gemm":
        if x.ndim != 2:
            raise CalibrationError(f"Gemm {layer.key!r}: input {layer.input!r} has shape {x.shape}, expected 2-D")
        return np.ascontiguousarray(x.T)[None]
    kernel, strides, dil, begin, end = conv_geometry(layer, w_shape, x.shape)
    n, c = x.shape[:2]
    g = max(1, int(layer.group))
    if any(begin) or any(end):
        x = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
    out = [(p - (k - 1) * d - 1) // s + 1 for p, k, s, d in zip(x.shape[2:], kernel, strides, dil)]
    if min(out) <= 0:
        raise CalibrationError(f"Conv {layer.key!r}: kernel {kernel} is larger than the padded input")
    taps = list(itertools.product(*(range(k) for k in kernel)))
    p = np.empty((c, len(taps), n) + tuple(out), np.float32)
    for t, tap in enumerate(taps):
        window = (slice(None), slice(None)) + tuple(slice(a * d, a * d + (o - 1) * s + 1, s)
                                                    for a, d, o, s in zip(tap, dil, out, strides))
        p[:, t] = np.moveaxis(x[window], 1, 0)
    return p.reshape(g, (c // g) * len(taps), -1)


def patch_moments(x, layer, w_shape):
    """``H = sum of patch patch^T`` over the patches of ``x``: float64 ``(groups, d, d)``, and the row count."""
    a = _patches(x, layer, w_shape)
    return np.matmul(a, np.swapaxes(a, 1, 2)).astype(np.float64), a.shape[2]


class MomentCollector:
    """Streaming second moments of every layer's input patches (a calibration collector).

    Takes the same ``{tensor: array}`` dicts as the histogram collector (of
    device tensors only the images used are copied to the host: at most the
    first ``max_images``, fewer where a layer's row cap is met earlier).  Layers with a patch of more than ``MAX_PATCH`` values are skipped.
    """

    def __init__(self, layers, weight_shapes, max_images=ROUNDING_IMAGES):
        self.max_images = max_images
        self.layers = []
        self._cap = {}
        self._per_image = {}
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

    def collect_many(self, arrays):
        for t, x in arrays.items():
            users = [ly for ly in self._by_input.get(t, ()) if self.rows.get(ly.key, 0) < self._cap[ly.key]]
            if not users or self._images.get(t, 0) >= self.max_images:
                continue
            avail = min(len(x), self.max_images - self._images.get(t, 0))
            host = _HostPrefix(x)
            shape = tuple(x.shape)
            per_image = max(1, int(np.prod(shape[1:])) * (9 if len(shape) > 2 else 1))
            step = max(1, CHUNK_VALUES // per_image)
            for ly in users:
                a = 0
                while a < avail and self.rows.get(ly.key, 0) < self._cap[ly.key]:
                    # the first image measures the patches per image; then only as many images as the cap needs
                    per = self._per_image.get(ly.key)
                    n = 1 if per is None else min(step, -(-(self._cap[ly.key] - self.rows[ly.key]) // per))
                    n = min(n, avail - a)
                    h, r = patch_moments(host.images(a, n), ly, self._shapes[ly.weight])
                    if ly.key in self.h:
                        self.h[ly.key] += h
                        self.rows[ly.key] += r
                    else:
                        self.h[ly.key], self.rows[ly.key] = h, r
                        self._per_image[ly.key] = max(1, r // n)
                    a += n
            self._images[t] = self._images.get(t, 0) + avail


class _HostPrefix:
    """Images of one tensor on the host: an array as it is, a device tensor copied only as far as read."""

    def __init__(self, x):
        self.x = x
        self.dev = hasattr(x, "to_host")
        self.host = None if self.dev else np.asarray(x)

    def images(self, a, n):
        if self.dev and (self.host is None or len(self.host) < a + n):
            have = 0 if self.host is None else len(self.host)
            more = self.x[have:a + n].to_host()
            self.host = more if self.host is None else np.concatenate([self.host, more])
        return self.host[a:a + n]


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
