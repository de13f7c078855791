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
corrected biases (:func:`bias_shift`).  Handled: ``Conv`` (any group count,
stride, dilation, padding, auto_pad, 1-3 spatial dimensions) and ``Gemm`` with a
constant ``B``; ``MatMul`` and ``ConvTranspose`` are left as they are.
"""
import itertools
import math
from dataclasses import dataclass

import numpy as np

from .._kernels_calib import sum_rows
from ..errors import CalibrationError
from ..onnx import graph as G


@dataclass(frozen=True)
class Layer:
    """A layer whose bias can absorb the weight rounding shift.

    ``key`` is the node's first output name (unique in a graph); ``kernel``,
    ``strides``, ``dilations``, ``pads`` (begin..., end...) and ``auto_pad``
    describe a Conv; ``trans_b`` / ``alpha`` / ``beta`` a Gemm (``transA`` Gemms
    are not handled).
    """

    key: str
    op: str
    input: str
    weight: str
    bias: str
    group: int = 1
    kernel: tuple = ()
    strides: tuple = ()
    dilations: tuple = ()
    pads: tuple = ()
    auto_pad: str = "NOTSET"
    trans_b: int = 0
    alpha: float = 1.0
    beta: float = 1.0


def layers_of(model, weights=None):
    """The Conv / Gemm nodes of ``model`` that bias correction handles.

    Parameters
    ----------
    model : onnx.ModelProto
    weights : list of (node index, input index, axis), optional
        The weights that get quantized (:func:`int8batch.onnx.placement.plan_qdq`);
        default: computed.

    Returns
    -------
    list of Layer
    """
    from ..onnx.placement import plan_qdq
    nodes = list(model.graph.node)
    if weights is None:
        weights = plan_qdq(model)[1]
    act = set(G.quantizable_tensors(model))
    layers = []
    for i, k, _ in weights:
        n = nodes[i]
        if k != 1 or n.input[0] not in act:
            continue
        bias = n.input[2] if len(n.input) > 2 else ""
        if n.op_type == "Conv":
            ap = G.node_attr(n, "auto_pad", b"NOTSET")
            ap = ap.decode() if isinstance(ap, bytes) else str(ap)
            layers.append(Layer(
                key=n.output[0], op="Conv", input=n.input[0], weight=n.input[1], bias=bias,
                group=int(G.node_attr(n, "group", 1)),
                kernel=tuple(int(v) for v in G.node_attr(n, "kernel_shape", ()) or ()),
                strides=tuple(int(v) for v in G.node_attr(n, "strides", ()) or ()),
                dilations=tuple(int(v) for v in G.node_attr(n, "dilations", ()) or ()),
                pads=tuple(int(v) for v in G.node_attr(n, "pads", ()) or ()), auto_pad=ap))
        elif n.op_type == "Gemm" and not G.node_attr(n, "transA", 0):
            beta = float(G.node_attr(n, "beta", 1.0))
            if beta == 0.0:
                continue
            layers.append(Layer(key=n.output[0], op="Gemm", input=n.input[0], weight=n.input[1],
                                bias=bias, trans_b=int(G.node_attr(n, "transB", 0)),
                                alpha=float(G.node_attr(n, "alpha", 1.0)), beta=beta))
    return layers


def _conv_geometry(layer, w_shape, x_shape):
    """(kernel, strides, dilations, pads_begin, pads_end) of a Conv on input ``x_shape``."""
    nd = len(x_shape) - 2
    kernel = layer.kernel or tuple(w_shape[2:])
    strides = layer.strides or (1,) * nd
    dil = layer.dilations or (1,) * nd
    if len(kernel) != nd:
        raise CalibrationError(f"Conv {layer.key!r}: kernel {kernel} does not fit an input of shape {x_shape}")
    if layer.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dil):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if layer.auto_pad == "SAME_UPPER" else big)
            end.append(big if layer.auto_pad == "SAME_UPPER" else small)
        return kernel, strides, dil, tuple(begin), tuple(end)
    pads = layer.pads if layer.auto_pad == "NOTSET" and layer.pads else (0,) * (2 * nd)
    return kernel, strides, dil, tuple(pads[:nd]), tuple(pads[nd:])


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
    kernel, strides, dil, begin, end = _conv_geometry(layer, w_shape, (images,) + plane.shape)
    plane = np.pad(plane, [(0, 0)] + list(zip(begin, end)))
    out = [(p - (k - 1) * d - 1) // s + 1 for p, k, s, d in zip(plane.shape[1:], kernel, strides, dil)]
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
    tensor has seen that many images (means settle long before histograms do).
    """

    def __init__(self, layers, weight_shapes, num_threads=None, max_images=None):
        from .collector import default_num_threads
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
            x = np.ascontiguousarray(x, dtype=np.float32)
            if t not in self._sums:
                self._shape[t], self._images[t] = x.shape[1:], 0
                self._sums[t] = np.zeros(x.shape[1] if self._per_channel[t] else x.shape[1:])
            if self._shape[t] != x.shape[1:]:
                raise CalibrationError(f"tensor {t!r} changed shape between batches "
                                       f"({('N',) + tuple(self._shape[t])} then {x.shape}); bias correction "
                                       "needs fixed input sizes")
            if self._per_channel[t]:
                self._sums[t] += x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2).sum(axis=0, dtype=np.float64)
            else:
                sum_rows(x.reshape(x.shape[0], -1), self._sums[t].reshape(-1), self.num_threads)
            self._images[t] += x.shape[0]

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


