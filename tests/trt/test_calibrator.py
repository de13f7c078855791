"""The TensorRT calibrators driven through the builder's documented call sequence.

Without TensorRT a fake ``tensorrt`` module (plain Python base classes) is put
in ``sys.modules``; the served batches are checked against the batch files read
independently with ``np.fromfile``.
"""
import logging
import os
import sys

import numpy as np
import pytest

from int8batch import format as fmt
from int8batch.errors import CacheError, CalibrationError, ConfigError
from int8batch.reader import BatchSet
from int8batch.trt import calibrator as calmod
from int8batch.trt.calibrator import make_calibrator, parse_cache_header
from trt_fakes import HostFeeder, drive, fake_tensorrt, header_for

N, C, H, W = 5, 3, 4, 6
FILES = 3


@pytest.fixture
def trt(monkeypatch):
    fake = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture
def batch_dir(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(FILES):
        fmt.write_batch_file(tmp_path / fmt.batch_name(k), rng.standard_normal((N, C, H, W)).astype(np.float32),
                             np.full(N, k, np.float32))
    return tmp_path


def reference_images(folder):
    """All images of the set, read with np.fromfile (independent of the reader)."""
    out = []
    for k in range(FILES):
        raw = np.fromfile(folder / fmt.batch_name(k), dtype="<i4", count=4)
        n, c, h, w = (int(v) for v in raw)
        out.append(np.fromfile(folder / fmt.batch_name(k), dtype="<f4", count=n * c * h * w, offset=16))
    return np.concatenate(out).reshape(-1, C * H * W)


@pytest.mark.parametrize("algorithm", ["entropy2", "entropy", "minmax", "legacy"])
@pytest.mark.parametrize("batch_size,max_batches", [(N, None), (2, None), (7, None), (3, 2), (1, 4)])
def test_call_sequence_serves_the_batches(trt, batch_dir, tmp_path, algorithm, batch_size, max_batches):
    ref = reference_images(batch_dir)
    cache = tmp_path / "out" / "calib.cache"
    with BatchSet(batch_dir) as bs:
        feeder = HostFeeder(bs, batch_size, max_batches=max_batches)
        cal = make_calibrator(bs, "data", algorithm=algorithm, batch_size=batch_size, max_batches=max_batches,
                              cache_path=cache, feeder=feeder)
        assert cal.base_init_called
        assert isinstance(cal, getattr(trt, calmod.ALGORITHMS[algorithm][0]))
        assert cal.get_batch_size() == batch_size
        served, used_cache = drive(cal, "data", batch_size * C * H * W * 4)
        cal.raise_if_failed()
    want = len(ref) // batch_size if max_batches is None else max_batches
    assert not used_cache and cal.calibrated and cal.batches_served == want == len(served)
    for i, got in enumerate(served):
        np.testing.assert_array_equal(got, ref[i * batch_size:(i + 1) * batch_size].reshape(-1))
    assert cal.get_batch(["data"]) is None          # stays exhausted
    text = cache.read_bytes()
    assert text.startswith(header_for(trt, calmod.ALGORITHMS[algorithm][0]).encode() + b"\n")
    assert os.listdir(cache.parent) == ["calib.cache"]   # atomic write left no temporary file


def test_matching_cache_skips_calibration(trt, batch_dir, tmp_path):
    cache = tmp_path / "calib.cache"
    with BatchSet(batch_dir) as bs:
        drive(make_calibrator(bs, "data", cache_path=cache, feeder=HostFeeder(bs)), "data", N * C * H * W * 4)
        cal = make_calibrator(bs, "data", cache_path=cache, feeder=HostFeeder(bs))
        served, used_cache = drive(cal, "data", N * C * H * W * 4)
    assert used_cache and served == [] and not cal.calibrated
    assert cal.cache_read == cache.read_bytes()


@pytest.mark.parametrize("header,algorithm,message", [
    ("TRT-8601-EntropyCalibration2", "entropy2", "version 8601"),
    ("TRT-100300-EntropyCalibration2", "minmax", "holds EntropyCalibration2 scales"),
])
def test_mismatched_cache_warns_and_recalibrates(trt, batch_dir, tmp_path, caplog, header, algorithm, message):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(header.encode() + b"\ndata: 3c010204\n")
    with BatchSet(batch_dir) as bs, caplog.at_level(logging.WARNING):
        cal = make_calibrator(bs, "data", algorithm=algorithm, cache_path=cache, feeder=HostFeeder(bs))
        served, used_cache = drive(cal, "data", N * C * H * W * 4)
    assert message in caplog.text and "calibrate again" in caplog.text
    assert not used_cache and len(served) == FILES
    cal.raise_if_failed()


def test_malformed_cache_is_an_error(trt, batch_dir, tmp_path):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"data: 3c010204\n")
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", cache_path=cache, feeder=HostFeeder(bs))
        assert cal.read_calibration_cache() is None
        with pytest.raises(CacheError, match="not a TensorRT calibration cache header"):
            cal.raise_if_failed()


def test_use_cache_false_ignores_cache(trt, batch_dir, tmp_path):
    cache = tmp_path / "calib.cache"
    cache.write_bytes(header_for(trt, "IInt8EntropyCalibrator2").encode() + b"\n")
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", cache_path=cache, use_cache=False, feeder=HostFeeder(bs))
        assert cal.read_calibration_cache() is None


