"""TensorRT cache, dynamic-range file and JSON: golden bytes, round trips, errors."""
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from int8batch.calib import cache as C
from int8batch.calib.collector import HistogramCollector
from int8batch.errors import CacheError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "calib"

AMAX = {
    "data": 1.0,
    "(Unnamed Layer* 4) [Fully Connected]_output": 127.0,
    "block: add:0": 254.0,
    "relu/x": 63.5,
    "prob": 12.7,
}


def test_scale_bits_by_hand():
    assert C.scale_bits(127.0) == "3f800000"
    assert C.scale_bits(1.0) == "3c010204"
    assert C.scale_bits(254.0) == "40000000"
    assert C.scale_bits(np.float32(63.5)) == "3f000000"
    assert C.scale_bits(0.0) == "00000000"


@pytest.mark.parametrize("version, want", [("10.16.0", 101600), ("10.3.0", 100300),
                                           ("10.3", 100300), ("8.6.1", 8601), ("8.5.10", 8510), ("5.1.5.0", 5105),
                                           (100300, 100300), ("8602", 8602)])
def test_trt_version_int(version, want):
    assert C.trt_version_int(version) == want


@pytest.mark.parametrize("bad", ["ten", "10.100.0", "8.10.0", 0, ""])
def test_trt_version_int_rejects(bad):
    with pytest.raises(CacheError):
        C.trt_version_int(bad)


def test_write_trt_cache_golden(tmp_path):
    out = tmp_path / "calib.cache"
    C.write_trt_cache(out, AMAX)       # defaults: 10.16.0, EntropyCalibration2
    assert out.read_bytes() == (FIX / "trt10_cache_golden.txt").read_bytes()
    out2 = tmp_path / "mm.cache"
    C.write_trt_cache(out2, {"data": 1.0, "prob": np.float32(12.7)}, trt_version="8.6.1",
                      algorithm="MinMaxCalibration")
    assert out2.read_bytes() == (FIX / "trt8_minmax_golden.txt").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["calib.cache", "mm.cache"]   # no temp files left


def test_read_trt_cache_golden_and_round_trip(tmp_path):
    data = C.read_trt_cache(FIX / "trt10_cache_golden.txt")
    assert (data.version, data.algorithm) == ("101600", "EntropyCalibration2")
    assert list(data.scales) == list(AMAX)                     # names split at the LAST ": "
    assert data.scales["block: add:0"] == 2.0
    for name, a in AMAX.items():
        assert data.amax[name] == pytest.approx(a, rel=1e-7)
    # cache -> read -> write reproduces the bytes exactly (scale*127/127 is exact)
    out = tmp_path / "again.cache"
    C.write_trt_cache(out, data.amax, trt_version=int(data.version), algorithm=data.algorithm)
    assert out.read_bytes() == (FIX / "trt10_cache_golden.txt").read_bytes()


def test_read_trt5_readme_cache():
    data = C.read_trt_cache(FIX / "trt5_mnist_readme_cache.txt")
    assert data.version == "5100" and len(data.scales) == 8
    want = {"data": 0.9924, "conv1": 2.129, "conv2": 13.10, "ip1": 10.85, "ip2": 31.42,
            "prob": 1.0002}
    for name, a in want.items():
        assert data.amax[name] == pytest.approx(a, rel=5e-4)
    assert data.scales["data"] == struct.unpack(">f", bytes.fromhex("3c000889"))[0]


def test_read_trt_cache_tolerates_crlf_and_blank_lines(tmp_path):
    p = tmp_path / "c"
    p.write_bytes(b"TRT-100300-MinMaxCalibration\r\nx: 3F800000\r\n\r\n")
    d = C.read_trt_cache(p)
    assert d.scales == {"x": 1.0} and d.algorithm == "MinMaxCalibration" and d.path == str(p)


