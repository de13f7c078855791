"""Read an ONNX graph the way TensorRT's INT8 path sees it.

Which tensors TensorRT would quantize in implicit INT8 (the float activations:
graph inputs and values flowing between nodes, never weights, constants or
shape/index arithmetic), which tensors have a range fixed by their producer
(ReLU6, Sigmoid, ...), and what the graph inputs look like.

``onnx`` is imported inside the functions, so importing this module is cheap.
"""
import heapq
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from .._optional import require
from ..errors import ModelError

log = logging.getLogger(__name__)

# ONNX TensorProto element types TensorRT can quantize (FLOAT, FLOAT16, BFLOAT16)
FLOAT_TYPES = frozenset({1, 10, 16})

# ops whose outputs describe shapes or sizes, never activations
_SHAPE_OPS = frozenset({"Shape", "Size", "NonZero", "ConstantOfShape", "Range"})


@dataclass(frozen=True)
class InputInfo:
    """One graph input.

    Attributes
    ----------
    name : str
    shape : tuple
        One entry per dimension: an ``int`` for a fixed size, a ``str`` for a
        named dynamic dimension, ``None`` for an unnamed dynamic one.
        ``None`` for the whole tuple when the rank is unknown.
    dtype : numpy.dtype or None
        None when the element type has no NumPy equivalent.
    """

    name: str
    shape: tuple
    dtype: object


#: the operators of explicit quantization
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def qdq_node_count(model):
    """How many QuantizeLinear/DequantizeLinear nodes the main graph holds (0: a float model)."""
    return sum(n.op_type in QDQ_OPS for n in model.graph.node)


