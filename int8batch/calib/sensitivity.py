"""Which quantized activations hurt the output most: a one-at-a-time sensitivity pass.

Symmetric per-tensor INT8 is too coarse for a few tensors of some networks
(EfficientNet-Lite0's stem ReLU6 output feeding a depthwise convolution: its
values need the whole 0..6 range, yet most are small, and clipping it is far
worse).  TensorRT runs a layer whose input carries no Q/DQ pair in higher
precision, so leaving the few most sensitive tensors unquantized costs little
speed and is still deployable.

The pass quantizes one activation at a time (Q -> DQ with its calibrated
scale, weights left float) on one calibration batch and measures the relative
squared error of the model's first output against FP32:
``||y_q - y||^2 / ||y||^2``.  Cost: one session and one batch per tensor.
"""
import logging

import numpy as np

from .._optional import require

log = logging.getLogger(__name__)


def _with_one_qdq(model, tensor, amax):
    onnx = require("onnx")
    from onnx import helper, numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    scale = max(float(np.float32(amax / 127.0)), 1e-8)
    sname, zname, qname, dname = (f"{tensor}__sens_{k}" for k in ("scale", "zp", "q", "dq"))
    g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), sname),
                          numpy_helper.from_array(np.array(0, np.int8), zname)])
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == tensor:
                n.input[i] = dname
    g.node.extend([helper.make_node("QuantizeLinear", [tensor, sname, zname], [qname]),
                   helper.make_node("DequantizeLinear", [qname, sname, zname], [dname])])
    # keep topological order: move the two new nodes right after the producer
    nodes = list(g.node)
    new = nodes[-2:]
    rest = nodes[:-2]
    pos = next((k + 1 for k, n in enumerate(rest) if tensor in n.output), 0)
    del g.node[:]
    g.node.extend(rest[:pos] + new + rest[pos:])
    return m


def rank_sensitivity(model, amax, batch, tensors, providers=None, intra_op_threads=None):
    """Relative output error when only one tensor is quantized, for each of ``tensors``.

    Parameters
    ----------
    model : onnx.ModelProto
        The FP32 model (at an opset >= 13).
    amax : mapping of str to float
        Calibrated amax per tensor.
    batch : ndarray
        One calibration batch, (N, C, H, W) float32.
    tensors : sequence of str
        Candidates (the activations the Q/DQ placement quantizes).

    Returns
    -------
    list of (str, float)
        Most sensitive first.
    """
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    providers = providers or ["CPUExecutionProvider"]

    def run(m):
        s = ort.InferenceSession(m.SerializeToString(), so, providers=providers)
        return s.run(None, {s.get_inputs()[0].name: batch})[0].astype(np.float64)

    ref = run(model)
    denom = max(float(np.sum(ref * ref)), 1e-30)
    scores = []
    for t in tensors:
        if t not in amax:
            continue
        y = run(_with_one_qdq(model, t, amax[t]))
        scores.append((t, float(np.sum((y - ref) ** 2)) / denom))
    scores.sort(key=lambda kv: -kv[1])
    log.info("most sensitive activations: %s", ", ".join(f"{t} ({e:.2e})" for t, e in scores[:5]))
    return scores
