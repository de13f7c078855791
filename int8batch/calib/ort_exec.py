"""Run an ONNX model with ONNX Runtime, one batch at a time.

:class:`ActivationRunner` exposes chosen intermediate tensors as extra graph
outputs (in memory: no file is written unless the model is over 2 GB) and
returns them per batch; nothing is kept between calls, so the caller's
collectors see each activation once and peak memory does not grow with the
number of batches.  :class:`ModelRunner` and :func:`run_model` are plain inference for evaluation.

``onnxruntime`` and ``onnx`` are imported inside the functions.
"""
import logging
import os
import shutil
import tempfile

import numpy as np

from .._optional import available, require
from ..cuda import runtime as cu
from ..cuda.kernels import DeviceTensor
from ..errors import CalibrationError, ConfigError, Int8BatchError, ModelError
from ..onnx import graph as G
from ..onnx.inputs import check_batch_shape, image_input
from .settings import DEVICES

log = logging.getLogger(__name__)

_TWO_GB = 2 ** 31 - 2 ** 20

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
#: the CUDA provider's settings: true float32 arithmetic (no TF32: activations stay close to the CPU
#: provider's), the same cuDNN algorithm on every run (HEURISTIC: a calibration is reproducible; the
#: default EXHAUSTIVE benchmarks each time and may pick differently), and an arena that grows by what a
#: run needs rather than to the next power of two
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def cuda_status():
    """``(usable, reason)``: whether ONNX Runtime's CUDA provider and a GPU are usable here, and if not why."""
    ort = require("onnxruntime")
    if CUDA_PROVIDER not in ort.get_available_providers():
        return False, ("the installed ONNX Runtime has no CUDA provider (the `onnxruntime` wheel is the CPU "
                       "build; README, 'Calibrating on the GPU', says how to install `onnxruntime-gpu`)")
    if not available("cuda.bindings.runtime"):
        return False, "cuda-python is not installed (pip install 'int8batch[cuda]')"
    if cu.device_count() == 0:
        return False, "no CUDA device answers (cudaGetDeviceCount found none)"
    return True, ""


def resolve_device(device):
    """``"cpu"`` or ``"cuda"`` for a ``device`` of :data:`DEVICES` (None: auto); raises when cuda cannot run.

    ``auto`` follows the environment variable ``INT8BATCH_DEVICE`` (cpu or cuda) when it is set (the
    test suite sets cpu, so that its CPU tests run on the CPU on a GPU machine too).
    """
    device = "auto" if device is None else str(device)
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    env = os.environ.get("INT8BATCH_DEVICE", "")
    if env and env not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"the environment variable INT8BATCH_DEVICE must be cpu, cuda or auto (or unset), "
                          f"got {env!r}")
    if device == "auto" and env in ("cpu", "cuda"):
        device = env
    if device == "cpu":
        return "cpu"
    ok, why = cuda_status()
    if ok:
        return "cuda"
    if device == "cuda":
        raise ConfigError(f"device 'cuda' cannot be used: {why}")
    log.debug("device auto -> cpu: %s", why)
    return "cpu"