def test_wrong_input_name_is_remembered_and_raised(trt, batch_dir, caplog):
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", feeder=HostFeeder(bs))
        assert cal.get_batch(["input_1"]) is None              # TensorRT sees "no more data"...
        assert "get_batch" in caplog.text and "ERROR" in caplog.text
        with pytest.raises(ConfigError, match=r"\['input_1'\].*'data'"):
            cal.raise_if_failed()                               # ...but the build raises
        cal2 = make_calibrator(bs, "data", feeder=HostFeeder(bs))
        assert cal2.get_batch(["data", "mask"]) is None
        with pytest.raises(ConfigError, match="exactly one input"):
            cal2.raise_if_failed()


class _BrokenFeeder:
    def __init__(self, exc, after=1):
        self.exc, self.after, self.calls = exc, after, 0

    def next_batch(self):
        self.calls += 1
        if self.calls > self.after:
            raise self.exc
        return type("B", (), {"ptr": 1})()


def test_exception_in_get_batch_is_not_swallowed(trt, batch_dir):
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", feeder=_BrokenFeeder(OSError("disk went away")))
        assert cal.get_batch(["data"]) == [1]
        assert cal.get_batch(["data"]) is None
        assert cal.get_batch(["data"]) is None      # stops serving after an error
        with pytest.raises(CalibrationError, match="get_batch.*disk went away"):
            cal.raise_if_failed()


def test_keyboard_interrupt_in_callback_is_reraised(trt, batch_dir):
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", feeder=_BrokenFeeder(KeyboardInterrupt(), after=0))
        assert cal.get_batch(["data"]) is None
        with pytest.raises(KeyboardInterrupt):
            cal.raise_if_failed()


def test_default_feeder_is_made_lazily_and_closed(trt, batch_dir, monkeypatch):
    made = []

    def factory(*args, **kw):
        made.append(HostFeeder(*args, **kw))
        return made[-1]
    monkeypatch.setattr("int8batch.trt.calibrator.DeviceFeeder", factory)
    with BatchSet(batch_dir) as bs:
        with make_calibrator(bs, "data", batch_size=2) as cal:
            assert made == []                      # nothing allocated before TensorRT asks
            assert cal.get_batch(["data"])
        assert made and made[0].closed


def test_legacy_parameters_and_histogram_cache(trt, batch_dir, tmp_path):
    hist = tmp_path / "hist.bin"
    with BatchSet(batch_dir) as bs:
        cal = make_calibrator(bs, "data", algorithm="legacy", quantile=0.999, regression_cutoff=0.5,
                              histogram_cache=hist, feeder=HostFeeder(bs))
        assert (cal.get_quantile(), cal.get_regression_cutoff()) == (0.999, 0.5)
        assert cal.read_histogram_cache(0) is None
        cal.write_histogram_cache(memoryview(b"\x01\x02\x03"), 3)
        assert hist.read_bytes() == b"\x01\x02\x03"
        assert bytes(cal.read_histogram_cache(0)) == b"\x01\x02\x03"
        cal.raise_if_failed()


def test_unknown_algorithm(trt, batch_dir):
    with BatchSet(batch_dir) as bs:
        with pytest.raises(ConfigError, match="entropy2"):
            make_calibrator(bs, "data", algorithm="percentile")


@pytest.mark.parametrize("version,with_int8", [("11.0.0", False), ("11.4.1", True), ("10.16.0", False)])
def test_tensorrt_without_implicit_int8(monkeypatch, batch_dir, version, with_int8):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, with_int8=with_int8))
    with BatchSet(batch_dir) as bs:
        with pytest.raises(CalibrationError, match=r"implicit INT8.*--backend onnxruntime"):
            make_calibrator(bs, "data")


def test_cache_header_parsing():
    assert parse_cache_header(b"TRT-100300-EntropyCalibration2\nx: 3c010204\n") == (100300, "EntropyCalibration2")
    assert parse_cache_header(b"TRT-8602-MinMaxCalibration\n") == (8602, "MinMaxCalibration")
    assert calmod.vocab.header_number((8, 6, 1)) == 8601
    assert calmod.vocab.header_number((10, 3, 0)) == 100300
    with pytest.raises(CacheError):
        parse_cache_header(b"TRT-abc-Entropy\n")


@pytest.mark.gpu
def test_calibrator_pointers_hold_the_batches_on_gpu(trt, batch_dir):
    from int8batch.cuda import runtime as cu
    if cu.device_count() == 0:
        pytest.skip("needs an NVIDIA GPU with cuda-python")
    ref = reference_images(batch_dir)
    with BatchSet(batch_dir) as bs, make_calibrator(bs, "data", batch_size=4) as cal:
        i = 0
        while True:
            ptrs = cal.get_batch(["data"])
            if not ptrs:
                break
            got = np.empty(4 * C * H * W, np.float32)
            cu.memcpy_dtoh(got.ctypes.data, ptrs[0], got.nbytes)
            np.testing.assert_array_equal(got, ref[i * 4:(i + 1) * 4].reshape(-1))
            i += 1
        cal.raise_if_failed()
    assert i == len(ref) // 4
