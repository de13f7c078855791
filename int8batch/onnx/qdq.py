"""Explicit quantization: insert QuantizeLinear/DequantizeLinear pairs for TensorRT.

The result is the model TensorRT 11 (and 10, strongly typed) builds in INT8:
opset >= 13, symmetric int8 everywhere (explicit int8 zero points of 0),
per-tensor activation scales ``float32(amax / 127)`` and per-channel weight
scales ``max|W| / 127`` over the output-channel axis, placed by the rules of
:mod:`int8batch.onnx.placement` (inputs of weighted ops, the skip input of
residual Adds, pooling and Concat handled consistently).

Weights are stored as **int8 initializers followed by DequantizeLinear**
(``weight_format="int8"``: a quarter of the size, and exactly what TensorRT
folds a Q->DQ on a float weight into), or kept FP32 behind Q->DQ
(``weight_format="float"``).

(Over 400 lines on purpose: activation pairs, weight pairs with their rounding,
and the bias correction that needs both are one rewrite of one graph, reported in
one :class:`QdqReport`.)
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .._atomic import make_temp
from .._optional import require
from ..errors import ModelError
from ..trt import vocab
from . import graph as G
from .centre import SUFFIX as CENTRED
from .layers import MeanPair, bias_shift, corrected_bias, layers_of
from .placement import plan_qdq

log = logging.getLogger(__name__)

MIN_QDQ_OPSET = 13
#: scale used when a tensor's amax (or a weight channel's max|W|) is 0
MIN_SCALE = 1e-8
_NP_FOR_ONNX = {1: np.float32, 10: np.float16}


@dataclass
class QdqReport:
    """What :func:`insert_qdq` quantized and what it left alone.

    Attributes
    ----------
    activations : dict of str -> float
        Quantized activation tensors (topological order) -> scale used.
    reasons : dict of str -> list of str
        Why each activation tensor was quantized (which consumers asked).
    weights : dict of str -> int or None
        Quantized weight initializers -> per-channel axis (None: per-tensor).
    skipped : list of (str, str)
        Tensors deliberately left in float, with the reason.
    missing : list of str
        Tensors that needed an amax the caller did not supply.
    extra : list of str
        Supplied names that are not tensors of the model (filled by the
        conversion helpers), e.g. TensorRT parser-internal names such as
        ``ONNXTRT_Broadcast_1855_output``.
    other_form : list of str
        Supplied names that belong to the other form of a model ``calibrate``
        centred (:mod:`int8batch.onnx.centre`): ``<name>_centred`` entries
        given with the original model, or the original names given with
        ``model.corrected.onnx``; expected in its cache, so not in ``extra``.
    unusable : dict of str -> str
        Cache entries whose scale no Q/DQ pair can use (infinite or NaN: a
        tensor TensorRT could not calibrate) -> why; the tensors among them
        that the placement wanted stay float (also listed in ``skipped``).
    zero_scale : list of str
        Entries with scale (or amax) 0, quantized with :data:`MIN_SCALE` instead.
    groups : list of list of str
        Tensors forced to share one scale (Concat).
    biases : dict of str -> float
        Layers (first output name) whose bias was corrected for the weight
        rounding -> largest absolute change of the bias.
    opset : int
        The ai.onnx opset of the result.
    """

    activations: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    other_form: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    biases: dict = field(default_factory=dict)
    opset: int = 0
    unusable: dict = field(default_factory=dict)
    zero_scale: list = field(default_factory=list)

    def summary(self):
        """One line for logs and the command line."""
        fused = sum("fused by TensorRT" in why for _, why in self.skipped)
        text = (f"{len(self.activations)} activations and {len(self.weights)} weights quantized, "
                + (f"{fused} residual branches left to TensorRT's Conv+Add fusion, " if fused else "")
                + f"{len(self.skipped) - fused} tensors kept float, {len(self.missing)} missing, "
                f"{len(self.biases)} biases corrected, "
                f"{len(self.extra)} unknown names, opset {self.opset}")
        if self.unusable:
            text += f", {len(self.unusable)} unusable scales"
        if self.zero_scale:
            text += f", {len(self.zero_scale)} zero scales"
        return text

    def details(self, limit=20):
        """Lines naming the tensors behind the counts of :meth:`summary` that need a look.

        Unusable (inf/NaN) cache scales, zero scales, names the model lacks,
        tensors left without a scale; at most ``limit`` names per line.
        """
        def names(seq):
            seq = list(seq)
            return ", ".join(seq[:limit]) + (f" ... ({len(seq) - limit} more)" if len(seq) > limit else "")

        lines = []
        if self.unusable:
            by_reason = {}
            for name, why in self.unusable.items():
                by_reason.setdefault(why.split(" (")[0], []).append(name)
            for why, group in by_reason.items():
                lines.append(f"entries whose {why} (left float): {names(group)}")
        if self.zero_scale:
            lines.append(f"entries with scale 0 (quantized with scale {MIN_SCALE:g} where the model "
                         f"has the tensor): {names(self.zero_scale)}")
        if self.extra:
            lines.append(f"unknown names (no tensor of the model, ignored): {names(self.extra)}")
        if self.missing:
            lines.append(f"no scale given, kept float: {names(self.missing)}")
        return lines


_opset = G.opset


# ---------------------------------------------------------------- insertion
def _finite_f32(x):
    """True when ``float32(x)`` is finite (False for NaN, inf and |x| beyond float32)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.float32(x)))


