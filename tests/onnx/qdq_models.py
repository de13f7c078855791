"""Small hand-made ONNX graphs for the graph and Q/DQ tests."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def rng(seed=0):
    return np.random.default_rng(seed)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs],
        list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_relu_conv(seed=0):
    """x -> Conv(w1,b1) -> c1 -> Relu -> r1 -> Conv(w2) -> y."""
    r = rng(seed)
    w1 = r.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w1[2] *= 0.1          # channels with different ranges
    b1 = r.normal(size=4).astype(np.float32)
    w2 = r.normal(size=(5, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    return model(nodes, [("x", [2, 3, 8, 8])], [("y", [2, 5, 8, 8])],
                 [init("w1", w1), init("b1", b1), init("w2", w2)])


def gemm(trans_b, seed=1):
    r = rng(seed)
    b = r.normal(size=(4, 6) if trans_b else (6, 4)).astype(np.float32)
    c = r.normal(size=4).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="gemm", transB=trans_b)]
    return model(nodes, [("x", [3, 6])], [("y", [3, 4])], [init("B", b), init("C", c)])


def matmul(seed=2):
    """x @ W (2-D weight) then a MatMul of two activations."""
    r = rng(seed)
    w = r.normal(size=(6, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
             helper.make_node("Transpose", ["h"], ["ht"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["h", "ht"], ["y"], name="mm2")]
    return model(nodes, [("x", [3, 6])], [("y", [3, 3])], [init("W", w)])


def conv_transpose(seed=3):
    r = rng(seed)
    w = r.normal(size=(4, 3, 3, 3)).astype(np.float32)   # C_in x C_out x kH x kW
    w[:, 1] *= 5.0
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2])]
    return model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 3, 11, 11])], [init("w", w)])


def residual(seed=4):
    """x -> conv1 -> relu -> a; a -> conv2 -> bn -> b; add(b, a) -> relu -> y."""
    r = rng(seed)
    w1 = r.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.5
    w2 = r.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.3
    bn = [np.abs(r.normal(size=4)).astype(np.float32) + 0.5, r.normal(size=4).astype(np.float32),
          r.normal(size=4).astype(np.float32) * 0.1, np.abs(r.normal(size=4)).astype(np.float32) + 0.5]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"], name="relu1"),
             helper.make_node("Conv", ["a", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "g", "beta", "mu", "var"], ["b"], name="bn"),
             helper.make_node("Add", ["b", "a"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    inits = [init("w1", w1), init("w2", w2)] + [init(n, v) for n, v in
                                                zip(["g", "beta", "mu", "var"], bn)]
    return model(nodes, [("x", [2, 3, 6, 6])], [("y", [2, 4, 6, 6])], inits)


def add_two_convs(seed=5):
    """x -> convA -> p, x -> convB -> q, add(p, q) -> y: both branches fusable."""
    r = rng(seed)
    wa = r.normal(size=(3, 3, 1, 1)).astype(np.float32)
    wb = r.normal(size=(3, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["p"], name="convA"),
             helper.make_node("Conv", ["x", "wb"], ["q"], name="convB"),
             helper.make_node("Add", ["p", "q"], ["y"], name="add")]
    return model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4])],
                 [init("wa", wa), init("wb", wb)])


def add_no_conv():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("Add", ["s", "t"], ["y"], name="add")]
    return model(nodes, [("x", [2, 3])], [("y", [2, 3])])


def pooling(seed=6):
    """conv1 -> relu -> r1 -> MaxPool -> m -> conv2 -> c2 -> GAP -> g -> Flatten -> f -> Gemm."""
    r = rng(seed)
    w1 = r.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = r.normal(size=(6, 4, 3, 3)).astype(np.float32) * 0.3
    wg = r.normal(size=(5, 6)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["m"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Conv", ["m", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc", transB=1)]
    return model(nodes, [("x", [2, 3, 8, 8])], [("y", [2, 5])],
                 [init("w1", w1), init("w2", w2), init("wg", wg)])


def concat(seed=7):
    """x -> convA -> relu -> ra; x -> convB -> relu6 (Clip 0..6) -> rb; concat -> k -> conv -> y."""
    r = rng(seed)
    wa = r.normal(size=(2, 3, 1, 1)).astype(np.float32)
    wb = r.normal(size=(3, 3, 1, 1)).astype(np.float32) * 4
    wc = r.normal(size=(4, 5, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ca"], name="convA"),
             helper.make_node("Relu", ["ca"], ["ra"], name="reluA"),
             helper.make_node("Conv", ["x", "wb"], ["cb"], name="convB"),
             helper.make_node("Clip", ["cb", "lo", "hi"], ["rb"], name="relu6"),
             helper.make_node("Concat", ["ra", "rb"], ["k"], name="cat", axis=1),
             helper.make_node("Conv", ["k", "wc"], ["y"], name="convC")]
    inits = [init("wa", wa), init("wb", wb), init("wc", wc),
             init("lo", np.float32(0)), init("hi", np.float32(6))]
    return model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], inits)


def softmax_attention(seed=8):
    """x @ W -> h -> Softmax -> s; MatMul(s, x2) with x2 an activation."""
    r = rng(seed)
    w = r.normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
             helper.make_node("Softmax", ["h"], ["s"], name="sm", axis=-1),
             helper.make_node("Relu", ["x"], ["v"], name="relu"),
             helper.make_node("MatMul", ["s", "v"], ["y"], name="mm2")]
    return model(nodes, [("x", [4, 4])], [("y", [4, 4])], [init("W", w)])


def shape_ops():
    """Reshape through Shape/Gather arithmetic: only float activations are listed."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["shp"], name="shape"),
             helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat", axis=0),
             helper.make_node("Reshape", ["r", "newshape"], ["flat"], name="reshape"),
             helper.make_node("Constant", [], ["cst"], name="const",
                              value=numpy_helper.from_array(np.float32(2.0), "v")),
             helper.make_node("Mul", ["cst", "cst"], ["cst2"], name="constmul"),
             helper.make_node("Mul", ["flat", "cst2"], ["y"], name="mul")]
    inits = [init("zero", np.int64(0)), init("ax0", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64))]
    return model(nodes, [("x", ["N", 2, 3])], [("y", ["N", 6])], inits)


