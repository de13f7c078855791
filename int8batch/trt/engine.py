"""FP32 and INT8 TensorRT engines (8.6-10.x) of one ONNX model, built and run on batch files.

sampleINT8 builds two engines from one network: an FP32 one and an INT8 one
calibrated with an ``IInt8EntropyCalibrator2`` on the calibration batches, then
runs both over the scoring batches.  :func:`evaluate_engines` does that with an
ONNX model and int8batch batch files:

* the FP32 engine (:func:`build_fp32_engine`) has no INT8 flag; a dynamic
  batch axis gets an optimization profile fixed at the scoring batch size;
* the INT8 engine comes from :func:`int8batch.trt.build.build_int8_engine`
  (calibrated on the calibration window); its profile is fixed at the
  calibration batch size, so scoring batches run through it in chunks of that
  size (the last chunk zero-padded; only the real rows are scored);
* both run (:class:`EngineRunner`) with the TensorRT 10 API
  (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on device
  buffers from :mod:`int8batch.cuda.runtime`; the time of each includes its copies;
* the outputs go through :class:`int8batch.calib.evaluate.Comparison`, the
  arithmetic of :func:`~int8batch.calib.evaluate.evaluate`, so the ONNX Runtime
  and the TensorRT scoring report the same figures in the same
  :class:`~int8batch.calib.evaluate.EvalResult`.

``tensorrt`` is imported lazily (:func:`int8batch.trt.calibrator.load_tensorrt`):
TensorRT 11 and a missing TensorRT raise a typed error saying what to do instead.
"""
import logging
import os
import time

import numpy as np

from .._atomic import write_bytes_atomic
from ..calib.evaluate import Comparison
from ..cuda import runtime
from ..errors import ModelError
from .build import build_int8_engine, parse_onnx
from .calibrator import load_tensorrt

log = logging.getLogger(__name__)


def build_fp32_engine(onnx_path, engine_path, batch_size):
    """Build an FP32 engine (no INT8 flag) whose batch is ``batch_size``; return that batch.

    A dynamic batch axis gets a profile fixed at ``batch_size``; a fixed one
    must equal it.
    """
    trt = load_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, onnx_path)
    if network.num_inputs != 1:
        raise ModelError(f"{onnx_path}: the network has {network.num_inputs} inputs; batch files feed exactly one",
                         onnx_path)
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    if len(shape) != 4:
        raise ModelError(f"{onnx_path}: input {inp.name!r} has shape {shape}; batch files hold NCHW images",
                         onnx_path)
    config = builder.create_builder_config()
    if shape[0] > 0 and shape[0] != batch_size:
        raise ModelError(f"{onnx_path}: input {inp.name!r} has a fixed batch of {shape[0]} but the scoring batch is "
                         f"{batch_size}; score with --batch-size {shape[0]}", onnx_path)
    if any(d < 0 for d in shape):
        if any(d < 0 for d in shape[1:]):
            raise ModelError(f"{onnx_path}: input {inp.name!r} has dynamic dims {shape} besides the batch",
                             onnx_path)
        full = (int(batch_size),) + shape[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, full, full, full)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"{onnx_path}: TensorRT could not build the FP32 engine; see its log above", onnx_path)
    write_bytes_atomic(engine_path, memoryview(serialized))
    return int(batch_size)


