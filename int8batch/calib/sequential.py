"""Bias correction measured on the int8 model's own inputs (``bias_inputs="int8"``, method auto's default).

Bias correction (:mod:`int8batch.calib.biascorr`) gives each Conv/Gemm the
bias that cancels the mean output shift of its int8 weights, assuming the
layer reads the FP32 model's input.  In the Q/DQ model it does not: its
input comes through every layer before it, with their int8 weights,
quantized activations and clipped ranges, and its mean drifts from the FP32
one.  This pass takes the layers in graph order and, on the first
``SEQUENTIAL_IMAGES`` calibration images, gives each the bias that makes its
mean output in the Q/DQ model (int8 weights ``Wq``, the Q/DQ model's input
mean ``m_q``, every bias before it already set this way) equal to the FP32
model's (``W``, ``m_f`` on the same images)::

    b' = b - (Wq . m_q - W . m_f)

(per output channel; ``m`` are the per-tap input means of
:func:`~int8batch.calib.biascorr.patch_sums`).  With ``m_q = m_f`` it is
the classic correction.  Only the early layers are set this way
(:func:`early_layers`: input at most ``SEQUENTIAL_MAX_STRIDE`` times smaller
than the image); in the late ones, matching the mean on the calibration
images raised the KL on other photos (README), so they keep the classic
correction.  The Q/DQ model runs once in all, cut before each
corrected layer (:mod:`int8batch.onnx.segments`); the FP32 means come from
the calibration pass (:class:`~int8batch.calib.biascorr.MeanCollector` on
the same images).  Only float biases change, so TensorRT 10 gets the same
through ``model.corrected.onnx`` (the weights and scales do not move).
"""
import logging

import numpy as np

from .._optional import require
from ..errors import Int8BatchError, ModelError
from ..onnx import graph as G
from ..onnx.layers import MeanPair, quantized_layers
from ..onnx.qdq import layer_bias
from ..onnx.segments import Segment, segment_model, split
from .biascorr import patch_sums, tap_sums
from .ort_exec import guarded_run, make_session
from .settings import SEQUENTIAL_BUDGET, SEQUENTIAL_IMAGES, SEQUENTIAL_MAX_STRIDE, SEQUENTIAL_MIN_IMAGES

log = logging.getLogger(__name__)

#: images of a dynamic-batch model per ONNX Runtime call of a segment (bounds its working memory)
CHUNK = 16
_FLOAT_TYPES = (1, 10, 11, 16)   # float, float16, double, bfloat16


