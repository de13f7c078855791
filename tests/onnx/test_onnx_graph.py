"""Which tensors are quantizable, bounded, and what the inputs are."""
import math

import numpy as np
import onnx
import pytest
from onnx import helper

import qdq_models as Q
from int8batch.errors import ModelError
from int8batch.onnx import bounded_tensors, input_info, load_model, quantizable_tensors
from int8batch.onnx.graph import constant_tensors, topological_order


def test_quantizable_excludes_weights_shapes_and_constants():
    m = Q.shape_ops()
    assert quantizable_tensors(m) == ["x", "r", "flat", "y"]
    const = constant_tensors(m)
    assert {"shp", "n", "n1", "newshape", "cst", "cst2", "zero", "minus1"} <= const
    assert not {"x", "r", "flat", "y"} & const


def test_quantizable_order_and_outputs():
    assert quantizable_tensors(Q.residual()) == ["x", "c1", "a", "c2", "b", "s", "y"]
    # initializers are never listed, even when the model lists them as inputs (IR < 4 style)
    m = Q.gemm(1)
    m.graph.input.append(helper.make_tensor_value_info("B", onnx.TensorProto.FLOAT, [4, 6]))
    assert quantizable_tensors(m) == ["x", "y"]


def test_topological_order_is_deterministic_for_shuffled_nodes():
    m = Q.residual()
    nodes = list(m.graph.node)
    shuffled = [nodes[k] for k in (5, 2, 0, 4, 3, 1)]
    del m.graph.node[:]
    m.graph.node.extend(shuffled)
    order = [m.graph.node[i].name for i in topological_order(m.graph)]
    assert order == ["conv1", "relu1", "conv2", "bn", "add", "relu2"]
    assert quantizable_tensors(m) == ["x", "c1", "a", "c2", "b", "s", "y"]


def test_integer_tensors_are_not_quantizable():
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=onnx.TensorProto.INT32),
             helper.make_node("Cast", ["xi"], ["y"], to=onnx.TensorProto.FLOAT)]
    m = Q.model(nodes, [("x", [2])], [("y", [2])])
    assert quantizable_tensors(m) == ["x", "y"]


def test_bounded_tensors():
    b = bounded_tensors(Q.clip_relu6())
    assert b == {"c6": (0.0, 6.0), "r": (0.0, math.inf), "s": (0.0, 1.0), "t": (-1.0, 1.0),
                 "cl": (0.0, math.inf)}       # "cr" has a computed bound: not listed


def test_bounded_clip_attributes_before_opset_11():
    nodes = [helper.make_node("Clip", ["x"], ["c"], min=0.0, max=6.0),
             helper.make_node("Clip", ["x"], ["d"], max=2.5),
             helper.make_node("Add", ["c", "d"], ["y"])]
    m = Q.model(nodes, [("x", [2])], [("y", [2])], opset=10)
    assert bounded_tensors(m) == {"c": (0.0, 6.0), "d": (-math.inf, 2.5)}


def test_bounded_clip_with_constant_node_bounds():
    nodes = [helper.make_node("Constant", [], ["hi"], value_float=6.0),
             helper.make_node("Constant", [], ["lo"], value=onnx.numpy_helper.from_array(
                 np.float32(0.0), "lo")),
             helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    assert bounded_tensors(Q.model(nodes, [("x", [2])], [("y", [2])])) == {"y": (0.0, 6.0)}


def test_input_info():
    (info,) = input_info(Q.shape_ops())
    assert info.name == "x" and info.shape == ("N", 2, 3) and info.dtype == np.float32
    m = Q.gemm(0)
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    assert input_info(m)[0].shape == (None, 6)


def test_load_model(tmp_path):
    m = Q.gemm(0)
    assert load_model(m) is m
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    assert load_model(p) == m and load_model(str(p)) == m
    assert load_model(m.SerializeToString()) == m
    with pytest.raises(ModelError, match="no such ONNX model") as ei:
        load_model(tmp_path / "nope.onnx")
    assert ei.value.path.endswith("nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a model" * 3)
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "junk.onnx")


def test_empty_or_graphless_model_file_is_a_model_error(tmp_path):
    # protobuf parses 0 bytes as an empty ModelProto: before issue 12 calibrate then died of an IndexError
    from int8batch.calib.ort_exec import ModelRunner
    from int8batch.errors import ModelError
    from int8batch.onnx.graph import load_model
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (str(empty), b""):
        with pytest.raises(ModelError, match="not an ONNX model"):
            load_model(bad)
    with pytest.raises(ModelError, match="0 bytes"):
        ModelRunner(str(empty))
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(str(tmp_path))


def test_model_facts_analyse_once_and_agree_with_the_functions(monkeypatch):
    """ModelFacts runs shape inference once; its bounded tensors and byte counts match a fresh analysis."""
    from int8batch.onnx import graph as G
    from int8batch.onnx.facts import ModelFacts
    model = Q.clip_relu6()
    calls = []
    infer0 = G._infer
    monkeypatch.setattr(G, "_infer", lambda m: calls.append(1) or infer0(m))
    facts = ModelFacts(model)
    bounded = facts.bounded
    assert len(calls) == 1
    monkeypatch.undo()
    assert bounded == {k: v for k, v in bounded_tensors(model).items()
                       if all(abs(float(b)) != math.inf for b in v)}
    assert facts.quantizable == quantizable_tensors(model)


def test_connected_groups_joins_chains_and_keeps_apart_what_is_not_linked():
    from int8batch.onnx.graph import connected_groups
    # two Concats chained through "k", a third apart; a repeated link and a self-link change nothing
    links = [("a", "k"), ("b", "k"), ("k", "m"), ("c", "m"), ("x", "y"), ("b", "k"), ("y", "y")]
    assert connected_groups(links) == [["a", "b", "c", "k", "m"], ["x", "y"]]
    assert connected_groups([]) == []
