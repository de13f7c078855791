"""The FP32 model with its weights on the int8 grid and bias-corrected, for TensorRT 10's implicit INT8.

TensorRT 10 builds implicit INT8 from an FP32 model plus a calibration
cache, and quantizes each weight itself: per output channel, symmetric,
``scale = max|W| / 127``.  Bias correction (:mod:`int8batch.calib.biascorr`)
lives in the float bias, so to give TensorRT 10 the same benefit the Q/DQ
model has, this writes an FP32 model whose weights are already
``s * round(W / s)`` (the values their int8 copies stand for; each channel's
largest weight stays ``127 s``, so TensorRT finds the same scale and the same
int8 values) and whose Conv/Gemm biases are the corrected ones.

It is the weights-only Q/DQ model of :func:`~int8batch.onnx.qdq.insert_qdq`
(no activation quantized) with every weight ``DequantizeLinear`` folded back
into a float initializer, so both artefacts share one quantization rule.
Tensor names are kept, so the calibration cache applies as is.
"""
import logging

from .._optional import require
from . import graph as G
from .qdq import _copy, _drop_unused_constants, dequantize_weight, insert_qdq_with_report

log = logging.getLogger(__name__)


def snap_weights(model, input_means=None, per_channel_weights=True, facts=None, weight_ints=None):
    """Return ``(model, QdqReport)``: a copy with int8-grid weights and corrected biases.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        The FP32 model; it is not modified (opsets below 13 are raised to 13,
        as for the Q/DQ model).
    input_means : dict, optional
        Per-layer input means (:meth:`~int8batch.calib.biascorr.MeanCollector.means`);
        without them the weights are snapped and the biases kept.
    per_channel_weights : bool
        As in :func:`~int8batch.onnx.qdq.insert_qdq`.
    facts : ModelFacts, optional
        The model's analysis, reused (:func:`~int8batch.onnx.qdq.insert_qdq_with_report`).
    weight_ints : dict, optional
        Integer weights chosen by another rounding (as for ``insert_qdq_with_report``).

    The report lists the snapped weights (``weights``) and corrected layers (``biases``).
    """
    numpy_helper = require("onnx.numpy_helper")
    m, report = insert_qdq_with_report(model, {}, per_channel_weights=per_channel_weights, on_missing="skip",
                                       input_means=input_means, check=False, log_summary=False, facts=facts,
                                       weight_ints=weight_ints)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes, folded = [], []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:   # a weight: back to float
            q, s = (numpy_helper.to_array(inits[x]) for x in n.input[:2])
            axis = G.node_attr(n, "axis", 1) if s.ndim else None
            folded.append(numpy_helper.from_array(dequantize_weight(q, s, axis).astype(s.dtype), n.output[0]))
        else:
            nodes.append(_copy(n))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(folded)
    _drop_unused_constants(m)
    log.debug("corrected FP32 model (no Q/DQ; TensorRT 10 takes the activation scales from the cache): %d weights "
              "on the int8 grid, %d biases corrected", len(report.weights), len(report.biases))
    return m, report
