"""Calibration artefacts: TensorRT cache, sampleINT8API dynamic ranges, JSON.

TensorRT calibration cache (``CalibrationTable``), as TensorRT writes it::

    TRT-<version number>-<algorithm>\\n
    <tensor name>: <hex>\\n      (one line per tensor)

Every TensorRT fact here (the header number of a version, the algorithm
words, the scale rule ``float32(amax / 127)`` and how its bits are printed)
comes from :mod:`int8batch.trt.vocab`; this module only reads and writes
files.  The hex is the big-endian IEEE float32 bit pattern of the scale,
lowercase and **without leading zeros** (amax 127.0 -> ``3f800000``, 1.0 ->
``3c010204``, 0 -> ``0``), exactly as TensorRT prints it.

The reader accepts everything TensorRT 5-10 caches hold (see
:func:`read_trt_cache`): headers of any version, 1 to 8 hex digits in either
case, CRLF, a BOM, trailing blank lines, names with ``": "`` and
parser-internal names, and the infinite / NaN scales TensorRT writes for
tensors it could not calibrate (kept, and listed by :attr:`CacheData.unusable`).

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
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .._atomic import write_bytes_atomic
from ..errors import CacheError
from ..trt import vocab
from .thresholds import saturation

log = logging.getLogger(__name__)

#: Kept for the callers that import it from here; the value is vocab's.
DEFAULT_TRT_VERSION = vocab.DEFAULT_TRT_VERSION
JSON_FORMAT = "int8batch-calibration"
JSON_VERSION = 1

_BOM = "\ufeff"
_SHOWN = 5   # names listed in one log line
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


# -- helpers -----------------------------------------------------------------
def _atomic_write(path, data: bytes) -> None:
    write_bytes_atomic(path, data, fsync=True)


def _read_lines(path, what):
    """The file's lines (split at ``\\n`` only, BOM removed); errors name the file and line."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CacheError(f"{what} {p!r} does not exist", path=p) from None
    except IsADirectoryError:
        raise CacheError(f"{what} {p!r} is a directory, not a file", path=p) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise CacheError(f"{p}:{line}: {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                         f"offset {exc.start}); expected a text file, is it a binary file?",
                         path=p) from None
    if text.startswith(_BOM):
        text = text[1:]
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise CacheError(f"{p}:{line}: {what} holds a NUL byte; expected a text file, is it a "
                         "binary file?", path=p)
    return text.split("\n")


def _check_name(name, path, what):
    if not isinstance(name, str) or not name:
        raise CacheError(f"cannot write an empty or non-string tensor name ({name!r}) to {what} "
                         f"{os.fspath(path)!r}", path=path)
    if "\n" in name or "\r" in name or "\0" in name:
        raise CacheError(f"tensor name {name!r} holds a line break or NUL and cannot be written to "
                         f"{what} {os.fspath(path)!r}", path=path)


def _check_amax(name, amax, path):
    """``float(amax)`` if it is finite, >= 0 and its scale ``amax/127`` fits a float32."""
    try:
        a = float(amax)
    except (TypeError, ValueError):
        raise CacheError(f"amax of tensor {name!r} is {amax!r}, not a number (writing "
                         f"{os.fspath(path)!r})", path=path) from None
    if not math.isfinite(a) or a < 0.0:
        raise CacheError(f"amax of tensor {name!r} is {a}; it must be finite and >= 0 "
                         f"(writing {os.fspath(path)!r})", path=path)
    if not math.isfinite(vocab.scale_of(a)):
        raise CacheError(f"amax of tensor {name!r} is {a:g}: its scale amax/127 overflows float32 "
                         f"(amax must be <= {_AMAX_LIMIT:.6g}) (writing {os.fspath(path)!r})",
                         path=path)
    return 0.0 if a == 0.0 else a    # -0.0 would be written as 80000000


#: the largest amax whose scale float32(amax / 127) is finite
_AMAX_LIMIT = float(np.finfo(np.float32).max) * vocab.QMAX


