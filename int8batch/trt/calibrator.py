"""TensorRT 8.6-10.x INT8 calibrators fed from batch files by the :class:`DeviceFeeder`.

``tensorrt`` is imported lazily, so the calibrator class is built at call time
by :func:`make_calibrator` as a subclass of the chosen ``trt.IInt8*Calibrator``
(the base ``__init__`` is called explicitly: without it the pybind trampoline
is not set up and TensorRT crashes).

Behaviour the builder relies on (see the project's trt-int8-reference.md, 2):

* ``read_calibration_cache`` returns the cache file's bytes after checking its
  header ``TRT-<version>-<Algo>``; a different version or algorithm is logged
  as a warning because TensorRT will then ignore the table and calibrate.
* ``get_batch(names)`` checks that TensorRT asks for the one input the batch
  files feed and returns one device pointer, valid until the next call.
* ``write_calibration_cache`` writes the table atomically.
* Since TensorRT 8.4 an exception inside a callback is printed and treated as
  "no more data", which silently shortens calibration.  Here every callback
  logs the exception loudly, remembers it, and :meth:`raise_if_failed` (called
  by :func:`~int8batch.trt.build.build_int8_engine` after the build) raises it.
"""
import ctypes
import logging
import os
import re

from .._atomic import write_bytes_atomic
from .._optional import require
from ..cuda.feeder import DeviceFeeder
from ..errors import CacheError, CalibrationError, ConfigError
from . import vocab

log = logging.getLogger(__name__)

# algorithm -> (tensorrt base class, algorithm name in the cache header), from the vocabulary
ALGORITHMS = {k: (c.base_class, c.header) for k, c in vocab.CALIBRATORS.items()}
_CLASSES = {}


# ------------------------------------------------------------------ versions
def trt_version(trt):
    """``(major, minor, patch)`` of a tensorrt module."""
    parts = re.findall(r"\d+", str(getattr(trt, "__version__", "0")))
    nums = [int(p) for p in parts[:3]] + [0, 0, 0]
    return tuple(nums[:3])


def check_implicit_int8(trt):
    """Raise ``CalibrationError`` when this TensorRT has no implicit INT8 (11+)."""
    version = trt_version(trt)
    if version >= vocab.IMPLICIT_INT8_END or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise CalibrationError(
            f"TensorRT {'.'.join(map(str, version))} has no implicit INT8 calibration: TensorRT 11 removed "
            "the IInt8*Calibrator classes, BuilderFlag.INT8 and config.int8_calibrator.  INT8 there means "
            "explicit quantization: run `int8batch calibrate MODEL.onnx --batches DIR --backend onnxruntime` "
            "to write a Q/DQ ONNX model and build that with TensorRT (strongly typed), or install "
            "TensorRT 8.6-10.x (pip install 'int8batch[tensorrt]') for the calibrator path")
    if version < vocab.IMPLICIT_INT8_MIN:
        log.warning("TensorRT %s is older than 8.6; the calibrator path is tested with 8.6-10.x",
                    ".".join(map(str, version)))
    return version


def load_tensorrt():
    """Import tensorrt and check that it still has implicit INT8 calibration."""
    trt = require("tensorrt")
    check_implicit_int8(trt)
    return trt


# --------------------------------------------------------------- cache header
def parse_cache_header(data, path=None):
    """``(version_number, algorithm_name)`` from the first line of a calibration cache.

    Raises ``CacheError`` when the first line is not ``TRT-<int>-<Name>``.
    """
    header = vocab.parse_header(bytes(data).split(b"\n", 1)[0], path or "")
    return header.number, header.algorithm


def check_cache_header(data, version, algorithm, path=None):
    """True when the cache header matches this TensorRT version and algorithm.

    A mismatch is logged as a warning (TensorRT would ignore the table and
    calibrate again); a malformed header raises ``CacheError``.
    """
    number, algo = parse_cache_header(data, path)
    want_number = vocab.header_number(version)
    want_algo = ALGORITHMS[algorithm][1]
    ok = True
    if number != want_number:
        log.warning("%s: cache written by TensorRT version %d but this is %d (%s); TensorRT will not use it "
                    "and will calibrate again", path, number, want_number, ".".join(map(str, version)))
        ok = False
    if algo != want_algo:
        log.warning("%s: cache holds %s scales but the calibrator is %s (algorithm=%r); TensorRT will not use "
                    "it and will calibrate again", path, algo, want_algo, algorithm)
        ok = False
    return ok


def _atomic_write(path, data):
    write_bytes_atomic(path, data)