def model_label(model, default="<model>"):
    """How messages name a model: its path, or ``default`` for a ModelProto or bytes given in memory."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else default


def connected_groups(links):
    """The connected components of the pairs ``links`` (a, b), each a sorted list, in the order their first
    member was linked."""
    parent = {}

    def find(t):
        while parent.get(t, t) != t:
            t = parent[t]
        return t
    for a, b in links:
        ra, rb = find(a), find(b)
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            parent[ra] = rb
    members = {}
    for t in parent:
        members.setdefault(find(t), []).append(t)
    return [sorted(m) for m in members.values()]


def load_model(path_or_model):
    """Load an ONNX model from a path, bytes, or return a ``ModelProto`` as is.

    Parameters
    ----------
    path_or_model : str, PathLike, bytes or onnx.ModelProto

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ModelError
        The file is missing or is not a readable ONNX model.
    """
    onnx = require("onnx")
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        try:
            model = onnx.load_model_from_string(bytes(path_or_model))
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelError(f"the bytes given are not an ONNX model ({exc})") from exc
        return _non_empty(model, "the bytes given", None)
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise ModelError(f"{path}: not a regular file (a folder, FIFO or device); give the .onnx file", path)
        raise ModelError(f"{path}: no such ONNX model file; check the path", path)
    try:
        model = onnx.load(path)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read this file as an ONNX model ({exc}); "
                         "export it again or check that it is not truncated", path) from exc
    return _non_empty(model, path, path)


def _non_empty(model, what, path):
    # protobuf parses an empty file (and some random bytes) as an empty message without complaint
    if not model.HasField("graph") or not model.graph.output:
        size = f"{os.path.getsize(path)} bytes" if path else "bytes"
        raise ModelError(f"{what}: not an ONNX model ({size} that hold no graph with outputs); "
                         "export the model again or check that the file is complete", path)
    return model


def _initializer_names(graph):
    names = {t.name for t in graph.initializer}
    names.update(t.values.name for t in graph.sparse_initializer)
    return names


def _infer(model):
    """Shape-inferred copy of ``model`` (falls back to the model itself)."""
    onnx = require("onnx")
    order = topological_order(model.graph)
    if order != sorted(order):   # ONNX infers in file order: sort a copy first
        sorted_model = onnx.ModelProto()
        sorted_model.CopyFrom(model)
        nodes = [sorted_model.graph.node[i] for i in order]
        copies = []
        for n in nodes:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            copies.append(c)
        del sorted_model.graph.node[:]
        sorted_model.graph.node.extend(copies)
        model = sorted_model
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # models > 2 GB or unknown ops
        log.warning("ONNX shape inference failed (%s); using the types stored in the model", exc)
        return model


def tensor_types(model):
    """Map every typed tensor name of the main graph to its ONNX element type.

    Uses ONNX shape inference (on a copy) plus the types stored in the model.
    """
    return tensor_types_and_shapes(model)[0]


def tensor_types_and_shapes(model):
    """``(types, shapes)`` of the main graph's tensors from one ONNX shape inference.

    ``types`` as :func:`tensor_types`; ``shapes`` maps the tensors whose rank
    is known to a tuple with one entry per dimension, as
    :attr:`InputInfo.shape` (``int``, ``str`` for a named dynamic size,
    ``None`` for an unnamed one).
    """
    inferred = _infer(model)
    g = inferred.graph
    types, shapes = {}, {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            if tt.elem_type:
                types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(_dim(d) for d in tt.shape.dim)
    for t in g.initializer:
        types[t.name] = t.data_type
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return types, shapes


def topological_nodes(graph):
    """Nodes of ``graph`` in a deterministic topological order (see :func:`topological_order`)."""
    return [graph.node[i] for i in topological_order(graph)]


def topological_order(graph):
    """Indices of the nodes of ``graph`` in a deterministic topological order.

    Kahn's algorithm, always taking the ready node that comes first in the
    file, so an already sorted graph keeps its order.

    Raises
    ------
    ModelError
        The graph has a cycle or uses a tensor nothing produces.
    """
    producer = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    deps = []
    users = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        d = {producer[x] for x in node_inputs(node) if x in producer and producer[x] != i}
        deps.append(len(d))
        for j in d:
            users[j].append(i)
    ready = [i for i, n in enumerate(deps) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            deps[j] -= 1
            if deps[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(graph.node):
        raise ModelError("the ONNX graph has a cycle; it cannot be sorted topologically")
    return order


def node_inputs(node):
    """Inputs of ``node`` including names its subgraphs (If/Loop/Scan) use."""
    names = [x for x in node.input if x]
    for attr in node.attribute:
        subs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for sub in subs:
            local = {x.name for x in sub.input} | _initializer_names(sub)
            for n in sub.node:
                local.update(o for o in n.output if o)
            for n in sub.node:
                names.extend(x for x in node_inputs(n) if x not in local)
    return names


def constant_tensors(model):
    """Names of tensors computed only from initializers and constants.

    Includes initializers, outputs of ``Constant``/``ConstantOfShape`` and of
    shape ops (``Shape``, ``Size``, ...), and anything computed only from those.
    """
    g = model.graph
    const = set(_initializer_names(g))
    for node in topological_nodes(g):
        ins = node_inputs(node)
        if node.op_type in _SHAPE_OPS or node.op_type == "Constant" or all(x in const for x in ins):
            const.update(o for o in node.output if o)
    return const


def quantizable_tensors(model, types=None):
    """Tensors TensorRT would quantize in implicit INT8, in topological order.

    Float (FP32/FP16/BF16) graph inputs first, in the model's input order, then
    the float outputs of each node in a deterministic topological order
    (graph outputs included).  Excluded: initializers, constants and anything
    computed only from them or from shapes, non-float tensors, and tensors
    whose type cannot be inferred (logged).

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
    types : dict, optional
        :func:`tensor_types` of ``model``, when already known (shape inference
        is the expensive part).

    Returns
    -------
    list of str
    """
    model = load_model(model)
    g = model.graph
    types = tensor_types(model) if types is None else types
    const = constant_tensors(model)
    inits = _initializer_names(g)
    names, seen, unknown = [], set(), []

    def add(name):
        if not name or name in seen or name in const:
            return
        seen.add(name)
        t = types.get(name)
        if t is None:
            unknown.append(name)
        elif t in FLOAT_TYPES:
            names.append(name)

    for vi in g.input:
        if vi.name not in inits:
            add(vi.name)
    for node in topological_nodes(g):
        for out in node.output:
            add(out)
    if unknown:
        log.warning("%d tensors have no inferred type and are not quantized: %s%s",
                    len(unknown), ", ".join(unknown[:5]), " ..." if len(unknown) > 5 else "")
    return names


def constant_values(model):
    """Map initializer and ``Constant``-node output names to NumPy arrays."""
    numpy_helper = require("onnx.numpy_helper")
    g = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                values[node.output[0]] = np.array(attr.f, dtype=np.float32)
            elif attr.name == "value_floats":
                values[node.output[0]] = np.array(list(attr.floats), dtype=np.float32)
            elif attr.name == "value_int":
                values[node.output[0]] = np.array(attr.i, dtype=np.int64)
            elif attr.name == "value_ints":
                values[node.output[0]] = np.array(list(attr.ints), dtype=np.int64)
    return values


def opset(model):
    """The model's ai.onnx opset version (0 when it imports none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def node_attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            onnx = require("onnx")
            return onnx.helper.get_attribute_value(a)
    return default


