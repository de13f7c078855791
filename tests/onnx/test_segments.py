"""int8batch.onnx.segments: a model cut into pieces run one after another gives the whole model's outputs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from int8batch.errors import ModelError
from int8batch.onnx import insert_qdq_with_report
from int8batch.onnx.segments import segment_model, split

import qdq_models as Q


def _net():
    """Conv -> Clip -> depthwise Conv -> Add (skip) -> a Flatten made of Shape/Gather/Concat/Reshape -> Gemm,
    dynamic batch: the shape tensors are not per image."""
    r = Q.rng(7)
    w1 = r.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b1 = r.normal(size=4).astype(np.float32)
    wd = r.normal(size=(4, 1, 3, 3)).astype(np.float32)
    bd = r.normal(size=4).astype(np.float32)
    wg = r.normal(size=(5, 4 * 4 * 4)).astype(np.float32)
    bg = r.normal(size=5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], pads=[1, 1, 1, 1], group=4),
             helper.make_node("Add", ["d1", "r1"], ["s1"]),
             helper.make_node("Shape", ["s1"], ["shp"]),
             helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["flat_shape"], axis=0),
             helper.make_node("Reshape", ["s1", "flat_shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)]
    inits = [Q.init("w1", w1), Q.init("b1", b1), Q.init("wd", wd), Q.init("bd", bd), Q.init("wg", wg),
             Q.init("bg", bg), Q.init("lo", np.float32(0)), Q.init("hi", np.float32(6)),
             Q.init("zero", np.array([0], np.int64)), Q.init("minus1", np.array([-1], np.int64))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(m, feed, outputs=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(outputs, feed)


@pytest.mark.parametrize("quantized", [False, True])
def test_segments_run_in_order_give_the_whole_models_output(quantized):
    m = _net()
    if quantized:   # weight DequantizeLinear nodes: constant-only, carried with their reader
        m, _ = insert_qdq_with_report(m, {"x": 2.0, "r1": 6.0, "s1": 8.0, "f": 8.0})
    cuts = {"d1", "y"}
    segments, last_use = split(m, cuts)
    assert [s.cut for s in segments] == [None, "d1", "y"]
    weights = {t.name for t in m.graph.initializer}
    consts = {o for s in segments for n in s.nodes if all(x in weights for x in n.input if x) for o in n.output}
    made = {"x"}
    for k, s in enumerate(segments):
        assert set(s.inputs) <= made, k                     # every input made by an earlier segment
        assert not set(s.inputs) & consts, k                # no weight travels between segments
        made |= set(s.outputs)
        for t in s.inputs:
            assert last_use[t] >= k
    assert sum(len(s.nodes) for s in segments) == len(m.graph.node)
    x = Q.rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32) * 2
    store = {"x": x}
    for s in segments:
        types = {t: onnx.helper.np_dtype_to_tensor_dtype(store[t].dtype) for t in s.inputs}
        outs = _run(segment_model(m, s, types), {t: store[t] for t in s.inputs}, list(s.outputs))
        store.update(zip(s.outputs, outs))
    # the same arithmetic; ONNX Runtime may fuse the float Conv+Add of the whole model differently
    want = _run(m, {"x": x})[0]
    np.testing.assert_allclose(store["y"], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_segment_model_takes_initializers_as_they_are_now():
    m = _net()
    segments, _ = split(m, {"d1"})
    inits = {t.name: t for t in m.graph.initializer}
    changed = onnx.TensorProto()
    changed.CopyFrom(inits["bd"])
    changed.CopyFrom(onnx.numpy_helper.from_array(np.full(4, 100.0, np.float32), "bd"))
    inits = dict(inits, bd=changed)
    x = Q.rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    first = _run(segment_model(m, segments[0], {"x": TensorProto.FLOAT}), {"x": x}, list(segments[0].outputs))
    store = dict(zip(segments[0].outputs, first))
    types = {t: TensorProto.FLOAT if store[t].dtype == np.float32 else TensorProto.INT64 for t in segments[1].inputs}
    y = _run(segment_model(m, segments[1], types, inits), {t: store[t] for t in segments[1].inputs}, ["y"])[0]
    whole = onnx.ModelProto()
    whole.CopyFrom(m)
    next(t for t in whole.graph.initializer if t.name == "bd").CopyFrom(changed)
    want = _run(whole, {"x": x})[0]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert not np.allclose(y, _run(m, {"x": x})[0])


def test_a_model_with_subgraphs_is_refused():
    m = _net()
    then = helper.make_graph([helper.make_node("Identity", ["y"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    m.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=then))
    with pytest.raises(ModelError, match="subgraphs"):
        split(m, {"d1"})