def _as_bytes(obj, length=None):
    """Bytes of whatever TensorRT hands a write callback (memoryview, bytes, int or capsule pointer)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        return data if length is None else data[:int(length)]
    if isinstance(obj, int):
        return ctypes.string_at(obj, int(length))
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return ctypes.string_at(get(obj, None), int(length))


# ---------------------------------------------------------------- calibrator
class _CalibratorMixin:
    """The calibrator logic; mixed in before the tensorrt base class."""

    def _setup(self, trt, batchset, input_name, algorithm, batch_size, first, max_batches, cache_path,
               use_cache, quantile, regression_cutoff, histogram_cache, strategy, copy_threads, feeder):
        self.trt_version = trt_version(trt)
        self.batchset = batchset
        self.input_name = str(input_name)
        self.algorithm = algorithm
        self.batch_size = int(batchset.per_file if batch_size is None else batch_size)
        self.first, self.max_batches = int(first), max_batches
        self.cache_path = None if cache_path is None else os.fspath(cache_path)
        self.use_cache = bool(use_cache)
        self.quantile, self.regression_cutoff = float(quantile), float(regression_cutoff)
        self.histogram_cache = None if histogram_cache is None else os.fspath(histogram_cache)
        self.strategy, self.copy_threads = strategy, copy_threads
        self._feeder, self._owns_feeder = feeder, feeder is None
        self.batches_served = 0
        self.cache_read = None       # bytes handed to TensorRT (kept alive while it uses them)
        self.cache_written = None
        self.error = None            # first exception raised inside a callback
        self.error_where = None
        self._hist = None

    # -- bookkeeping
    def _fail(self, where, exc):
        log.error("TensorRT calibrator callback %s() raised %s: %s -- calibration stops here and the error "
                  "is raised again after the build", where, type(exc).__name__, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))
        if self.error is None:
            self.error, self.error_where = exc, where

    def raise_if_failed(self):
        """Raise the first exception a callback swallowed on TensorRT's behalf."""
        exc = self.error
        if exc is None:
            return
        if isinstance(exc, (KeyboardInterrupt, SystemExit, CalibrationError, CacheError, ConfigError)):
            raise exc
        raise CalibrationError(f"calibration failed in {self.error_where}(): {type(exc).__name__}: {exc}") from exc

    @property
    def feeder(self):
        if self._feeder is None:
            self._feeder = DeviceFeeder(self.batchset, self.batch_size, first=self.first,
                                        max_batches=self.max_batches, strategy=self.strategy,
                                        copy_threads=self.copy_threads)
        return self._feeder

    def close(self):
        """Release the feeder's GPU memory (the calibrator can't serve batches afterwards)."""
        f, self._feeder = self._feeder, None
        if f is not None and self._owns_feeder:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- IInt8Calibrator
    def get_batch_size(self):
        return self.batch_size

    def get_batch(self, names, *unused):
        try:
            if self.error is not None:
                return None
            if len(names) != 1 or names[0] != self.input_name:
                raise ConfigError(
                    f"TensorRT asks for input(s) {list(names)} but the batch files feed one input named "
                    f"{self.input_name!r}; pass the network's input name (input_name=...) and make sure the "
                    "network has exactly one input")
            batch = self.feeder.next_batch()
            if batch is None:
                log.info("calibration data exhausted after %d batch(es)", self.batches_served)
                return None
            self.batches_served += 1
            if self.batches_served % 50 == 0:
                log.info("calibration batch %d", self.batches_served)
            return [batch.ptr]
        except BaseException as exc:  # noqa: BLE001 - TensorRT would swallow it; keep it for later
            self._fail("get_batch", exc)
            return None

    def read_calibration_cache(self, *unused):
        try:
            if not self.use_cache or self.cache_path is None or not os.path.exists(self.cache_path):
                return None
            with open(self.cache_path, "rb") as f:
                data = f.read()
            if not data:
                log.warning("%s is empty; calibrating", self.cache_path)
                return None
            if check_cache_header(data, self.trt_version, self.algorithm, self.cache_path):
                log.info("using calibration cache %s (no calibration batches needed)", self.cache_path)
            self.cache_read = data
            return data
        except BaseException as exc:  # noqa: BLE001
            self._fail("read_calibration_cache", exc)
            return None

    def write_calibration_cache(self, cache, *length):
        try:
            data = _as_bytes(cache, length[0] if length else None)
            self.cache_written = data
            if self.cache_path is not None:
                _atomic_write(self.cache_path, data)
                log.info("calibration cache written: %s (%d bytes)", self.cache_path, len(data))
        except BaseException as exc:  # noqa: BLE001
            self._fail("write_calibration_cache", exc)

    @property
    def calibrated(self):
        """True when TensorRT ran calibration batches (False: scales came from the cache)."""
        return self.batches_served > 0


