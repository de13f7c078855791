"""TensorRT's INT8 vocabulary: versions, calibrator names, cache headers and the scale rule.

The one owner of every fact int8batch shares with TensorRT's calibration
artefacts.  Nothing here imports ``tensorrt``; every other module (the cache
reader and writer, the calibrators, the CLI) takes these facts from here.

Evidence (``TRT@<tag>:<path>`` is a file of the NVIDIA/TensorRT repository):

* **Header version number.**  ``NV_TENSORRT_VERSION`` is ``major*1000 +
  minor*100 + patch`` up to and including TensorRT 9
  (``TRT@v8.6.1``, ``TRT@v9.1.0``, ``TRT@v9.3.0:include/NvInferRuntimeBase.h``,
  ``kNV_TENSORRT_VERSION_IMPL``) and ``major*10000 + minor*100 + patch`` from
  TensorRT 10 (``TRT@v10.0.0:include/NvInferRuntimeBase.h``,
  ``NV_TENSORRT_VERSION_INT``).  Headers TensorRT wrote: ``TRT-5100-`` (5.1,
  sampleINT8 README), ``TRT-7000-`` (7.0), ``TRT-8400-``, ``TRT-8501-``,
  ``TRT-100300-`` (10.3.0), ``TRT-101303-`` (10.13.3).
* **Algorithm names** in the header: ``EntropyCalibration2`` (sampleINT8
  READMEs) and ``MinMaxCalibration`` (caches in the field) are observed;
  ``EntropyCalibration`` and ``LegacyCalibration`` follow the same pattern but
  no cache with them was found.
* **Scale rule**: an entry is the float32 ``amax / 127`` printed as the
  lowercase hex of its IEEE-754 bits, most significant digit first, *without*
  leading zeros: TensorRT 10 caches hold a zero scale as a bare ``0``
  (``trt9200_lenet_entropy2.cache`` and ``trt100300_lenet_entropy2.cache`` in
  ``tests/fixtures/trt_caches`` have that shape).  For every scale above about 2.5e-29 this is
  the usual 8 digits.  Infinite scales (``7f800000``) also occur in caches
  TensorRT wrote: they mark tensors it could not calibrate.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from ..errors import CacheError, ConfigError

#: The default TensorRT a cache is written for when none is installed or named.
DEFAULT_TRT_VERSION = "10.16.0"
#: TensorRT versions whose builders accept a calibrator (implicit INT8): 8.6 <= v < 11.
IMPLICIT_INT8_MIN = (8, 6, 0)
IMPLICIT_INT8_END = (11, 0, 0)
#: Levels of symmetric int8: scale = amax / QMAX.
QMAX = 127.0


@dataclass(frozen=True)
class Calibrator:
    """One of TensorRT's calibrators (``CalibrationAlgoType``)."""

    key: str         #: int8batch's short name (``--algorithm``)
    base_class: str  #: the tensorrt class to subclass
    header: str      #: the algorithm word of the cache header
    enum: int        #: CalibrationAlgoType value
    observed: bool   #: header word seen in caches TensorRT wrote


CALIBRATORS = {
    "entropy2": Calibrator("entropy2", "IInt8EntropyCalibrator2", "EntropyCalibration2", 2, True),
    "entropy": Calibrator("entropy", "IInt8EntropyCalibrator", "EntropyCalibration", 1, False),
    "minmax": Calibrator("minmax", "IInt8MinMaxCalibrator", "MinMaxCalibration", 3, True),
    "legacy": Calibrator("legacy", "IInt8LegacyCalibrator", "LegacyCalibration", 0, False),
}
#: header word -> calibrator
BY_HEADER = {c.header: c for c in CALIBRATORS.values()}
#: the calibrator trtexec --calib installs (it never writes, it only reads a cache of this kind)
TRTEXEC_CALIBRATOR = "entropy2"

# ASCII digits only, and few of them: int() of a 5000-digit string raises ValueError
_VERSION_TEXT = re.compile(r"\s*([0-9]{1,6})\.([0-9]{1,6})(?:\.([0-9]{1,6}))?(?:\.[0-9]+)*\s*")
_HEADER = re.compile(r"TRT-([0-9]{1,12})-([A-Za-z0-9_]+)")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")