def _scale_of(amax, name="?"):
    amax = float(amax)
    if not np.isfinite(amax) or amax < 0:
        raise ModelError(f"tensor {name!r}: amax must be finite and >= 0, got {amax}")
    if not _finite_f32(vocab.scale_of(amax)):
        raise ModelError(f"tensor {name!r}: amax {amax:g} gives a scale amax/127 that overflows "
                         "float32; it must be below about 4.3e40")
    return max(amax / 127.0, MIN_SCALE)


def weight_scales(w, axis):
    """Symmetric int8 scales of weight ``w``: ``max|W| / 127`` per channel.

    Parameters
    ----------
    w : ndarray
    axis : int or None
        Output-channel axis; None gives one per-tensor scale.

    Returns
    -------
    ndarray of float32, shape ``(w.shape[axis],)`` or ``()``
    """
    a = np.abs(np.asarray(w, dtype=np.float64))
    if axis is None:
        amax = np.asarray(a.max() if a.size else 0.0)
    else:
        amax = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1)
    return np.maximum(amax / 127.0, MIN_SCALE).astype(np.float32)


class _Names:
    def __init__(self, model):
        g = model.graph
        self.used = {x for n in g.node for x in list(n.input) + list(n.output) + [n.name]}
        self.used |= {t.name for t in g.initializer} | {v.name for v in g.input}
        self.used |= {v.name for v in g.output} | {v.name for v in g.value_info}

    def __call__(self, base):
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _refuse_half_precision(types, tensors):
    """Q/DQ pairs here are float32 (QuantizeLinear-13); a float16/bfloat16 tensor needs another writer."""
    onnx = require("onnx")
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    bad = [t for t in tensors if types.get(t) in half]
    if bad:
        raise ModelError(f"{len(bad)} tensor(s) to quantize are float16/bfloat16 (e.g. {', '.join(bad[:3])}); "
                         "the Q/DQ model is written for float32 activations. Export the model in float32 "
                         "(TensorRT chooses FP16 kernels from an FP32 ONNX model itself), or pass --no-qdq to "
                         "write only the cache and dynamic ranges")


def _convert_opset(model, opset):
    onnx = require("onnx")
    current = _opset(model)
    target = max(MIN_QDQ_OPSET, current, opset or 0)
    if opset is not None and opset < current:
        raise ModelError(f"the model uses opset {current}; cannot lower it to the requested {opset}")
    if opset is not None and opset < MIN_QDQ_OPSET:
        raise ModelError(f"per-channel Q/DQ needs opset >= {MIN_QDQ_OPSET}, got opset={opset}")
    if target == current:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as exc:
        raise ModelError(f"could not convert the model from opset {current} to {target} ({exc}); "
                         f"export it again at opset >= {MIN_QDQ_OPSET}") from exc


def _concat_groups(m, groups, scale, kept_scales):
    """The Concat scale groups as quantized: ``[[(tensor, its scale), ...], ...]``.

    A Concat ties its inputs to its output only when that output is quantized (in ``scale``): the int8
    Concat then needs one scale, which must cover every input, a float one (``kept_scales``: activations
    left float) included.  A Concat whose output stays float (kept, or no scale given) ties nothing, so its
    quantized inputs keep their own scales.  Chained Concats merge, as in the plan's ``groups`` (whose
    members are the only tensors looked at)."""
    members = {t for grp in groups for t in grp}
    links = [(x, n.output[0]) for n in m.graph.node
             if n.op_type == "Concat" and n.output and n.output[0] in scale and n.output[0] in members
             for x in n.input if x in members and (x in scale or x in kept_scales)]
    return [[(t, scale[t] if t in scale else kept_scales[t]) for t in grp] for grp in G.connected_groups(links)]


