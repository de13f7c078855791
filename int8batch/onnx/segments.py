"""A model cut into consecutive pieces that run one after another, each as a model of its own.

A pass that changes a layer's constants from what the layers before it
computed (:mod:`int8batch.calib.sequential`: a bias set from the int8
model's own input means) cannot run the whole model once: layer ``k``'s input
must come from layers ``< k`` as they are after their own change.  Running
the whole model again for every layer costs one run per layer (ONNX Runtime
computes every node whatever outputs are asked for).  Cut into pieces, the
model runs once in all: each piece takes the tensors the pieces before it
made (kept for the images of the pass) and makes those later pieces read.

:func:`split` cuts before chosen nodes; :func:`segment_model` makes the
ModelProto of one piece, with its constants as they are when it is made.
"""
from dataclasses import dataclass, field

from .._optional import require
from ..errors import ModelError
from . import graph as G


@dataclass
class Segment:
    """Consecutive nodes of a model (topological order) and the tensors they exchange with the others.

    ``inputs``: tensors the nodes read that a segment before made (or graph
    inputs); ``outputs``: tensors they make that a later segment reads or that
    are graph outputs; ``cut``: the first output of the node this segment
    starts with, when it starts at a cut (else None: the first segment).
    """

    nodes: list
    cut: str | None = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def split(model, cut_before):
    """Cut ``model`` (a ModelProto) before each node whose first output is in ``cut_before``.

    Nodes computed only from constants (a weight's DequantizeLinear, Constant)
    go into the segment of their first reader, so a weight is not carried
    from piece to piece.  Returns the segments in order, and
    ``last_use``: tensor -> index of the last segment that reads it (graph
    outputs: the last segment).
    """
    g = model.graph
    if any(a.graphs or a.HasField("g") for n in g.node for a in n.attribute):
        raise ModelError("a model with subgraphs (If/Loop/Scan) cannot be cut into segments")
    nodes = G.topological_nodes(g)
    const = {t.name for t in g.initializer}
    is_const = []
    for n in nodes:
        c = all(x in const for x in n.input if x)
        is_const.append(c)
        if c:
            const.update(o for o in n.output if o)
    seg_of = [0] * len(nodes)
    k, started = 0, False
    for i, n in enumerate(nodes):
        if not is_const[i]:
            if n.output and n.output[0] in cut_before and started:
                k += 1
            seg_of[i], started = k, True
    count = k + 1
    readers = {}
    for i, n in enumerate(nodes):
        for x in n.input:
            if x:
                readers.setdefault(x, []).append(i)
    # constant nodes: the segment of their first reader (backwards, so chains of constants follow)
    for i in range(len(nodes) - 1, -1, -1):
        if is_const[i]:
            segs = [seg_of[j] for o in nodes[i].output if o for j in readers.get(o, ())]
            seg_of[i] = min(segs) if segs else 0
    segments = [Segment(nodes=[]) for _ in range(count)]
    for i, n in enumerate(nodes):
        segments[seg_of[i]].nodes.append(n)
        if not is_const[i] and n.output and n.output[0] in cut_before and segments[seg_of[i]].cut is None \
                and seg_of[i] > 0:
            segments[seg_of[i]].cut = n.output[0]
    made_in = {o: seg_of[i] for i, n in enumerate(nodes) for o in n.output if o}
    inits = {t.name for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    last_use = {o: count - 1 for o in graph_outputs}
    for s, seg in enumerate(segments):
        seen = set()
        for n in seg.nodes:
            for x in n.input:
                if not x or x in inits or x in seen:
                    continue
                if made_in.get(x, -1) != s:
                    seen.add(x)
                    seg.inputs.append(x)
                    last_use[x] = max(last_use.get(x, s), s)
    for s, seg in enumerate(segments):
        for n in seg.nodes:
            for o in n.output:
                if o and (last_use.get(o, -1) > s or o in graph_outputs):
                    seg.outputs.append(o)
    return segments, last_use


def segment_model(model, segment, input_types, initializers=None):
    """The ModelProto of one segment: its nodes, the initializers they read, its inputs and outputs.

    ``input_types``: tensor -> ONNX element type of each input (the arrays
    the earlier segments made).  ``initializers``: name -> TensorProto, the
    model's (default: read from ``model``), so that constants changed since
    are taken as they are now.
    """
    onnx = require("onnx")
    helper = onnx.helper
    g = model.graph
    inits = initializers if initializers is not None else {t.name: t for t in g.initializer}
    used = []
    seen = set()
    for n in segment.nodes:
        for x in n.input:
            if x in inits and x not in seen:
                seen.add(x)
                used.append(inits[x])
    graph = helper.make_graph(
        list(segment.nodes), f"segment_{segment.cut or 'first'}",
        [helper.make_tensor_value_info(x, input_types[x], None) for x in segment.inputs],
        [onnx.ValueInfoProto(name=o) for o in segment.outputs], initializer=used)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m
