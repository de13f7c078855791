"""Where insert_qdq puts Q/DQ pairs, checked exactly on hand-made graphs."""
import numpy as np
import onnx
import pytest

import qdq_models as Q
from int8batch.errors import ModelError
from int8batch.onnx import insert_qdq, insert_qdq_with_report, plan_qdq

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def amax_all(m, value=12.7):
    from int8batch.onnx.graph import quantizable_tensors
    return {t: value for t in quantizable_tensors(m)}


def quantize(m, amax=None, **kw):
    qm, rep = insert_qdq_with_report(m, amax if amax is not None else amax_all(m), **kw)
    onnx.checker.check_model(qm, full_check=True)
    return Q.qdq_summary(qm), rep, qm


def acts(summary):
    return {k for k, v in summary.items() if v["kind"] == "act"}


def weights(summary):
    return {k: v["axis"] for k, v in summary.items() if v["kind"] != "act"}


def test_conv_inputs_and_weights():
    s, rep, qm = quantize(Q.conv_relu_conv(), {"x": 2.54, "c1": 1.0, "r1": 12.7, "y": 3.0})
    assert acts(s) == {"x", "r1"}                    # not c1 (conv output), not y (output)
    assert weights(s) == {"w1": 0, "w2": 0}
    assert s["x"]["readers"] == ["conv1"] and s["r1"]["readers"] == ["conv2"]
    assert s["x"]["scale"].dtype == np.float32 and s["x"]["scale"].shape == ()
    assert s["x"]["scale"] == np.float32(0.02) and s["r1"]["scale"] == np.float32(0.1)
    for v in s.values():
        assert v["zero_point"].dtype == np.int8 and not v["zero_point"].any()
    assert s["w1"]["scale"].shape == (4,) and s["w1"]["zero_point"].shape == (4,)
    assert rep.activations == {"x": np.float32(0.02), "r1": np.float32(0.1)}
    assert rep.opset == 17
    # graph output is still the float tensor produced by the conv
    assert [o.name for o in qm.graph.output] == ["y"]
    assert {n.op_type for n in qm.graph.node if "y" in n.output} == {"Conv"}


@pytest.mark.parametrize("trans_b,axis", [(0, 1), (1, 0)])
def test_gemm_weight_axis(trans_b, axis):
    s, _, _ = quantize(Q.gemm(trans_b))
    assert acts(s) == {"x"}
    assert weights(s) == {"B": axis}
    assert s["B"]["scale"].shape == (4,)
    assert "C" not in s                                 # bias stays float


def test_matmul_weight_and_activation_pair():
    s, _, _ = quantize(Q.matmul())
    assert acts(s) == {"x", "h", "ht"}
    assert weights(s) == {"W": 1} and s["W"]["scale"].shape == (5,)
    assert s["h"]["readers"] == ["mm2"]                 # the Transpose reads the float h
    assert s["ht"]["readers"] == ["mm2"]


def test_conv_transpose_axis_1():
    s, _, _ = quantize(Q.conv_transpose())
    assert weights(s) == {"w": 1} and s["w"]["scale"].shape == (3,)


def test_residual_add_skip_only():
    s, rep, _ = quantize(Q.residual())
    assert acts(s) == {"x", "a"}
    # one shared pair on the skip tensor, read by the next conv and by the Add
    assert s["a"]["readers"] == ["add", "conv2"]
    assert "b" not in s                                  # conv2 -> bn -> add is fused
    assert any(t == "b" and "residual branch" in why for t, why in rep.skipped)


def test_residual_add_both_from_convs_quantizes_the_earlier():
    s, _, qm = quantize(Q.add_two_convs())
    assert acts(s) == {"x", "p"}
    assert s["p"]["readers"] == ["add"]
    assert s["x"]["readers"] == ["convA", "convB"]      # one pair shared by both convs
    assert sum(n.op_type == "QuantizeLinear" for n in qm.graph.node) == 2


def test_add_without_convs_quantizes_both():
    s, _, _ = quantize(Q.add_no_conv())
    assert acts(s) == {"s", "t"}


def test_add_with_conv_output_used_twice_is_not_fused():
    m = Q.add_two_convs()
    m.graph.node.append(onnx.helper.make_node("Relu", ["q"], ["q2"], name="extra"))
    m.graph.output.append(onnx.helper.make_tensor_value_info("q2", onnx.TensorProto.FLOAT, [1, 3, 4, 4]))
    s, _, _ = quantize(m)
    assert acts(s) == {"x", "q"}        # q feeds two nodes, p is the fused branch now


def test_pooling_policies():
    s, _, _ = quantize(Q.pooling())
    # MaxPool output feeds conv2 -> its input r1 is quantized; GAP -> Flatten -> Gemm is not
    assert acts(s) == {"x", "r1", "m", "f"}
    assert s["r1"]["readers"] == ["pool"]
    s, _, _ = quantize(Q.pooling(), pools="always")
    assert acts(s) == {"x", "r1", "m", "f", "c2"}
    s, _, _ = quantize(Q.pooling(), pools="never")
    assert acts(s) == {"x", "m", "f"}
    with pytest.raises(ModelError, match="pools"):
        insert_qdq(Q.pooling(), amax_all(Q.pooling()), pools="sometimes")