def bounded_tensors(model, quantizable=None):
    """Tensors whose value range is fixed by the op that produces them.

    ========================  ====================
    producer                  range
    ========================  ====================
    Clip with constant bounds (min, max); a missing bound is -inf/+inf
    Relu                      (0, inf)
    Sigmoid, HardSigmoid      (0, 1)
    Tanh                      (-1, 1)
    Softmax                   (0, 1)
    Pad (constant, in bounds) the input's bounds
    ========================  ====================

    A Clip whose bound is not a constant is left out.  Clip before opset 11
    carries its bounds as attributes; both forms are read.

    ``quantizable``: :func:`quantizable_tensors` of ``model`` when already
    known (it runs shape inference: 0.24 s on ResNet-50).

    Returns
    -------
    dict of str -> (float, float)
        Only float tensors that :func:`quantizable_tensors` lists.
    """
    model = load_model(model)
    values = constant_values(model)
    wanted = set(quantizable_tensors(model) if quantizable is None else quantizable)
    out = {}
    for node in model.graph.node:         # ONNX keeps nodes in topological order: a Pad comes after its input
        if not node.output:
            continue
        op, name = node.op_type, node.output[0]
        if op == "Pad" and node.input and node.input[0] in out:
            # a constant Pad of a bounded tensor by a value inside its bounds keeps them (int8batch's
            # centring pads a centred ReLU6 output with its shifted zero)
            mode = node_attr(node, "mode", b"constant")
            value = node_attr(node, "value", 0.0)
            if len(node.input) > 2 and node.input[2]:
                v = values.get(node.input[2])
                value = float(v.reshape(())) if v is not None and v.size == 1 else None
            lo, hi = out[node.input[0]]
            if mode in (b"constant", "constant") and value is not None and lo <= value <= hi:
                out[name] = (lo, hi)
            continue
        if name not in wanted and op != "Clip":
            continue
        if op == "Clip":
            lo, hi = node_attr(node, "min", -math.inf), node_attr(node, "max", math.inf)
            ok = True
            for k, default in ((1, -math.inf), (2, math.inf)):
                if len(node.input) > k and node.input[k]:
                    v = values.get(node.input[k])
                    if v is None or v.size != 1:
                        ok = False
                        break
                    if k == 1:
                        lo = float(v.reshape(()))
                    else:
                        hi = float(v.reshape(()))
            if ok:
                out[name] = (float(lo), float(hi))
        elif op == "Relu":
            out[name] = (0.0, math.inf)
        elif op in ("Sigmoid", "HardSigmoid", "Softmax"):
            out[name] = (0.0, 1.0)
        elif op == "Tanh":
            out[name] = (-1.0, 1.0)
    return {k: v for k, v in out.items() if k in wanted}


def element_size(elem_type):
    """Bytes per element of an ONNX element type; None when it has no NumPy equivalent."""
    onnx = require("onnx")
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # noqa: BLE001 - string, bfloat16 in old onnx, float8...
        return None


def _dim(d):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param:
        return d.dim_param
    return None


def input_info(model):
    """Name, shape and dtype of each graph input that is not an initializer.

    Returns
    -------
    list of InputInfo
    """
    onnx = require("onnx")
    model = load_model(model)
    inits = _initializer_names(model.graph)
    infos = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else None
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = None
        infos.append(InputInfo(vi.name, shape, dtype))
    return infos

