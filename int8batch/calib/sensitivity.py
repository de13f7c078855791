"""Which quantized activations hurt the output most: a one-at-a-time sensitivity pass.

Symmetric per-tensor INT8 is too coarse for a few tensors of some networks
(EfficientNet-Lite0's stem ReLU6 output feeding a depthwise convolution: its
values need the whole 0..6 range, yet most are small, and clipping it is far
worse).  TensorRT runs a layer whose input carries no Q/DQ pair in higher
precision, so leaving the few most sensitive tensors unquantized costs little
speed and is still deployable.

The pass measures, for each candidate activation alone, the relative squared
error of the model's first output against FP32, ``||y_q - y||^2 / ||y||^2``,
on a few calibration images.  It builds ONE model in which every candidate
``t`` is replaced by ``If(s_t != 0) then DQ(Q(t)) else t`` with a scalar graph
input ``s_t``; feeding a one-hot switch vector quantizes exactly one tensor, so
the whole pass is one session and one small run per candidate, each costing
about one FP32 inference (only the taken branch of an ``If`` runs).
"""
import logging

import numpy as np

from .._optional import require

log = logging.getLogger(__name__)


def switch_model(model, amax, tensors):
    """A copy of ``model`` where each of ``tensors`` is fake-quantized when its switch input is 1.

    Returns the model and the switch input names, in the order of ``tensors``.
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from ..onnx.graph import topological_nodes
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    zp = "__sens_zp"
    g.initializer.append(numpy_helper.from_array(np.array(0, np.int8), zp))
    switches, new_nodes, renamed = [], [], {}
    for k, t in enumerate(tensors):
        sw, sc = f"__sens_switch_{k}", f"__sens_scale_{k}"
        switches.append(sw)
        g.input.append(helper.make_tensor_value_info(sw, TensorProto.FLOAT, []))
        scale = max(float(np.float32(amax[t] / 127.0)), 1e-8)
        g.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), sc))
        cond, q, dq, same, out = (f"__sens_{k}_{s}" for s in ("cond", "q", "dq", "same", "out"))
        # If(switch): only the chosen branch runs, so a run costs one FP32 inference plus one Q/DQ
        quantized = helper.make_graph(
            [helper.make_node("QuantizeLinear", [t, sc, zp], [q]),
             helper.make_node("DequantizeLinear", [q, sc, zp], [dq])],
            f"__sens_{k}_on", [], [helper.make_tensor_value_info(dq, TensorProto.FLOAT, None)])
        untouched = helper.make_graph(
            [helper.make_node("Identity", [t], [same])],
            f"__sens_{k}_off", [], [helper.make_tensor_value_info(same, TensorProto.FLOAT, None)])
        new_nodes += [helper.make_node("Cast", [sw], [cond], to=TensorProto.BOOL),
                      helper.make_node("If", [cond], [out], then_branch=quantized, else_branch=untouched)]
        renamed[t] = out
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in renamed:
                n.input[i] = renamed[x]
    g.node.extend(new_nodes)  # network outputs keep their float value: only consumers are rewired
    ordered = topological_nodes(g)
    del g.node[:]
    g.node.extend(ordered)
    return m, switches


def rank_sensitivity(model, amax, batch, tensors, providers=None, intra_op_threads=None):
    """Relative output error when only one tensor is quantized, for each of ``tensors``.

    Parameters
    ----------
    model : onnx.ModelProto
        The FP32 model.
    amax : mapping of str to float
        Calibrated amax per tensor.
    batch : ndarray
        A few calibration images, (N, C, H, W) float32.
    tensors : sequence of str
        Candidates (the activations the Q/DQ placement quantizes).

    Returns
    -------
    list of (str, float)
        Most sensitive first.
    """
    ort = require("onnxruntime")
    tensors = [t for t in tensors if t in amax]
    if not tensors:
        return []
    m, switches = switch_model(model, amax, tensors)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    s = ort.InferenceSession(m.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
    name = model.graph.input[0].name
    out = s.get_outputs()[0].name
    off, on = np.array(0, np.float32), np.array(1, np.float32)
    feed = {name: batch, **{sw: off for sw in switches}}
    ref = s.run([out], feed)[0].astype(np.float64)
    denom = max(float(np.sum(ref * ref)), 1e-30)
    scores = []
    for t, sw in zip(tensors, switches):
        feed[sw] = on
        y = s.run([out], feed)[0].astype(np.float64)
        feed[sw] = off
        scores.append((t, float(np.sum((y - ref) ** 2)) / denom))
    scores.sort(key=lambda kv: -kv[1])
    log.info("most sensitive activations: %s", ", ".join(f"{t} ({e:.2e})" for t, e in scores[:5]))
    return scores