def correct_in_sequence(qmodel, facts, layers, fp32_means, images, *, providers=None, intra_op_threads=None,
                        label="<model>"):
    """Reset the corrected biases of ``qmodel`` (a Q/DQ ModelProto, changed in place) layer by layer.

    Parameters
    ----------
    qmodel : onnx.ModelProto
        The Q/DQ model as :func:`~int8batch.onnx.qdq.insert_qdq_with_report` wrote it from
        the FP32 model of ``facts``, its biases corrected the classic way.
    facts : ModelFacts
        Of the FP32 model (centred as calibrated) the Q/DQ model was made from.
    layers : list of Layer
        The layers of that model to set (corrected ones: ``report.biases``' keys).
    fp32_means : dict
        Layer key -> FP32 per-tap input mean on ``images`` (``MeanCollector.means``).
    images : ndarray
        The calibration images the FP32 means were taken on, ``(N, ...)``.

    Returns
    -------
    dict of layer key -> :class:`~int8batch.onnx.layers.MeanPair` (FP32 and Q/DQ input means), for
    :func:`~int8batch.onnx.snap.snap_weights` to give ``model.corrected.onnx`` the same biases; and
    layer key -> the largest shift of its bias from the FP32 model's (output units, as ``report.biases``).
    """
    numpy_helper = require("onnx.numpy_helper")
    g = qmodel.graph
    nodes = {n.output[0]: n for n in g.node if n.output}
    producer = {o: n for n in g.node for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    values = G.constant_values(facts.model)
    todo = {ly.key: ly for ly in layers if ly.key in fp32_means and ly.key in nodes
            and len(nodes[ly.key].input) > 2 and nodes[ly.key].input[2] in inits}
    segments, last_use = split(qmodel, set(todo))
    last_cut = max((k for k, seg in enumerate(segments) if seg.cut in todo), default=0)
    info = facts.input
    fixed = _fixed_batch(info)
    n = len(images)
    chunk = fixed or min(CHUNK, n)
    if not n or fixed and n % fixed:    # a dynamic batch takes a smaller last chunk
        raise ModelError(f"{label}: the pass needs a whole number of the model's batches of {fixed or 1}, got {n} "
                         f"images", label)
    per_image = _per_image(qmodel, facts)
    segments, deq = _keep_int8(segments, last_use, producer, inits, per_image, numpy_helper)
    store = {info.name: np.ascontiguousarray(images, dtype=info.dtype)}
    pairs, shifts = {}, {}
    for s, seg in enumerate(segments):
        ly = todo.get(seg.cut)
        if ly is not None:
            node = nodes[ly.key]
            w = values[ly.weight]
            x = node.input[0]
            if x in deq:     # each image dequantized and added in order: the float array's own sum
                source, scale = deq[x]
                plane = np.zeros(store[source].shape[1:], np.float64)
                for row in store[source]:
                    plane += np.multiply(row, scale, dtype=np.float32)
                sums, count = tap_sums(plane, n, ly, w.shape)
            else:
                sums, count = patch_sums(store[x], ly, w.shape)
            pair = MeanPair(fp32=fp32_means[ly.key], int8=sums / count)
            q, scale, axis = _weight_ints(producer[node.input[1]], inits, numpy_helper)
            old_bias = values[ly.bias] if ly.bias else None
            new, _, shift = layer_bias(ly, w, q, scale, axis, pair, old_bias)
            if new is not None:
                b_name = node.input[2]
                before = numpy_helper.to_array(inits[b_name])
                inits[b_name].CopyFrom(numpy_helper.from_array(new.reshape(before.shape).astype(before.dtype),
                                                               b_name))
                pairs[ly.key] = pair
                shifts[ly.key] = float(np.max(np.abs(shift), initial=0.0))
        if s >= last_cut:
            break       # every bias is set: the rest of the model need not run
        if seg.outputs:
            _run_segment(qmodel, seg, inits, store, deq, n, per_image, chunk, providers, intra_op_threads, label)
        for t in [t for t in store if last_use.get(t, -1) <= s and t != info.name]:
            del store[t]
    return pairs, shifts


def _keep_int8(segments, last_use, producer, inits, per_image, numpy_helper):
    """Keep the int8 tensor, not its dequantized copy, where a segment hands a quantized activation on.

    A tensor that crosses a cut as ``DequantizeLinear(q)`` (``q`` made by a QuantizeLinear, a constant
    per-tensor float32 scale, zero point 0) is kept as ``q``, a quarter of the bytes, and dequantized
    chunk by chunk where a later segment reads it: ``float(q) * scale`` in float32, the values ONNX Runtime's
    node gives.  The segments still start at the same nodes, so every value computed is as before.
    Returns the segments (outputs renamed) and ``{dequantized tensor: (int8 tensor, scale)}``; ``last_use``
    is extended to the int8 tensors."""
    deq = {}
    for seg in segments:
        for o in seg.outputs:
            dq = producer.get(o)
            if not per_image.get(o, True) or dq is None or dq.op_type != "DequantizeLinear" \
                    or dq.domain not in ("", "ai.onnx"):
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") \
                    or dq.input[1] not in inits:
                continue
            zero = dq.input[2] if len(dq.input) > 2 else ""
            if zero and zero not in inits:
                continue
            scale = numpy_helper.to_array(inits[dq.input[1]])
            z = numpy_helper.to_array(inits[zero]) if zero else np.zeros((), np.int8)
            if scale.size != 1 or scale.dtype != np.float32 or z.dtype != np.int8 or np.any(z != 0):
                continue
            deq[o] = (dq.input[0], np.float32(scale.reshape(())))
    out = []
    for seg in segments:
        made = {t for n in seg.nodes for t in n.output}
        outputs = []
        for o in seg.outputs:
            t = deq[o][0] if o in deq else o
            if o in deq:
                last_use[t] = max(last_use.get(t, -1), last_use.get(o, -1))
            if (t == o or t in made) and t not in outputs:
                outputs.append(t)
        out.append(Segment(nodes=seg.nodes, cut=seg.cut, inputs=seg.inputs, outputs=outputs))
    return out, deq


def _weight_ints(dq, inits, numpy_helper):
    """``(int8 values, scales, axis)`` of the weight a DequantizeLinear node reads."""
    q = numpy_helper.to_array(inits[dq.input[0]])
    s = numpy_helper.to_array(inits[dq.input[1]])
    axis = G.node_attr(dq, "axis", 1) if s.ndim else None
    return q, s, axis


def _per_image(qmodel, facts):
    """Tensor of ``qmodel`` -> True when its first axis runs over the images (sliced and joined by chunk).

    From the FP32 model's inferred shapes (``facts``): a first dimension that is the input's; where the
    shape is unknown, a float tensor (an activation) is taken as per image and any other (shapes,
    indices) as shared.  A Q/DQ pair's outputs are as the tensor it quantizes."""
    batch = facts.input.shape[0] if facts.input.shape else None
    out = {}
    for t, ty in facts.types.items():
        shape = facts.shapes.get(t)
        if shape and batch is not None and shape[0] == batch:
            out[t] = True
        elif shape and isinstance(shape[0], int) and shape[0] != batch:
            out[t] = False
        else:
            out[t] = ty in _FLOAT_TYPES
    for node in qmodel.graph.node:      # in order: a DequantizeLinear follows its QuantizeLinear
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _run_segment(model, seg, inits, store, deq, n, per_image, chunk, providers, threads, label):
    onnx = require("onnx")

    def value(x, a):
        if x in deq:
            source, scale = deq[x]
            return np.multiply(store[source][a:a + chunk], scale, dtype=np.float32)
        return store[x][a:a + chunk] if per_image.get(x, True) else store[x]
    types = {x: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np.float32) if x in deq else store[x].dtype)
             for x in seg.inputs}
    session = make_session(segment_model(model, seg, types, inits), providers, threads, label)
    joined = [o for o in seg.outputs if per_image.get(o, True)]
    for a in range(0, n, chunk):
        feed = {x: value(x, a) for x in seg.inputs}
        shape = next((v.shape for v in feed.values()), ())
        if a == 0 or not joined:
            outs = guarded_run(label, shape, session.run, list(seg.outputs), feed)
            for o, y in zip(seg.outputs, outs):
                if not per_image.get(o, True) or len(y) == n:
                    store[o] = y
                else:            # the whole pass's array; later chunks are written into it in place
                    store[o] = np.empty((n,) + y.shape[1:], y.dtype)
                    store[o][:len(y)] = y
            continue
        binding = session.io_binding()
        for x, v in feed.items():
            binding.bind_cpu_input(x, v)
        for o in seg.outputs:
            if o in joined:
                part = store[o][a:a + chunk]
                binding.bind_output(o, "cpu", 0, part.dtype, list(part.shape), part.ctypes.data)
            else:
                binding.bind_output(o, "cpu")
        guarded_run(label, shape, session.run_with_iobinding, binding)


