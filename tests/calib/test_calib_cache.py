"""TensorRT cache, dynamic-range file and JSON: golden bytes, round trips, errors."""
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from int8batch.calib import cache as C
from int8batch.calib.collector import HistogramCollector
from int8batch.errors import CacheError, ConfigError
from int8batch.trt import vocab

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "calib"
TRT_CACHES = Path(__file__).resolve().parents[1] / "fixtures" / "trt_caches"

AMAX = {
    "data": 1.0,
    "(Unnamed Layer* 4) [Fully Connected]_output": 127.0,
    "block: add:0": 254.0,
    "relu/x": 63.5,
    "prob": 12.7,
}


def test_writer_hex_is_vocab_amax_hex_by_hand(tmp_path):
    # float32(amax / 127) bits, lowercase, no leading zeros (TensorRT's printing)
    want = {"a": (127.0, "3f800000"), "b": (1.0, "3c010204"), "c": (254.0, "40000000"),
            "d": (np.float32(63.5), "3f000000"), "e": (0.0, "0")}
    text = C.trt_cache_text({k: a for k, (a, _) in want.items()})
    assert text.splitlines()[1:] == [f"{k}: {h}" for k, (_, h) in want.items()]


def test_write_amax_zero_is_a_bare_zero_and_logged_once(tmp_path, caplog):
    p = tmp_path / "z.cache"
    C.write_trt_cache(p, {"a": 0.0, "b": 1.0, "c": 0, "d": np.float32(-0.0)}, trt_version="10.3")
    assert p.read_bytes() == b"TRT-100300-EntropyCalibration2\na: 0\nb: 3c010204\nc: 0\nd: 0\n"
    assert len([r for r in caplog.records if r.name == C.log.name]) == 1
    assert C.read_trt_cache(p).zero == ["a", "c", "d"]


@pytest.mark.parametrize("algorithm, word", [("entropy2", "EntropyCalibration2"),
                                             ("minmax", "MinMaxCalibration"),
                                             ("EntropyCalibration2", "EntropyCalibration2"),
                                             ("MinMaxCalibration", "MinMaxCalibration"),
                                             ("legacy", "LegacyCalibration")])
def test_writer_algorithm_short_or_header_name(algorithm, word):
    assert C.trt_cache_text({"a": 1.0}, "8.5.1", algorithm).splitlines()[0] == f"TRT-8501-{word}"


def test_writer_version_from_vocab():
    assert C.DEFAULT_TRT_VERSION == vocab.DEFAULT_TRT_VERSION
    for version, number in [("9.2", 9200), ((10, 13, 3), 101303), (8602, 8602), ("10.3.0.26", 100300)]:
        assert C.trt_cache_text({}, version).startswith(f"TRT-{number}-")
    with pytest.raises(ConfigError):
        C.trt_cache_text({}, "8.10.0")