class _LegacyMixin:
    """The extra callbacks of ``IInt8LegacyCalibrator``."""

    def get_quantile(self):
        return self.quantile

    def get_regression_cutoff(self):
        return self.regression_cutoff

    def read_histogram_cache(self, *unused):
        try:
            if self.histogram_cache and self.use_cache and os.path.exists(self.histogram_cache):
                with open(self.histogram_cache, "rb") as f:
                    self._hist = f.read()
                return self._hist or None
            return None
        except BaseException as exc:  # noqa: BLE001
            self._fail("read_histogram_cache", exc)
            return None

    def write_histogram_cache(self, ptr, length=None):
        try:
            if self.histogram_cache:
                _atomic_write(self.histogram_cache, _as_bytes(ptr, length))
        except BaseException as exc:  # noqa: BLE001
            self._fail("write_histogram_cache", exc)


def calibrator_class(trt, algorithm):
    """The calibrator class for ``algorithm`` over this tensorrt module (built once, cached)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"calibration algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
    key = (id(trt), algorithm)
    cls = _CLASSES.get(key)
    if cls is not None and cls._trt is trt:
        return cls
    base = getattr(trt, ALGORITHMS[algorithm][0])
    mixins = (_LegacyMixin, _CalibratorMixin) if algorithm == "legacy" else (_CalibratorMixin,)

    def __init__(self, **kw):
        base.__init__(self)   # mandatory: sets up TensorRT's pybind trampoline
        _CalibratorMixin._setup(self, trt, **kw)

    name = "Int8Batch" + ALGORITHMS[algorithm][0][5:]
    cls = type(name, mixins + (base,), {"__init__": __init__, "_trt": trt, "__module__": __name__,
                                        "__doc__": f"int8batch calibrator over trt.{base.__name__}."})
    _CLASSES[key] = cls
    return cls


def make_calibrator(batchset, input_name, algorithm="entropy2", batch_size=None, max_batches=None,
                    cache_path=None, quantile=0.9999, regression_cutoff=1.0, histogram_cache=None, *,
                    first=0, use_cache=True, strategy="auto", copy_threads=4, feeder=None):
    """A TensorRT INT8 calibrator serving the batches of ``batchset``.

    Parameters
    ----------
    batchset : BatchSet
        The calibration batches (kept open by the caller during the build).
    input_name : str
        Name of the network's one input.
    algorithm : {"entropy2", "entropy", "minmax", "legacy"}
        ``IInt8EntropyCalibrator2`` (default), ``IInt8EntropyCalibrator``,
        ``IInt8MinMaxCalibrator`` or ``IInt8LegacyCalibrator``.
    batch_size : int or None
        Images per calibration batch (default: the files' N).
    max_batches : int or None
        Most batches to serve (None: every full batch).
    cache_path : path or None
        Calibration cache read before calibrating (when ``use_cache``) and
        written after.
    quantile, regression_cutoff : float
        Legacy calibrator parameters (TensorRT's BERT demo uses 0.9999 and 1.0).
    histogram_cache : path or None
        Legacy calibrator histogram cache.
    first : int
        Batches to skip first.
    use_cache : bool
        False ignores an existing cache (it is overwritten).
    strategy, copy_threads
        Passed to :class:`~int8batch.cuda.DeviceFeeder`.
    feeder : object or None
        A ready feeder (anything with ``next_batch()`` returning an object with
        ``.ptr`` or None); by default a ``DeviceFeeder`` is made on the first
        ``get_batch`` and closed by ``close()``.

    Returns
    -------
    A ``trt.IInt8*Calibrator`` subclass instance with ``raise_if_failed()``,
    ``close()`` (also a context manager), ``batches_served``, ``calibrated``,
    ``cache_read`` and ``cache_written``.

    Raises
    ------
    CalibrationError
        When TensorRT is 11 or newer (no implicit INT8).
    """
    trt = load_tensorrt()
    cls = calibrator_class(trt, algorithm)
    if batch_size is not None and int(batch_size) <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    return cls(batchset=batchset, input_name=input_name, algorithm=algorithm, batch_size=batch_size,
               first=first, max_batches=max_batches, cache_path=cache_path, use_cache=use_cache,
               quantile=quantile, regression_cutoff=regression_cutoff, histogram_cache=histogram_cache,
               strategy=strategy, copy_threads=copy_threads, feeder=feeder)
