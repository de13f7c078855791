"""The switchable sensitivity model against an independent fake-quantization in NumPy."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import int8batch
from int8batch.calib import api
from int8batch.calib.sensitivity import rank_sensitivity, switch_model
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
    res = api.calibrate(LENET, out, tmp_path / "all", batch_size=50, max_batches=2)
    assert len(res.kept_float) == api.SENSITIVITY_MAX_KEPT
    monkeypatch.setattr(api, "SENSITIVITY_THRESHOLD", 1.0)
    res = api.calibrate(LENET, out, tmp_path / "none", batch_size=50, max_batches=2)
    assert res.kept_float == []
    res = api.calibrate(LENET, out, tmp_path / "mm", method="minmax", batch_size=50, max_batches=2)
    assert res.kept_float == []  # pure INT8 unless asked for, outside method "auto"
    with pytest.raises(int8batch.errors.ConfigError, match="keep_float"):
        api.calibrate(LENET, out, tmp_path / "bad", batch_size=50, max_batches=2, keep_float="most")
