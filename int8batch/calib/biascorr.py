"""Bias correction: cancel the mean output shift that int8 weights cause.

Rounding a layer's weights ``W`` to the int8 grid (``Wq = s * round(W / s)``)
changes its output by ``conv(x, Wq - W)``.  Each rounding error is small, but
it is the same for every image, so with inputs that are mostly positive (the
outputs of ReLU / ReLU6) it adds up to a **systematic shift** of each output
channel, worst in layers with few weights per output: a 3x3 depthwise
convolution sums 9 products.  Its mean over the calibration data is, for
output channel ``o`` of a convolution,

    E[dy_o] = sum over (c, k) of (Wq - W)[o, c, k] * E[x[c] at kernel offset k]

where ``E[x[c] at offset k]`` is the mean, over the images and every output
position, of the (zero-padded) input value that kernel tap ``k`` reads.  The
Q/DQ model subtracts ``E[dy]`` from the layer's float bias, so that on the
calibration data the quantized layer's mean output is the float one's
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019, the empirical variant).  The bias stays float in the Q/DQ
model, where TensorRT adds it in high precision; nothing else changes.

This module collects the per-tap input means in the calibration pass
(:class:`MeanCollector`, a few additions per input value) and computes the
corrected biases (:func:`int8batch.onnx.layers.bias_shift`, with the layer
geometry in :mod:`int8batch.onnx.layers`).  Handled: ``Conv`` (any group count,
stride, dilation, padding, auto_pad, 1-3 spatial dimensions) and ``Gemm`` with a
constant ``B``; ``MatMul`` and ``ConvTranspose`` are left as they are.
"""
import itertools

import numpy as np

from .._kernels_calib import sum_rows
from ..cuda.buffers import DeviceBuffer
from ..errors import CalibrationError
from ..onnx.layers import conv_geometry, conv_output_size
from .collector import default_num_threads


def patch_sums(x, layer, w_shape):
    """Sum of the input value each kernel tap reads, over images and output positions.

    Parameters
    ----------
    x : ndarray
        The layer's input: ``(N, C, *spatial)`` for a Conv, ``(N, K)`` for a Gemm.
    layer : Layer
    w_shape : tuple
        Shape of the layer's weight.

    Returns
    -------
    sums : ndarray of float64
        ``(C, *kernel)`` for a Conv, ``(K,)`` for a Gemm.
    count : int
        Number of (image, output position) terms in each sum.
    """
    x = np.asarray(x)
    return tap_sums(x.sum(axis=0, dtype=np.float64), x.shape[0], layer, w_shape)


def tap_sums(plane, images, layer, w_shape):
    """:func:`patch_sums` from ``plane``, the input summed over ``images`` images.

    Every tap's sum is a strided window of the image-summed input, so the
    calibration pass only has to add up its inputs (one plane per tensor) and
    the taps are read once at the end.
    """
    plane = np.asarray(plane, np.float64)
    if layer.op == "Gemm":
        if plane.ndim != 1:
            raise CalibrationError(f"Gemm {layer.key!r}: input {layer.input!r} has shape "
                                   f"{('N',) + plane.shape}, expected 2-D")
        return plane, images
    kernel, strides, dil, begin, end = conv_geometry(layer, w_shape, (images,) + plane.shape)
    out = conv_output_size(layer, w_shape, (images,) + plane.shape)
    plane = np.pad(plane, [(0, 0)] + list(zip(begin, end)))
    if min(out) <= 0:
        raise CalibrationError(f"Conv {layer.key!r}: kernel {kernel} is larger than the padded input "
                               f"{tuple(plane.shape[1:])}")
    sums = np.empty((plane.shape[0],) + tuple(kernel), np.float64)
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = (slice(None),) + tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                                        for t, d, o, s in zip(tap, dil, out, strides))
        sums[(slice(None),) + tap] = plane[window].sum(axis=tuple(range(1, plane.ndim)))
    return sums, images * int(np.prod(out))


def _pointwise(layer):
    """True for a Gemm, or a 1x1 Conv with stride 1 and no padding: every tap reads the channel mean."""
    if layer.op == "Gemm":
        return True
    flat = all(k == 1 for k in layer.kernel) and all(v == 1 for v in layer.strides)
    return flat and layer.kernel != () and (layer.auto_pad != "NOTSET" or not any(layer.pads))