# ------------------------------------------------------------------ versions
def parse_version(version) -> tuple[int, int, int]:
    """``(major, minor, patch)`` from ``"10.13.3"``, ``"8.6"``, ``"10.3.0.26"`` or a tuple.

    A header number (``101303``, ``8501``) is also accepted.
    """
    if isinstance(version, tuple):
        parts = tuple(int(v) for v in version) + (0, 0)
        return parts[:3]
    if isinstance(version, (int, np.integer)) and not isinstance(version, bool):
        return version_of_number(int(version))
    text = str(version)
    digits = text.strip()
    if digits.isascii() and digits.isdigit() and len(digits) <= 12:
        if int(digits) < 100:        # "7", "10": a major version, not a header number
            return int(digits), 0, 0
        return version_of_number(int(digits))
    m = _VERSION_TEXT.fullmatch(text)
    if not m:
        raise ConfigError(f"cannot read TensorRT version {version!r}; write it like '10.13.3' or '8.6'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def header_number(version) -> int:
    """The number TensorRT writes in a cache header for ``version`` (see the module notes).

    >>> header_number("5.1"), header_number("8.5.1"), header_number("9.2"), header_number("10.13.3")
    (5100, 8501, 9200, 101303)
    """
    major, minor, patch = parse_version(version)
    if major < 1 or minor > 99 or patch > 99 or (major < 10 and minor > 9):
        raise ConfigError(f"TensorRT version {major}.{minor}.{patch} does not fit a cache header")
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def version_of_number(number: int) -> tuple[int, int, int]:
    """Inverse of :func:`header_number`: ``101303 -> (10, 13, 3)``, ``8501 -> (8, 5, 1)``."""
    n = int(number)
    if n >= 100000:
        return n // 10000, n // 100 % 100, n % 100
    if 1000 <= n < 10000:
        return n // 1000, n // 100 % 10, n % 100
    raise ConfigError(f"{number} is not a TensorRT version number (5100 .. 9999 or 100000 and up)")


def version_text(version) -> str:
    return ".".join(map(str, parse_version(version)))


def has_implicit_int8(version) -> bool:
    """True for TensorRT 8.6-10.x, whose builders take an ``IInt8Calibrator``."""
    return IMPLICIT_INT8_MIN <= parse_version(version) < IMPLICIT_INT8_END


_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")


def installed_version() -> str | None:
    """The installed TensorRT's version (from package metadata, without importing it), or None."""
    for dist in _DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


# ------------------------------------------------------------------ headers
@dataclass(frozen=True)
class CacheHeader:
    """The first line of a calibration cache: ``TRT-<number>-<algorithm>``."""

    number: int
    algorithm: str

    @property
    def version(self) -> tuple[int, int, int]:
        return version_of_number(self.number)

    @property
    def calibrator(self) -> Calibrator | None:
        return BY_HEADER.get(self.algorithm)

    def __str__(self):
        return f"TRT-{self.number}-{self.algorithm}"


def calibrator(name: str) -> Calibrator:
    """A calibrator by short name (``entropy2``) or header word (``EntropyCalibration2``)."""
    c = CALIBRATORS.get(name) or BY_HEADER.get(name)
    if c is None:
        raise ConfigError(f"unknown TensorRT calibrator {name!r}; choose one of "
                          f"{', '.join(CALIBRATORS)} (or their header names "
                          f"{', '.join(BY_HEADER)})")
    return c


#: the oldest TensorRT whose cache header carries its version (``TRT-5100-...``)
OLDEST_HEADER_VERSION = (5, 1, 0)


def make_header(version, algorithm="entropy2") -> CacheHeader:
    """The header TensorRT ``version`` writes with ``algorithm`` (short or header name)."""
    v = parse_version(version)
    if v < OLDEST_HEADER_VERSION:
        raise ConfigError(f"TensorRT {'.'.join(map(str, v))}: caches with a version in their header start at "
                          f"TensorRT 5.1 (TRT-5100-...); give the version of the TensorRT that will read the cache, "
                          f"e.g. --trt-version 10.13")
    return CacheHeader(header_number(v), calibrator(algorithm).header)


def parse_header(line, where="") -> CacheHeader:
    """Parse a cache's first line (bytes or text; CR/LF and surrounding blanks ignored).

    Raises :class:`~int8batch.errors.CacheError` naming ``where`` when the line
    is not ``TRT-<number>-<word>`` with a number of a TensorRT version.
    """
    if isinstance(line, (bytes, bytearray, memoryview)):
        line = bytes(line).decode("utf-8", "replace")
    text = str(line).lstrip("\ufeff").strip()
    m = _HEADER.fullmatch(text)
    prefix = f"{where}: " if where else ""
    if not m:
        raise CacheError(f"{prefix}the first line {text[:60]!r} is not a TensorRT calibration cache header; "
                         "expected 'TRT-<version>-<algorithm>', e.g. TRT-100300-EntropyCalibration2",
                         path=where or None)
    number = int(m.group(1))
    try:
        version_of_number(number)
    except ConfigError:
        raise CacheError(f"{prefix}header {text!r}: {number} is not a TensorRT version number",
                         path=where or None) from None
    return CacheHeader(number, m.group(2))


# ------------------------------------------------------------------ scales
def scale_of(amax: float) -> float:
    """TensorRT's scale of a symmetric range: ``float32(amax / 127)`` (as a Python float)."""
    with np.errstate(over="ignore"):   # amax > ~4.3e40 gives inf; callers check
        return float(np.float32(float(amax) / QMAX))


def amax_of(scale: float) -> float:
    """The symmetric range a cache scale stands for: ``scale * 127``."""
    return float(scale) * QMAX


def scale_bits(scale: float) -> int:
    """The IEEE-754 bits of ``float32(scale)`` as an unsigned int (``1.0 -> 0x3f800000``)."""
    with np.errstate(over="ignore"):
        return struct.unpack(">I", struct.pack(">f", float(np.float32(scale))))[0]


def scale_hex(scale: float) -> str:
    """A scale as TensorRT prints it: lowercase hex of the float32 bits, no leading zeros."""
    return format(scale_bits(scale), "x")


def amax_hex(amax: float) -> str:
    """The cache entry of a range: ``scale_hex(scale_of(amax))`` (1.0 -> ``3c010204``, 0 -> ``0``)."""
    return scale_hex(scale_of(amax))


def parse_scale_hex(text: str) -> float | None:
    """The float32 a cache entry holds (1 to 8 hex digits, either case), or None if not hex."""
    t = text.strip()
    if not _HEX.fullmatch(t):
        return None
    return struct.unpack(">f", struct.pack(">I", int(t, 16)))[0]


def usable_scale(scale: float) -> bool:
    """A scale a Q/DQ pair can use: finite and > 0 (TensorRT rejects the rest)."""
    return math.isfinite(scale) and scale > 0.0


# ------------------------------------------------------------------ which header to write
#: where the version of a written header came from
HEADER_SOURCES = ("given", "installed", "assumed")


def choose_header(version=None, algorithm="entropy2") -> tuple[CacheHeader, str]:
    """The header a cache should carry, and where its version came from.

    ``version`` given: that one ("given").  Otherwise the installed TensorRT
    ("installed"), else :data:`DEFAULT_TRT_VERSION` ("assumed").  TensorRT
    reuses a cache only when the header names its own version and the
    calibrator it runs, so an assumed version is worth a word to the user
    (:func:`header_advice`).
    """
    if version is not None and str(version).strip():
        return make_header(version, algorithm), "given"
    installed = installed_version()
    if installed is not None:
        try:
            return make_header(installed, algorithm), "installed"
        except ConfigError:
            pass
    return make_header(DEFAULT_TRT_VERSION, algorithm), "assumed"


def header_advice(header: CacheHeader, source: str) -> list[str]:
    """One line per thing the user should know about a written header."""
    notes = []
    v = ".".join(map(str, header.version))
    if source == "assumed":
        notes.append(f"cache header {header}: no TensorRT is installed here, so TensorRT {v} was assumed; "
                     "TensorRT reuses a cache only when the header names its own version: pass "
                     "--trt-version X.Y.Z (the TensorRT that will read it)")
    if header.algorithm != CALIBRATORS[TRTEXEC_CALIBRATOR].header:
        notes.append(f"cache header {header}: trtexec --calib and IInt8EntropyCalibrator2 only reuse "
                     f"{CALIBRATORS[TRTEXEC_CALIBRATOR].header} caches (others make TensorRT calibrate again, "
                     f"and trtexec then fails on unbound inputs); use an {BY_HEADER[header.algorithm].base_class} "
                     "whose read_calibration_cache returns this file, or write the header with "
                     "--cache-algorithm entropy2 to have these scales used as they are")
    if header.version >= IMPLICIT_INT8_END:
        notes.append(f"cache header {header}: TensorRT {v} has no calibrator API that reads caches "
                     "(TensorRT 11 removed implicit INT8); build model.qdq.onnx there instead")
    return notes