class EngineRunner:
    """One deserialized engine, its execution context and device buffers, run batch by batch.

    Parameters
    ----------
    engine_path : path
        A serialized engine with one float32 input and a float32 first output.
    batch : int
        The engine's batch (its profile or fixed batch); ``run`` splits
        larger batches into chunks of it and zero-pads the last chunk.
    """

    def __init__(self, engine_path, batch):
        trt = load_tensorrt()
        self._rt, self.batch, self._buffers = runtime, int(batch), []
        runtime.ensure_context()
        with open(engine_path, "rb") as f:
            blob = f.read()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise ModelError(f"{engine_path}: TensorRT could not deserialize the engine", engine_path)
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise ModelError(f"{engine_path}: the engine has inputs {inputs} and outputs {outputs}; one input and "
                             "at least one output are needed", engine_path)
        for n in names:
            if self._engine.get_tensor_dtype(n) != trt.float32:
                raise ModelError(f"{engine_path}: tensor {n!r} is {self._engine.get_tensor_dtype(n)}, not float32",
                                 engine_path)
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._shape = None
        self._stream = runtime.Stream()
        try:
            self._set_shape(tuple(int(d) for d in self._engine.get_tensor_shape(self.input_name)), engine_path)
        except BaseException:
            self.close()
            raise

    def _set_shape(self, declared, engine_path):
        shape = (self.batch,) + tuple(declared[1:])
        if not self._context.set_input_shape(self.input_name, shape):
            raise ModelError(f"{engine_path}: the engine refuses input shape {shape}", engine_path)
        out = tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out):
            raise ModelError(f"{engine_path}: output {self.output_name!r} shape {out} is not resolved", engine_path)
        self._shape, self._out_shape = shape, out
        self._in_bytes = int(np.prod(shape)) * 4
        self._out_bytes = int(np.prod(out)) * 4
        self._d_in = self._alloc(self._in_bytes)
        # every output needs an address; only the first is read back
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if name == self.input_name:
                ptr = self._d_in
            else:
                size = int(np.prod([int(d) for d in self._context.get_tensor_shape(name)])) * 4
                ptr = self._alloc(max(size, 4))
                if name == self.output_name:
                    self._d_out = ptr
            if not self._context.set_tensor_address(name, ptr):
                raise ModelError(f"{engine_path}: set_tensor_address({name!r}) failed", engine_path)

    def _alloc(self, nbytes):
        ptr = int(self._rt.malloc(nbytes))
        self._buffers.append(ptr)
        return ptr

    def run(self, data):
        """Outputs ``(len(data), ...)`` of the engine's first output for ``data`` (N, C, H, W)."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        if tuple(data.shape[1:]) != self._shape[1:]:
            raise ModelError(f"batch of shape {data.shape} does not fit the engine input {self._shape}")
        out = np.empty((len(data),) + self._out_shape[1:], np.float32)
        host_out = np.empty(self._out_shape, np.float32)
        for start in range(0, len(data), self.batch):
            chunk = data[start:start + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n,) + chunk.shape[1:], np.float32)])
            self._rt.memcpy_htod_async(self._d_in, chunk.ctypes.data, self._in_bytes, self._stream.handle)
            if not self._context.execute_async_v3(self._stream.handle):
                raise ModelError(f"TensorRT execute_async_v3 failed on a batch of {self.batch}")
            self._stream.synchronize()
            self._rt.memcpy_dtoh(host_out.ctypes.data, self._d_out, self._out_bytes)
            out[start:start + n] = host_out[:n]
        return out

    def close(self):
        """Free the device buffers and the stream; drop the context and engine."""
        while self._buffers:
            self._rt.free(self._buffers.pop())
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is not None:
            stream.close()
        self._context = self._engine = self._runtime = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def evaluate_engines(onnx_path, calib_batchset, calib_window, score_batchset, score_window, workdir, cache_path=None,
                 algorithm="entropy2", *, keep=100, keep_largest=5, outputs="auto", progress=None):
    """Build FP32 and INT8 engines from ``onnx_path`` and score both on the scoring window.

    Parameters
    ----------
    onnx_path : path
        The FP32 ONNX model (one NCHW float32 input).
    calib_batchset, score_batchset : BatchSet
    calib_window, score_window : int8batch.window.Window
        From :meth:`BatchSet.window <int8batch.reader.BatchSet.window>`;
        the calibrator skips ``calib_window.skipped`` batches.
    workdir : path
        Where ``fp32.engine``, ``int8.engine`` (and by default ``int8.cache``) go.
    cache_path : path or None
        Calibration cache (default ``workdir/int8.cache``; reused when it matches).
    algorithm : {"entropy2", "entropy", "minmax", "legacy"}
    keep, keep_largest, outputs, progress
        As in :func:`int8batch.calib.evaluate.evaluate`.

    Returns
    -------
    EvalResult
        With ``engines`` (a dict: paths, batches, TensorRT version) set as an attribute.
    """
    os.makedirs(workdir, exist_ok=True)
    fp32_path = os.path.join(workdir, "fp32.engine")
    int8_path = os.path.join(workdir, "int8.engine")
    cache_path = cache_path or os.path.join(workdir, "int8.cache")
    fp32_batch = build_fp32_engine(onnx_path, fp32_path, score_window.batch_size)
    built = build_int8_engine(onnx_path, calib_batchset, int8_path, cache_path, algorithm,
                              batch_size=calib_window.batch_size, max_batches=calib_window.count,
                              first=calib_window.skipped)
    acc = Comparison(outputs, keep_largest, keep)
    total = score_window.count
    with EngineRunner(fp32_path, fp32_batch) as fp, EngineRunner(int8_path, built.input_shape[0]) as q:
        batches = score_batchset.batches(window=score_window)
        for done, b in enumerate(batches, 1):
            t = time.perf_counter()
            y0 = fp.run(b.data)
            acc.result.seconds_fp32 += time.perf_counter() - t
            t = time.perf_counter()
            y1 = q.run(b.data)
            acc.result.seconds_int8 += time.perf_counter() - t
            acc.add(y0, y1, b.labels)
            if progress:
                progress(done, total)
    res = acc.finish()
    res.engines = {"fp32": fp32_path, "int8": int8_path, "cache": cache_path, "fp32_batch": fp32_batch,
                   "int8_batch": built.input_shape[0], "calibrated": built.calibrated,
                   "algorithm": algorithm, "tensorrt": built.tensorrt_version}
    log.info("TensorRT %s: FP32 engine batch %d, INT8 engine batch %d (%s)", built.tensorrt_version, fp32_batch,
             built.input_shape[0], algorithm)
    return res