def pass_images(facts, window_images):
    """How many first calibration images the pass runs on: ``SEQUENTIAL_IMAGES`` (at most the window's), fewer
    where the tensors it keeps would exceed ``SEQUENTIAL_BUDGET`` (:func:`kept_bytes_per_image`; at least
    ``SEQUENTIAL_MIN_IMAGES``), for a fixed-batch model a whole number of its batches (the FP32 means are
    collected on the same images)."""
    n = min(SEQUENTIAL_IMAGES, int(window_images))
    per = kept_bytes_per_image(facts)
    if per and n * per > SEQUENTIAL_BUDGET:
        n = min(n, max(SEQUENTIAL_MIN_IMAGES, SEQUENTIAL_BUDGET // per))
    b = _fixed_batch(facts.input)
    return max(b, (n // b) * b) if b and b <= window_images else n


def _fixed_batch(info):
    """The batch a model input (InputInfo) is fixed at, or None for a dynamic one."""
    shape = info.shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def kept_bytes_per_image(facts):
    """Most bytes per image the pass holds at once (as float32: tensors crossing the cuts before the early
    layers of the FP32 model of ``facts``, and its input); 0 when a size is unknown or no layer is early."""
    layers = early_layers(quantized_layers(facts), facts)
    if not layers:
        return 0
    cuts = {ly.key for ly in layers}
    segments, last_use = split(facts.model, cuts)
    last_cut = max((k for k, seg in enumerate(segments) if seg.cut in cuts), default=0)

    def size(t):
        shape = facts.shapes.get(t)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return None
        return int(np.prod(shape[1:], dtype=np.int64)) * 4
    first = facts.input.name
    live = {first: size(first)}
    peak = 0
    for s, seg in enumerate(segments[:last_cut]):
        live.update((o, size(o)) for o in seg.outputs)
        if any(v is None for v in live.values()):
            return 0
        peak = max(peak, sum(live.values()))
        for t in [t for t in live if last_use.get(t, -1) <= s and t != first]:
            del live[t]
    return peak


def early_layers(layers, facts, max_stride=SEQUENTIAL_MAX_STRIDE):
    """The Conv layers of ``layers`` whose input is at most ``max_stride`` times smaller than the network's
    input on every spatial axis (the inferred shapes of ``facts``; a layer of unknown input size is left out)."""
    shapes, info = facts.shapes, facts.input
    top = info.shape[2:] if info.shape and len(info.shape) > 2 else ()
    if not top or not all(isinstance(d, int) and d > 0 for d in top):
        return []
    out = []
    for ly in layers:
        shape = shapes.get(ly.input)
        if ly.op != "Conv" or not shape or len(shape) != len(info.shape):
            continue
        dims = shape[2:]
        if all(isinstance(d, int) and d > 0 and d * max_stride >= t for d, t in zip(dims, top)):
            out.append(ly)
    return out


def apply(qmodel, report, facts, input_means, first_means, images, *, providers=None, intra_op_threads=None,
          label="<model>"):
    """Run :func:`correct_in_sequence` on a freshly written Q/DQ model; the means for ``snap_weights``.

    ``report``: the model's QdqReport (its ``biases`` get the new shifts); ``facts``: the FP32
    model's; ``input_means``: the classic (FP32) means, returned for every layer the pass does not
    reach; ``first_means``: FP32 means on ``images`` (the first calibration images).  When the model
    cannot be cut and run in segments the classic biases stay, with a warning."""
    layers = early_layers([ly for ly in quantized_layers(facts) if ly.key in report.biases], facts)
    if not layers:
        return input_means
    inits = {t.name: t for t in qmodel.graph.initializer}
    saved = {}
    for n in qmodel.graph.node:
        if n.output and n.output[0] in report.biases and len(n.input) > 2 and n.input[2] in inits:
            copy = type(inits[n.input[2]])()
            copy.CopyFrom(inits[n.input[2]])
            saved[n.input[2]] = copy
    try:
        pairs, shifts = correct_in_sequence(qmodel, facts, layers, first_means, images, providers=providers,
                                            intra_op_threads=intra_op_threads, label=label)
    except (Int8BatchError, MemoryError) as exc:
        for name, t in saved.items():
            inits[name].CopyFrom(t)
        log.warning("%s: bias correction on the Q/DQ model's own inputs could not run (%s); the biases are "
                    "corrected from the FP32 model's inputs instead", label, exc)
        return input_means
    report.biases.update(shifts)
    log.info("bias correction: %d layer(s) set from the Q/DQ model's own input means on %d image(s)", len(pairs),
             len(images))
    return {k: pairs.get(k, v) for k, v in input_means.items()}
