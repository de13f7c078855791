"""Conv / Gemm layers whose bias can absorb the mean shift of their int8 weights.

The ONNX side of bias correction (the statistics side is
:mod:`int8batch.calib.biascorr`): which nodes qualify (:func:`layers_of`),
their geometry (:func:`conv_geometry`), the mean output change a weight change
causes given the per-tap input means (:func:`bias_shift`) and the corrected
bias (:func:`corrected_bias`).  Pure functions of the graph and NumPy arrays.
"""
import math
from dataclasses import dataclass

import numpy as np

from .._optional import require
from ..errors import CalibrationError
from . import graph as G
from .placement import plan_qdq


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


@dataclass(frozen=True)
class MeanPair:
    """A layer's per-tap input means in the FP32 model and in the Q/DQ model, on the same images
    (:mod:`int8batch.calib.sequential`); where a plain mean array would be, bias correction then makes
    the Q/DQ layer's mean output the FP32 one's (:func:`int8batch.onnx.qdq.layer_bias`)."""

    fp32: np.ndarray
    int8: np.ndarray


def layers_of(model, weights=None, act=None):
    """The Conv / Gemm nodes of ``model`` that bias correction handles.

    Parameters
    ----------
    model : onnx.ModelProto
    weights : list of (node index, input index, axis), optional
        The weights that get quantized (:func:`int8batch.onnx.placement.plan_qdq`);
        default: computed.
    act : set of str, optional
        The quantizable tensors (default: computed).

    Returns
    -------
    list of Layer
    """
    nodes = list(model.graph.node)
    if weights is None:
        weights = plan_qdq(model, act=act).weights
    act = set(G.quantizable_tensors(model)) if act is None else act
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


def conv_geometry(layer, w_shape, x_shape):
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


def conv_output_size(layer, w_shape, x_shape):
    """Output positions per spatial axis of a Conv on input ``x_shape`` (padding included; <= 0: no window fits)."""
    kernel, strides, dil, begin, end = conv_geometry(layer, w_shape, x_shape)
    return [(p + b + e - (k - 1) * d - 1) // s + 1
            for p, k, s, d, b, e in zip(x_shape[2:], kernel, strides, dil, begin, end)]


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


#: the nodes whose multiply-adds :func:`reader_macs` counts
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantized_layers(facts):
    """:func:`layers_of` the model of ``facts`` (a :class:`~int8batch.onnx.facts.ModelFacts`): every Conv/Gemm
    whose weight its Q/DQ plan quantizes (bias correction, weight rounding, the sequential pass)."""
    return layers_of(facts.model, facts.plan().weights, act=set(facts.quantizable))


def reader_macs(model, image_shape):
    """Multiply-adds per image of each tensor's readers, and of the whole network.

    Counts the Conv, ConvTranspose, Gemm and MatMul nodes (every other node is
    taken as free), from shapes inferred with the input fixed to one image of
    ``image_shape`` (C, H, W): a Conv or MatMul costs its output size times the
    length of its dot products, a ConvTranspose its input positions times its
    weight size.  The cost of leaving a tensor in float in TensorRT is about
    its readers' share: they run in FP16 or FP32 instead of INT8.

    Returns
    -------
    (dict of str -> int, int) or None
        ``{tensor: multiply-adds of the counted nodes reading it}`` and the
        network's total; None when a counted node's shapes cannot be inferred.
    """
    onnx = require("onnx")
    m = onnx.ModelProto()
    m.CopyFrom(G.load_model(model))
    name = G.input_info(m)[0].name
    dims = next(i for i in m.graph.input if i.name == name).type.tensor_type.shape.dim
    if len(dims) != 1 + len(image_shape):
        return None
    for d, v in zip(dims, (1,) + tuple(image_shape)):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    try:
        _, shapes = G.tensor_types_and_shapes(m)
    except Exception:  # noqa: BLE001 - a model shape inference cannot follow has no count, not a failure
        return None

    def known(t):
        s = shapes.get(t)
        return s if s is not None and all(isinstance(d, int) and d > 0 for d in s) else None

    total, readers = 0, {}
    for n in m.graph.node:
        if n.op_type not in MAC_OPS:
            continue
        y, a, b = known(n.output[0]), known(n.input[0]), known(n.input[1]) if len(n.input) > 1 else None
        if y is None or a is None or b is None:
            return None
        if n.op_type == "Conv":          # output positions x channels x (in channels / group x kernel)
            macs = math.prod(y) * math.prod(b[1:])
        elif n.op_type == "ConvTranspose":
            macs = math.prod(a[2:]) * math.prod(b)
        elif n.op_type == "Gemm":        # (M, N) outputs, each a dot product of K
            macs = math.prod(y) * (a[0] if G.node_attr(n, "transA", 0) else a[-1])
        else:                            # MatMul: each output a dot product along A's last axis
            macs = math.prod(y) * a[-1]
        total += macs
        for t in dict.fromkeys(i for i in n.input[:2] if i):
            readers[t] = readers.get(t, 0) + macs
    return readers, total