@pytest.mark.parametrize("body, line, match", [
    (b"", 1, "first line"),
    (b"x: 3f800000\n", 1, "first line"),
    (b"TRT-100300-EntropyCalibration2\ny 3f800000\n", 2, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\nb: 3f80000\n", 3, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\nb: zz800000\n", 3, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\na: 3f800000\n", 3, "twice"),
    (b"TRT-100300-EntropyCalibration2\na: 7fc00000\n", 2, "finite"),
    (b"TRT-100300-EntropyCalibration2\na: bf800000\n", 2, "finite"),
])
def test_read_trt_cache_errors_name_file_and_line(tmp_path, body, line, match):
    p = tmp_path / "bad.cache"
    p.write_bytes(body)
    with pytest.raises(CacheError, match=match) as e:
        C.read_trt_cache(p)
    assert f"{p}:{line}:" in str(e.value) and e.value.path == str(p)
    assert isinstance(e.value, ValueError)


def test_read_missing_and_binary(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        C.read_trt_cache(tmp_path / "nope")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CacheError, match="UTF-8"):
        C.read_trt_cache(tmp_path / "bin")


def test_write_trt_cache_rejects_bad_entries_and_keeps_old_file(tmp_path):
    p = tmp_path / "c.cache"
    C.write_trt_cache(p, {"a": 1.0})
    before = p.read_bytes()
    for bad in ({"a": float("nan")}, {"a": -1.0}, {"a\nb": 1.0}, {"": 1.0}):
        with pytest.raises(CacheError):
            C.write_trt_cache(p, bad)
    with pytest.raises(CacheError):
        C.write_trt_cache(p, {"a": 1.0}, algorithm="Entropy Calibration")
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["c.cache"]


def test_dynamic_range_golden_and_round_trip(tmp_path):
    amax = {k: v for k, v in AMAX.items() if ":" not in k}
    p = tmp_path / "ranges.txt"
    assert C.write_dynamic_range(p, amax) == []
    assert p.read_bytes() == (FIX / "dynamic_range_golden.txt").read_bytes()
    assert C.read_dynamic_range(p) == amax
    assert C.read_dynamic_range(FIX / "dynamic_range_golden.txt") == amax


def test_dynamic_range_colon_names(tmp_path):
    p = tmp_path / "r.txt"
    with pytest.raises(CacheError, match="block: add:0"):
        C.write_dynamic_range(p, AMAX)
    assert not p.exists()
    assert C.write_dynamic_range(p, AMAX, skip_colon_names=True) == ["block: add:0"]
    assert "block" not in p.read_text()
    # reading splits at the LAST ':' (lenient: TensorRT's sample would split at the first)
    p.write_text("input:0:2.5\nx: 3\n")
    assert C.read_dynamic_range(p) == {"input:0": 2.5, "x": 3.0}


@pytest.mark.parametrize("body, match", [("novalue\n", "malformed"), ("a:b\n", "not a number"),
                                         ("a:-1\n", "finite"), ("a:1\na:2\n", "twice")])
def test_read_dynamic_range_errors(tmp_path, body, match):
    p = tmp_path / "r.txt"
    p.write_text(body)
    with pytest.raises(CacheError, match=match) as e:
        C.read_dynamic_range(p)
    assert str(p) in str(e.value)


def test_calibration_json(tmp_path):
    c = HistogramCollector(num_bins=64)
    c.collect("t", np.array([0.5, -1.0, 2.0, 4.0], np.float32))
    st = c.stats("t")
    entry = C.calibration_entry(st, np.float32(2.5), "entropy")
    entries = {"t": entry, "u": {"amax": np.float32(1.5), "observed_amax": np.float64(3.0),
                                 "method": "mse", "saturation": np.float32(0.25),
                                 "hist": np.arange(3)}}
    p = tmp_path / "calibration.json"
    C.write_calibration_json(p, entries, metadata={"model": "m.onnx", "bins": np.int64(64)})
    doc = json.loads(p.read_text())
    assert doc["format"] == "int8batch-calibration" and doc["metadata"]["bins"] == 64
    t = doc["tensors"]["t"]
    assert (t["amax"], t["observed_amax"], t["method"]) == (2.5, 4.0, "entropy")
    assert t["saturation"] == 0.25                  # one of four values (4.0) is above 2.5
    assert t["scale"] == float(np.float32(2.5 / 127)) and t["count"] == 4
    assert doc["tensors"]["u"]["hist"] == [0, 1, 2] and doc["tensors"]["u"]["amax"] == 1.5
    assert C.read_calibration_json(p)["tensors"].keys() == {"t", "u"}
    with pytest.raises(CacheError):
        C.write_calibration_json(tmp_path / "x.json", {"a": {"amax": 1.0, "bad": float("nan")}})
    with pytest.raises(CacheError):
        C.write_calibration_json(tmp_path / "x.json", {"a": {"observed_amax": 1.0}})
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CacheError, match="format"):
        C.read_calibration_json(tmp_path / "other.json")
