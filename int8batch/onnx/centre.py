"""Centring bounded activations: ``Clip(0, 6)`` becomes ``Clip(-3, 3)`` where the model stays exact.

TensorRT quantizes activations symmetrically: a ReLU6 output, which lies in
[0, 6], gets the scale 6/127 and uses only the 128 non-negative int8 codes.
Shifted by half its range it lies in [-3, 3] and gets 3/127: half the step,
a quarter of the rounding noise, on the same int8 arithmetic.  The shift is
exact in FP32 when

- the Clip's input comes from a Conv, ConvTranspose or Gemm used by nothing
  else, whose bias takes the ``-c`` (``Clip(x, lo, hi) - c = Clip(x - c,
  lo - c, hi - c)``), and
- every consumer of the Clip's output is a Conv without padding or a Gemm
  reading it as ``A``, with a constant weight: a linear layer without
  padding turns an input shift into a bias, ``W (y + c) + b = W y + (b + c
  sum W)``.  A padded convolution is not: its zero padding would stand for
  ``c`` afterwards, so the input of a padded depthwise convolution is left
  as it is, unless ``padded`` is asked for: the convolution then reads an
  explicit ``Pad`` of the shifted zero (``-c``) and pads nothing itself,
  which is exact too but adds a node per convolution (opt-in:
  ``--centre-padded``).

The shifted tensors (the Clip's output and its input, the producer's output)
get new names (``<name>_centred``): their values differ from the original's,
and a calibration cache keyed by the old names must still be right for the
original model (:mod:`int8batch.calib.artefacts` writes both).  For the
original names the larger bound is the right amax: quantizing the Clip's
input on that grid and clipping gives what quantizing its output gives.
Nothing else changes: the graph keeps its nodes, node names and other tensor
names, so TensorRT fuses it as before (a Clip with other bounds is the same
activation layer), and only biases and the Clip's bounds differ from the
original (and, with ``padded``, the Pad nodes are new).
"""
import math
from dataclasses import dataclass

import numpy as np

from .._optional import require
from . import graph as G

SUFFIX = "_centred"
_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class CentredTensor:
    """One centred activation: ``name`` holds ``original - shift``, in ``[-half, half]``.

    ``pre`` / ``pre_name``: the Clip's input (the producer's output) before and after.
    """
    original: str
    name: str
    shift: float
    bounds: tuple          # the original Clip's (lo, hi)
    pre: str = ""
    pre_name: str = ""
    pads: tuple = ()       # the Pad nodes added in front of padded readers (centre_bounded(padded=True))

    @property
    def half(self):
        return (self.bounds[1] - self.bounds[0]) / 2

    @property
    def original_amax(self):
        """The symmetric amax of the uncentred tensor (its larger bound), as TensorRT would use it."""
        return max(abs(self.bounds[0]), abs(self.bounds[1]))

    def as_dict(self):
        return {"tensor": self.original, "as": self.name, "shift": self.shift, "bounds": list(self.bounds),
                "clip_input": self.pre, "clip_input_as": self.pre_name, "pad_nodes": list(self.pads)}

    def original_names(self):
        """The original tensors' names, each with the amax that serves the uncentred model."""
        return {self.pre: self.original_amax, self.original: self.original_amax}


def _conv_pads(node):
    """The explicit pads of a Conv (``[]`` for none); None with ``auto_pad`` SAME_* (they depend on shapes)."""
    if G.node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return None
    pads = list(G.node_attr(node, "pads", []))
    return pads if any(pads) else []


def _absorbs(node, name, inits, padded=False):
    """True when ``node`` turns a constant shift of its input ``name`` into a bias change
    (``padded``: a padded Conv too, once its padding becomes an explicit Pad of the shifted zero)."""
    if node.op_type == "Conv":
        if node.input[0] != name or list(node.input).count(name) != 1 or len(node.input) < 2 \
                or node.input[1] not in inits:
            return False
        pads = _conv_pads(node)
        return pads is not None and (padded or not pads)
    if node.op_type == "Gemm":
        return (node.input[0] == name and list(node.input).count(name) == 1 and len(node.input) > 1
                and node.input[1] in inits and not G.node_attr(node, "transA", 0))
    return False


