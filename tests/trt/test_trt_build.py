"""build_int8_engine: against a fake TensorRT builder here, a real one where TensorRT 8.6-10.x is installed."""
import sys

import numpy as np
import pytest

from int8batch import format as fmt
from int8batch.errors import CacheError, CalibrationError, ModelError
from int8batch.reader import BatchSet
from int8batch.trt.build import build_int8_engine
from trt_fakes import HostFeeder, fake_tensorrt

N, C, H, W = 4, 3, 8, 8
FILES = 3


def tiny_model(path, batch="N", channels=C, inputs=("data",)):
    """Conv(3->4, 3x3) + Relu + GlobalAveragePool, NCHW float32 input(s)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    wts = numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("Conv", [inputs[0], "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["out"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, channels, H, W]) for n in inputs]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, 1, 1])
    graph = helper.make_graph(nodes, "tiny", ins, [out], [wts, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def batch_dir(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "batches"
    folder.mkdir()
    for k in range(FILES):
        fmt.write_batch_file(folder / fmt.batch_name(k), rng.random((N, C, H, W), dtype=np.float32),
                             np.zeros(N, np.float32))
    return folder


@pytest.fixture
def trt(monkeypatch):
    fake = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr("int8batch.trt.calibrator.DeviceFeeder", HostFeeder)
    return fake


def test_build_calibrates_then_reuses_cache(trt, batch_dir, tmp_path):
    model = tiny_model(tmp_path / "m.onnx")
    engine, cache = tmp_path / "m.engine", tmp_path / "m.cache"
    r = build_int8_engine(model, batch_dir, engine, cache, batch_size=2)
    assert r.calibrated and r.batches == FILES * N // 2 and r.dynamic
    assert r.input_name == "data" and r.input_shape == (2, C, H, W)
    assert engine.read_bytes() == b"FAKE-ENGINE:data" and r.engine_bytes == 16
    assert cache.read_bytes().startswith(b"TRT-100300-EntropyCalibration2\n")
    cfg = trt.Builder.last.config
    assert cfg.calibration_profile.shapes == ("data", (2, C, H, W), (2, C, H, W), (2, C, H, W))
    assert "INT8" in cfg.flags
    served = trt.Builder.last.served
    with BatchSet(batch_dir) as bs:
        for i, got in enumerate(served):
            np.testing.assert_array_equal(got, bs.images(2 * i, 2)[0].reshape(-1))

    r2 = build_int8_engine(model, batch_dir, engine, cache, batch_size=2)
    assert not r2.calibrated and r2.batches == 0 and trt.Builder.last.used_cache
    r3 = build_int8_engine(model, batch_dir, engine, cache, batch_size=2, use_cache=False, max_batches=2)
    assert r3.calibrated and r3.batches == 2


def test_fixed_batch_model(trt, batch_dir, tmp_path):
    model = tiny_model(tmp_path / "m.onnx", batch=6)
    r = build_int8_engine(model, batch_dir, tmp_path / "e", algorithm="minmax")
    assert r.input_shape == (6, C, H, W) and not r.dynamic and r.batches == 2
    assert trt.Builder.last.config.calibration_profile is None
    with pytest.raises(ModelError, match="fixed batch of 6"):
        build_int8_engine(model, batch_dir, tmp_path / "e", batch_size=4)


def test_model_that_does_not_fit(trt, batch_dir, tmp_path):
    with pytest.raises(ModelError, match="axis 1: 1 vs 3"):
        build_int8_engine(tiny_model(tmp_path / "a.onnx", channels=1), batch_dir, tmp_path / "e")
    with pytest.raises(ModelError, match="2 inputs"):
        build_int8_engine(tiny_model(tmp_path / "b.onnx", inputs=("data", "extra")), batch_dir, tmp_path / "e")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="parser failed"):
        build_int8_engine(bad, batch_dir, tmp_path / "e")


def test_malformed_cache_fails_before_building(trt, batch_dir, tmp_path):
    cache = tmp_path / "c"
    cache.write_bytes(b"garbage\n")
    with pytest.raises(CacheError):
        build_int8_engine(tiny_model(tmp_path / "m.onnx"), batch_dir, tmp_path / "e", cache)
    assert not (tmp_path / "e").exists()


def test_tensorrt_11_is_refused(monkeypatch, batch_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("11.0.0", with_int8=False))
    with pytest.raises(CalibrationError, match="--backend onnxruntime"):
        build_int8_engine(tiny_model(tmp_path / "m.onnx"), batch_dir, tmp_path / "e")


def _real_tensorrt():
    try:
        import tensorrt
    except ImportError:
        return None
    from int8batch.cuda import runtime as cu
    from int8batch.trt.calibrator import trt_version
    if not (8, 6, 0) <= trt_version(tensorrt) < (11, 0, 0) or cu.device_count() == 0:
        return None
    return tensorrt


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_engine(batch_dir, tmp_path):
    trt = _real_tensorrt()
    if trt is None:
        pytest.skip("needs TensorRT 8.6-10.x and a GPU")
    model = tiny_model(tmp_path / "m.onnx")
    engine, cache = tmp_path / "m.engine", tmp_path / "m.cache"
    r = build_int8_engine(model, batch_dir, engine, cache, batch_size=N)
    assert r.calibrated and r.batches == FILES and engine.stat().st_size > 0
    assert cache.read_bytes().startswith(b"TRT-")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(engine.read_bytes()) is not None
    r2 = build_int8_engine(model, batch_dir, engine, cache, batch_size=N)
    assert not r2.calibrated