def _log_zero(zero, path, what):
    """One log line for all the tensors written with amax 0."""
    if zero:
        log.warning("%d tensor(s) written with scale 0 (amax 0: the tensor was all zeros during "
                    "calibration) to %s %s: %s", len(zero), what, os.fspath(path), _shown(zero))


def _shown(names):
    names = list(names)
    return ", ".join(map(repr, names[:_SHOWN])) + (" ..." if len(names) > _SHOWN else "")


# -- TensorRT calibration cache -------------------------------------------------
@dataclass(frozen=True)
class CacheData:
    """Contents of a TensorRT calibration cache.

    Attributes
    ----------
    version : str
        The header's version number as written (``"100300"``, ``"8601"``);
        ``header.version`` is it as ``(major, minor, patch)``.
    algorithm : str
        The header's algorithm word (``"EntropyCalibration2"``, ``"MinMaxCalibration"``,
        or a word int8batch does not know, which is kept).
    scales : dict of str to float
        Every entry's decoded float32, in file order, *including* the ones a
        Q/DQ model cannot use (0, +-inf, NaN): see :attr:`usable`,
        :attr:`zero` and :attr:`unusable`.
    path : str
    header : vocab.CacheHeader
        The parsed first line.
    hex : dict of str to str
        Every entry's hex as written in the file.

    The three views partition :attr:`scales`: ``usable`` (finite and > 0),
    ``zero`` (0, which TensorRT writes for an all-zero tensor) and
    ``unusable`` (infinite or NaN, which TensorRT writes for a tensor it could
    not calibrate).
    """

    version: str
    algorithm: str
    scales: dict = field(default_factory=dict)
    path: str = ""
    header: vocab.CacheHeader | None = None
    hex: dict = field(default_factory=dict)

    @property
    def amax(self) -> dict[str, float]:
        """``{name: scale * 127}`` of every entry (unusable scales give inf / NaN)."""
        return {k: vocab.amax_of(v) for k, v in self.scales.items()}

    @property
    def usable(self) -> dict[str, float]:
        """``{name: scale}`` of the entries a Q/DQ pair can use (finite, > 0), in file order."""
        return {k: v for k, v in self.scales.items() if vocab.usable_scale(v)}

    @property
    def zero(self) -> list[str]:
        """Names whose scale is 0 (hex ``0``), in file order."""
        return [k for k, v in self.scales.items() if v == 0.0]

    @property
    def unusable(self) -> dict[str, str]:
        """``{name: reason}`` of the entries with an infinite or NaN scale, in file order."""
        out = {}
        for k, v in self.scales.items():
            if math.isnan(v):
                out[k] = f"cache scale is NaN ({self.hex.get(k, '?')})"
            elif math.isinf(v):
                out[k] = f"cache scale is {'+' if v > 0 else '-'}inf ({self.hex.get(k, '?')})"
        return out


def _header_of(trt_version, algorithm) -> vocab.CacheHeader:
    """The header to write: ``algorithm`` is a short name, a header word, or (warned) another word."""
    number = vocab.header_number(trt_version)    # ConfigError for a version that fits no header
    word = str(algorithm)
    known = vocab.CALIBRATORS.get(word) or vocab.BY_HEADER.get(word)
    if known is not None:
        return vocab.CacheHeader(number, known.header)
    header = vocab.CacheHeader(number, word)
    try:
        vocab.parse_header(str(header))
    except CacheError:
        raise CacheError(f"calibration algorithm {word!r} is not a valid cache header word; use one "
                         f"of {', '.join(vocab.CALIBRATORS)} or {', '.join(vocab.BY_HEADER)}") from None
    log.warning("writing calibration algorithm %r, which int8batch does not know, to a TensorRT "
                "cache header", word)
    return header


def trt_cache_text(amax: Mapping[str, float], trt_version=DEFAULT_TRT_VERSION,
                   algorithm: str = "EntropyCalibration2", path="<memory>") -> str:
    """The text :func:`write_trt_cache` writes (entries in ``amax`` order)."""
    lines = [str(_header_of(trt_version, algorithm))]
    zero = []
    for name, a in amax.items():
        _check_name(name, path, "TensorRT cache")
        h = vocab.amax_hex(_check_amax(name, a, path))
        if h == "0":
            zero.append(name)
        lines.append(f"{name}: {h}")
    _log_zero(zero, path, "TensorRT cache")
    return "\n".join(lines) + "\n"


