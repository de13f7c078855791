"""The arithmetic of sampleINT8's protocol: batch windows and top-k scoring.

sampleINT8 calibrates on ``calib_batches`` batches of ``calib_batch_size`` and
scores ``score_batches`` batches of ``batch_size`` starting at batch
``first_score_batch``.  Which batches a window covers is computed by the one
window owner, :meth:`int8batch.reader.BatchSet.window`; :func:`window` here
adds the protocol's rule that a window asking for more images than exist is an
error (the C++ sample would crash) and names the window's role in the message.

Where the calibration window starts depends on the sample's TensorRT version
(:data:`CALIBRATION_WINDOWS`): TensorRT 7/8's ``MNISTBatchStream`` serves batch
1 first, TensorRT 5's ``BatchStream`` over the batch files serves batch 0.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..window import Window, plan_window

__all__ = ["CALIBRATION_WINDOWS", "SampleWindow", "Score", "Window", "calibration_window", "passed",
           "sample_window", "topk_hits", "window"]


def window(available, batch_size, first=0, count=None, what="window", skip="exact"):
    """A validated :class:`~int8batch.window.Window` of the protocol.

    Parameters
    ----------
    available : BatchSet or int
        The batch set the window is served from, or its number of images
        (then only ``skip="exact"`` is possible: BatchStream's skip depends on
        the files' N).
    batch_size, first : int
        Images per batch, batches to skip.
    count : int or None
        Batches wanted; all of them must fit.  None takes every full batch
        after ``first``.
    what : str
        The window's role ("calibration", "scoring"), named in errors.
    skip : {"exact", "batchstream"}
        As in :meth:`~int8batch.reader.BatchSet.window`.
    """
    label = what if what.endswith("window") else f"{what} window"
    if not hasattr(available, "window"):
        return plan_window(int(available), None, batch_size, first, count, skip, strict=True, where=label)
    try:
        return available.window(batch_size, first, count, skip, strict=True)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from exc


@dataclass(frozen=True)
class SampleWindow:
    """Where one TensorRT version of sampleINT8 starts calibrating, in batch-file terms."""

    name: str
    first: int          # batches skipped before the first calibration batch
    skip: str           # skip semantics (see BatchSet.window)
    label: str          # what the run report says

    def describe(self, w):
        """``"10 batches of 50 from image 50 (<label>), images 50..549"`` for the window ``w``."""
        return f"{w.count} batches of {w.batch_size} from image {w.start_image} ({self.label}), {w.span()}"


#: ``int8batch run mnist --window``: the calibration windows of sampleINT8's TensorRT versions
CALIBRATION_WINDOWS = {
    # TRT 7/8 sampleINT8: Int8EntropyCalibrator2(MNISTBatchStream, firstBatch 0); next() increments the
    # batch counter before the data is read, so batch 1 (images B..2B-1) is served first
    "trt7": SampleWindow("trt7", 1, "batchstream",
                         "TensorRT 7/8 sampleINT8 window: MNISTBatchStream serves batch 1 first"),
    # TRT 5 sampleINT8: BatchStream over the batch files, reset(0): batch 0 first
    "trt5": SampleWindow("trt5", 0, "batchstream",
                         "TensorRT 5 sampleINT8 window: BatchStream serves the batch files from batch 0"),
}


def sample_window(name):
    """The :class:`SampleWindow` called ``name`` (``"trt7"``, ``"trt5"``); ConfigError for another name."""
    try:
        return CALIBRATION_WINDOWS[name]
    except KeyError:
        raise ConfigError(f"unknown calibration window {name!r}; choose one of "
                          f"{', '.join(CALIBRATION_WINDOWS)}") from None


def calibration_window(batchset, name, batch_size, count):
    """The calibration :class:`~int8batch.window.Window` of sample window ``name`` over ``batchset``.

    Returns ``(SampleWindow, Window)``.  ``count`` batches must fit.
    """
    sample = sample_window(name)
    return sample, window(batchset, batch_size, sample.first, count, "calibration", sample.skip)


def topk_hits(scores, labels, k):
    """Boolean per row: is ``labels[i]`` among the ``k`` highest ``scores[i]``?

    Ties are broken towards the lower class index (a stable descending sort),
    so the result is deterministic.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ConfigError(f"scores must be (N, classes) and labels (N,), got {scores.shape} and {labels.shape}")
    k = min(int(k), scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.any(order == labels[:, None], axis=1)


@dataclass
class Score:
    """Running top-1/top-5 counts and timing of one precision."""

    top1: int = 0
    top5: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, scores, labels, seconds=0.0):
        self.top1 += int(topk_hits(scores, labels, 1).sum())
        self.top5 += int(topk_hits(scores, labels, 5).sum())
        self.images += len(labels)
        self.seconds += seconds

    @property
    def top1_rate(self):
        return self.top1 / self.images if self.images else float("nan")

    @property
    def top5_rate(self):
        return self.top5 / self.images if self.images else float("nan")

    @property
    def ms_per_image(self):
        return 1e3 * self.seconds / self.images if self.images else float("nan")


def passed(fp32_top1, int8_top1, tolerance=0.01):
    """sampleINT8's verdict: INT8 top-1 no more than ``tolerance`` (absolute) below FP32."""
    return int8_top1 >= fp32_top1 - tolerance
