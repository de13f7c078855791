"""calibrate(): the streaming pass, the artefacts and their agreement, against independent references."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import int8batch
from int8batch.calib import api
from int8batch.calib.cache import read_dynamic_range, read_trt_cache
from int8batch.cli.main import main
from int8batch.errors import CalibrationError, ConfigError, ModelError
from int8batch.packing.sources import DATA_DIR

LENET = os.path.join(DATA_DIR, "lenet.onnx")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "b"
    int8batch.pack("mnist", out, batch_size=50, limit=300)
    return out


def _all_outputs(model_path, names, data):
    """Independent reference: every named tensor as a graph output, one plain ORT session."""
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have and n != m.graph.input[0].name:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": data})))
    outs["data"] = data
    return outs


def test_minmax_is_the_observed_max_and_artefacts_agree(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path, method="minmax", batch_size=50, max_batches=4)
    assert res.batches == 4 and res.images == 200
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 200)[0])
    ref = _all_outputs(LENET, list(res.amax), data)
    for name, amax in res.amax.items():
        assert amax == pytest.approx(float(np.abs(ref[name]).max()), rel=1e-6), name
    cache = read_trt_cache(res.paths["cache"])
    assert cache.algorithm == "MinMaxCalibration" and list(cache.scales) == list(res.amax)
    for name, amax in res.amax.items():
        assert cache.scales[name] == np.float32(amax / 127)
    dr = read_dynamic_range(res.paths["dynamic_range"])
    assert dr == pytest.approx(res.amax)
    doc = json.loads(open(res.paths["json"]).read())
    assert doc["tensors"]["data"]["method"] == "minmax" and doc["tensors"]["data"]["saturation"] == 0.0
    onnx.checker.check_model(onnx.load(res.paths["qdq"]), full_check=True)


def test_qdq_model_tracks_fp32_and_cli_conversion_reuses_scales(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path / "c", batch_size=50, max_batches=6)
    with int8batch.BatchSet(mnist) as bs:
        data = np.ascontiguousarray(bs.images(0, 100)[0])
    y32 = ort.InferenceSession(LENET).run(None, {"data": data})[0]
    y8 = ort.InferenceSession(res.paths["qdq"]).run(None, {"data": data})[0]
    assert (y32.argmax(1) == y8.argmax(1)).mean() >= 0.97
    assert np.abs(y32 - y8).max() < 0.25
    # int8batch qdq: cache -> Q/DQ with the very same scales
    out = tmp_path / "from_cache.onnx"
    assert main(["qdq", LENET, "--cache", res.paths["cache"], "-o", str(out)]) == 0

    def scales(path):
        m = onnx.load(path)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        return sorted(float(inits[n.input[1]]) for n in m.graph.node
                      if n.op_type == "QuantizeLinear" and inits[n.input[1]].ndim == 0)
    assert scales(out) == scales(res.paths["qdq"])


def test_sub_batches_give_identical_histograms(mnist, monkeypatch):
    big = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=4)
    monkeypatch.setattr(api, "ACTIVATION_BUDGET", 1)  # one image per ONNX Runtime call
    small = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=4)
    for name in big.stats:
        np.testing.assert_array_equal(big.stats[name].hist, small.stats[name].hist)
        assert big.amax[name] == small.amax[name]


def test_two_pass_and_methods(mnist):
    one = api.calibrate(LENET, mnist, None, method="minmax", batch_size=50, max_batches=3)
    two = api.calibrate(LENET, mnist, None, method="minmax", batch_size=50, max_batches=3, two_pass=True)
    assert one.amax == pytest.approx(two.amax)
    auto = api.calibrate(LENET, mnist, None, batch_size=50, max_batches=3)
    # LeNet's only finitely bounded tensor is the softmax output (0, 1): minmax there, mse elsewhere
    assert auto.methods.pop("prob") == "minmax" and set(auto.methods.values()) == {"mse"}


def test_keep_float_leaves_the_most_sensitive_tensor_unquantized(mnist, tmp_path):
    res = api.calibrate(LENET, mnist, tmp_path, batch_size=50, max_batches=2, keep_float=1)
    assert len(res.kept_float) == 1
    m = onnx.load(res.paths["qdq"])
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert res.kept_float[0] not in quantized and len(quantized) >= 3
    assert json.load(open(res.paths["json"]))["metadata"]["qdq_kept_float"] == res.kept_float


def test_errors(mnist, tmp_path):
    with pytest.raises(ConfigError, match="unknown calibration method"):
        api.calibrate(LENET, mnist, None, method="kl")
    with pytest.raises(CalibrationError, match="no full batch"):
        api.calibrate(LENET, mnist, None, batch_size=400)
    wrong = tmp_path / "rgb"
    int8batch.pack("mnist-test", wrong, batch_size=10, limit=10, channels="rgb")
    with pytest.raises(ModelError, match="data"):
        api.calibrate(LENET, wrong, None)
    assert main(["calibrate", LENET, "--batches", str(wrong), "--out", str(tmp_path / "x")]) == 1