def write_trt_cache(path, amax: Mapping[str, float], trt_version=DEFAULT_TRT_VERSION,
                    algorithm: str = "EntropyCalibration2") -> None:
    """Write a TensorRT calibration cache (atomically), one entry per ``amax`` item, in order.

    Parameters
    ----------
    path : str or os.PathLike
    amax : mapping of str to float
        Symmetric range per tensor (finite, >= 0, with ``amax/127`` finite in
        float32); the entry is :func:`int8batch.trt.vocab.amax_hex`: the hex
        of ``float32(amax / 127)`` without leading zeros (amax 0 -> ``0``, as
        TensorRT writes it; logged once).
    trt_version : str, tuple or int
        ``"10.16.0"`` or the header number itself (``101600``); see
        :func:`int8batch.trt.vocab.header_number`.
    algorithm : str
        Short name (``"entropy2"``, ``"minmax"``, ...) or header word
        (``"EntropyCalibration2"``); it must match the calibrator TensorRT will
        use, or TensorRT ignores the cache.
    """
    _atomic_write(path, trt_cache_text(amax, trt_version, algorithm, path).encode("utf-8"))


def _entry_error(p, lineno, line, what):
    shown = line if len(line) <= 120 else line[:117] + "..."
    return CacheError(f"{p}:{lineno}: malformed cache entry {shown!r}: {what}; expected "
                      "'<tensor name>: <hex>' with 1 to 8 hex digits (the float32 bits of the scale, "
                      "e.g. 'conv1: 3c8954be')", path=p)


def read_trt_cache(path) -> CacheData:
    """Read a TensorRT calibration cache written by any TensorRT (5 to 10).

    Accepted, because TensorRT writes it: any ``TRT-<number>-<word>`` header
    (an algorithm word int8batch does not know is logged), a UTF-8 BOM, CRLF
    line ends, blank lines, 1 to 8 hex digits in either case (``0``,
    ``a000000``, ``3C010A14``), names holding spaces, brackets or ``": "``
    (each line is split at its **last** ``": "``), parser-internal names such
    as ``ONNXTRT_Broadcast_1855_output``, and scales that are 0, infinite or
    NaN (kept: see :attr:`CacheData.zero` and :attr:`CacheData.unusable`).

    Raises
    ------
    CacheError
        Naming the file and line: a missing file, an empty, binary or
        non-UTF-8 file, a bad header, an entry without ``": "``, without a
        name, or whose value is not 1 to 8 hex digits, a negative finite
        scale, or a name given twice.
    """
    p = os.fspath(path)
    lines = _read_lines(p, "TensorRT calibration cache")
    if not lines[0].strip():
        what = "the file is empty" if not "".join(lines).strip() else "the first line is empty"
        raise CacheError(f"{p}:1: {what}; expected a TensorRT calibration cache header "
                         "'TRT-<version>-<algorithm>' (e.g. TRT-100300-EntropyCalibration2)", path=p)
    try:
        header = vocab.parse_header(lines[0], f"{p}:1")
    except CacheError as exc:
        raise CacheError(str(exc), path=p) from None
    if header.calibrator is None:
        log.warning("%s: header algorithm %r is not one int8batch knows (%s); reading the scales "
                    "anyway", p, header.algorithm, ", ".join(vocab.BY_HEADER))
    scales: dict[str, float] = {}
    hexes: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        k = line.rfind(": ")
        if k < 0:
            raise _entry_error(p, lineno, line, "no ': ' between name and hex")
        if k == 0:
            raise _entry_error(p, lineno, line, "the tensor name is missing")
        name, hexpart = line[:k], line[k + 2:].strip()
        scale = vocab.parse_scale_hex(hexpart)
        if scale is None:
            if not hexpart:
                what = "the hex value is missing"
            elif len(hexpart) > 8 and all(c in _HEX_DIGITS for c in hexpart):
                what = f"{len(hexpart)} hex digits (a float32 has at most 8)"
            else:
                what = f"{hexpart[:20]!r} is not hex"
            raise _entry_error(p, lineno, line, what)
        if math.isfinite(scale) and scale < 0.0:
            raise CacheError(f"{p}:{lineno}: tensor {name!r} has the negative scale {scale:g} (hex "
                             f"{hexpart}); expected a scale >= 0 (TensorRT never writes a negative "
                             "one: is the file damaged?)", path=p)
        if name in scales:
            raise CacheError(f"{p}:{lineno}: tensor {name!r} appears twice (first on line "
                             f"{first_line[name]}); expected one entry per tensor", path=p)
        scales[name] = float(scale)
        hexes[name] = hexpart
        first_line[name] = lineno
    data = CacheData(version=str(header.number), algorithm=header.algorithm, scales=scales, path=p,
                     header=header, hex=hexes)
    bad = data.unusable
    if bad:
        log.debug("%s: %d entr%s with an infinite or NaN scale (TensorRT could not calibrate them; "
                  "kept, not usable): %s", p, len(bad), "y" if len(bad) == 1 else "ies", _shown(bad))
    return data


