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

from .._optional import require
from ..errors import Int8BatchError, ModelError
from ..onnx import graph as G
from ..onnx.inputs import check_batch_shape, image_input

log = logging.getLogger(__name__)

_TWO_GB = 2 ** 31 - 2 ** 20


def _session(model, providers, intra_op_threads, label):
    """An InferenceSession over ``model`` (a ModelProto), via a temp dir when > 2 GB."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Stop the pool's threads spinning when a run returns (they still spin inside a
    # run): the collector's threads work on the same cores between runs.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    providers = list(providers) if providers else ["CPUExecutionProvider"]
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


def _label(model):
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<model>"


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
        self._label = label or _label(model)
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
        self._session = _session(m, providers, intra_op_threads, self._label)
        del m
        if batch_dims is not None:
            self.check(batch_dims)

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
        outs = self._session.run(self._fetch, {self.input_name: batch})
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
    """

    def __init__(self, model, providers=None, intra_op_threads=None, output=None):
        self._label = _label(model)
        m = G.load_model(model)
        self._info = image_input(m, self._label)
        self.input_name = self._info.name
        names = [o.name for o in m.graph.output]
        self.output_name = names[0] if output is None else output
        if self.output_name not in names:
            raise ModelError(f"{self._label}: no graph output named {output!r} "
                             f"(outputs: {', '.join(names)})", self._label)
        self._session = _session(m, providers, intra_op_threads, self._label)

    def check(self, dims):
        """Raise ``ModelError`` unless batches of ``dims`` fit the model input."""
        check_batch_shape(self._info, dims, self._label)

    def run(self, batch):
        """Run one batch ``(N, C, H, W)``; return the chosen output."""
        data = np.asarray(getattr(batch, "data", batch))
        self.check(data.shape)
        if data.dtype != self._info.dtype:
            data = data.astype(self._info.dtype)
        return self._session.run([self.output_name], {self.input_name: data})[0]


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
