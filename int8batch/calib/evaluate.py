"""Compare an FP32 model and its INT8 (Q/DQ) version on labelled batch files.

Both models run with ONNX Runtime on the same batches, one batch at a time;
only running sums (and the few largest differences) are kept, so memory does
not grow with the number of images.  This is how a user without TensorRT
checks a calibration: top-1/top-5 of both models against the labels, how
often the INT8 top-1 agrees with FP32, the mean KL divergence of the softmax
outputs, the largest output differences, the time each model took, and the
predictions of the first images (what ``int8batch run`` prints and plots).
"""
import heapq
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BatchFormatError, ConfigError, ModelError, whole_number
from ..onnx import graph as G
from ..reader import BatchSet
from .ort_exec import ModelRunner, providers_for, resolve_device

log = logging.getLogger(__name__)

_EPS = 1e-12


@dataclass
class EvalResult:
    """Accuracy of an FP32/INT8 model pair.

    Attributes
    ----------
    images : int
        Images compared.
    labelled : int
        Images with a valid label (``0 <= label < classes``); the top-k
        figures count only these and are None when there are none.
    top1_fp32, top5_fp32, top1_int8, top5_int8 : float or None
        Fractions in [0, 1].  Top-5 is top-min(5, classes).
    top1_agreement : float
        Fraction of images where both models pick the same class.
    mean_kl : float
        Mean over images of KL(p_fp32 || p_int8) of the softmax (natural log);
        outputs that already are probabilities are used as they are.
    max_abs_diff, mean_abs_diff : float
        Largest and mean absolute difference of the raw outputs.
    rel_error : float
        Relative L2 error of the raw outputs over every image,
        ``sqrt(sum (y_int8 - y_fp32)^2 / sum y_fp32^2)``: the measure that means
        something for any output (a detector's maps too); inf when the FP32
        output is all zeros and the INT8 one is not.
    batch_size : int or None
        Images per run (the batch set's files' N, the model's fixed N, or the caller's).
    output, output_shape : str, tuple
        The graph output compared (the first) and its shape per image; top-1 and
        KL read a one-dimensional output as classes (:attr:`classifier`).
    other_outputs : list of dict
        The model's further graph outputs (a detector's other heads), paired
        by name: ``name``, ``shape`` per image, ``rel_error`` and
        ``max_abs_diff`` as above, and ``problem`` (None, or why the output
        could not be compared, e.g. shapes that differ between the models).
    largest : list of (int, float)
        The (image index, max |difference|) of the images that differ most,
        largest first.
    top1_hits_fp32, top5_hits_fp32, top1_hits_int8, top5_hits_int8 : int
        The counts behind the top-k fractions (over the labelled images).
    agreed : int
        Images where both models pick the same class.
    seconds_fp32, seconds_int8 : float
        Time spent in each model's ``run`` (ONNX Runtime), summed over batches.
    labels, fp32_pred, int8_pred : list of int
        Label (None when unlabelled) and top-1 class of each of the first
        ``keep`` images, in stream order.
    disagreements : list of (int, int or None, int, int)
        ``(image index, label, FP32 top-1, INT8 top-1)`` of the first ``keep``
        images where the two models disagree.
    """

    images: int = 0
    labelled: int = 0
    top1_fp32: float = None
    top5_fp32: float = None
    top1_int8: float = None
    top5_int8: float = None
    top1_agreement: float = 0.0
    mean_kl: float = 0.0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    rel_error: float = 0.0
    output: str = ""
    output_shape: tuple = ()
    batch_size: int = None
    other_outputs: list = field(default_factory=list)
    largest: list = field(default_factory=list)
    top1_hits_fp32: int = 0
    top5_hits_fp32: int = 0
    top1_hits_int8: int = 0
    top5_hits_int8: int = 0
    agreed: int = 0
    seconds_fp32: float = 0.0
    seconds_int8: float = 0.0
    labels: list = field(default_factory=list)
    fp32_pred: list = field(default_factory=list)
    int8_pred: list = field(default_factory=list)
    disagreements: list = field(default_factory=list)
    executed_by: dict = field(default_factory=dict)   # {"fp32": ..., "int8": ...}: the provider(s) that ran
    int8_quantized: bool = None   # False: the "INT8" model has no quantized node (see int8_note); None: not known

    @property
    def classifier(self):
        """True when the compared output is one row of scores per image (N, classes)."""
        return len(self.output_shape) == 1

    def output_note(self):
        """A line saying what the top-1 and KL figures mean for this output."""
        shape = "x".join(str(d) for d in self.output_shape)
        name = f"output {self.output!r}" if self.output else "the first output"
        if self.classifier:
            return f"{name} ({shape} per image): relative L2 error {self.rel_error:.3g}"
        return (f"{name} is {shape} per image, not one row of class scores: top-1 agreement and "
                f"softmax KL treat its values as classes and mean little here; relative L2 error "
                f"{self.rel_error:.3g}")

    def int8_note(self):
        """A warning line when the model given as INT8 holds no quantized node (None otherwise)."""
        return None if self.int8_quantized is not False else "warning: " + _float_int8("the INT8 model")

    def other_output_notes(self):
        """One line per further graph output: its relative L2 error (or why it was not compared)."""
        lines = []
        for o in self.other_outputs:
            if o["problem"]:
                lines.append(f"output {o['name']!r}: not compared ({o['problem']})")
            else:
                shape = "x".join(str(d) for d in o["shape"]) or "scalar"
                lines.append(f"output {o['name']!r} ({shape} per image): relative L2 error {o['rel_error']:.3g}, "
                             f"largest difference {o['max_abs_diff']:.3g}")
        return lines

    @property
    def ms_per_image_fp32(self):
        """Milliseconds per image of the FP32 model (nan before any image)."""
        return 1e3 * self.seconds_fp32 / self.images if self.images else float("nan")

    @property
    def ms_per_image_int8(self):
        """Milliseconds per image of the INT8 model (nan before any image)."""
        return 1e3 * self.seconds_int8 / self.images if self.images else float("nan")

    def as_dict(self):
        """Plain dict (JSON-ready), the per-image times included."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(ms_per_image_fp32=self.ms_per_image_fp32, ms_per_image_int8=self.ms_per_image_int8)
        return d

    def summary(self):
        """A few lines for the command line."""
        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f} %"
        lines = [f"images: {self.images} ({self.labelled} labelled)",
                 f"top-1: FP32 {pct(self.top1_fp32)}, INT8 {pct(self.top1_int8)}",
                 f"top-5: FP32 {pct(self.top5_fp32)}, INT8 {pct(self.top5_int8)}",
                 f"top-1 agreement INT8 vs FP32: {pct(self.top1_agreement)}",
                 f"mean softmax KL(FP32 || INT8): {self.mean_kl:.5f}",
                 f"output |difference|: max {self.max_abs_diff:.5g}, mean {self.mean_abs_diff:.5g}",
                 self.output_note(), *self.other_output_notes(), *filter(None, [self.int8_note()]),
                 f"time: FP32 {self.ms_per_image_fp32:.4f} ms/image, INT8 {self.ms_per_image_int8:.4f} ms/image"]
        return "\n".join(lines)


def _float_int8(name):
    return (f"{name} holds no QuantizeLinear/DequantizeLinear (or other quantized) node, so ONNX Runtime ran it "
            "in float and these figures compare two float models. If it is a model.corrected.onnx, that model is "
            "for TensorRT with its calibration.cache; to score what TensorRT would run, give model.qdq.onnx, or "
            "build one with: int8batch qdq model.corrected.onnx --cache calibration.cache")


def _is_prob(y):
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def softmax(y):
    """Row-wise softmax in float64."""
    z = np.asarray(y, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _topk(y, k):
    """Indices of the k largest per row; ties go to the lower class index."""
    return np.argsort(-y, axis=1, kind="stable")[:, :k]


def _batches(batches, batch_size, max_batches, first=0):
    if hasattr(batches, "batches"):           # a BatchSet
        yield from batches.batches(batch_size or batches.per_file, first, max_batches)
        return
    for k, b in enumerate(batches):
        if k < first:
            continue
        if max_batches is not None and k - first >= max_batches:
            return
        yield b


def _count(batches, batch_size, max_batches, first):
    """Batches ``evaluate`` will see when that is known in advance (for progress), else None."""
    if hasattr(batches, "num_batches"):
        n = batches.num_batches(batch_size or batches.per_file, first)
        return n if max_batches is None else min(n, int(max_batches))
    return max_batches


def evaluate(fp32_model, int8_model, batchset, batch_size=None, max_batches=None, *, first=0,
             outputs="auto", providers=None, intra_op_threads=None, keep_largest=5, keep=0,
             progress=None, device="auto"):
    """Run both models on the same batches and compare them.

    Parameters
    ----------
    fp32_model, int8_model : str, PathLike or onnx.ModelProto
    batchset : BatchSet, str/PathLike (a batch folder) or iterable
        An iterable yields :class:`int8batch.reader.Batch` objects or
        ``(data, labels)`` pairs.  Labels outside ``[0, classes)`` (e.g. -1,
        unlabelled) are left out of top-k.
    batch_size : int or None
        Images per run (a BatchSet re-batches; default its files' N).
    max_batches : int or None
        Stop after this many batches.
    first : int
        Batches to skip first (sampleINT8's ``firstScoreBatch``).
    outputs : {"auto", "logits", "probs"}
        Whether the models' outputs are logits (softmax is applied for the KL)
        or already probabilities; "auto" decides per batch from the FP32
        output (non-negative rows summing to 1 are probabilities).
    keep_largest : int
        How many images :attr:`EvalResult.largest` lists.
    keep : int
        How many first images (and first disagreements) to record labels and
        predictions of (:attr:`EvalResult.labels` ...).
    progress : callable(done, total), optional
        Called after each batch; ``total`` is None when unknown.
    device : {"cpu", "cuda", "auto"}
        Where ONNX Runtime runs both models (``providers`` given: those);
        :attr:`EvalResult.executed_by` says which provider really ran them.

    Returns
    -------
    EvalResult
    """
    if outputs not in ("auto", "logits", "probs"):
        raise ConfigError(f"outputs must be 'auto', 'logits' or 'probs', got {outputs!r}")
    for name, value, low in (("batch_size (--batch-size)", batch_size, 1), ("max_batches (--max-batches)", max_batches, 1),
                             ("first (--first)", first, 0), ("intra_op_threads (--threads)", intra_op_threads, 0)):
        if value is not None:
            whole_number(value, name, low)
    if isinstance(batchset, (str, os.PathLike)):
        with BatchSet(batchset) as bs:
            return evaluate(fp32_model, int8_model, bs, batch_size, max_batches, first=first, outputs=outputs,
                            providers=providers, intra_op_threads=intra_op_threads,
                            keep_largest=keep_largest, keep=keep, progress=progress, device=device)
    providers = providers_for(resolve_device(device), providers)
    fp = ModelRunner(fp32_model, providers, intra_op_threads)
    q = ModelRunner(int8_model, providers, intra_op_threads)
    if getattr(batchset, "image_shape", None) is not None:   # images neither model takes: refused before any warning
        for runner in (fp, q):
            runner.check((None,) + tuple(batchset.image_shape))
    if fp.has_qdq and not q.has_qdq:
        log.warning("the FP32 model (%s) holds Q/DQ nodes and the INT8 one none: are the two models swapped? "
                    "(give the FP32 model first)", G.model_label(fp32_model, "the first model"))
    if batch_size is None and hasattr(batchset, "batches"):
        batch_size = fp.fixed_batch or q.fixed_batch     # a model fixed to N images per run gets N (as calibrate)
    if hasattr(batchset, "window"):   # a window that serves nothing is refused with the set's numbers
        batchset.window(batch_size or batchset.per_file, first, max_batches, skip="exact")
    acc = Comparison(outputs, keep_largest, keep)
    acc.result.batch_size = batch_size or getattr(batchset, "per_file", None)
    acc.result.executed_by = {"fp32": fp.executed_by, "int8": q.executed_by}
    acc.result.int8_quantized = q.quantized
    shared = len(fp.node_outputs & q.node_outputs)
    if fp.node_outputs and shared < 0.5 * len(fp.node_outputs) and (q.quantized or fp.has_qdq):
        log.warning("the two models share only %d of the FP32 model's %d tensor names: is the INT8 model a "
                    "quantized copy of this FP32 model? (int8batch's Q/DQ models keep every name)", shared,
                    len(fp.node_outputs))
    if not q.quantized and not fp.has_qdq:
        log.warning("%s", _float_int8(f"the INT8 model ({G.model_label(int8_model, 'given in memory')})"))
    acc.result.output = fp.output_name
    if fp.output_name in q.output_names:   # outputs are paired by name (by position when the names differ)
        q.output_name = fp.output_name
    names = [n for n in fp.output_names if n != fp.output_name]
    shared = [n for n in names if n in q.output_names]
    others = [OutputDiff(n) for n in shared]
    total = _count(batchset, batch_size, max_batches, first)
    for done, b in enumerate(_batches(batchset, batch_size, max_batches, first), 1):
        data, labels = (b.data, b.labels) if hasattr(b, "data") else b
        _refuse_nonfinite(data, batchset, b)
        t = time.perf_counter()
        y0 = fp.run_all(data, [fp.output_name] + shared) if others else [fp.run(data)]
        acc.result.seconds_fp32 += time.perf_counter() - t
        t = time.perf_counter()
        y1 = q.run_all(data, [q.output_name] + shared) if others else [q.run(data)]
        acc.result.seconds_int8 += time.perf_counter() - t
        acc.add(np.asarray(y0[0]), np.asarray(y1[0]), labels)
        for diff, a, b_ in zip(others, y0[1:], y1[1:]):
            diff.add(a, b_)
        if progress:
            progress(done, total)
    res = acc.finish()
    done = {d.name: d.result() for d in others}
    res.other_outputs = [done.get(n) or {"name": n, "shape": (), "rel_error": math.nan, "max_abs_diff": math.nan,
                                         "problem": "the INT8 model has no output of that name"}
                         for n in names]
    log.debug("evaluate: %s", res.summary().replace("\n", "; "))
    return res


def _refuse_nonfinite(data, batchset, batch):
    """Damaged input (NaN or inf in the images) is refused, naming where, instead of scored."""
    data = np.asarray(data)
    # about 1.6 ms for a batch of 64 images of 3x224x224 on one core: small next to running two models
    if not np.issubdtype(data.dtype, np.floating) or np.isfinite(data).all():
        return
    where = None
    if hasattr(batchset, "first_nonfinite") and hasattr(batch, "start"):
        where = batchset.first_nonfinite(batch.start, data.shape[0])
    folder = getattr(batchset, "folder", "the batches")
    raise BatchFormatError(f"{folder}: the images hold NaN or inf values{f' ({where})' if where else ''}; the "
                           f"batch files are damaged or were written with non-finite values: check them with "
                           f"int8batch inspect, pack again", folder)


def _rel_error(sq_err, sq_ref):
    """``sqrt(sq_err / sq_ref)``: 0 for two all-zero outputs, inf when only the reference is all zeros."""
    if sq_ref > 0:
        return math.sqrt(sq_err / sq_ref)
    return 0.0 if sq_err == 0 else math.inf


class OutputDiff:
    """Running relative L2 error and largest difference of one further graph output (any shape or type)."""

    def __init__(self, name):
        self.name, self.shape, self.problem = name, None, None
        self._sq_err, self._sq_ref, self._max = 0.0, 0.0, 0.0

    def add(self, y0, y1):
        """Account one batch of the FP32 output ``y0`` and the INT8 output ``y1``."""
        if self.problem:
            return
        y0, y1 = np.asarray(y0), np.asarray(y1)
        if y0.shape != y1.shape:
            self.problem = f"shapes differ in a batch: FP32 {y0.shape}, INT8 {y1.shape}"
            return
        if not (np.issubdtype(y0.dtype, np.number) and np.issubdtype(y1.dtype, np.number)) \
                or np.issubdtype(y0.dtype, np.complexfloating):
            self.problem = f"element type {y0.dtype} is not a real number"
            return
        if self.shape is None:
            self.shape = tuple(int(d) for d in y0.shape[1:])
        ref = y0.astype(np.float64)
        d = np.abs(ref - y1.astype(np.float64))
        self._sq_err += float(np.square(d).sum())
        self._sq_ref += float(np.square(ref).sum())
        if d.size:
            self._max = max(self._max, float(d.max()))

    def result(self):
        """``{name, shape, rel_error, max_abs_diff, problem}`` (see :attr:`EvalResult.other_outputs`)."""
        bad = self.problem is not None
        return {"name": self.name, "shape": self.shape or (), "problem": self.problem,
                "rel_error": math.nan if bad else _rel_error(self._sq_err, self._sq_ref),
                "max_abs_diff": math.nan if bad else self._max}


class Comparison:
    """Running FP32-vs-INT8 sums over batches: the arithmetic behind :func:`evaluate`.

    Any backend that produces the two models' outputs batch by batch (ONNX
    Runtime in :func:`evaluate`, TensorRT engines in
    :func:`int8batch.trt.engine.evaluate_engines`) feeds them to :meth:`add` and gets
    the same :class:`EvalResult` from :meth:`finish`.  Times are the caller's:
    add them to ``result.seconds_fp32`` / ``result.seconds_int8``.

    Parameters
    ----------
    outputs : {"auto", "logits", "probs"}
        See :func:`evaluate`.
    keep_largest, keep : int
        See :func:`evaluate`.
    """

    def __init__(self, outputs="auto", keep_largest=5, keep=0):
        if outputs not in ("auto", "logits", "probs"):
            raise ConfigError(f"outputs must be 'auto', 'logits' or 'probs', got {outputs!r}")
        self.outputs, self.keep_largest, self.keep = outputs, keep_largest, keep
        self.result = EvalResult()
        self._hits = np.zeros(4, np.int64)    # top1 fp32, top5 fp32, top1 int8, top5 int8
        self._agree, self._kl_sum, self._abs_sum, self._values = 0, 0.0, 0.0, 0
        self._sq_err, self._sq_ref = 0.0, 0.0
        self._largest = []

    def add(self, y0, y1, labels):
        """Account one batch: FP32 output ``y0``, INT8 output ``y1`` (N, ...) and N labels."""
        res, keep_largest = self.result, self.keep_largest
        y0, y1 = np.asarray(y0), np.asarray(y1)
        n = y0.shape[0]
        if not res.images:
            res.output_shape = tuple(int(d) for d in y0.shape[1:])
        y0, y1 = y0.reshape(n, -1), y1.reshape(n, -1)
        if y0.shape != y1.shape:
            raise ModelError(f"the FP32 output is {y0.shape} per batch but the INT8 output is "
                             f"{y1.shape}; compare a model with its own Q/DQ version")
        classes = y0.shape[1]
        k = min(5, classes)
        t0, t1 = _topk(y0, k), _topk(y1, k)
        self._agree += int((t0[:, 0] == t1[:, 0]).sum())
        lab = np.asarray(labels, np.float64).reshape(-1)
        ok = (lab >= 0) & (lab < classes) & (lab == np.round(lab))
        _keep(res, self.keep, lab, ok, t0[:, 0], t1[:, 0])
        if ok.any():
            li = lab[ok].astype(np.int64)[:, None]
            self._hits += [int((t0[ok, :1] == li).sum()), int((t0[ok] == li).any(1).sum()),
                           int((t1[ok, :1] == li).sum()), int((t1[ok] == li).any(1).sum())]
            res.labelled += int(ok.sum())
        outputs = self.outputs
        probs = outputs == "probs" or (outputs == "auto" and _is_prob(y0))
        p0 = np.asarray(y0, np.float64) if probs else softmax(y0)
        p1 = np.clip(np.asarray(y1, np.float64), 0, None) if probs else softmax(y1)
        if probs:   # both renormalized alike: identical outputs give a KL of exactly 0
            p0 = p0 / np.maximum(p0.sum(axis=1, keepdims=True), _EPS)
            p1 = p1 / np.maximum(p1.sum(axis=1, keepdims=True), _EPS)
        terms = np.where(p0 > 0, p0 * (np.log(np.maximum(p0, _EPS)) - np.log(np.maximum(p1, _EPS))),
                         0.0)
        self._kl_sum += float(terms.sum())
        ref = y0.astype(np.float64)
        d = np.abs(ref - y1)
        self._abs_sum += float(d.sum())
        self._sq_err += float(np.square(d).sum())
        self._sq_ref += float(np.square(ref).sum())
        self._values += d.size
        per = d.max(axis=1)
        res.max_abs_diff = max(res.max_abs_diff, float(per.max()))
        largest = self._largest
        for j, v in enumerate(per):
            item = (float(v), -(res.images + j))
            if len(largest) < keep_largest:
                heapq.heappush(largest, item)
            elif keep_largest:
                heapq.heappushpop(largest, item)
        res.images += n

    def finish(self):
        """The :class:`EvalResult` of every batch added (ConfigError when there was none)."""
        res = self.result
        if res.images == 0:
            raise ConfigError("no batch to evaluate: the batch set is empty or smaller than one batch")
        hits = self._hits
        res.agreed = self._agree
        res.top1_hits_fp32, res.top5_hits_fp32, res.top1_hits_int8, res.top5_hits_int8 = hits.tolist()
        res.top1_agreement = self._agree / res.images
        res.mean_kl = self._kl_sum / res.images
        res.mean_abs_diff = self._abs_sum / self._values
        res.rel_error = _rel_error(self._sq_err, self._sq_ref)
        res.largest = [(-i, v) for v, i in sorted(self._largest, reverse=True)]
        if res.labelled:
            res.top1_fp32, res.top5_fp32, res.top1_int8, res.top5_int8 = (hits / res.labelled).tolist()
        return res


def _keep(res, keep, lab, ok, p0, p1):
    """Record labels/predictions of the first ``keep`` images and disagreements."""
    def label(j):
        return int(lab[j]) if ok[j] else None
    room = min(keep - len(res.labels), len(lab))
    for j in range(max(room, 0)):
        res.labels.append(label(j))
        res.fp32_pred.append(int(p0[j]))
        res.int8_pred.append(int(p1[j]))
    if len(res.disagreements) < keep:
        for j in np.flatnonzero(p0 != p1)[:keep - len(res.disagreements)]:
            res.disagreements.append((res.images + int(j), label(j), int(p0[j]), int(p1[j])))