def bias_shift(layer, dw, mean):
    """Mean output change per output channel caused by the weight change ``dw``.

    Parameters
    ----------
    layer : Layer
    dw : ndarray
        ``Wq - W`` in the weight's own layout.
    mean : ndarray
        The layer's entry of :meth:`MeanCollector.means`.

    Returns
    -------
    ndarray of float64, one value per output channel, in the units of the
    node's output (for a Gemm already divided by ``beta``: subtract it from C).
    """
    dw = np.asarray(dw, np.float64)
    if layer.op == "Gemm":
        d = dw.T if layer.trans_b else dw          # (K, O)
        return layer.alpha * (mean @ d) / layer.beta
    o, cg = dw.shape[0], dw.shape[1]
    g = layer.group
    if mean.shape[0] != cg * g or o % g:
        raise CalibrationError(f"Conv {layer.key!r}: weight {dw.shape} and group {g} do not fit an input "
                               f"of {mean.shape[0]} channels")
    mg = mean.reshape(g, cg * int(np.prod(mean.shape[1:])))
    return np.einsum("gok,gk->go", dw.reshape(g, o // g, -1), mg).reshape(o)


def corrected_bias(layer, bias, shift):
    """The layer's new bias (``bias - shift``), or None with a reason it cannot be corrected.

    Parameters
    ----------
    layer : Layer
    bias : ndarray or None
        The current constant bias (Conv ``B`` / Gemm ``C``), None when absent.
    shift : ndarray
        :func:`bias_shift`, one value per output channel.

    Returns
    -------
    (ndarray or None, str)
    """
    o = shift.shape[0]
    dtype = bias.dtype if bias is not None and bias.dtype.kind == "f" else np.float32
    if bias is None:
        return (-shift).astype(dtype), ""
    b = np.asarray(bias)
    if layer.op == "Gemm":
        if b.size not in (1, o) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
            return None, f"C of shape {b.shape} is not one value per output channel"
        shape = (1, o) if b.ndim == 2 else (o,)
        return (np.broadcast_to(b.reshape(-1), (o,)) - shift).astype(dtype).reshape(shape), ""
    if b.shape != (o,):
        return None, f"bias of shape {b.shape} does not match {o} output channels"
    return (b - shift).astype(dtype), ""
