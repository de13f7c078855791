"""int8batch.onnx.layers.reader_macs: multiply-adds per image, against hand counts."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from int8batch.onnx.layers import reader_macs


def _model(nodes, inits, shape, out_shape):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.asarray(v, np.int64 if k == "shape" else np.float32), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_every_counted_kind_by_hand():
    z = np.zeros
    nodes = [
        # 3x16x16 -> grouped 3x3 conv (group 3, 6 out, pad 1): 6x16x16 outputs x (1 x 3 x 3) = 13824
        helper.make_node("Conv", ["x", "w1"], ["a"], group=3, pads=[1, 1, 1, 1]),
        # stride-2 transposed conv 6 -> 4, kernel 2: 16x16 input positions x (6 x 4 x 2 x 2) = 24576
        helper.make_node("ConvTranspose", ["a", "w2"], ["b"], strides=[2, 2]),        # 4x32x32
        helper.make_node("Reshape", ["b", "shape"], ["r"]),                           # (4, 1024)
        # attention-like product of two activations: (4, 1024) x (1024, 4) -> 4x4 outputs x 1024 = 16384
        helper.make_node("Transpose", ["r"], ["rt"], perm=[1, 0]),
        helper.make_node("MatMul", ["r", "rt"], ["s"]),
        # Gemm with transB: (4, 4) x (5, 4)^T -> 4x5 outputs x 4 = 80
        helper.make_node("Gemm", ["s", "w3"], ["y"], transB=1),
    ]
    m = _model(nodes, {"w1": z((6, 1, 3, 3)), "w2": z((6, 4, 2, 2)), "shape": [4, 1024], "w3": z((5, 4))},
               ["N", 3, 16, 16], [4, 5])
    readers, total = reader_macs(m, (3, 16, 16))
    assert total == 13824 + 24576 + 16384 + 80
    assert readers["x"] == 13824 and readers["a"] == 24576 and readers["s"] == 80
    assert readers["r"] == 16384 and readers["rt"] == 16384       # both operands of the product read
    assert "b" not in readers                                      # Reshape is free


def test_uncountable_models_give_none():
    # the batch files' image rank differs from the input's, or a counted node's output shape is unknown
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    m = _model([conv], {"w": np.zeros((2, 3, 1, 1))}, ["N", 3, "H", "W"], ["N", 2, "H", "W"])
    assert reader_macs(m, (3, 8, 8))[1] == 2 * 8 * 8 * 3
    assert reader_macs(m, (3, 8)) is None
    dyn = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    m = helper.make_model(helper.make_graph(
        dyn, "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4]),
                   helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((48, 2), np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert reader_macs(m, (3, 4, 4)) is None                       # the reshape's target comes at run time
