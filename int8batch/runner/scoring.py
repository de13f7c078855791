"""Scoring an FP32 and an INT8 model on the same batches with ONNX Runtime."""
import time
from dataclasses import dataclass, field

import numpy as np

from .._optional import require
from .protocol import Score


def session(model, threads=None, providers=None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise)."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=providers or ["CPUExecutionProvider"])


@dataclass
class Comparison:
    """FP32 vs INT8 on one scoring window."""

    fp32: Score = field(default_factory=Score)
    int8: Score = field(default_factory=Score)
    agree: int = 0
    kl_sum: float = 0.0
    max_abs_diff: float = 0.0
    labels: list = field(default_factory=list)      # first ``keep`` labels
    fp32_pred: list = field(default_factory=list)   # first ``keep`` FP32 predictions
    int8_pred: list = field(default_factory=list)   # first ``keep`` INT8 predictions

    @property
    def images(self):
        return self.fp32.images

    @property
    def agreement(self):
        return self.agree / self.images if self.images else float("nan")

    @property
    def mean_kl(self):
        return self.kl_sum / self.images if self.images else float("nan")


def _probs(x):
    x = np.asarray(x, dtype=np.float64)
    if np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(fp32_model, int8_model, batches, keep=100, threads=None, providers=None, progress=None, total=None):
    """Run both models over ``batches`` (an iterable of ``Batch``) and compare.

    Top-1/top-5 use the batch labels; agreement is INT8 top-1 == FP32 top-1;
    the KL divergence is of the softmax outputs (softmax applied when the
    output is not already a probability vector).
    """
    s32, s8 = session(fp32_model, threads, providers), session(int8_model, threads, providers)
    name32, name8 = s32.get_inputs()[0].name, s8.get_inputs()[0].name
    res = Comparison()
    for i, b in enumerate(batches):
        t = time.perf_counter()
        y32 = s32.run(None, {name32: b.data})[0]
        t32 = time.perf_counter() - t
        t = time.perf_counter()
        y8 = s8.run(None, {name8: b.data})[0]
        t8 = time.perf_counter() - t
        y32, y8 = y32.reshape(len(b.labels), -1), y8.reshape(len(b.labels), -1)
        res.fp32.add(y32, b.labels, t32)
        res.int8.add(y8, b.labels, t8)
        p32, p8 = y32.argmax(1), y8.argmax(1)
        res.agree += int((p32 == p8).sum())
        q32, q8 = _probs(y32), _probs(y8)
        res.kl_sum += float(np.sum(q32 * (np.log(np.maximum(q32, 1e-12)) - np.log(np.maximum(q8, 1e-12)))))
        res.max_abs_diff = max(res.max_abs_diff, float(np.max(np.abs(y32 - y8))))
        room = keep - len(res.labels)
        if room > 0:
            res.labels += [int(v) for v in b.labels[:room]]
            res.fp32_pred += [int(v) for v in p32[:room]]
            res.int8_pred += [int(v) for v in p8[:room]]
        if progress:
            progress(i + 1, total)
    return res
