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
from ..errors import CalibrationError, ModelError
from ..onnx.graph import FLOAT_TYPES, input_info, tensor_types, topological_nodes
from ..onnx.qdq import MIN_QDQ_OPSET, _convert_opset, _opset

log = logging.getLogger(__name__)


def switch_model(model, amax, tensors, types=None):
    """A copy of ``model`` where each of ``tensors`` is fake-quantized when its switch input is 1.

    A model below opset 13 is converted first (QuantizeLinear needs opset
    10, the Q/DQ model is written at 13 or more: the pass measures the graph
    that will be quantized).  A float16 or bfloat16 tensor is cast to float32
    around its Q/DQ pair (QuantizeLinear takes float16 only from opset 19;
    the cast is exact, only the scale is kept in float32).

    ``types``: :func:`tensor_types` of ``model`` when already known (it runs
    shape inference; used only when no opset conversion was needed).

    Returns the model and the switch input names, in the order of ``tensors``.

    Raises
    ------
    ModelError
        The model cannot be converted to opset 13, or a tensor is not a
        float tensor.
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    if _opset(model) < MIN_QDQ_OPSET:
        m = _convert_opset(model, None)  # a converted copy
        types = None
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    types = tensor_types(m) if types is None else types
    wrong = [t for t in tensors if types.get(t) not in FLOAT_TYPES]
    if wrong:
        raise ModelError(f"the sensitivity pass quantizes float tensors only; not float: {', '.join(wrong[:5])}")
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
        ty = types[t]
        if ty == TensorProto.FLOAT:
            on = [helper.make_node("QuantizeLinear", [t, sc, zp], [q]),
                  helper.make_node("DequantizeLinear", [q, sc, zp], [dq])]
        else:  # float16 / bfloat16: Q/DQ in float32, the branch still yields the tensor's own type
            wide, back = f"__sens_{k}_f32", f"__sens_{k}_dq32"
            on = [helper.make_node("Cast", [t], [wide], to=TensorProto.FLOAT),
                  helper.make_node("QuantizeLinear", [wide, sc, zp], [q]),
                  helper.make_node("DequantizeLinear", [q, sc, zp], [back]),
                  helper.make_node("Cast", [back], [dq], to=ty)]
        quantized = helper.make_graph(on, f"__sens_{k}_on", [], [helper.make_tensor_value_info(dq, ty, None)])
        untouched = helper.make_graph(
            [helper.make_node("Identity", [t], [same])],
            f"__sens_{k}_off", [], [helper.make_tensor_value_info(same, ty, None)])
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


#: candidates measured one by one up to this many; above it, a beam search over groups
EXHAUSTIVE_MAX = 48
#: the group search: each group splits into BRANCH parts, the BEAM worst groups go on
BRANCH, BEAM = 4, 6


def rank_sensitivity(model, amax, batch, tensors, providers=None, intra_op_threads=None, progress=None,
                     exhaustive_max=EXHAUSTIVE_MAX, beam=BEAM, types=None, count=None, min_energy=0.0):
    """Relative output error when only one tensor is quantized, for the most sensitive of ``tensors``.

    Up to ``exhaustive_max`` candidates, each is measured alone (one
    inference of ``batch`` per candidate).  Beyond that the cost would grow
    with depth x inference, so the candidates (in topological order) are
    searched as groups: all of a group quantized at once costs one inference,
    and the quantization errors of different tensors add up in the output to
    first order, so a group holding a sensitive tensor scores at least about
    as high as that tensor.  Each level splits the ``beam`` worst groups into
    ``BRANCH`` parts and measures those; the singletons of the last level are
    individual errors.  About ``BRANCH * beam * log_BRANCH(n)`` inferences
    instead of ``n`` (DenseNet-121: 372 candidates, about 100 runs); only the
    tensors reached are returned, so ``beam`` bounds how many can be kept.

    Parameters
    ----------
    model : onnx.ModelProto
        The float model (float32, or float16 whose input is fed ``batch``
        cast to float16; any opset ONNX can convert to 13).
    amax : mapping of str to float
        Calibrated amax per tensor.
    batch : ndarray
        Calibration images, (N, C, H, W) float32: all are measured on, or with ``count`` the
        :func:`informative_images` among them (their FP32 output energy, from the same session, against
        ``min_energy``).
    tensors : sequence of str
        Candidates (the activations the Q/DQ placement quantizes).
    progress : callable(done, total), optional
        Called after each candidate is measured.
    types : dict, optional
        :func:`~int8batch.onnx.graph.tensor_types` of ``model``, when known.

    Returns
    -------
    list of (str, float)
        Most sensitive first (every candidate when searched exhaustively, the
        individually measured ones otherwise).

    Raises
    ------
    CalibrationError
        When the pass cannot run on this model; the message names the way
        out (``keep_float=0``).
    """
    ort = require("onnxruntime")
    tensors = [t for t in tensors if t in amax and np.isfinite(amax[t])]
    if not tensors:
        return []
    try:
        m, switches = switch_model(model, amax, tensors, types=types)
    except ModelError as exc:
        raise _cannot_run(exc) from exc
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    info = input_info(m)[0]
    if info.dtype is not None and batch.dtype != info.dtype:
        batch = batch.astype(info.dtype)  # e.g. a float16 input: the batch files hold float32
    off, on = np.array(0, np.float32), np.array(1, np.float32)
    feed = {info.name: batch, **{sw: off for sw in switches}}
    scores = []
    try:
        s = ort.InferenceSession(m.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
        out = s.get_outputs()[0].name
        if count is not None and len(batch) > count:   # every switch off: the FP32 output, 2 x count images a run
            energy = []
            for i in range(0, len(batch), 2 * count):
                part = batch[i:i + 2 * count]
                y = s.run([out], dict(feed, **{info.name: part}))[0].astype(np.float64)
                energy.append(np.square(y.reshape(len(part), -1)).sum(axis=1))
            feed[info.name] = batch = batch[informative_images(np.concatenate(energy), count, min_energy)]
        ref = s.run([out], feed)[0].astype(np.float64)
        denom = max(float(np.sum(ref * ref)), 1e-30)

        def error(group):   # output error with every tensor of ``group`` (indices) quantized
            for k in group:
                feed[switches[k]] = on
            y = s.run([out], feed)[0].astype(np.float64)
            for k in group:
                feed[switches[k]] = off
            return float(np.sum((y - ref) ** 2)) / denom

        if len(tensors) <= exhaustive_max:
            for done, k in enumerate(range(len(tensors)), 1):
                scores.append((tensors[k], error([k])))
                if progress:
                    progress(done, len(tensors))
        else:
            scores = [(tensors[k], e) for k, e in _group_search(len(tensors), error, beam, progress)]
    except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/RuntimeException types
        raise _cannot_run(exc) from exc
    scores.sort(key=lambda kv: -kv[1])
    log.info("most sensitive activations: %s", ", ".join(f"{t} ({e:.2e})" for t, e in scores[:5]))
    return scores


def _group_search(n, error, beam, progress=None):
    """Beam search over contiguous groups of ``range(n)``: ``[(index, individual error)]``."""
    frontier = [list(range(n))]
    done, est = 0, 0
    leaves = []
    while frontier:
        children = []
        for g in frontier:
            step = -(-len(g) // BRANCH)
            children += [g[i:i + step] for i in range(0, len(g), step)]
        est = max(est, done + len(children) * 2)
        scored = []
        for c in children:
            scored.append((error(c), c))
            done += 1
            if progress:
                progress(done, est)
        scored.sort(key=lambda ec: -ec[0])
        leaves += [(c[0], e) for e, c in scored if len(c) == 1]
        frontier = [c for e, c in scored if len(c) > 1][:beam]
        leaves = sorted(leaves, key=lambda ke: -ke[1])
    if progress:
        progress(done, done)
    return leaves


def _cannot_run(exc):
    return CalibrationError(
        f"the sensitivity pass (keep_float, which finds the activations to leave in float) cannot run on this "
        f"model: {str(exc).strip()[:500]}; calibrate with keep_float=0 (--keep-float 0) to skip it, and "
        "please report the model", None)


def choose_kept(ranked, threshold, max_kept, share=None, budget=None):
    """The activations ``keep_float="auto"`` leaves in float, from :func:`rank_sensitivity`'s ranking.

    Most sensitive first, every tensor whose error alone exceeds ``threshold``,
    at most ``max_kept`` of them; with ``share`` (``{tensor: fraction of the
    network's multiply-adds its readers do}``, a tensor not in it costing
    nothing) only while the kept tensors' readers do at most ``budget`` of
    them: a tensor that would exceed the budget is passed over for the next.

    Returns
    -------
    (list of str, float)
        The kept tensors in ranking order, and their readers' share (0.0
        without ``share``).
    """
    kept, used = [], 0.0
    for t, err in ranked:
        if err <= threshold or len(kept) >= max_kept:
            break
        cost = 0.0 if share is None else float(share.get(t, 0.0))
        if share is not None and used + cost > budget:
            continue
        kept.append(t)
        used += cost
    return kept, used


def informative_images(energies, count, min_fraction):
    """Which images the sensitivity pass measures on: indices, in order.

    The first ``count`` whose output energy is at least ``min_fraction`` of
    the mean energy; when fewer qualify, the most energetic of the others fill
    up.  A classifier's logits carry similar energy on every image (the first
    ``count`` are taken); a detector's map is empty on most photos, where the
    output cannot show what quantizing a tensor does.
    """
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    count = min(int(count), e.size)
    if not e.size or not np.isfinite(e).all() or e.mean() <= 0:
        return list(range(count))
    chosen = [int(i) for i in np.flatnonzero(e >= min_fraction * e.mean())[:count]]
    rest = [int(i) for i in np.argsort(-e, kind="stable") if int(i) not in chosen]
    return sorted(chosen + rest[:count - len(chosen)])