def insert_qdq_with_report(model, act_amax=None, *, act_scales=None, per_channel_weights=True,
                           opset=None, weight_format="int8", pools="auto", on_missing="raise",
                           check=True, input_means=None, keep_float=None, log_summary=True, facts=None,
                           weight_ints=None, kept_amax=None):
    """Like :func:`insert_qdq`, returning ``(model, QdqReport)``.

    ``facts`` (:class:`int8batch.onnx.facts.ModelFacts` of ``model``) saves
    analysing the model again when it is the very model they describe and no
    opset conversion is needed.

    ``log_summary=False`` leaves the report's summary out of the (debug) log,
    for callers that build something else from the result
    (:func:`int8batch.onnx.snap.snap_weights`).

    ``keep_float`` (mapping of tensor name -> reason) names tensors that must
    stay float whatever the scales say (e.g. a TensorRT cache entry with an
    infinite scale); they are listed in ``report.skipped`` with the reason,
    never in ``report.missing``.

    ``weight_ints`` (mapping of weight name -> int8 array of the weight's shape,
    :func:`int8batch.calib.rounding.round_weights`) replaces the nearest
    rounding of those per-channel weights; the scales stay ``max|W| / 127``.

    ``kept_amax`` (tensor -> amax of activations left float, not in ``act_amax``): a Concat scale group
    such a tensor belongs to still covers it (the Concat's quantized output holds its values), so the
    group's shared scale is the largest of every member's, these included.
    """
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, require("onnx.numpy_helper")
    if (act_amax is None) == (act_scales is None):
        raise ModelError("give exactly one of act_amax (amax per tensor) and act_scales")
    if weight_format not in ("int8", "float"):
        raise ModelError(f"weight_format must be 'int8' or 'float', got {weight_format!r}")
    if on_missing not in ("raise", "skip"):
        raise ModelError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    keep_float = {k: str(v) for k, v in (keep_float or {}).items()}
    scales_in = ({k: float(v) for k, v in act_scales.items()} if act_scales is not None
                 else {k: _scale_of(v, k) for k, v in act_amax.items()})
    for k, v in scales_in.items():
        if not (v > 0 and _finite_f32(v)):
            raise ModelError(f"tensor {k!r}: scale must be finite (in float32) and > 0, got {v}")
    scales_in = {k: v for k, v in scales_in.items() if k not in keep_float}
    src = G.load_model(model)
    m = _convert_opset(src, opset)
    g = m.graph
    if facts is not None and facts.describes(src) and _opset(m) == _opset(src):
        # the same graph (a copy): the analyses of the source hold, node positions included
        types, order = facts.types, facts.quantizable
        requests, weights, groups, skipped = facts.plan(pools)
        requests, skipped = {k: list(v) for k, v in requests.items()}, list(skipped)
    else:
        types = G.tensor_types(m)
        order = G.quantizable_tensors(m, types=types)
        requests, weights, groups, skipped = plan_qdq(m, pools=pools, act=set(order))
    _refuse_half_precision(types, requests)
    report = QdqReport(skipped=skipped, opset=_opset(m))
    layers = {}
    if input_means:  # before any rewiring: layers are found by their float input
        layers = {ly.key: ly for ly in layers_of(m, weights, act=set(order)) if ly.key in input_means}
    rank = {t: k for k, t in enumerate(order)}
    wanted = sorted(requests, key=lambda t: rank.get(t, len(rank)))
    report.missing = [t for t in wanted if t not in scales_in and t not in keep_float]
    if report.missing and on_missing == "raise":
        centred = [t for t in report.missing if CENTRED in t]
        n = len(report.missing)
        raise ModelError(
            f"{n} tensor{'s need' if n != 1 else ' needs'} an amax that was not given: "
            + ", ".join(report.missing[:10]) + (" ..." if n > 10 else "")
            + (f"; {len(centred)} of them {'are activations' if len(centred) != 1 else 'is an activation'} "
               "int8batch calibrate centred in this model: use the calibration.cache written with it (a cache "
               "calibrated without centring does not have them)"
               if centred else
               "; calibrate them, or leave them in float with int8batch qdq --allow-missing "
               "(Python: on_missing='skip')")
            + "; a cache written by int8batch calibrate --cache-keep-float leaves out the tensors its Q/DQ model "
              "keeps float: keep its calibration.json beside it (then they are expected), or use --allow-missing, "
              "which leaves them float as intended")
    scale = {t: scales_in[t] for t in wanted if t in scales_in}
    for grp in _concat_groups(m, groups, scale, {k: _scale_of(v, k) for k, v in (kept_amax or {}).items()}):
        s = max(v for _, v in grp)
        for t, _ in grp:
            if t in scale:
                scale[t] = s
        report.groups.append(sorted(t for t, _ in grp))
    names = _Names(m)
    nodes = list(g.node)
    topo = G.topological_order(g)
    new_inits, after = [], {}  # after: tensor -> nodes to insert right after its producer
    head = []                  # nodes that go first (graph inputs, weights)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}

    for t in wanted:
        if t not in scale:
            report.skipped.append((t, keep_float.get(t, "no amax given")))
            continue
        np_t = _NP_FOR_ONNX.get(types.get(t))
        if np_t is None:
            report.skipped.append((t, "element type is not float32/float16"))
            continue
        s_name, z_name = names(f"{t}_scale"), names(f"{t}_zero_point")
        q_out, dq_out = names(f"{t}_quantized"), names(f"{t}_dequantized")
        new_inits += [numpy_helper.from_array(np.asarray(scale[t], dtype=np_t), s_name),
                      numpy_helper.from_array(np.zeros((), np.int8), z_name)]
        pair = [helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out],
                                 name=names(f"{t}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                 name=names(f"{t}_DequantizeLinear"))]
        (after.setdefault(t, []) if t in producer else head).extend(pair)
        for i, k, _ in requests[t]:
            nodes[i].input[k] = dq_out
        report.activations[t] = float(np.asarray(scale[t], dtype=np_t))
        report.reasons[t] = [why for _, _, why in requests[t]]

    values = G.constant_values(m)
    done = {}
    for i, k, axis in weights:
        w_name = nodes[i].input[k]
        if not per_channel_weights:
            axis = None
        key = (w_name, axis)
        w = values[w_name]
        if key not in done:
            s_name, z_name = names(f"{w_name}_scale"), names(f"{w_name}_zero_point")
            dq_out = names(f"{w_name}_dequantized")
            q, s = quantize_weight(w, axis)
            if weight_ints and w_name in weight_ints and axis is not None:
                q = np.asarray(weight_ints[w_name], dtype=np.int8).reshape(q.shape)
            new_inits += [numpy_helper.from_array(s, s_name),
                          numpy_helper.from_array(np.zeros(s.shape, np.int8), z_name)]
            ax = {} if axis is None else {"axis": axis}
            if weight_format == "int8":
                src = names(f"{w_name}_quantized")
                new_inits.append(numpy_helper.from_array(q, src))
            else:
                src = names(f"{w_name}_quantized")
                head.append(helper.make_node("QuantizeLinear", [w_name, s_name, z_name], [src],
                                             name=names(f"{w_name}_QuantizeLinear"), **ax))
            head.append(helper.make_node("DequantizeLinear", [src, s_name, z_name], [dq_out],
                                         name=names(f"{w_name}_DequantizeLinear"), **ax))
            done[key] = (dq_out, q, s)
            report.weights[w_name] = axis
        nodes[i].input[k] = done[key][0]
        layer = layers.get(nodes[i].output[0]) if k == 1 else None
        if layer is not None:
            _correct_bias(nodes[i], layer, w, done[key][1], done[key][2], axis, input_means[layer.key],
                          values, names, new_inits, report)

    ordered = list(head)
    for i in topo:
        ordered.append(nodes[i])
        for o in nodes[i].output:
            ordered.extend(after.get(o, ()))
    ordered = [_copy(n) for n in ordered]
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    _drop_unused_constants(m)
    if check:
        _check(m, model)
    if log_summary:  # calibrate prints its own line per artefact; snap_weights logs what it made
        log.debug("Q/DQ: %s", report.summary())
    return m, report


def quantize_weight(w, axis):
    """Symmetric int8 quantization of a weight, as its DequantizeLinear will undo it.

    Returns
    -------
    q : ndarray of int8
        ``clip(round(w / s), -127, 127)``, the shape of ``w``.
    s : ndarray
        :func:`weight_scales` in the weight's float type (float16 or float32).
    """
    w = np.asarray(w)
    np_w = np.float16 if w.dtype == np.float16 else np.float32
    s = weight_scales(w, axis).astype(np_w)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w.astype(np.float32) / s.astype(np.float32).reshape(shape)),
                -127, 127).astype(np.int8)
    return q, s