def clip_relu6(opset=17):
    """Clip(0,6), Relu, Sigmoid, Tanh, and a Clip with a non-constant bound."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c6"], name="relu6"),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
             helper.make_node("ReduceMax", ["x"], ["mx"], name="rmax", keepdims=0),
             helper.make_node("Clip", ["x", "", "mx"], ["cr"], name="clipdyn"),
             helper.make_node("Clip", ["x", "lo"], ["cl"], name="cliplo"),
             helper.make_node("Sum", ["c6", "r", "s", "t", "cr", "cl"], ["y"], name="sum")]
    inits = [init("lo", np.float32(0)), init("hi", np.float32(6))]
    return model(nodes, [("x", [2, 3])], [("y", [2, 3])], inits, opset=opset)


def qdq_summary(qm):
    """Describe the Q/DQ pairs of a quantized model.

    Returns ``{source: info}`` where ``source`` is the quantized float tensor
    (activation) or the original weight name (int8 initializers are named
    ``<weight>_quantized``), and ``info`` holds ``scale`` and ``zero_point``
    arrays, ``axis``, ``kind`` ("act", "int8-weight", "float-weight") and the
    names of the nodes reading the DQ output.
    """
    g = qm.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n.name)
    out = {}
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), None)
        src = n.input[0]
        if src in prod and prod[src].op_type == "QuantizeLinear":
            q = prod[src]
            origin = q.input[0]
            kind = "float-weight" if origin in inits else "act"
            assert list(q.input[1:]) == list(n.input[1:]), "Q and DQ must share scale and zero point"
        else:
            assert inits[src].dtype == np.int8
            origin = src[: -len("_quantized")]
            kind = "int8-weight"
        out[origin] = dict(scale=inits[n.input[1]], zero_point=inits[n.input[2]], axis=axis,
                           kind=kind, readers=sorted(readers.get(n.output[0], [])),
                           q=inits.get(src))
    return out


def fp32_amax(m, x):
    """Per-tensor max|x| of every quantizable tensor, from an FP32 run."""
    from int8batch.calib.ort_exec import ActivationRunner
    from int8batch.onnx.graph import quantizable_tensors
    acts = ActivationRunner(m, quantizable_tensors(m), intra_op_threads=1).run(x)
    return {k: float(np.abs(v).max()) for k, v in acts.items()}, acts


def input_of(m, seed=0):
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    return rng(seed).normal(size=shape).astype(np.float32)