def providers_for(device, providers=None):
    """ONNX Runtime providers for a resolved ``device`` ("cpu"/"cuda"); explicit ``providers`` win."""
    if providers:
        return list(providers)
    if device == "cuda":
        return [(CUDA_PROVIDER, CUDA_OPTIONS | {"device_id": cu.ensure_context()}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def _provider_names(providers):
    return [p[0] if isinstance(p, (tuple, list)) else p for p in providers]


def _preload_cuda_libraries(ort):
    """Let ONNX Runtime load CUDA and cuDNN from the nvidia-* wheels before a CUDA session (ORT >= 1.21)."""
    if getattr(_preload_cuda_libraries, "done", False):
        return
    # ONNX Runtime's own default logger warns about plugin EP devices on every CUDA session (1.31)
    ort.set_default_logger_severity(3)
    pre = getattr(ort, "preload_dlls", None)
    if pre is not None:
        try:
            pre()
        except Exception as exc:  # noqa: BLE001 - the session then reports what is missing
            log.debug("onnxruntime.preload_dlls: %s", exc)
    _preload_cuda_libraries.done = True


def make_session(model, providers, intra_op_threads, label, report=None):
    """An InferenceSession over ``model`` (a ModelProto), via a temp dir when > 2 GB.

    With the CUDA provider asked for, the session is first made with ONNX
    Runtime's CPU fallback disabled; when that fails (some node has no CUDA
    kernel) it is made again with the fallback and ``report["fallback"]`` says
    why, because ONNX Runtime itself would run those nodes on the CPU silently.
    """
    ort = require("onnxruntime")
    names = _provider_names(providers or [CPU_PROVIDER])
    if CUDA_PROVIDER in names:
        _preload_cuda_libraries(ort)
        gpu_only = [p for p, n in zip(providers, names) if n != CPU_PROVIDER]
        try:
            return _session_once(ort, model, gpu_only, intra_op_threads, label, strict=True)
        except ModelError as exc:
            why = str(exc.__cause__ or exc).strip().splitlines()[0][:300]
            log.info("%s: part of the model runs on ONNX Runtime's CPU provider: %s", label, why)
            if report is not None:
                report["fallback"] = why
    return _session_once(ort, model, providers, intra_op_threads, label)


def _session_once(ort, model, providers, intra_op_threads, label, strict=False):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Stop the pool's threads spinning when a run returns (they still spin inside a
    # run): the collector's threads work on the same cores between runs.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if strict:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    providers = list(providers) if providers else [CPU_PROVIDER]
    try:
        if model.ByteSize() < _TWO_GB:
            return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        onnx = require("onnx")
        tmp = tempfile.mkdtemp(prefix="int8batch-ort-")
        try:
            path = os.path.join(tmp, "model.onnx")
            onnx.save(model, path, save_as_external_data=True, location="model.data")
            return ort.InferenceSession(path, so, providers=providers)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Int8BatchError:
        raise
    except Exception as exc:
        raise ModelError(f"{label}: ONNX Runtime cannot load this model ({exc}); "
                         "check that the providers are installed and the opset is supported",
                         label) from exc


def guarded_run(label, shape, run, *args):
    """``run(*args)``; an ONNX Runtime failure becomes a ModelError naming the model and the image shape.

    A model loads but cannot run on some inputs: PP-OCR's detector broadcasts its FPN levels, so a size
    that is not a multiple of 32 fails inside the graph ("Attempting to broadcast an axis by a dimension
    other than 1").  That is the user's images against the model, not a crash."""
    try:
        return run(*args)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        text = " ".join(str(exc).split())
        text = text if len(text) <= 300 else text[:300] + " ..."
        raise ModelError(f"{label}: ONNX Runtime cannot run the model on images of shape {list(shape)}: {text}. "
                         f"A model that accepts only some sizes (detectors often need multiples of 32) needs "
                         f"the images packed at one of them (int8batch pack --size)", label) from exc


class ActivationRunner:
    """Run batches and return chosen intermediate tensors.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        An FP32 model with one float input.  It is not modified.
    tensor_names : sequence of str
        Tensors to return (e.g. :func:`int8batch.onnx.graph.quantizable_tensors`).
        Existing graph outputs are reused, the graph input is returned as fed.
    providers : list or None
        ONNX Runtime execution providers; default CPU.
    intra_op_threads : int or None
        ONNX Runtime intra-op threads; default: its own choice.
    batch_dims : tuple or None
        ``(N, C, H, W)`` of the batches, checked at once when given.
    label : str or None
        How errors name the model (default: its path, or ``<model>``).
    types : dict, optional
        :func:`int8batch.onnx.graph.tensor_types` of the model, when known.

    Attributes
    ----------
    input_name : str
    input_shape : tuple
    tensor_names : list of str
    """

    def __init__(self, model, tensor_names, providers=None, intra_op_threads=None,
                 batch_dims=None, label=None, types=None):
        onnx = require("onnx")
        self._label = label or G.model_label(model)
        src = G.load_model(model)
        m = onnx.ModelProto()
        m.CopyFrom(src)
        info = image_input(m, self._label)
        self.input_name, self.input_shape, self._dtype = info.name, info.shape, info.dtype
        self._info = info
        self.tensor_names = list(dict.fromkeys(tensor_names))
        types = G.tensor_types(m) if types is None else types
        inits = {t.name for t in m.graph.initializer}
        outputs = {o.name for o in m.graph.output}
        unknown = [t for t in self.tensor_names if t not in types or t in inits]
        if unknown:
            raise ModelError(f"{self._label}: {len(unknown)} requested tensors are not activations "
                             f"of the model: {', '.join(unknown[:10])}"
                             f"{' ...' if len(unknown) > 10 else ''}", self._label)
        self._fetch = [t for t in self.tensor_names if t != self.input_name]
        for t in self._fetch:
            if t not in outputs:
                m.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
        self.report = {}
        self._session = make_session(m, providers, intra_op_threads, self._label, self.report)
        self.providers = list(self._session.get_providers())
        del m
        if batch_dims is not None:
            self.check(batch_dims)

    @property
    def executed_by(self):
        """Which ONNX Runtime provider(s) run the model, in words (CPU fallback included)."""
        return _executed_by(self.providers, self.report)

    def check(self, dims):
        """Raise ``ModelError`` unless batches of ``dims`` fit the model input."""
        check_batch_shape(self._info, dims, self._label)

    def run(self, batch):
        """Run one batch; return ``{name: array}`` for every requested tensor.

        The arrays are fresh (the graph input entry is ``batch`` itself, cast
        to the model's input dtype); nothing is kept after the call.
        """
        batch = np.asarray(batch)
        self.check(batch.shape)
        if batch.dtype != self._dtype:
            batch = batch.astype(self._dtype)
        outs = guarded_run(self._label, batch.shape, self._session.run, self._fetch, {self.input_name: batch})
        result = dict(zip(self._fetch, outs))
        if len(self._fetch) != len(self.tensor_names):
            result[self.input_name] = batch
        return {t: result[t] for t in self.tensor_names}

    def close(self):
        """Release the ONNX Runtime session."""
        self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ModelRunner:
    """Plain inference, one batch at a time, with the input checked.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        A model with one float input.
    providers, intra_op_threads
        As for :class:`ActivationRunner`.
    output : str or None
        Which graph output :meth:`run` returns; default the first.

    Attributes
    ----------
    input_name, output_name : str
    output_names : list of str
        Every graph output, in the graph's order (:meth:`run_all`).
    """

    def __init__(self, model, providers=None, intra_op_threads=None, output=None):
        self._label = G.model_label(model)
        m = G.load_model(model)
        self._info = image_input(m, self._label)
        self.input_name = self._info.name
        names = [o.name for o in m.graph.output]
        self.output_names = names
        ops = {n.op_type for n in m.graph.node}
        #: the tensors the graph's nodes make (a Q/DQ copy keeps its source's names)
        self.node_outputs = {o for n in m.graph.node for o in n.output if o}
        self.has_qdq = G.qdq_node_count(m) > 0
        #: any quantized arithmetic at all (Q/DQ pairs, ONNX Runtime's QLinear* / *Integer operators)
        self.quantized = self.has_qdq or any(o.startswith("QLinear") or o.endswith("Integer")
                                             or o == "DynamicQuantizeLinear" for o in ops)
        self.output_name = names[0] if output is None else output
        if self.output_name not in names:
            raise ModelError(f"{self._label}: no graph output named {output!r} "
                             f"(outputs: {', '.join(names)})", self._label)
        self.report = {}
        self._session = make_session(m, providers, intra_op_threads, self._label, self.report)
        self.providers = list(self._session.get_providers())

    @property
    def executed_by(self):
        """Which ONNX Runtime provider(s) run the model, in words (CPU fallback included)."""
        return _executed_by(self.providers, self.report)

    def check(self, dims):
        """Raise ``ModelError`` unless batches of ``dims`` fit the model input."""
        check_batch_shape(self._info, dims, self._label)

    @property
    def fixed_batch(self):
        """The batch size the model's input fixes, or None when it is dynamic."""
        shape = self._info.shape
        return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None

    def run(self, batch):
        """Run one batch ``(N, C, H, W)``; return the chosen output."""
        data = self._input(batch)
        return guarded_run(self._label, data.shape, self._session.run, [self.output_name], {self.input_name: data})[0]

    def run_all(self, batch, names=None):
        """Run one batch; return the graph outputs ``names`` (default all, in :attr:`output_names` order)."""
        data = self._input(batch)
        return guarded_run(self._label, data.shape, self._session.run, list(names or self.output_names),
                    {self.input_name: data})

    def _input(self, batch):
        data = np.asarray(getattr(batch, "data", batch))
        self.check(data.shape)
        return data if data.dtype == self._info.dtype else data.astype(self._info.dtype)


def _executed_by(providers, report):
    if CUDA_PROVIDER not in providers:
        return "ONNX Runtime CPU provider"
    fb = report.get("fallback")
    return ("ONNX Runtime CUDA provider" if not fb
            else f"ONNX Runtime CUDA provider, some nodes on its CPU provider ({fb})")


class DeviceActivationRunner(ActivationRunner):
    """:class:`ActivationRunner` on ONNX Runtime's CUDA provider, input and activations on the device.

    :meth:`run_device` binds a :class:`~int8batch.cuda.kernels.DeviceTensor`
    (a batch the :class:`~int8batch.cuda.DeviceFeeder` put on the GPU) as the
    input with IOBinding, lets ONNX Runtime allocate every requested activation
    in device memory, and returns them as DeviceTensors, valid until the next
    call or :meth:`close`.  Nothing goes through host memory.
    """

    def __init__(self, model, tensor_names, intra_op_threads=None, batch_dims=None, label=None, types=None):
        super().__init__(model, tensor_names, providers=providers_for("cuda"), intra_op_threads=intra_op_threads,
                         batch_dims=batch_dims, label=label, types=types)
        if self._dtype != np.float32:
            raise ConfigError(f"{self._label}: calibrating on the GPU needs a float32 model input, "
                              f"this one is {np.dtype(self._dtype).name}; use device 'cpu'")
        self.device_id = cu.ensure_context()
        self._io = self._session.io_binding()
        self._held = None

    def run_device(self, x):
        """Run one batch already on the device; ``{name: DeviceTensor}`` for every requested tensor.

        ONNX Runtime allocates the activations from its CUDA arena (reused run
        after run).  Keep the batch size constant: its CUDA convolutions set up
        again whenever the input shape changes (measured on an H200: 0.2-0.5 s
        per change on DenseNet-121 and MobileNetV3, against 7-25 ms per run).
        """
        self.check(x.shape)
        io = self._io
        self._held = None
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        io.bind_input(self.input_name, "cuda", self.device_id, np.float32, list(x.shape), x.ptr)
        for t in self._fetch:
            io.bind_output(t, "cuda", self.device_id)
        guarded_run(self._label, x.shape, self._session.run_with_iobinding, io)
        io.synchronize_outputs()
        outs = io.get_outputs()
        result = {self.input_name: x}
        for t, ov in zip(self._fetch, outs):
            if ov.data_type() != "tensor(float)":
                raise CalibrationError(f"{self._label}: activation {t!r} is {ov.data_type()}; the GPU "
                                       "statistics take float32 tensors only (use device 'cpu')", self._label)
            result[t] = DeviceTensor(ov.data_ptr(), ov.shape(), owner=ov)
        self._held = outs
        return {t: result[t] for t in self.tensor_names}

    def close(self):
        self._held = None
        try:
            if getattr(self, "_io", None) is not None:
                try:
                    self._io.clear_binding_inputs()
                    self._io.clear_binding_outputs()
                finally:
                    self._io = None
        finally:
            super().close()


def run_model(model, batches, *, providers=None, intra_op_threads=None, output=None):
    """Plain inference: yield one output array per batch.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
    batches : iterable
        NumPy arrays ``(N, C, H, W)``, or objects with a ``data`` attribute
        (:class:`int8batch.reader.Batch`).
    output : str or None
        Which graph output to yield; default the first.

    Yields
    ------
    ndarray
    """
    runner = ModelRunner(model, providers, intra_op_threads, output)
    for b in batches:
        yield runner.run(b)