def test_writer_refuses_an_amax_whose_scale_overflows(tmp_path):
    with pytest.raises(CacheError, match="overflows float32"):
        C.write_trt_cache(tmp_path / "c", {"a": 1e41})
    with pytest.raises(CacheError, match="overflows float32"):
        C.write_dynamic_range(tmp_path / "r", {"a": 1e41})
    C.write_trt_cache(tmp_path / "ok", {"a": 4.3e40})       # scale just below FLT_MAX
    assert math.isfinite(C.read_trt_cache(tmp_path / "ok").scales["a"])
    assert not os.path.exists(tmp_path / "c") and not os.path.exists(tmp_path / "r")


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
    (b"", 1, "file is empty"),
    (b"x: 3f800000\n", 1, "first line"),
    (b"TRT-100300-EntropyCalibration2\ny 3f800000\n", 2, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\nb: 3f80000_\n", 3, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\nb: zz800000\n", 3, "malformed"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\na: 3f800000\n", 3, "twice"),
    (b"TRT-100300-EntropyCalibration2\na: bf800000\n", 2, "negative scale"),
    (b"TRT-100300-EntropyCalibration2\na: 80000001\n", 2, "negative scale"),
    (b"TRT-100300-EntropyCalibration2\na: 3f800000\n\nb: 3f8000000\n", 4, "9 hex digits"),
    (b"TRT-100300-EntropyCalibration2\n: 3f800000\n", 2, "name is missing"),
    (b"TRT-100300-EntropyCalibration2\nx:\n", 2, "no ': '"),
    (b"TRT-100300-EntropyCalibration2\nx: \n", 2, "hex value is missing"),
    (b"TRT-100300-EntropyCalibration2\nx: 0x3f80\n", 2, "not hex"),
    (b"TRT-100300-EntropyCalibration2\nx: 3f800000 3f800000\n", 2, "not hex"),
    (b"TRT-100300-EntropyCalibration2\nx:3f800000\n", 2, "no ': '"),
    (b"TRT-100300-EntropyCalibration2\r\nx: 3f800000\r\nx: 3F800000\r\n", 3, "twice"),
    (b"\n\n", 1, "empty"),
    (b"\xef\xbb\xbf", 1, "empty"),
    (b"TRT-42-EntropyCalibration2\n", 1, "not a TensorRT version"),
    (b"TRT-100300-Entropy Calibration2\n", 1, "header"),
    (b"TRT-100300-EntropyCalibration2\nok: 0\nb\xffad: 0\n", 3, "UTF-8"),
    (b"TRT-100300-EntropyCalibration2\nok: 0\nbad\x00: 0\n", 3, "NUL"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", 1, "NUL"),
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
    with pytest.raises(CacheError, match="directory"):
        C.read_trt_cache(tmp_path)


# -- caches as TensorRT 5-10 wrote them (tests/fixtures/trt_caches, see its README) ------------------
FIXTURES = sorted(p.name for p in TRT_CACHES.glob("*.cache"))
HEADERS = {"trt5100_sampleINT8_README.cache": ("5100", "EntropyCalibration2", (5, 1, 0)),
           "trt7000_sampleINT8_README.cache": ("7000", "EntropyCalibration2", (7, 0, 0)),
           "trt8501_lenet_minmax_crlf.cache": ("8501", "MinMaxCalibration", (8, 5, 1)),
           "trt9200_lenet_entropy2.cache": ("9200", "EntropyCalibration2", (9, 2, 0)),
           "trt100300_lenet_entropy2.cache": ("100300", "EntropyCalibration2", (10, 3, 0)),
           "trt101303_lenet_minmax.cache": ("101303", "MinMaxCalibration", (10, 13, 3))}


def independent_entries(raw: bytes):
    """(name, hex, float32) per entry, decoded without int8batch (struct + bytes.fromhex)."""
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    out = []
    for line in text.replace("\r\n", "\n").split("\n")[1:]:
        if line:
            name, _, h = line.rpartition(": ")
            out.append((name, h, struct.unpack(">f", bytes.fromhex(h.zfill(8)))[0]))
    return out


def same_float(a, b):
    return struct.pack(">f", a) == struct.pack(">f", b) or (math.isnan(a) and math.isnan(b))


def test_fixture_set_is_complete():
    assert sorted(HEADERS) == FIXTURES


@pytest.mark.parametrize("name", FIXTURES)
def test_real_trt_caches_read_and_decode_like_struct(name):
    data = C.read_trt_cache(TRT_CACHES / name)
    version, algorithm, triple = HEADERS[name]
    assert (data.version, data.algorithm, data.header.version) == (version, algorithm, triple)
    want = independent_entries((TRT_CACHES / name).read_bytes())
    assert list(data.scales) == [n for n, _, _ in want]
    for n, h, f in want:
        assert same_float(data.scales[n], f), n
        assert data.hex[n] == h
    # the three views partition the entries
    assert set(data.usable) | set(data.zero) | set(data.unusable) == set(data.scales)
    assert len(data.usable) + len(data.zero) + len(data.unusable) == len(data.scales)
    assert data.usable == {n: f for n, _, f in want if math.isfinite(f) and f > 0}
    assert data.zero == [n for n, _, f in want if f == 0]
    assert list(data.unusable) == [n for n, _, f in want if not math.isfinite(f)]


def test_fixture_details():
    d = C.read_trt_cache(TRT_CACHES / "trt9200_lenet_entropy2.cache")
    assert d.scales["block: add:0"] == 2.0 and d.scales["scope: a: b: c"] == struct.unpack(
        ">f", bytes.fromhex("0a000000"))[0]
    assert d.zero == ["/ip1/Gemm_output_0"] and d.unusable == {}
    assert "(Unnamed Layer* 4) [Fully Connected]_output" in d.usable
    d = C.read_trt_cache(TRT_CACHES / "trt8501_lenet_minmax_crlf.cache")
    assert d.scales["data"] == float(np.float32(1 / 127)) and d.hex["data"] == "3C010204"
    assert not any("\r" in n or "\ufeff" in n for n in d.scales)
    d = C.read_trt_cache(TRT_CACHES / "trt100300_lenet_entropy2.cache")
    assert d.unusable == {"/relu1/Relu_output_0": "cache scale is +inf (7f800000)",
                          "ONNXTRT_unsqueezeTensor_3_output": "cache scale is +inf (7f800000)"}
    assert d.zero == ["ONNXTRT_ShapeTensorFromDims_27_output"]
    assert d.amax["/relu1/Relu_output_0"] == math.inf
    d = C.read_trt_cache(TRT_CACHES / "trt101303_lenet_minmax.cache")
    assert d.unusable == {"/pool1/MaxPool_output_0": "cache scale is -inf (ff800000)",
                          "/Flatten_output_0": "cache scale is NaN (7fc00000)",
                          "ONNXTRT_Broadcast_1855_output": "cache scale is +inf (7f800000)"}
    assert d.usable["ONNXTRT_castHelper_12_output"] == 1.401298464324817e-45   # hex "1"


# Published caches TensorRT itself wrote (NVIDIA/TensorRT, samples/opensource/sampleINT8/README.md):
# the 5.1 tree (pixel/256 batch files) and the 7.x-8.4 trees (pixel/255 MNISTBatchStream).
README_CACHES = {
    "TensorRT 5.1 sampleINT8 README": "trt5100_sampleINT8_README.cache",
    "TensorRT 7.x-8.4 sampleINT8 README": "trt7000_sampleINT8_README.cache",
}


@pytest.mark.parametrize("source", sorted(README_CACHES))
def test_published_readme_caches_round_trip_byte_for_byte(tmp_path, source):
    src = TRT_CACHES / README_CACHES[source]
    data = C.read_trt_cache(src)
    out = tmp_path / "again.cache"
    C.write_trt_cache(out, data.amax, trt_version=int(data.version), algorithm=data.algorithm)
    assert out.read_bytes() == src.read_bytes()
    # the version text works as well as the header number
    C.write_trt_cache(out, data.amax, trt_version=vocab.version_text(data.header.version),
                      algorithm="entropy2")
    assert out.read_bytes() == src.read_bytes()


def test_readme_cache_values_as_published():
    d5 = C.read_trt_cache(TRT_CACHES / "trt5100_sampleINT8_README.cache")
    d7 = C.read_trt_cache(TRT_CACHES / "trt7000_sampleINT8_README.cache")
    assert d5.hex == {"data": "3c000889", "conv1": "3c8954be", "pool1": "3c8954be", "conv2": "3dd33169",
                      "pool2": "3dd33169", "ip1": "3daeff07", "ip2": "3e7d50ec", "prob": "3c010a14"}
    assert d7.hex == {"data": "3c008912", "conv1": "3c88edfc", "pool1": "3c88edfc", "conv2": "3ddc858b",
                      "pool2": "3ddc858b", "ip1": "3db6bd6e", "ip2": "3e691968", "prob": "3c010a14"}
    assert (FIX / "trt5_mnist_readme_cache.txt").read_bytes() == (
        TRT_CACHES / "trt5100_sampleINT8_README.cache").read_bytes()


def test_short_and_uppercase_hex_and_unknown_algorithm(tmp_path, caplog):
    p = tmp_path / "c"
    p.write_bytes(b"TRT-100300-FancyCalibration\na: 0\nb: A000000\nc: 00000001\nd: 3F800000\n")
    d = C.read_trt_cache(p)
    assert d.scales == {"a": 0.0, "b": struct.unpack(">f", bytes.fromhex("0a000000"))[0],
                        "c": struct.unpack(">f", bytes.fromhex("00000001"))[0], "d": 1.0}
    assert d.algorithm == "FancyCalibration" and d.header.calibrator is None
    assert any("FancyCalibration" in r.getMessage() for r in caplog.records)


def test_header_only_cache_is_empty(tmp_path):
    p = tmp_path / "c"
    p.write_bytes(b"TRT-8400-MinMaxCalibration\n")
    d = C.read_trt_cache(p)
    assert d.scales == {} and d.usable == {} and d.zero == [] and d.unusable == {}


try:
    from hypothesis import HealthCheck, given, settings, strategies as st
except ImportError:   # the "test" extra installs it
    st = None

if st is not None:
    # bounded: ~200 examples in all, no example database written into the checkout
    _FUZZ = dict(deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
    _LINES = st.one_of(
        st.sampled_from(["TRT-100300-EntropyCalibration2", "TRT-5100-MinMaxCalibration", "TRT-", "",
                         "a: 3f800000", "a: 0", "b: 7f800000", "c: ff800000", ": 1", "x:y", "n: 1: 2",
                         "d: 123456789", "e: -1", "\ufeff", "\r"]),
        st.text(max_size=30),
        st.builds(lambda n, h: f"{n}: {h}", st.text(max_size=12),
                  st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=10)),
    )

    @settings(max_examples=150, **_FUZZ)
    @given(st.one_of(st.lists(_LINES, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8")),
                     st.binary(max_size=200)))
    def test_fuzz_reader_parses_or_raises_cache_error(tmp_path, raw):
        p = tmp_path / "fuzz.cache"
        p.write_bytes(raw)
        try:
            d = C.read_trt_cache(p)
        except CacheError as exc:
            assert str(p) in str(exc) and exc.path == str(p)
            return
        assert set(d.usable) | set(d.zero) | set(d.unusable) == set(d.scales)
        assert all(v >= 0 or not math.isfinite(v) for v in d.scales.values())

    @settings(max_examples=50, **_FUZZ)
    @given(st.dictionaries(st.text(min_size=1, max_size=10).filter(
        lambda n: not any(c in n for c in "\n\r\0")), st.floats(min_value=0, max_value=4e40), max_size=6))
    def test_fuzz_write_read_round_trip(tmp_path, amax):
        p = tmp_path / "rt.cache"
        C.write_trt_cache(p, amax)
        d = C.read_trt_cache(p)
        assert list(d.scales) == list(amax)
        for name, a in amax.items():
            assert d.scales[name] == vocab.scale_of(a)
else:
    def test_fuzz_reader_parses_or_raises_cache_error():
        pytest.skip("hypothesis is not installed (pip install .[test])")


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
