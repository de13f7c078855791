"""The switchable sensitivity model against an independent fake-quantization in NumPy."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import int8batch
from int8batch.calib import api
from int8batch.calib.sensitivity import choose_kept, rank_sensitivity, switch_model
from int8batch.packing.sources import DATA_DIR

LENET = os.path.join(DATA_DIR, "lenet.onnx")


def _run(model, feed):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def test_switches_off_is_fp32_and_input_switch_is_numpy_fake_quant():
    m = onnx.load(LENET)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    amax = {"data": 0.8, "/relu1/Relu_output_0": 7.0}
    sm, switches = switch_model(m, amax, list(amax))
    off = {sw: np.array(0, np.float32) for sw in switches}
    np.testing.assert_array_equal(_run(sm, {"data": x, **off}), _run(m, {"data": x}))
    # quantizing the input alone equals running FP32 on NumPy-fake-quantized pixels
    s = np.float32(0.8 / 127)
    xq = (np.clip(np.rint(x / s), -128, 127) * s).astype(np.float32)
    on = dict(off, **{switches[0]: np.array(1, np.float32)})
    np.testing.assert_allclose(_run(sm, {"data": x, **on}), _run(m, {"data": xq}), rtol=1e-5, atol=1e-7)


def test_ranking_and_auto_rule(tmp_path, monkeypatch):
    m = onnx.load(LENET)
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    # a tiny amax clips the input hard: that tensor must rank first
    amax = {"data": 0.05, "/pool1/MaxPool_output_0": 5.0, "/relu1/Relu_output_0": 20.0}
    ranked = rank_sensitivity(m, amax, x, list(amax))
    assert ranked[0][0] == "data" and ranked[0][1] > 10 * ranked[1][1]
    out = tmp_path / "b"
    int8batch.pack("mnist-test", out, batch_size=50, limit=100)
    monkeypatch.setattr(api, "SENSITIVITY_THRESHOLD", 0.0)
    spied = {}

    def spy(*a, **k):
        spied["ranked"] = rank_sensitivity(*a, **k)
        return spied["ranked"]
    monkeypatch.setattr(api, "rank_sensitivity", spy)
    res = api.calibrate(LENET, out, tmp_path / "all", batch_size=50, max_batches=2)
    # LeNet's multiply-adds per image by hand: conv1 20x24x24 outputs x 25 = 288000, conv2 50x8x8 x 500 =
    # 1600000, ip1 500 x 800 = 400000, ip2 10 x 500 = 5000 (2293000): of the activations only the ones
    # whose readers stay within the 10 % budget can be kept (data: 12.6 %, pool1: 69.8 %, flatten: 17.4 %
    # never; relu1: 0.2 %; tensors read by no counted node cost nothing), in ranking order
    share = {"data": 288000 / 2293000, "/pool1/MaxPool_output_0": 1600000 / 2293000,
             "/Flatten_output_0": 400000 / 2293000, "/relu1/Relu_output_0": 5000 / 2293000}
    want, used = [], 0.0
    for t, _ in spied["ranked"]:
        if used + share.get(t, 0.0) <= 0.10 and len(want) < 10:
            want.append(t)
            used += share.get(t, 0.0)
    assert res.kept_float == want and len(want) >= 2
    assert not {"data", "/pool1/MaxPool_output_0", "/Flatten_output_0"} & set(want)
    monkeypatch.setattr(api, "rank_sensitivity", rank_sensitivity)
    monkeypatch.setattr(api, "SENSITIVITY_THRESHOLD", 1.0)
    res = api.calibrate(LENET, out, tmp_path / "none", batch_size=50, max_batches=2)
    assert res.kept_float == []
    res = api.calibrate(LENET, out, tmp_path / "mm", method="minmax", batch_size=50, max_batches=2)
    assert res.kept_float == []  # pure INT8 unless asked for, outside method "auto"
    with pytest.raises(int8batch.errors.ConfigError, match="keep_float"):
        api.calibrate(LENET, out, tmp_path / "bad", batch_size=50, max_batches=2, keep_float="most")


# ------------------------------------- issue 12: float16 and old-opset models
def _convnet(elem, opset):
    """x (N,1,28,28) -> Conv 4x3x3 -> Relu -> Flatten -> Gemm 10: all in ``elem`` (FLOAT or FLOAT16)."""
    from onnx import TensorProto, helper, numpy_helper
    npdt = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(npdt), "w1"),
             numpy_helper.from_array(np.full(4, 0.1, npdt), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.1, (10, 4 * 26 * 26)).astype(npdt), "w2"),
             numpy_helper.from_array(np.zeros(10, npdt), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Flatten", ["r1"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", elem, ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("y", elem, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 13 else 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("kind", ["fp16", "opset7"])
def test_sensitivity_pass_on_float16_and_opset7_models(kind):
    # before issue 12 both raised a raw ONNX Runtime exception (QuantizeLinear on float16 / at opset 7)
    from onnx import TensorProto
    m = _convnet(TensorProto.FLOAT16, 13) if kind == "fp16" else _convnet(TensorProto.FLOAT, 7)
    x = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)   # float32, as the batch files
    amax = {"x": 0.02, "r1": 50.0}               # the input clipped hard: it must rank first
    ranked = rank_sensitivity(m, amax, x, list(amax))
    assert [t for t, _ in ranked] == ["x", "r1"] and ranked[0][1] > 10 * ranked[1][1] > 0
    sm, switches = switch_model(m, amax, list(amax))
    feed = {"x": x.astype(np.float16 if kind == "fp16" else np.float32),
            **{sw: np.array(0, np.float32) for sw in switches}}
    base = onnx.ModelProto()
    base.CopyFrom(m)
    # switches off: the model itself (float16 kernels may round differently inside the If branches)
    tol = dict(rtol=2e-2, atol=2e-3) if kind == "fp16" else dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(sm, feed), _run(base, {"x": feed["x"]}), **tol)


def test_calibrate_default_on_an_opset7_model(tmp_path, mnist):
    from onnx import TensorProto
    path = tmp_path / "op7.onnx"
    onnx.save(_convnet(TensorProto.FLOAT, 7), str(path))
    res = api.calibrate(str(path), mnist, tmp_path / "out", batch_size=50, max_batches=2)
    assert res.images == 100 and (tmp_path / "out" / "model.qdq.onnx").exists()


def test_calibrate_default_on_a_float16_model(tmp_path, mnist):
    # the sensitivity pass runs; the float32 Q/DQ writer refuses with the fix, and --no-qdq works
    from onnx import TensorProto
    from int8batch.errors import ModelError
    path = tmp_path / "fp16.onnx"
    onnx.save(_convnet(TensorProto.FLOAT16, 13), str(path))
    with pytest.raises(ModelError, match="float16.*--no-qdq"):
        api.calibrate(str(path), mnist, tmp_path / "out", batch_size=50, max_batches=2)
    res = api.calibrate(str(path), mnist, tmp_path / "out2", batch_size=50, max_batches=2, write_qdq=False)
    assert res.images == 100 and (tmp_path / "out2" / "calibration.cache").exists()


def test_sensitivity_pass_that_cannot_run_is_a_calibration_error(monkeypatch):
    from int8batch.calib import sensitivity
    from int8batch.errors import CalibrationError
    m = onnx.load(LENET)
    monkeypatch.setattr(sensitivity, "switch_model", lambda *a, **k: (_ for _ in ()).throw(
        int8batch.errors.ModelError("cannot convert")))
    with pytest.raises(CalibrationError, match=r"--keep-float 0"):
        rank_sensitivity(m, {"data": 1.0}, np.zeros((1, 1, 28, 28), np.float32), ["data"])


def test_group_search_finds_the_top_tensors_of_an_additive_error():
    # errors of separate tensors add up in the output (to first order): the beam search must find
    # the largest ones with far fewer measurements than one per tensor
    from int8batch.calib import sensitivity as S
    rng = np.random.default_rng(3)
    for n in (49, 121, 373):
        w = rng.pareto(1.5, n) * 1e-5
        calls = []

        def error(group):
            calls.append(len(group))
            return float(w[group].sum())
        found = S._group_search(n, error, beam=6)
        top = list(np.argsort(-w)[:3])
        assert [k for k, _ in found[:3]] == top
        assert all(e == w[k] for k, e in found)        # singletons carry individual errors
        assert len(calls) < n and (n < 100 or len(calls) < n / 2)


def test_group_search_agrees_with_exhaustive_on_a_real_model(mnist):
    from int8batch.calib import sensitivity as S
    res = api.calibrate(LENET, mnist, None, method="mse", max_batches=1, keep_float=0)
    m = onnx.load(LENET)
    cands = list(res.amax)
    data = int8batch.BatchSet(mnist).images(0, 4)[0]
    full = S.rank_sensitivity(m, res.amax, np.ascontiguousarray(data), cands)
    grouped = S.rank_sensitivity(m, res.amax, np.ascontiguousarray(data), cands, exhaustive_max=0, beam=3)
    assert [t for t, _ in grouped[:3]] == [t for t, _ in full[:3]]
    assert dict(grouped)[full[0][0]] == pytest.approx(full[0][1], rel=1e-12)


def test_choose_kept_by_hand():
    ranked = [("a", 0.5), ("b", 0.4), ("c", 0.3), ("d", 0.2), ("e", 1e-5)]
    # threshold and count
    assert choose_kept(ranked, 1e-4, 10) == (["a", "b", "c", "d"], 0.0)
    assert choose_kept(ranked, 0.35, 10) == (["a", "b"], 0.0)
    assert choose_kept(ranked, 1e-4, 2) == (["a", "b"], 0.0)
    # the budget passes over a tensor that would exceed it and takes the next; unknown tensors cost nothing
    share = {"a": 0.04, "b": 0.07, "c": 0.05, "d": 0.5}
    kept, used = choose_kept(ranked, 1e-4, 10, share, 0.10)
    assert kept == ["a", "c"] and used == pytest.approx(0.09)
    kept, used = choose_kept(ranked, 0.0, 10, share, 0.10)
    assert kept == ["a", "c", "e"] and used == pytest.approx(0.09)
    assert choose_kept(ranked, 1e-4, 10, {}, 0.0) == (["a", "b", "c", "d"], 0.0)
    assert choose_kept([], 0.0, 10, share, 0.1) == ([], 0.0)


def test_informative_images_by_hand():
    from int8batch.calib.sensitivity import informative_images
    # a classifier: every image carries about the mean energy -> the first four, as before
    assert informative_images([1.0, 1.3, 0.5, 0.9, 1.2, 0.8], 4, 0.1) == [0, 1, 2, 3]
    # a detector on photos without text: mean 9.9, so images of 0.99 or more qualify; the first four of those
    e = [0.0, 0.0, 20.0, 0.0, 0.5, 30.0, 1.0, 0.0, 7.0, 40.5]
    assert informative_images(e, 4, 0.1) == [2, 5, 6, 8]
    # fewer qualify than asked: the most energetic others fill up (0.5 before the zeros)
    assert informative_images([0.0, 50.0, 0.0, 0.5], 3, 0.1) == [0, 1, 3]     # then the first zero
    assert informative_images([0.0, 50.0, 0.0, 0.5], 2, 0.1) == [1, 3]
    # nothing to go by: the first ones
    assert informative_images([0.0, 0.0, 0.0], 2, 0.1) == [0, 1]
    assert informative_images([1.0, 2.0], 4, 0.1) == [0, 1]


def test_the_sensitivity_pass_measures_on_images_whose_output_shows_something(tmp_path, monkeypatch):
    """Found on PP-OCR's text detector: its map is empty on most photos, and the first four images of the batch
    (all empty) ranked noise.  Here: y = Relu(x - 0.6) through an identity 1x1 conv, averaged: zero for the dark
    images of the pack."""
    from onnx import TensorProto, helper, numpy_helper
    import cv2
    root = tmp_path / "imgs"
    root.mkdir()
    levels = [10, 20, 30, 200, 15, 220, 25, 240]          # bright images 3, 5, 7 only
    for i, v in enumerate(levels):
        cv2.imwrite(str(root / f"{i}.png"), np.full((8, 8, 3), v, np.uint8))
    int8batch.pack(root, tmp_path / "b", preset="imagenet-torch", size=8, resize="direct", resize_size=8,
                   crop="none", mean=0.0, std=1.0, scale=1 / 255, batch_size=8)
    nodes = [helper.make_node("Sub", ["x", "t"], ["d"]), helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["c"]),          # identity 1x1: something to quantize
             helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
                          [numpy_helper.from_array(np.float32(0.6), "t"),
                           numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    import int8batch.calib.sensitivity as sens
    real, seen = sens.informative_images, {}

    def spy(energies, count, min_fraction):
        seen["energy"], seen["chosen"] = np.array(energies), real(energies, count, min_fraction)
        return seen["chosen"]
    monkeypatch.setattr(sens, "informative_images", spy)
    monkeypatch.setattr(api, "SENSITIVITY_IMAGES", 2)
    api.calibrate(str(tmp_path / "m.onnx"), tmp_path / "b", tmp_path / "c", batch_size=8)
    # the FP32 output energy of each image, by hand: 3 channels of mean(relu(v / 255 - 0.6)), squared
    want = np.array([3 * max(v / 255 - 0.6, 0.0) ** 2 for v in levels])
    np.testing.assert_allclose(seen["energy"], want, rtol=1e-5, atol=1e-12)
    assert seen["chosen"] == [3, 5]      # the first two bright images, not images 0 and 1 (an all-zero output)
