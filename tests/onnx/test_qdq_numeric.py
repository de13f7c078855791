"""Scales, int8 weights and outputs of Q/DQ models against NumPy and the ONNX reference."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import qdq_models as Q
from int8batch.errors import ModelError
from int8batch.calib.convert import qdq_from_cache
from int8batch.onnx import (compare_names, insert_qdq, insert_qdq_with_report,
                            qdq_from_scales, weight_scales)
from int8batch.onnx.qdq import MIN_SCALE

MODELS = {
    "conv": Q.conv_relu_conv, "gemm0": lambda: Q.gemm(0), "gemm1": lambda: Q.gemm(1),
    "matmul": Q.matmul, "deconv": Q.conv_transpose, "residual": Q.residual,
    "two_convs": Q.add_two_convs, "pooling": Q.pooling, "concat": Q.concat,
    "softmax": Q.softmax_attention,
}


def ort_run(m, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def fake_quant(x, scale, axis=None):
    """NumPy twin of QuantizeLinear -> DequantizeLinear (int8, zero point 0)."""
    s = np.asarray(scale, np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return np.clip(np.rint(x / s), -128, 127).astype(np.float32) * s


def np_weight_scales(w, axis):
    a = np.abs(w.astype(np.float64))
    red = tuple(k for k in range(w.ndim) if k != axis)
    return (a.max(axis=red) / 127.0).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_runs_in_ort_close_to_fp32_and_to_the_reference(name):
    m = MODELS[name]()
    x = Q.input_of(m)
    amax, acts = Q.fp32_amax(m, x)
    qm = insert_qdq(m, amax)
    onnx.checker.check_model(qm, full_check=True)
    y_fp32 = acts[m.graph.output[0].name]
    y_ort = ort_run(qm, x)
    # onnx's reference evaluator implements DequantizeLinear from opset 19 on
    q19 = insert_qdq(m, amax, opset=19)
    assert q19.opset_import[0].version == 19
    y_ref = ReferenceEvaluator(q19).run(None, {"x": x})[0]
    span = np.abs(y_fp32).max()
    # ORT's int8 kernels agree with the ONNX reference semantics of the same Q/DQ graph
    np.testing.assert_allclose(y_ort, y_ref, rtol=0, atol=2e-3 * span)
    # and quantization noise stays a few steps of 8 bits
    assert np.abs(y_ort - y_fp32).max() <= 0.04 * span


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_equals_numpy_fake_quant(trans_b):
    m = Q.gemm(trans_b)
    x = Q.input_of(m, seed=3)
    b = onnx.numpy_helper.to_array(m.graph.initializer[0])
    c = onnx.numpy_helper.to_array(m.graph.initializer[1])
    amax_x = float(np.abs(x).max())
    qm = insert_qdq(m, {"x": amax_x})
    axis = 0 if trans_b else 1
    sw = np_weight_scales(b, axis)
    xq = fake_quant(x, np.float32(amax_x / 127))
    bq = fake_quant(b, sw, axis)
    want = xq @ (bq.T if trans_b else bq) + c
    np.testing.assert_allclose(ort_run(qm, x), want, rtol=1e-5, atol=1e-5)
    # error bound against FP32 from the step sizes: |dy| <= sum |x| dW/2 + |W| dx/2 + dx dW/4
    dx = amax_x / 127
    bt = b.T if trans_b else b
    dw = np.broadcast_to(sw[None, :], bt.shape)      # sw is per output column either way
    bound = np.abs(x) @ (dw / 2) + (dx / 2) * np.abs(bt).sum(0) + (dx / 4) * dw.sum(0)
    y = ort_run(qm, x)
    assert np.all(np.abs(y - (x @ bt + c)) <= bound + 1e-5)


@pytest.mark.parametrize("name,wname,axis", [("conv", "w1", 0), ("conv", "w2", 0),
                                             ("deconv", "w", 1), ("gemm0", "B", 1),
                                             ("gemm1", "B", 0), ("matmul", "W", 1)])
def test_weight_scales_and_int8_values(name, wname, axis):
    m = MODELS[name]()
    w = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}[wname]
    qm, rep = insert_qdq_with_report(m, {k: 1.0 for k in Q.fp32_amax(m, Q.input_of(m))[0]})
    s = Q.qdq_summary(qm)[wname]
    want = np_weight_scales(w, axis)
    np.testing.assert_array_equal(s["scale"], want)
    np.testing.assert_array_equal(weight_scales(w, axis), want)
    assert s["axis"] == axis and rep.weights[wname] == axis
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / want.reshape(shape)), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(s["q"], q)
    # the largest weight of each channel maps to +-127
    assert (np.abs(q).max(axis=tuple(k for k in range(w.ndim) if k != axis)) == 127).all()


def test_zero_amax_and_zero_channel_get_a_tiny_positive_scale():
    m = Q.conv_relu_conv()
    w1 = [t for t in m.graph.initializer if t.name == "w1"][0]
    arr = onnx.numpy_helper.to_array(w1).copy()
    arr[1] = 0
    w1.CopyFrom(onnx.numpy_helper.from_array(arr, "w1"))
    qm = insert_qdq(m, {"x": 0.0, "r1": 1.0})
    s = Q.qdq_summary(qm)
    assert s["x"]["scale"] == np.float32(MIN_SCALE) and s["x"]["scale"] > 0
    assert s["w1"]["scale"][1] == np.float32(MIN_SCALE) and not s["w1"]["q"][1].any()
    ort_run(qm, Q.input_of(m))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ModelError, match="amax"):
            insert_qdq(m, {"x": bad, "r1": 1.0})


def test_scales_given_directly_are_used_bit_for_bit():
    scale = np.float32(0.0123456789)
    qm = insert_qdq(Q.conv_relu_conv(), act_scales={"x": float(scale), "r1": 0.5})
    s = Q.qdq_summary(qm)
    assert s["x"]["scale"] == scale and s["r1"]["scale"] == np.float32(0.5)
    with pytest.raises(ModelError, match="exactly one"):
        insert_qdq(Q.conv_relu_conv(), {"x": 1.0}, act_scales={"x": 1.0})
    with pytest.raises(ModelError, match="> 0"):
        insert_qdq(Q.conv_relu_conv(), act_scales={"x": 0.0, "r1": 1.0})


def test_compare_names():
    m = Q.residual()
    missing, extra = compare_names(m, {"x": 1.0, "c1": 2.0, "(Unnamed Layer* 3) [Shuffle]": 1.0})
    assert missing == ["a"] and extra == ["(Unnamed Layer* 3) [Shuffle]"]
    assert compare_names(m, {"x": 1, "a": 1}) == ([], [])


def test_qdq_from_scales_writes_atomically(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "sub" / "m.int8.onnx"
    onnx.save(Q.residual(), src)
    amax = {"x": 2.0, "a": 3.0, "zzz": 1.0}
    rep = qdq_from_scales(src, amax, out)
    assert rep.extra == ["zzz"] and set(rep.activations) == {"x", "a"}
    assert sorted(os.listdir(out.parent)) == ["m.int8.onnx"]     # no temp file left
    qm = onnx.load(out)
    onnx.checker.check_model(qm, full_check=True)
    assert Q.qdq_summary(qm)["a"]["scale"] == np.float32(3.0 / 127)
    with pytest.raises(ModelError, match="needs? an amax"):
        qdq_from_scales(src, {"x": 1.0}, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_qdq_from_cache(tmp_path):
    from int8batch.calib import cache
    src = tmp_path / "m.onnx"
    onnx.save(Q.residual(), src)
    sx, sa = np.float32(0.015), np.float32(0.25)
    hexes = [np.array([s], ">f4").tobytes().hex() for s in (sx, sa)]
    (tmp_path / "c.cache").write_text(
        f"TRT-100300-EntropyCalibration2\nx: {hexes[0]}\na: {hexes[1]}\nonly_in_trt: 3c000000\n")
    (tmp_path / "dr.txt").write_text("x:1.905\na:31.75\n")
    rep = qdq_from_cache(src, tmp_path / "c.cache", tmp_path / "a.onnx")
    s = Q.qdq_summary(onnx.load(tmp_path / "a.onnx"))
    assert s["x"]["scale"] == sx and s["a"]["scale"] == sa and rep.extra == ["only_in_trt"]
    qdq_from_cache(src, tmp_path / "dr.txt", tmp_path / "b.onnx")
    s = Q.qdq_summary(onnx.load(tmp_path / "b.onnx"))
    assert s["x"]["scale"] == np.float32(1.905 / 127) and s["a"]["scale"] == np.float32(0.25)
    # TensorRT writes scale 0 for an all-zero tensor: it becomes the tiny positive scale
    (tmp_path / "z.cache").write_text(f"TRT-100300-EntropyCalibration2\nx: 00000000\na: {hexes[1]}\n")
    qdq_from_cache(src, tmp_path / "z.cache", tmp_path / "z.onnx")
    assert Q.qdq_summary(onnx.load(tmp_path / "z.onnx"))["x"]["scale"] == np.float32(MIN_SCALE)
    del cache


def test_an_input_model_that_fails_the_checker_is_not_blamed_on_int8batch(caplog):
    from onnx import TensorProto, helper
    m = Q.conv_relu_conv()
    out = m.graph.output[0]
    out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, None))  # no shape: full_check fails
    with pytest.raises(Exception):
        onnx.checker.check_model(m, full_check=True)
    amax, _ = Q.fp32_amax(m, Q.input_of(m))
    qm = insert_qdq(m, amax)
    assert any("input model itself fails onnx.checker" in r.getMessage() for r in caplog.records)
    x = Q.input_of(m)
    y, yq = ort_run(m, x), ort_run(qm, x)
    assert np.abs(yq - y).max() < 0.05 * np.abs(y).max()