def _bias(node, inits, out_channels):
    """``(effective bias as float64, beta)`` of ``node`` (Gemm: ``beta * C``; zeros when it has none)."""
    beta = float(G.node_attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    if beta == 0:                             # C ignored: no bias to move the shift into
        return None, beta
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:        # a bias computed by a node (Identity, Constant...): left as it is
            return None, beta
        arr = require("onnx.numpy_helper").to_array(inits[node.input[2]]).astype(np.float64).reshape(-1)
        return (np.broadcast_to(arr * beta, (out_channels,)).copy() if arr.size in (1, out_channels) else None), beta
    return np.zeros(out_channels), beta


def _out_channels(node, w):
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * int(G.node_attr(node, "group", 1))
    return w.shape[0] if G.node_attr(node, "transB", 0) else w.shape[1]


def _input_sum(node, w):
    """Per output channel, the sum of the weights one input shift of 1 adds to it."""
    if node.op_type == "Conv":
        return w.reshape(w.shape[0], -1).sum(axis=1)
    alpha = float(G.node_attr(node, "alpha", 1.0))
    return alpha * (w.sum(axis=1) if G.node_attr(node, "transB", 0) else w.sum(axis=0))


def centre_bounded(model, quantizable=None, padded=False):
    """Return ``(model copy, [CentredTensor])`` with every centrable bounded activation centred.

    ``model``: a path, bytes or ModelProto (not modified).  ``quantizable``:
    the tensors calibration would quantize (:func:`~int8batch.onnx.graph.quantizable_tensors`),
    when already known; only those are centred.  ``padded``: also centre the
    inputs of padded convolutions, each of which then gets an explicit
    ``Pad`` node whose value is the shifted zero (``-c``; a new node in the
    graph, so off by default).  With nothing to centre the original model is
    returned (not a copy) and the list is empty.
    """
    onnx = require("onnx")
    numpy_helper = require("onnx.numpy_helper")
    src = G.load_model(model)
    bounded = G.bounded_tensors(src, quantizable)
    src_nodes = list(src.graph.node)
    consumers, producer = {}, {}          # tensor -> node indices
    for k, n in enumerate(src_nodes):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
        for o in n.output:
            producer[o] = k
    inits = {t.name: t for t in src.graph.initializer}
    outputs = {o.name for o in src.graph.output}
    taken = {t for n in src.graph.node for t in list(n.input) + list(n.output)} | set(inits) | \
        {i.name for i in src.graph.input}

    plan = []
    for ci, n in enumerate(src_nodes):
        if n.op_type != "Clip" or not n.output or n.output[0] not in bounded:
            continue
        y = n.output[0]
        lo, hi = bounded[y]
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or lo + hi == 0 or y in outputs:
            continue
        pi = producer.get(n.input[0])
        p = src_nodes[pi] if pi is not None else None
        if p is None or p.op_type not in _PRODUCERS or n.input[0] in outputs or len(consumers[n.input[0]]) != 1:
            continue
        if len(p.input) < 2 or p.input[1] not in inits or len(p.output) != 1:
            continue
        uses = consumers.get(y, [])
        if not uses or not all(_absorbs(src_nodes[k], y, inits, padded) for k in uses):
            continue
        plan.append((ci, pi, uses))
    if not plan:
        return src, []

    m = onnx.ModelProto()
    m.CopyFrom(src)
    g = m.graph
    inits = {t.name: t for t in g.initializer}

    def fresh(base):
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}{k}"
        taken.add(name)
        return name

    def set_bias(node, values, beta, like):
        name = fresh((node.input[2] if len(node.input) > 2 and node.input[2] else node.name or node.output[0])
                     + ("_centred" if len(node.input) > 2 and node.input[2] else "_bias_centred"))
        g.initializer.append(numpy_helper.from_array((values / beta).astype(like), name))
        inits[name] = g.initializer[-1]
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name

    done, pad_nodes = [], {}
    for ci, pi, use_idx in plan:
        clip, prod = g.node[ci], g.node[pi]
        uses = [g.node[k] for k in use_idx]
        y = clip.output[0]
        lo, hi = bounded[y]
        c = (lo + hi) / 2
        w = numpy_helper.to_array(inits[prod.input[1]])
        b, beta = _bias(prod, inits, _out_channels(prod, w))
        new_bias = []
        for u in uses:
            wu = numpy_helper.to_array(inits[u.input[1]])
            bu, beta_u = _bias(u, inits, _out_channels(u, wu))
            if bu is None:
                break
            new_bias.append((u, bu + c * _input_sum(u, wu.astype(np.float64)), beta_u, wu.dtype))
        if b is None or len(new_bias) != len(uses):
            continue                                 # a bias of another shape: left as it is
        set_bias(prod, b - c, beta, w.dtype)
        for u, values, beta_u, dtype in new_bias:
            set_bias(u, values, beta_u, dtype)
        # the Clip's new bounds, as inputs (opset >= 11) or attributes (before)
        if len(clip.input) > 1 or not any(a.name in ("min", "max") for a in clip.attribute):
            while len(clip.input) < 3:
                clip.input.append("")
            for k, v in ((1, lo - c), (2, hi - c)):
                name = fresh(f"{y}{SUFFIX}_{'min' if k == 1 else 'max'}")
                g.initializer.append(numpy_helper.from_array(np.array(v, dtype=w.dtype), name))
                clip.input[k] = name
        else:
            for a in clip.attribute:
                if a.name == "min":
                    a.f = lo - c
                elif a.name == "max":
                    a.f = hi - c
        new, pre = fresh(y + SUFFIX), fresh(clip.input[0] + SUFFIX)
        renamed = {y: new, clip.input[0]: pre}
        old_pre = clip.input[0]
        clip.output[0], clip.input[0], prod.output[0] = new, pre, pre
        added = []
        for k, u in zip(use_idx, uses):
            u.input[0] = new
            pads = _conv_pads(u) if u.op_type == "Conv" else []
            if pads:       # the zero padding becomes an explicit Pad of the shifted zero
                pad_nodes[k] = _explicit_pad(u, new, pads, -c, w.dtype, fresh, g, numpy_helper, G.opset(m))
                added.append(pad_nodes[k].name)
        for vi in g.value_info:
            vi.name = renamed.get(vi.name, vi.name)
        done.append(CentredTensor(y, new, c, (lo, hi), old_pre, pre, tuple(added)))
    if not done:       # every candidate had a bias of another kind: the model as given
        return src, []
    if pad_nodes:      # each Pad right before the convolution it feeds (topological order kept)
        nodes = []
        for k, n in enumerate(g.node):
            if k in pad_nodes:
                nodes.append(pad_nodes[k])
            nodes.append(onnx.NodeProto())
            nodes[-1].CopyFrom(n)
        del g.node[:]
        g.node.extend(nodes)
    return m, done


def _explicit_pad(conv, name, pads, value, dtype, fresh, graph, numpy_helper, opset):
    """A constant Pad of ``name`` by ``conv``'s pads with ``value``; the conv then reads it unpadded."""
    helper = require("onnx.helper")
    half = len(pads) // 2
    full = [0, 0] + pads[:half] + [0, 0] + pads[half:]          # N, C, spatial begins; then the ends
    out = fresh(f"{name}_pad")
    label = fresh(f"{conv.name or conv.output[0]}/centre_pad")
    if opset >= 11:
        pads_name, value_name = fresh(f"{out}_pads"), fresh(f"{out}_value")
        graph.initializer.append(numpy_helper.from_array(np.array(full, dtype=np.int64), pads_name))
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), value_name))
        node = helper.make_node("Pad", [name, pads_name, value_name], [out], name=label, mode="constant")
    else:
        node = helper.make_node("Pad", [name], [out], name=label, mode="constant", pads=full, value=float(value))
    conv.input[0] = out
    for a in conv.attribute:
        if a.name == "pads":
            del a.ints[:]
            a.ints.extend([0] * len(pads))
    return node
