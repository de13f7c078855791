"""Where Q/DQ pairs go so that TensorRT builds INT8 kernels.

Rules (the Q/DQ placement recommendations of TensorRT's developer guide; tests/onnx/test_qdq_placement.py checks each), applied by
:func:`plan_qdq` without looking at any scale:

* **Weighted ops** (Conv, ConvTranspose, Gemm, MatMul): every activation input
  gets a per-tensor Q/DQ pair; every constant weight gets a per-channel DQ
  (axis 0 for Conv, 1 for ConvTranspose, 0/1 for Gemm with transB=1/0, 1 for a
  2-D MatMul right-hand side; per-tensor otherwise).  Biases stay float.
* **Residual Add** (two activation inputs): an input that comes straight from a
  weighted op, possibly through BatchNormalization/Relu/Clip, each tensor on
  the way used only on that path, is the branch TensorRT fuses into the
  convolution and is left alone; the other (skip) input is quantized.  When both
  inputs come from weighted ops, the one whose weighted op runs last is fused
  and the other quantized; when neither does, both are quantized.
* **Pooling** (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool), with
  ``pools="auto"``: the pool's input is quantized when its output is, so
  TensorRT runs DQ -> pool -> Q in INT8; a pool whose output stays float is
  left alone.  ``"always"`` quantizes every pool input, ``"never"`` none.
* **Concat**: when its output is quantized, all its activation inputs are
  quantized too, and every tensor of such a group shares one scale, the
  largest (concat groups chained through shared tensors merge).
* Never quantized: outputs of weighted ops (except where another weighted op
  consumes them), Softmax outputs, and network outputs (consumers are rewired
  to the DQ output; the graph output stays the float tensor).

One Q/DQ pair per tensor, shared by all its quantized consumers; consumers
that are not quantized keep reading the float tensor.
"""
from typing import NamedTuple

from ..errors import ModelError
from . import graph as G

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
FUSABLE_BETWEEN = frozenset({"BatchNormalization", "Relu", "Clip"})


def _fused_weighted_op(t, producer, consumers, nodes):
    """Index of the weighted op whose output reaches ``t`` fusably, else None."""
    while True:
        if len(consumers.get(t, ())) != 1 or t not in producer:
            return None
        p = producer[t]
        op = nodes[p].op_type
        if op in WEIGHTED_OPS:
            return p
        if op not in FUSABLE_BETWEEN or not nodes[p].input:
            return None
        t = nodes[p].input[0]


class QdqPlan(NamedTuple):
    """Where the Q/DQ pairs go (:func:`plan_qdq`); a tuple, so it also unpacks."""

    requests: dict
    weights: list
    groups: list
    skipped: list


def plan_qdq(model, *, pools="auto", act=None):
    """Decide where Q/DQ pairs go, without scales (see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto
        Already at the target opset; nodes are referenced by position in
        ``model.graph.node``.
    pools : {"auto", "always", "never"}
    act : set of str, optional
        The quantizable tensors, when already known
        (:attr:`int8batch.onnx.facts.ModelFacts.quantizable`).

    Returns
    -------
    QdqPlan, a named tuple of:
    requests : dict of str -> list of (int, int, str)
        Activation tensor -> (node index, input index, reason) slots to rewire.
    weights : list of (int, int, int or None)
        (node index, input index, per-channel axis) of constant weights.
    groups : list of list of str
        Concat scale groups.
    skipped : list of (str, str)
    """
    if pools not in ("auto", "always", "never"):
        raise ModelError(f"pools must be 'auto', 'always' or 'never', got {pools!r}")
    g = model.graph
    nodes = list(g.node)
    act = set(G.quantizable_tensors(model)) if act is None else act
    values = G.constant_values(model)
    producer, consumers = {}, {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
        for k, x in enumerate(n.input):
            if x:
                consumers.setdefault(x, []).append((i, k))
    for o in g.output:
        consumers.setdefault(o.name, []).append((-1, -1))
    pos = [0] * len(nodes)
    for k, i in enumerate(G.topological_order(g)):
        pos[i] = k
    requests, weights, skipped = {}, [], []

    def request(t, i, k, why):
        requests.setdefault(t, []).append((i, k, why))

    for i, n in enumerate(nodes):
        op, ins = n.op_type, list(n.input)
        where = f"{op} {n.name or i}"
        if op in WEIGHTED_OPS:
            for k, x in enumerate(ins[:2]):
                if not x:
                    continue
                if x in act:
                    request(x, i, k, f"input {k} of {where}")
                elif x in values and values[x].dtype.kind == "f":
                    weights.append((i, k, _weight_axis(n, k, values[x])))
                else:
                    skipped.append((x, f"input {k} of {where} is computed from constants; "
                                       "fold constants first (onnxruntime basic optimization)"))
        elif op == "Add" and len(ins) == 2 and all(x in act for x in ins):
            if ins[0] == ins[1]:
                request(ins[0], i, 0, f"both inputs of {where}")
                request(ins[1], i, 1, f"both inputs of {where}")
                continue
            fused = [_fused_weighted_op(x, producer, consumers, nodes) for x in ins]
            keep = None
            if fused[0] is not None and fused[1] is not None:
                keep = 0 if pos[fused[0]] > pos[fused[1]] else 1
            elif fused[0] is not None or fused[1] is not None:
                keep = 0 if fused[0] is not None else 1
            for k, x in enumerate(ins):
                if k == keep:
                    skipped.append((x, f"residual branch of {where}, fused by TensorRT into "
                                       f"{nodes[fused[k]].op_type} {nodes[fused[k]].name or fused[k]}"))
                else:
                    request(x, i, k, f"{'skip' if keep is not None else 'residual'} input of {where}")
        elif op in POOL_OPS and pools == "always" and ins and ins[0] in act:
            request(ins[0], i, 0, f"input of {where} (pools='always')")

    # backward propagation through Concat and (pools="auto") pooling, to a fixpoint
    links = []      # (Concat input, its output): one scale group per connected set
    work = list(requests)
    while work:
        t = work.pop()
        p = producer.get(t)
        if p is None:
            continue
        n = nodes[p]
        if n.op_type == "Concat":
            for k, x in enumerate(n.input):
                if x in act:
                    links.append((x, t))
                    if not any(s[0] == p for s in requests.get(x, ())):
                        request(x, p, k, f"input of Concat {n.name or p} (output quantized)")
                        work.append(x)
        elif n.op_type in POOL_OPS and pools == "auto" and n.input[0] in act:
            x = n.input[0]
            if not any(s[0] == p for s in requests.get(x, ())):
                request(x, p, 0, f"input of {n.op_type} {n.name or p} (output quantized)")
                work.append(x)
    groups = G.connected_groups(links)

    for t in list(requests):
        p = producer.get(t)
        if p is not None and nodes[p].op_type == "Softmax":
            skipped.append((t, "Softmax output kept in high precision"))
            del requests[t]
    return QdqPlan(requests, weights, groups, skipped)


def _weight_axis(node, k, w):
    """Per-channel axis of weight input ``k`` of ``node`` (None: per-tensor)."""
    op = node.op_type
    if op == "Conv" and k == 1:
        return 0
    if op == "ConvTranspose" and k == 1:
        return 1
    if op == "Gemm" and k == 1:
        return 0 if G.node_attr(node, "transB", 0) else 1
    if op == "MatMul" and k == 1 and w.ndim == 2:
        return 1
    return None
