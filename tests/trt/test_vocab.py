"""int8batch.trt.vocab: TensorRT's version numbers, calibrator names, cache headers, scale rule.

Every expected value is TensorRT's, not int8batch's: header numbers seen in caches TensorRT
wrote (tests/fixtures/trt_caches), the sampleINT8 README tables, and IEEE-754 bits worked by hand.
"""
import math
import struct

import numpy as np
import pytest

from int8batch.errors import CacheError, ConfigError
from int8batch.trt import vocab

# version -> the number TensorRT writes in the cache header
HEADER_NUMBERS = [("5.1", 5100), ("5.1.5", 5105), ("7.0", 7000), ("7.1.3", 7103), ("8.4", 8400),
                  ("8.5.1", 8501), ("8.6.1", 8601), ("9.2", 9200), ("10.3", 100300),
                  ("10.3.0.26", 100300), ("10.13.3", 101303), ("10.16.0", 101600)]


@pytest.mark.parametrize("version, number", HEADER_NUMBERS)
def test_header_number(version, number):
    assert vocab.header_number(version) == number
    assert vocab.header_number(number) == number                  # a header number passes through
    assert vocab.header_number(str(number)) == number
    assert vocab.header_number(vocab.parse_version(version)) == number
    assert vocab.version_of_number(number) == vocab.parse_version(version)


@pytest.mark.parametrize("bad", ["ten", "", "8.10.0", "10.100.0", "10.3.100", 0, 42, 12345, "²",
                                 "9" * 5000])
def test_header_number_rejects(bad):
    with pytest.raises(ConfigError):
        vocab.header_number(bad)


@pytest.mark.parametrize("line, number, algorithm, version", [
    ("TRT-5100-EntropyCalibration2", 5100, "EntropyCalibration2", (5, 1, 0)),
    ("TRT-7000-EntropyCalibration2\n", 7000, "EntropyCalibration2", (7, 0, 0)),
    (b"TRT-8501-MinMaxCalibration\r\n", 8501, "MinMaxCalibration", (8, 5, 1)),
    ("\ufeffTRT-9200-EntropyCalibration2", 9200, "EntropyCalibration2", (9, 2, 0)),
    ("TRT-100300-MinMaxCalibration", 100300, "MinMaxCalibration", (10, 3, 0)),
    ("TRT-101303-EntropyCalibration2", 101303, "EntropyCalibration2", (10, 13, 3)),
])
def test_parse_header(line, number, algorithm, version):
    h = vocab.parse_header(line)
    assert (h.number, h.algorithm, h.version) == (number, algorithm, version)
    assert h.calibrator is vocab.BY_HEADER[algorithm]
    assert str(h) == str(line if isinstance(line, str) else line.decode()).strip().lstrip("\ufeff")


def test_parse_header_keeps_unknown_words_and_rejects_the_rest():
    assert vocab.parse_header("TRT-8600-FancyCalibration").calibrator is None
    for bad in ["", "TRT-", "trt-8600-MinMaxCalibration", "TRT-8600-Min Max", "TRT-42-MinMaxCalibration",
                "TRT-" + "9" * 5000 + "-X", "data: 3c010204", "TRT-٨٦٠٠-MinMaxCalibration"]:
        with pytest.raises(CacheError, match="where.cache"):
            vocab.parse_header(bad, "where.cache")


@pytest.mark.parametrize("version, algorithm, text", [
    ("5.1", "entropy2", "TRT-5100-EntropyCalibration2"), ("8.4", "minmax", "TRT-8400-MinMaxCalibration"),
    ("10.13.3", "EntropyCalibration2", "TRT-101303-EntropyCalibration2"),
    ("9.2", "legacy", "TRT-9200-LegacyCalibration"), ("10.3", "entropy", "TRT-100300-EntropyCalibration")])
def test_make_header(version, algorithm, text):
    assert str(vocab.make_header(version, algorithm)) == text
    assert vocab.parse_header(text) == vocab.make_header(version, algorithm)


def test_make_header_rejects_unknown_calibrator():
    with pytest.raises(ConfigError, match="entropy2"):
        vocab.make_header("10.3", "kl")


def bits(h):
    """Independent decoding of a cache hex (struct + bytes.fromhex)."""
    return struct.unpack(">f", bytes.fromhex(h.zfill(8)))[0]


@pytest.mark.parametrize("amax, hexed", [(127.0, "3f800000"), (1.0, "3c010204"), (254.0, "40000000"),
                                         (63.5, "3f000000"), (0.0, "0"), (1e-44, "0")])
def test_amax_hex_is_tensorrt_printing(amax, hexed):
    assert vocab.amax_hex(amax) == hexed
    assert vocab.scale_of(amax) == bits(hexed) == vocab.parse_scale_hex(hexed)


def test_scale_hex_has_no_leading_zeros():
    assert vocab.scale_hex(0.0) == "0"
    assert vocab.scale_hex(bits("a000000")) == "a000000"
    assert vocab.scale_hex(bits("1")) == "1"
    assert vocab.scale_hex(math.inf) == "7f800000"


def test_readme_values_decode():
    # TensorRT 5.1 sampleINT8 README: data 3c000889 -> amax 0.9924, prob 3c010a14 -> 1.0002
    assert vocab.amax_of(vocab.parse_scale_hex("3c000889")) == pytest.approx(0.9924, rel=1e-4)
    assert vocab.amax_of(vocab.parse_scale_hex("3C010A14")) == pytest.approx(1.0002, rel=1e-4)


@pytest.mark.parametrize("text", ["", "g", "0x1", "123456789", "-1", "1 2", "٣"])
def test_parse_scale_hex_rejects(text):
    assert vocab.parse_scale_hex(text) is None


def test_usable_scale_and_overflow():
    assert vocab.usable_scale(bits("3c010204")) and vocab.usable_scale(bits("1"))
    for h in ["0", "7f800000", "ff800000", "7fc00000", "bf800000"]:
        assert not vocab.usable_scale(bits(h)), h
    with np.errstate(over="raise"):       # no RuntimeWarning: callers check for inf
        assert vocab.scale_of(1e41) == math.inf
        assert vocab.scale_hex(1e39) == "7f800000"
    assert math.isfinite(vocab.scale_of(4.3e40))


def test_a_bare_major_version_and_versions_before_headers():
    """Found as a new user: --trt-version 7 was refused in header-number terms, 4.0 wrote TRT-4000-..."""
    assert vocab.parse_version("7") == (7, 0, 0) and vocab.parse_version(" 10 ") == (10, 0, 0)
    assert str(vocab.make_header("7")) == "TRT-7000-EntropyCalibration2"
    assert vocab.header_number("8501") == 8501                  # four digits and more: a header number
    for old in ("4.0", "5.0.2", "3"):
        with pytest.raises(ConfigError, match="start at TensorRT 5.1"):
            vocab.make_header(old)


def test_header_advice_speaks_of_tensorrt_11_only_for_11_and_later():
    """Found by a new user: --trt-version 7.0 was told TensorRT 7 reads no caches (it does; 11 does not)."""
    for version in ("5.1", "7.0", "8.5.3", "10.13"):
        notes = vocab.header_advice(vocab.make_header(version), "given")
        assert not any("no calibrator API" in n for n in notes), (version, notes)
    notes = vocab.header_advice(vocab.make_header("11.0"), "given")
    assert any("TensorRT 11 removed implicit INT8" in n for n in notes)
