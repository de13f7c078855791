"""Build an INT8 TensorRT engine (8.6-10.x) from an ONNX model, calibrated on batch files.

This is what ``int8batch calibrate MODEL.onnx --batches DIR --backend tensorrt``
runs.  ``tensorrt`` is imported lazily; TensorRT 11 is refused with a pointer to
the Q/DQ path (``--backend onnxruntime``).
"""
import logging
import os
import time
from dataclasses import dataclass

from ..errors import CalibrationError, ModelError
from ..reader import BatchSet
from .calibrator import _atomic_write, check_cache_header, load_tensorrt, make_calibrator, trt_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_int8_engine` produced.

    Attributes
    ----------
    engine_path : str
        The serialized engine (written atomically).
    cache_path : str or None
        The calibration cache (written atomically by TensorRT's callback).
    calibrated : bool
        True when calibration batches ran; False when the scales came from the cache.
    batches : int
        Calibration batches served.
    input_name : str
    input_shape : tuple
        The calibration shape ``(B, C, H, W)``.
    dynamic : bool
        True when the model has dynamic dims (a calibration profile was set).
    algorithm : str
    tensorrt_version : str
    engine_bytes : int
    seconds : float
        Wall time of the build, calibration included.
    """

    engine_path: str
    cache_path: object
    calibrated: bool
    batches: int
    input_name: str
    input_shape: tuple
    dynamic: bool
    algorithm: str
    tensorrt_version: str
    engine_bytes: int
    seconds: float


def parse_onnx(trt, builder, logger, onnx_path):
    """The TensorRT network of ``onnx_path`` (explicit batch) and its parser; ModelError when it does not parse."""
    major = trt_version(trt)[0]
    flags = 0
    if major < 10:  # explicit batch is the only mode from 10 on (the flag is deprecated there)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(os.fspath(onnx_path))
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(errors or ["no details"]),
                         onnx_path)
    return network, parser


def _calibration_shape(network, batchset, batch_size, onnx_path):
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise ModelError(f"{onnx_path}: the network has {len(names)} inputs {names}; batch files feed exactly "
                         "one input", onnx_path)
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    n, c, h, w = batchset.dims
    if len(shape) != 4:
        raise ModelError(f"{onnx_path}: input {inp.name!r} has shape {shape}; batch files hold NCHW "
                         f"images of {c}x{h}x{w}", onnx_path)
    for axis, (dm, df) in enumerate(zip(shape[1:], (c, h, w)), start=1):
        if dm >= 0 and dm != df:
            raise ModelError(f"{onnx_path}: input {inp.name!r} has shape {shape} but the batch files hold "
                             f"{c}x{h}x{w} images (axis {axis}: {dm} vs {df}); pack the images at the "
                             "network's input size", onnx_path)
    if shape[0] > 0:
        if batch_size is not None and int(batch_size) != shape[0]:
            raise ModelError(f"{onnx_path}: input {inp.name!r} has a fixed batch of {shape[0]} but batch size "
                             f"{batch_size} was asked for; omit the batch size or export the model with a "
                             "dynamic batch axis", onnx_path)
        batch_size = shape[0]
    batch_size = int(batch_size or n)
    return inp, (batch_size, c, h, w), any(d < 0 for d in shape)


def build_int8_engine(onnx_path, batchset, engine_path, cache_path=None, algorithm="entropy2", batch_size=None,
                      max_batches=None, use_cache=True, *, first=0, strategy="auto", workspace_bytes=None,
                      fp16=False, verbose=False):
    """Parse ``onnx_path``, calibrate on ``batchset`` and write an INT8 engine.

    Parameters
    ----------
    onnx_path : path
        The FP32 ONNX model (one NCHW float32 input).
    batchset : BatchSet or path
        The calibration batches, or their folder (opened and closed here).
    engine_path : path
        Where the serialized engine goes (written atomically).
    cache_path : path or None
        Calibration cache: reused when ``use_cache`` and it matches this
        TensorRT version and algorithm (calibration is then skipped), written
        after calibration.
    algorithm : {"entropy2", "entropy", "minmax", "legacy"}
    batch_size : int or None
        Calibration batch (default: the model's fixed batch, else the files' N).
    max_batches : int or None
        Most calibration batches (None: all).
    use_cache : bool
        False recalibrates and overwrites the cache.
    first : int
        Batches to skip.
    strategy : str
        DeviceFeeder strategy.
    workspace_bytes : int or None
        Builder workspace pool limit.
    fp16 : bool
        Also allow FP16 kernels for layers that stay in higher precision.
    verbose : bool
        TensorRT's VERBOSE log instead of WARNING.

    Returns
    -------
    BuildResult

    Raises
    ------
    CalibrationError
        TensorRT 11+, a failed build, or an exception inside a calibrator callback.
    ModelError
        The ONNX model does not parse or does not fit the batch files.
    CacheError
        ``cache_path`` exists but is not a TensorRT calibration cache.
    """

    t0 = time.perf_counter()
    trt = load_tensorrt()
    version = trt_version(trt)
    own_set = not isinstance(batchset, BatchSet)
    bs = BatchSet(batchset) if own_set else batchset
    calibrator = None
    try:
        cache_ok = False
        if use_cache and cache_path is not None and os.path.exists(cache_path):
            with open(cache_path, "rb") as f:
                data = f.read()
            cache_ok = bool(data) and check_cache_header(data, version, algorithm, cache_path)

        logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network, parser = parse_onnx(trt, builder, logger, onnx_path)
        inp, calib_shape, dynamic = _calibration_shape(network, bs, batch_size, onnx_path)
        if inp.dtype != trt.float32:
            raise ModelError(f"{onnx_path}: input {inp.name!r} is {inp.dtype}; batch files hold float32", onnx_path)
        # BatchStream's skip semantics (the window owner validates and words the error)
        window = bs.window(calib_shape[0], first, max_batches, skip="batchstream", allow_empty=cache_ok)

        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if dynamic:
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, calib_shape, calib_shape, calib_shape)
            config.add_optimization_profile(profile)
            config.set_calibration_profile(profile)
            log.info("dynamic input %s %s: optimization and calibration profile fixed at %s",
                     inp.name, tuple(inp.shape), calib_shape)

        calibrator = make_calibrator(bs, inp.name, algorithm=algorithm, batch_size=calib_shape[0],
                                     max_batches=window.count, cache_path=cache_path, first=window.skipped,
                                     use_cache=use_cache, strategy=strategy)
        config.int8_calibrator = calibrator
        log.info("building INT8 engine from %s with %s calibration (%d batch(es) of %s available)",
                 onnx_path, algorithm, window.count, calib_shape)
        serialized = builder.build_serialized_network(network, config)
        calibrator.raise_if_failed()
        if serialized is None:
            raise CalibrationError(f"{onnx_path}: TensorRT could not build the INT8 engine; see its log above")
        if calibrator.calibrated and calibrator.batches_served < window.count:
            log.warning("TensorRT stopped after %d of %d calibration batches", calibrator.batches_served,
                        window.count)
        blob = memoryview(serialized)
        _atomic_write(engine_path, blob)
        log.info("engine written: %s (%d bytes)", engine_path, blob.nbytes)
        return BuildResult(os.fspath(engine_path), None if cache_path is None else os.fspath(cache_path),
                           calibrator.calibrated, calibrator.batches_served, inp.name, calib_shape, dynamic,
                           algorithm, getattr(trt, "__version__", "?"), blob.nbytes, time.perf_counter() - t0)
    finally:
        if calibrator is not None:
            calibrator.close()
        if own_set:
            bs.close()
