"""The arithmetic of sampleINT8's protocol: batch windows and top-k scoring.

sampleINT8 calibrates on ``calib_batches`` batches of ``calib_batch_size`` from
the start of its batch files and scores ``score_batches`` batches of
``batch_size`` starting at batch ``first_score_batch``.  A window that asks for
more images than exist is an error here (the C++ sample would crash).
"""
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Window:
    """``count`` batches of ``batch_size`` images starting at batch ``first``."""

    batch_size: int
    first: int
    count: int

    @property
    def start_image(self):
        return self.first * self.batch_size

    @property
    def images(self):
        return self.count * self.batch_size

    def describe(self):
        return f"{self.count} batches of size {self.batch_size} starting at {self.first}"


def window(available_images, batch_size, first=0, count=None, what="window"):
    """A validated :class:`Window` over ``available_images`` images.

    ``count=None`` takes every full batch after ``first``.
    """
    batch_size, first = int(batch_size), int(first)
    if batch_size <= 0 or first < 0:
        raise ConfigError(f"{what}: batch size must be > 0 and first batch >= 0 (got {batch_size}, {first})")
    full = available_images // batch_size - first
    if count is None:
        count = full
    count = int(count)
    if count <= 0 or count > full:
        raise ConfigError(f"{what}: {count} batches of {batch_size} from batch {first} need "
                          f"{(first + max(count, 1)) * batch_size} images, but only {available_images} exist "
                          f"({max(full, 0)} batches fit)")
    return Window(batch_size, first, count)


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
