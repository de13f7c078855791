"""Calibration artefacts: TensorRT cache, sampleINT8API dynamic ranges, JSON.

TensorRT calibration cache (``CalibrationTable``), as TensorRT writes it::

    TRT-<version int>-<algorithm>\\n
    <tensor name>: <8 lowercase hex digits>\\n      (one line per tensor)

* ``<version int>`` is TensorRT's version number: ``major*1000 + minor*100 +
  patch`` up to TensorRT 8 (8.6.1 -> ``8601``) and ``major*10000 + minor*100 +
  patch`` from TensorRT 10 (10.3.0 -> ``100300``, 10.16.0 -> ``101600``).  See
  :func:`trt_version_int`.  TensorRT only uses a cache whose header matches its
  own version and the calibrator's algorithm, otherwise it recalibrates.
* ``<algorithm>``: ``EntropyCalibration2`` or ``MinMaxCalibration`` (also
  ``EntropyCalibration``/``LegacyCalibration``, unverified strings).
* the hex is the big-endian IEEE float32 bit pattern of ``scale = amax / 127``
  (``float32(amax / 127)``: amax 127.0 -> ``3f800000``, 1.0 -> ``3c010204``).

The dynamic-range file of sampleINT8API is ``<name>:<amax>`` per line, no
header; the sample takes the text before the *first* ``:`` as the name, so
names holding ``:`` cannot be written (they are refused or skipped).

Every writer writes a temporary file next to the target, then renames it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .._atomic import write_bytes_atomic
from ..errors import CacheError

log = logging.getLogger(__name__)

TRT_ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration",
                  "LegacyCalibration")
DEFAULT_TRT_VERSION = "10.16.0"
JSON_FORMAT = "int8batch-calibration"
JSON_VERSION = 1

_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*")
_ALGO = re.compile(r"[A-Za-z0-9_]+")


# -- helpers -----------------------------------------------------------------
def _atomic_write(path, data: bytes) -> None:
    write_bytes_atomic(path, data, fsync=True)


def _read_lines(path, what):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CacheError(f"{what} {os.fspath(path)!r} does not exist", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CacheError(f"{what} {os.fspath(path)!r} is not UTF-8 text ({exc}); is it a binary "
                         "file?", path=path) from None
    return text.split("\n")


def _check_name(name, path, what):
    if not isinstance(name, str) or not name:
        raise CacheError(f"cannot write an empty or non-string tensor name ({name!r}) to {what} "
                         f"{os.fspath(path)!r}", path=path)
    if "\n" in name or "\r" in name:
        raise CacheError(f"tensor name {name!r} holds a line break and cannot be written to "
                         f"{what} {os.fspath(path)!r}", path=path)


def _check_amax(name, amax, path):
    a = float(amax)
    if not math.isfinite(a) or a < 0.0:
        raise CacheError(f"amax of tensor {name!r} is {a}; it must be finite and >= 0 "
                         f"(writing {os.fspath(path)!r})", path=path)
    if a == 0.0:
        log.warning("tensor %r has amax 0 (scale 0), which TensorRT rejects; consider a small "
                    "positive placeholder", name)
    return a


def scale_bits(amax: float) -> str:
    """The cache hex of ``amax``: big-endian float32 bits of ``float32(amax / 127)``."""
    return struct.pack(">f", float(np.float32(float(amax) / 127.0))).hex()


def trt_version_int(version) -> int:
    """TensorRT's integer version from ``"10.16.0"``-style text (an int is returned as is).

    ``major*1000 + minor*100 + patch`` for TensorRT <= 8, ``major*10000 +
    minor*100 + patch`` from TensorRT 9 on (9.x is assumed to follow 10.x; not
    verified).  ``"10.3"`` means patch 0; a fourth (build) component is ignored.
    """
    if isinstance(version, (int, np.integer)) and not isinstance(version, bool):
        if version <= 0:
            raise CacheError(f"TensorRT version must be positive, got {version}")
        return int(version)
    text = str(version).strip()
    if text.isdigit():
        return int(text)
    m = _VERSION.fullmatch(text)
    if not m:
        raise CacheError(f"cannot read TensorRT version {version!r}; write it like '10.16.0'")
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major >= 9:
        if minor > 99 or patch > 99:
            raise CacheError(f"TensorRT version {version!r} does not fit the header format")
        return major * 10000 + minor * 100 + patch
    if major < 1 or minor > 9 or patch > 99:
        raise CacheError(f"TensorRT version {version!r} does not fit the header format")
    return major * 1000 + minor * 100 + patch


# -- TensorRT calibration cache -------------------------------------------------
@dataclass(frozen=True)
class CacheData:
    """Contents of a TensorRT calibration cache.

    Attributes
    ----------
    version : str
        The header's version number as written (``"100300"``, ``"8601"``).
    algorithm : str
        ``"EntropyCalibration2"``, ``"MinMaxCalibration"``, ...
    scales : dict of str to float
        Per-tensor scale (the decoded float32), in file order.
    path : str
    """

    version: str
    algorithm: str
    scales: dict = field(default_factory=dict)
    path: str = ""

    @property
    def amax(self) -> dict[str, float]:
        """``{name: scale * 127}``."""
        return {k: v * 127.0 for k, v in self.scales.items()}


def trt_cache_text(amax: Mapping[str, float], trt_version=DEFAULT_TRT_VERSION,
                   algorithm: str = "EntropyCalibration2", path="<memory>") -> str:
    """The text :func:`write_trt_cache` writes (entries in ``amax`` order)."""
    algorithm = str(algorithm)
    if not _ALGO.fullmatch(algorithm):
        raise CacheError(f"calibration algorithm {algorithm!r} is not a valid header word; use "
                         f"one of {', '.join(TRT_ALGORITHMS)}")
    if algorithm not in TRT_ALGORITHMS:
        log.warning("writing unknown calibration algorithm %r to a TensorRT cache", algorithm)
    lines = [f"TRT-{trt_version_int(trt_version)}-{algorithm}"]
    for name, a in amax.items():
        _check_name(name, path, "TensorRT cache")
        lines.append(f"{name}: {scale_bits(_check_amax(name, a, path))}")
    return "\n".join(lines) + "\n"


def write_trt_cache(path, amax: Mapping[str, float], trt_version=DEFAULT_TRT_VERSION,
                    algorithm: str = "EntropyCalibration2") -> None:
    """Write a TensorRT calibration cache (atomically), one entry per ``amax`` item, in order.

    Parameters
    ----------
    path : str or os.PathLike
    amax : mapping of str to float
        Symmetric range per tensor (finite, >= 0); the scale written is
        ``float32(amax / 127)``.
    trt_version : str or int
        ``"10.16.0"`` (converted by :func:`trt_version_int`) or the header
        integer itself (``101600``).
    algorithm : str
        Header algorithm; must match the calibrator TensorRT will use.
    """
    _atomic_write(path, trt_cache_text(amax, trt_version, algorithm, path).encode("utf-8"))


def read_trt_cache(path) -> CacheData:
    """Read a TensorRT calibration cache of any version.

    Names are split from the hex at the **last** ``": "`` (names may hold
    colons and spaces); CRLF line ends and blank lines are tolerated.  A
    malformed line, a duplicate name, or a negative / non-finite scale raises
    :class:`~int8batch.errors.CacheError` naming the file and line.
    """
    p = os.fspath(path)
    lines = _read_lines(p, "TensorRT calibration cache")
    header = lines[0].rstrip("\r") if lines else ""
    m = re.fullmatch(r"TRT-(\d+)-([A-Za-z0-9_]+)", header.strip())
    if not m:
        raise CacheError(f"{p}:1: not a TensorRT calibration cache: the first line is {header!r}, "
                         "expected 'TRT-<version>-<algorithm>' "
                         "(e.g. TRT-100300-EntropyCalibration2)",
                         path=p)
    scales: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        k = line.rfind(": ")
        hexpart = line[k + 2:].strip() if k >= 0 else ""
        if k <= 0 or not _HEX8.fullmatch(hexpart):
            raise CacheError(f"{p}:{lineno}: malformed cache entry {line!r}; expected "
                             "'<tensor name>: <8 hex digits>'", path=p)
        name = line[:k]
        scale = struct.unpack(">f", bytes.fromhex(hexpart))[0]
        if not math.isfinite(scale) or scale < 0.0:
            raise CacheError(f"{p}:{lineno}: tensor {name!r} has scale {scale} (hex {hexpart}); "
                             "scales must be finite and >= 0", path=p)
        if name in scales:
            raise CacheError(f"{p}:{lineno}: tensor {name!r} appears twice (first on line "
                             f"{first_line[name]})", path=p)
        scales[name] = float(scale)
        first_line[name] = lineno
    return CacheData(version=m.group(1), algorithm=m.group(2), scales=scales, path=p)


# -- sampleINT8API dynamic-range file -------------------------------------------
def dynamic_range_text(amax: Mapping[str, float], skip_colon_names: bool = False,
                       path="<memory>") -> tuple[str, list[str]]:
    """(text, skipped names) of :func:`write_dynamic_range`."""
    lines, skipped = [], []
    for name, a in amax.items():
        _check_name(name, path, "dynamic-range file")
        if ":" in name:
            skipped.append(name)
            continue
        lines.append(f"{name}:{_check_amax(name, a, path)!r}")
    if skipped and not skip_colon_names:
        raise CacheError(
            f"tensor name(s) {skipped[:5]} contain ':', which the sampleINT8API dynamic-range "
            "format cannot express (its reader splits at the first ':'); pass "
            "skip_colon_names=True to leave them out, or use the TensorRT cache instead",
            path=None if path == "<memory>" else path)
    return "".join(line + "\n" for line in lines), skipped


def write_dynamic_range(path, amax: Mapping[str, float], *, skip_colon_names: bool = False
                        ) -> list[str]:
    """Write ``name:amax`` lines (sampleINT8API ``--ranges`` format), atomically, in order.

    Values are written as Python's shortest round-trip repr of the float
    (``2.5``, ``0.1``, ``1e-05``).  Names holding ``':'`` raise
    :class:`~int8batch.errors.CacheError`, or with ``skip_colon_names=True``
    are left out with a warning.

    Returns
    -------
    list of str
        The names left out (empty unless ``skip_colon_names``).
    """
    text, skipped = dynamic_range_text(amax, skip_colon_names, path)
    if skipped:
        log.warning("left %d tensor(s) with ':' in the name out of %s: %s", len(skipped),
                    os.fspath(path), skipped[:5])
    _atomic_write(path, text.encode("utf-8"))
    return skipped


def read_dynamic_range(path) -> dict[str, float]:
    """Read a dynamic-range file: ``{name: amax}`` in file order.

    Each non-blank line is split at its **last** ``':'``; the name is kept
    verbatim (a name with surrounding spaces is kept, and logged, because
    TensorRT's sample would not match it either).
    """
    p = os.fspath(path)
    out: dict[str, float] = {}
    for lineno, line in enumerate(_read_lines(p, "dynamic-range file"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        k = line.rfind(":")
        if k <= 0:
            raise CacheError(f"{p}:{lineno}: malformed line {line!r}; "
                             "expected '<tensor name>:<amax>'",
                             path=p)
        name, value = line[:k], line[k + 1:].strip()
        try:
            a = float(value)
        except ValueError:
            raise CacheError(f"{p}:{lineno}: amax {value!r} of tensor {name!r} is not a number",
                             path=p) from None
        if not math.isfinite(a) or a < 0.0:
            raise CacheError(f"{p}:{lineno}: amax of tensor {name!r} is {a}; it must be finite and "
                             ">= 0", path=p)
        if name in out:
            raise CacheError(f"{p}:{lineno}: tensor {name!r} appears twice", path=p)
        if name != name.strip():
            log.warning("%s:%d: tensor name %r has surrounding spaces", p, lineno, name)
        out[name] = a
    return out


# -- JSON --------------------------------------------------------------------
def _plain(value):
    """numpy scalars / arrays -> plain Python (json.dumps ``default`` hook)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write a {type(value).__name__} to calibration JSON")


def write_calibration_json(path, entries: Mapping[str, Mapping[str, object]],
                           metadata: Mapping[str, object] | None = None) -> None:
    """Write the per-tensor calibration summary as JSON (atomically).

    Layout::

        {"format": "int8batch-calibration", "version": 1, "metadata": {...},
         "tensors": {name: {"amax": ..., "scale": float32(amax/127),
                            "observed_amax": ..., "method": ..., "saturation": ..., ...}}}

    Parameters
    ----------
    entries : mapping of str to mapping
        Per tensor: at least ``amax``; conventionally ``observed_amax``,
        ``method``, ``saturation`` (see :func:`calibration_entry`); extra keys
        are kept.  NumPy scalars and arrays become plain numbers and lists.
        ``scale`` is added when absent.
    metadata : mapping, optional
        Run-level facts (model, method, TensorRT version, ...).
    """
    tensors = {}
    for name, entry in entries.items():
        _check_name(name, path, "calibration JSON")
        e = dict(entry)
        if "amax" not in e:
            raise CacheError(f"calibration entry of tensor {name!r} has no 'amax'", path=path)
        e["amax"] = _check_amax(name, e["amax"], path)
        e.setdefault("scale", float(np.float32(e["amax"] / 127.0)))
        tensors[name] = e
    doc = {"format": JSON_FORMAT, "version": JSON_VERSION, "metadata": dict(metadata or {}),
           "tensors": tensors}
    try:
        text = json.dumps(doc, indent=1, default=_plain, allow_nan=False)
    except ValueError as exc:
        raise CacheError(f"calibration JSON {os.fspath(path)!r}: {exc} (NaN or inf value)",
                         path=path) from None
    _atomic_write(path, (text + "\n").encode("utf-8"))


def read_calibration_json(path) -> dict:
    """Read a file from :func:`write_calibration_json` (checks the format tag)."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise CacheError(f"calibration JSON {p!r} does not exist", path=p) from None
    except ValueError as exc:
        raise CacheError(f"calibration JSON {p!r} is not valid JSON ({exc})", path=p) from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise CacheError(f"{p!r} is not an int8batch calibration JSON (format tag "
                         f"{JSON_FORMAT!r} missing)", path=p)
    return doc


def calibration_entry(stats, amax: float, method: str) -> dict:
    """One JSON entry for a tensor: amax, observed max, method, saturation and counts."""
    from .thresholds import saturation

    return {
        "amax": float(amax),
        "observed_amax": float(stats.amax),
        "method": str(method),
        "saturation": saturation(stats, amax),
        "min": float(stats.min) if math.isfinite(stats.min) else None,
        "max": float(stats.max) if math.isfinite(stats.max) else None,
        "count": int(stats.count),
        "nan_count": int(getattr(stats, "nan_count", 0)),
        "inf_count": int(getattr(stats, "inf_count", 0)),
    }