def test_concat_inputs_share_the_largest_scale():
    amax = {"x": 1.27, "ca": 9.0, "ra": 2.54, "cb": 50.0, "rb": 6.0, "k": 5.08, "y": 1.0}
    s, rep, _ = quantize(Q.concat(), amax)
    assert acts(s) == {"x", "ra", "rb", "k"}
    shared = np.float32(6.0 / 127)
    assert s["ra"]["scale"] == shared and s["rb"]["scale"] == shared and s["k"]["scale"] == shared
    assert s["x"]["scale"] == np.float32(0.01)
    assert rep.groups == [["k", "ra", "rb"]]


def test_a_concat_input_left_float_is_still_covered_and_a_float_concat_ties_nothing():
    amax = {"x": 1.27, "ca": 9.0, "ra": 2.54, "cb": 50.0, "rb": 6.0, "k": 5.08, "y": 1.0}
    # rb kept float (the sensitivity pass): the int8 Concat output still holds its values, so the shared
    # scale is still its 6.0; ra and k share it, rb is read float
    rest = {t: v for t, v in amax.items() if t != "rb"}
    s, rep, _ = quantize(Q.concat(), rest, on_missing="skip", kept_amax={"rb": 6.0})
    assert acts(s) == {"x", "ra", "k"}
    shared = np.float32(6.0 / 127)
    assert s["ra"]["scale"] == shared and s["k"]["scale"] == shared
    assert rep.groups == [["k", "ra", "rb"]]
    # without kept_amax (a cache that left rb out) the group covers what it was given
    s, _, _ = quantize(Q.concat(), rest, on_missing="skip")
    assert s["ra"]["scale"] == s["k"]["scale"] == np.float32(5.08 / 127)
    # the Concat output kept float: it runs in float, its inputs keep their own scales
    rest = {t: v for t, v in amax.items() if t != "k"}
    s, rep, _ = quantize(Q.concat(), rest, on_missing="skip", kept_amax={"k": 5.08})
    assert acts(s) == {"x", "ra", "rb"}
    assert s["ra"]["scale"] == np.float32(2.54 / 127) and s["rb"]["scale"] == np.float32(6.0 / 127)
    assert rep.groups == []


def test_softmax_output_not_quantized():
    s, rep, _ = quantize(Q.softmax_attention())
    assert acts(s) == {"x", "v"}
    assert ("s", "Softmax output kept in high precision") in rep.skipped


def test_missing_amax_raises_with_the_list():
    m = Q.residual()
    with pytest.raises(ModelError, match=r"2 tensors need an amax.*x, a") as ei:
        insert_qdq(m, {"c1": 1.0})
    assert isinstance(ei.value, ValueError)
    qm, rep = insert_qdq_with_report(m, {"x": 1.0}, on_missing="skip")
    assert rep.missing == ["a"] and ("a", "no amax given") in rep.skipped
    assert acts(Q.qdq_summary(qm)) == {"x"}


def test_plan_is_deterministic_and_pure():
    m = Q.concat()
    before = m.SerializeToString()
    p1, p2 = plan_qdq(m), plan_qdq(m)
    assert p1 == p2 and m.SerializeToString() == before
    insert_qdq(m, amax_all(m))
    assert m.SerializeToString() == before


def test_weights_constant_node_and_shared_weight():
    """A weight given by a Constant node, and one initializer used by two convs."""
    m = Q.add_two_convs()
    g = m.graph
    wa = [t for t in g.initializer if t.name == "wa"][0]
    const = onnx.helper.make_node("Constant", [], ["wa"], name="wconst", value=wa)
    keep = [t for t in g.initializer if t.name != "wa"]
    del g.initializer[:]
    g.initializer.extend(keep)
    g.node.insert(0, const)
    s, _, qm = quantize(m)
    assert weights(s) == {"wa": 0, "wb": 0}
    assert not any(n.op_type == "Constant" for n in qm.graph.node)
    shared = Q.qdq_summary(qm)["wb"]
    assert shared["readers"] == ["convB"]
    m2 = Q.add_two_convs()
    m2.graph.node[0].input[1] = "wb"    # both convs share wb; wa is unused
    s2, _, qm2 = quantize(m2)
    assert weights(s2) == {"wb": 0} and s2["wb"]["readers"] == ["convA", "convB"]
    assert not any(t.name == "wb" for t in qm2.graph.initializer)   # replaced by int8


def test_opset_raised_to_13():
    m = Q.gemm(1)
    m.opset_import[0].version = 11
    s, rep, qm = quantize(m)
    assert rep.opset == 13 and qm.opset_import[0].version == 13
    assert weights(s) == {"B": 0}
    with pytest.raises(ModelError, match="cannot lower"):
        insert_qdq(Q.gemm(1), {"x": 1.0}, opset=13)


def test_float_weight_format_keeps_fp32_weights():
    s, _, qm = quantize(Q.conv_relu_conv(), weight_format="float")
    assert weights(s) == {"w1": 0, "w2": 0}
    assert s["w1"]["kind"] == "float-weight"
    assert any(t.name == "w1" and t.data_type == onnx.TensorProto.FLOAT
               for t in qm.graph.initializer)


def test_per_tensor_weights_option():
    s, _, _ = quantize(Q.conv_relu_conv(), per_channel_weights=False)
    assert weights(s) == {"w1": None, "w2": None}
    assert s["w1"]["scale"].shape == ()
