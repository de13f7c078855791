"""The FP32 model with its weights on the int8 grid and bias-corrected, for TensorRT 10's implicit INT8.

TensorRT 10 builds implicit INT8 from an FP32 model plus a calibration
cache, and quantizes each weight itself: per output channel, symmetric,
``scale = max|W| / 127``.  Bias correction (:mod:`int8batch.calib.biascorr`)
lives in the float bias, so to give TensorRT 10 the same benefit the Q/DQ
model has, this writes an FP32 model whose weights are already
``s * round(W / s)`` (the values their int8 copies stand for; each channel's
largest weight stays ``127 s``, so TensorRT finds the same scale and the same
int8 values) and whose Conv/Gemm biases are the corrected ones.  Graph,
tensor names and opset are untouched, so the calibration cache applies as is.
"""
import logging

import numpy as np

from .._optional import require
from . import graph as G
from .placement import plan_qdq
from .qdq import QdqReport, _correct_bias, _drop_unused_constants, _Names, dequantize_weight, quantize_weight

log = logging.getLogger(__name__)


def snap_weights(model, input_means=None, per_channel_weights=True):
    """Return ``(model, QdqReport)``: a copy with int8-grid weights and corrected biases.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        The FP32 model; it is not modified.
    input_means : dict, optional
        Per-layer input means (:meth:`~int8batch.calib.biascorr.MeanCollector.means`);
        without them the weights are snapped and the biases kept.
    per_channel_weights : bool
        As in :func:`~int8batch.onnx.qdq.insert_qdq`.

    The report lists the snapped weights (``weights``) and corrected layers (``biases``).
    """
    onnx = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
    src = G.load_model(model)
    m = onnx.ModelProto()
    m.CopyFrom(src)
    nodes = list(m.graph.node)
    _, weights, _, _ = plan_qdq(m)
    layers = {}
    if input_means:
        from ..calib.biascorr import layers_of
        layers = {ly.key: ly for ly in layers_of(m, weights) if ly.key in input_means}
    values = G.constant_values(m)
    names, new_inits, report = _Names(m), [], QdqReport()
    done = {}
    for i, k, axis in weights:
        w_name = nodes[i].input[k]
        axis = axis if per_channel_weights else None
        w = values[w_name]
        if (w_name, axis) not in done:
            q, s = quantize_weight(w, axis)
            snapped = names(f"{w_name}_int8grid")
            new_inits.append(numpy_helper.from_array(dequantize_weight(q, s, axis).astype(w.dtype), snapped))
            done[(w_name, axis)] = (snapped, q, s)
            report.weights[w_name] = axis
        snapped, q, s = done[(w_name, axis)]
        nodes[i].input[k] = snapped
        layer = layers.get(nodes[i].output[0]) if k == 1 else None
        if layer is not None:
            _correct_bias(nodes[i], layer, w, q, s, axis, input_means[layer.key], values, names, new_inits, report)
    m.graph.initializer.extend(new_inits)
    _drop_unused_constants(m)
    log.info("snapped %d weights to the int8 grid, corrected %d biases", len(report.weights), len(report.biases))
    return m, report