def dequantize_weight(q, s, axis):
    """What DequantizeLinear computes from ``q`` and ``s`` (float32)."""
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = -1
    return q.astype(np.float32) * np.asarray(s, np.float32).reshape(shape)


def layer_bias(layer, w, q, s, axis, mean, bias):
    """``(new bias or None, why not, shift)`` of a layer whose weights ``w`` become ``q * s``.

    ``mean``: the layer's per-tap input mean (:meth:`~int8batch.calib.biascorr.MeanCollector.means`),
    for the classic correction ``shift = (Wq - W) . m``; or a :class:`~int8batch.onnx.layers.MeanPair`
    of the FP32 and the Q/DQ model's input means on the same images (:mod:`int8batch.calib.sequential`):
    ``shift = Wq . m_q - W . m_f``.  ``bias``: the layer's float bias (None: none)."""
    wq = dequantize_weight(q, s, axis).astype(np.float64)
    w = np.asarray(w, np.float64)
    if isinstance(mean, MeanPair):
        shift = bias_shift(layer, wq, mean.int8) - bias_shift(layer, w, mean.fp32)
    else:
        shift = bias_shift(layer, wq - w, mean)
    new, why = corrected_bias(layer, bias, shift)
    return new, why, shift


def _correct_bias(node, layer, w, q, s, axis, mean, values, names, new_inits, report):
    """Give ``node`` a bias that cancels the mean shift of its int8 weights (onnx.layers)."""
    numpy_helper = require("onnx.numpy_helper")
    old = layer.bias
    if old and old not in values:
        report.skipped.append((old, f"bias of {node.op_type} {node.name or layer.key} is not a constant; "
                                    "not corrected for the weight rounding"))
        return
    new, why, shift = layer_bias(layer, w, q, s, axis, mean, values[old] if old else None)
    if new is None:
        report.skipped.append((old, f"bias of {node.op_type} {node.name or layer.key}: {why}; not corrected"))
        return
    b_name = names(f"{old or layer.weight + '_bias'}_corrected")
    new_inits.append(numpy_helper.from_array(new, b_name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = b_name
    report.biases[layer.key] = float(np.max(np.abs(shift))) if shift.size else 0.0


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _drop_unused_constants(m):
    """Remove initializers and Constant nodes that nothing reads any more."""
    g = m.graph
    used = {x for n in g.node for x in G.node_inputs(n)} | {o.name for o in g.output}
    keep = [_copy(t) for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        gone = {t.name for t in g.initializer} - {t.name for t in keep}
        del g.initializer[:]
        g.initializer.extend(keep)
        keep_in = [_copy(v) for v in g.input if v.name not in gone]
        del g.input[:]
        g.input.extend(keep_in)
    live = [_copy(n) for n in g.node
            if n.op_type != "Constant" or any(o in used for o in n.output)]
    if len(live) != len(g.node):
        del g.node[:]
        g.node.extend(live)


def _check(m, source=None):
    onnx = require("onnx")
    if m.ByteSize() >= 2 ** 31 - 2 ** 20:
        log.warning("model over 2 GB: onnx.checker skipped")
        return
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:
        if source is not None:
            try:
                onnx.checker.check_model(G.load_model(source), full_check=True)
            except Exception as own:
                log.warning("the input model itself fails onnx.checker (%s), so the Q/DQ model is not "
                            "checked either; ONNX Runtime and TensorRT may still load both", own)
                return
        raise ModelError(f"the Q/DQ model fails onnx.checker ({exc}); this is an int8batch bug, "
                         "please report it with the model") from exc


def insert_qdq(model, act_amax=None, *, act_scales=None, per_channel_weights=True, opset=None,
               weight_format="int8", pools="auto", on_missing="raise", check=True, input_means=None):
    """Return a copy of ``model`` with Q/DQ pairs placed for TensorRT.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        The FP32 (or FP16) model; it is not modified.
    act_amax : dict of str -> float
        Activation amax per tensor; scale = ``float32(amax / 127)``, amax 0
        gives :data:`MIN_SCALE`.
    act_scales : dict of str -> float
        Instead of ``act_amax``: the scales themselves (from a TensorRT cache,
        used bit for bit).
    per_channel_weights : bool
        False gives one scale per weight tensor.
    opset : int or None
        Target ai.onnx opset; default: the model's, raised to 13 if lower
        (with ``onnx.version_converter``).
    weight_format : {"int8", "float"}
        int8 initializer + DequantizeLinear, or the FP32 weight + Q -> DQ.
    pools : {"auto", "always", "never"}
        Pooling policy (module docstring).
    on_missing : {"raise", "skip"}
        A tensor that needs an amax and has none raises ``ModelError`` listing
        them all, or (``"skip"``) stays float and is listed in the report.
    check : bool
        Run ``onnx.checker.check_model(full_check=True)`` on the result.
    input_means : dict of str -> ndarray, optional
        Bias correction (:mod:`int8batch.calib.biascorr`): per Conv/Gemm
        (keyed by its first output name), the mean input each weight tap
        reads over the calibration data
        (:meth:`~int8batch.calib.biascorr.MeanCollector.means`).  Those layers
        get a new float bias that cancels the mean output shift of their int8
        weights; the others keep theirs.

    Returns
    -------
    onnx.ModelProto
    """
    return insert_qdq_with_report(
        model, act_amax, act_scales=act_scales, per_channel_weights=per_channel_weights,
        opset=opset, weight_format=weight_format, pools=pools, on_missing=on_missing,
        check=check, input_means=input_means)[0]


# --------------------------------------------------------- files and caches
def all_tensor_names(model):
    """Every tensor name of the main graph (inputs, initializers, node outputs)."""
    g = model.graph
    names = {v.name for v in g.input} | {t.name for t in g.initializer}
    names |= {o for n in g.node for o in n.output if o}
    return names


def compare_names(model, amax_dict, *, pools="auto"):
    """Names a Q/DQ conversion needs but lacks, and names it got but cannot use.

    Returns
    -------
    missing : list of str
        Tensors the placement quantizes that ``amax_dict`` lacks (topological).
    extra : list of str
        Keys of ``amax_dict`` that are no tensor of the model (sorted).
    """
    m = G.load_model(model)
    if _opset(m) < MIN_QDQ_OPSET:
        m = _convert_opset(m, None)
    requests = plan_qdq(m, pools=pools)[0]
    rank = {t: k for k, t in enumerate(G.quantizable_tensors(m))}
    missing = sorted((t for t in requests if t not in amax_dict), key=lambda t: rank.get(t, -1))
    names = all_tensor_names(m)
    return missing, sorted(k for k in amax_dict if k not in names)


def save_model_atomic(model, out_path):
    """Write ``model`` to ``out_path`` through a temporary file and a rename.

    Models over 2 GB get their weights in ``<out_path>.data`` next to it.
    """
    onnx = require("onnx")
    out_path = os.fspath(out_path)
    fd, tmp = make_temp(out_path)
    os.close(fd)
    try:
        if model.ByteSize() >= 2 ** 31 - 2 ** 20:
            onnx.save(model, tmp, save_as_external_data=True,
                      location=os.path.basename(out_path) + ".data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def qdq_from_scales(model_path, amax_dict, out_path, **kwargs):
    """Load the FP32 model, insert Q/DQ from ``amax_dict``, write ``out_path`` atomically.

    ``kwargs`` go to :func:`insert_qdq_with_report` (``act_scales=`` replaces
    the amax dict when ``amax_dict`` is None; ``keep_float=`` names tensors to
    leave float).  Returns the :class:`QdqReport`, whose ``extra`` lists the
    given names (scales and ``keep_float``) that are no tensor of the model.
    """
    model = G.load_model(model_path)
    qmodel, report = insert_qdq_with_report(model, amax_dict, **kwargs)
    given = list(amax_dict if amax_dict is not None else kwargs.get("act_scales") or {})
    given += [k for k in kwargs.get("keep_float") or {} if k not in given]
    names = all_tensor_names(model)
    unknown = sorted(k for k in given if k not in names)
    other = {k for k in unknown if CENTRED in k or k + CENTRED in names}
    report.other_form = [k for k in unknown if k in other]
    report.extra = [k for k in unknown if k not in other]
    if report.other_form:
        log.info("%d cache entries are not for this form of the model: int8batch calibrate centred some "
                 "activations, and its cache holds them twice (the *%s names for model.corrected.onnx, the "
                 "original names for the original model); this model's own entries are used",
                 len(report.other_form), CENTRED)
    if report.extra:
        log.warning("%d names are no tensor of the model (ignored): %s%s", len(report.extra),
                    ", ".join(report.extra[:5]), " ..." if len(report.extra) > 5 else "")
    save_model_atomic(qmodel, out_path)
    return report