class MeanCollector:
    """Streaming per-tap input means of every :class:`Layer` (a calibration collector).

    Feed it the same ``{tensor: array}`` dicts as the histogram collector.  An
    input read only by pointwise layers (Gemm, 1x1 stride-1 Conv) keeps one sum
    per channel; any other keeps the sum over images, one float64 array of
    one image's size (the ``sum_rows`` kernel), whose strided windows give the
    tap sums in :meth:`means`.  With ``max_images`` it stops adding once a
    tensor has seen that many images (exactly: the first ``max_images``; means settle long before
    histograms do).
    """

    def __init__(self, layers, weight_shapes, num_threads=None, max_images=None):
        self.num_threads = default_num_threads() if num_threads is None else int(num_threads)
        self.max_images = max_images
        self.layers = list(layers)
        self._shapes = dict(weight_shapes)
        inputs = dict.fromkeys(ly.input for ly in self.layers)
        self._per_channel = {t: all(_pointwise(ly) for ly in self.layers if ly.input == t) for t in inputs}
        self._sums = {}
        self._shape = {}
        self._images = {}

    def collect_many(self, arrays):
        for t, x in arrays.items():
            if t not in self._per_channel or (self.max_images is not None
                                              and self._images.get(t, 0) >= self.max_images):
                continue
            if t not in self._shape:
                self._shape[t], self._images[t] = tuple(x.shape[1:]), 0
                self._start(t)
            if self._shape[t] != tuple(x.shape[1:]):
                raise CalibrationError(f"tensor {t!r} changed shape between batches "
                                       f"({('N',) + tuple(self._shape[t])} then {tuple(x.shape)}); bias "
                                       "correction needs fixed input sizes")
            if self.max_images is not None and self._images[t] + x.shape[0] > self.max_images:
                x = x[:self.max_images - self._images[t]]     # exactly the first max_images images
            self._add(t, x)
            self._images[t] += x.shape[0]

    def _start(self, t):
        shape = self._shape[t]
        self._sums[t] = np.zeros(shape[0] if self._per_channel[t] else shape)

    def _add(self, t, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._per_channel[t]:
            self._sums[t] += x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2).sum(axis=0, dtype=np.float64)
        else:
            sum_rows(x.reshape(x.shape[0], -1), self._sums[t].reshape(-1), self.num_threads)

    def close(self):
        """Nothing to free on the host (:class:`DeviceMeanCollector` frees its device buffers)."""

    def means(self):
        """``{layer key: mean array}`` (:func:`patch_sums` / count) for every layer that saw data."""
        out = {}
        for ly in self.layers:
            t = ly.input
            if not self._images.get(t):
                continue
            if self._per_channel[t]:
                positions = int(np.prod(self._shape[t][1:]))
                sums, count = self._sums[t], self._images[t] * positions
                if ly.op == "Conv":
                    sums = sums.reshape((-1,) + (1,) * (len(self._shape[t]) - 1))
            else:
                sums, count = tap_sums(self._sums[t], self._images[t], ly, self._shapes[ly.weight])
            out[ly.key] = sums / count
        return out


class DeviceMeanCollector(MeanCollector):
    """:class:`MeanCollector` on activations that are on the GPU (:class:`~int8batch.cuda.kernels.DeviceTensor`).

    Every input plane is summed over the images on the device (the
    ``i8b_sum_rows`` kernel: the CPU ``sum_rows`` arithmetic, in double) into a
    float64 device buffer of one image's size; :meth:`means` brings the planes
    back once and reduces the per-channel ones on the host.  :meth:`close`
    frees the buffers.
    """

    def __init__(self, layers, weight_shapes, kernels, max_images=None):
        super().__init__(layers, weight_shapes, num_threads=1, max_images=max_images)
        self.kernels = kernels
        self._dev = {}

    def _start(self, t):
        cols = int(np.prod(self._shape[t], dtype=np.int64))
        self._dev[t] = DeviceBuffer(8 * cols)
        self._dev[t].copy_from_host(np.zeros(cols))

    def _add(self, t, x):
        rows = int(x.shape[0])
        self.kernels.sum_rows(x, self._dev[t].ptr, rows, x.size // max(rows, 1))

    def means(self):
        self.kernels.synchronize()
        for t, buf in self._dev.items():
            plane = np.empty(self._shape[t], dtype=np.float64)
            buf.copy_to_host(plane.reshape(-1).view(np.uint8))
            self._sums[t] = (plane.reshape(plane.shape[0], -1).sum(axis=1) if self._per_channel[t] else plane)
        return super().means()

    def close(self):
        for buf in self._dev.values():
            buf.close()
        self._dev.clear()