# -- sampleINT8API dynamic-range file -------------------------------------------
def dynamic_range_text(amax: Mapping[str, float], skip_colon_names: bool = False,
                       path="<memory>") -> tuple[str, list[str]]:
    """(text, skipped names) of :func:`write_dynamic_range`."""
    lines, skipped, zero = [], [], []
    for name, a in amax.items():
        _check_name(name, path, "dynamic-range file")
        if ":" in name:
            skipped.append(name)
            continue
        a = _check_amax(name, a, path)
        if a == 0.0:
            zero.append(name)
        lines.append(f"{name}:{a!r}")
    if skipped and not skip_colon_names:
        raise CacheError(
            f"tensor name(s) {skipped[:5]} contain ':', which the sampleINT8API dynamic-range "
            "format cannot express (its reader splits at the first ':'); pass "
            "skip_colon_names=True to leave them out, or use the TensorRT cache instead",
            path=None if path == "<memory>" else path)
    _log_zero(zero, path, "dynamic-range file")
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
                    os.path.basename(os.fspath(path)), skipped[:5])
    _atomic_write(path, text.encode("utf-8"))
    return skipped


def read_dynamic_range(path) -> dict[str, float]:
    """Read a dynamic-range file: ``{name: amax}`` in file order.

    Each non-blank line is split at its **last** ``':'``; the name is kept
    verbatim (a name with surrounding spaces is kept, and logged, because
    TensorRT's sample would not match it either).  An amax that is negative,
    not finite, or so large that ``amax/127`` overflows float32 (> ~4.3e40)
    raises :class:`~int8batch.errors.CacheError` naming the file and line.
    """
    p = os.fspath(path)
    out: dict[str, float] = {}
    for lineno, line in enumerate(_read_lines(p, "dynamic-range file"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        k = line.rfind(":")
        if k <= 0:
            hint = ("; this looks like JSON (calibrate's calibration.json?): give calibration.cache or "
                    "dynamic_range.txt" if lineno == 1 and line.lstrip()[:1] in "{[" else "")
            raise CacheError(f"{p}:{lineno}: malformed line {line!r}; "
                             f"expected '<tensor name>:<amax>' (or a TensorRT cache starting TRT-){hint}",
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
        if not math.isfinite(vocab.scale_of(a)):
            raise CacheError(f"{p}:{lineno}: amax of tensor {name!r} is {a:g}: its scale amax/127 "
                             f"overflows float32; expected an amax <= {_AMAX_LIMIT:.6g}", path=p)
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
    tensors, zero = {}, []
    for name, entry in entries.items():
        _check_name(name, path, "calibration JSON")
        e = dict(entry)
        if "amax" not in e:
            raise CacheError(f"calibration entry of tensor {name!r} has no 'amax'", path=path)
        e["amax"] = _check_amax(name, e["amax"], path)
        if e["amax"] == 0.0:
            zero.append(name)
        e.setdefault("scale", vocab.scale_of(e["amax"]))
        tensors[name] = e
    _log_zero(zero, path, "calibration JSON")
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
