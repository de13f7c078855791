"""plan_window against a step-by-step simulation of TensorRT's BatchStream over a count of images."""
import itertools

import pytest

from int8batch.errors import ConfigError
from int8batch.window import plan_window


def simulate(num_images, per_file, batch_size, first, max_batches):
    """The start image of every batch a BatchStream serves, stepping batch by batch.

    skip(first): when the batch size is a multiple of the files' N the stream jumps over whole files;
    otherwise it calls next() ``first`` times, and next() refuses once ``max_batches`` batches were
    counted. The count then starts again from 0 and next() serves full batches until the images or
    ``max_batches`` run out.
    """
    state = {"pos": 0, "count": 0}

    def next_batch():
        if max_batches is not None and state["count"] >= max_batches:
            return False
        if state["pos"] + batch_size > num_images:
            return False
        state["pos"] += batch_size
        state["count"] += 1
        return True

    if batch_size % per_file == 0:
        state["pos"] = first * batch_size
    else:
        for _ in range(first):
            next_batch()
    state["count"] = 0
    starts = []
    while True:
        at = state["pos"]
        if not next_batch():
            return starts
        starts.append(at)


GRID = list(itertools.product((12, 13, 40), (4, 5), (1, 3, 4, 8, 10), (0, 1, 2, 5), (None, 1, 2, 3)))


@pytest.mark.parametrize("num_images, per_file, batch_size, first, max_batches", GRID)
def test_batchstream_windows_match_a_simulation(num_images, per_file, batch_size, first, max_batches):
    n = num_images // per_file * per_file                 # a set holds whole files
    starts = simulate(n, per_file, batch_size, first, max_batches)
    w = plan_window(n, per_file, batch_size, first, max_batches, allow_empty=True)
    assert w.count == len(starts)
    if starts:
        assert w.start_image == starts[0] and w.images == len(starts) * batch_size
        assert starts == [w.start_image + k * batch_size for k in range(w.count)]


def test_exact_skipping_and_errors():
    w = plan_window(12, 4, 3, first=3, max_batches=2, skip="exact")
    assert (w.skipped, w.count, w.start_image) == (3, 1, 9)
    with pytest.raises(ConfigError, match="BatchStream skips only 2 of the 3 batches"):
        plan_window(12, 4, 5, first=3, max_batches=2, strict=True)
    with pytest.raises(ConfigError, match="batch size must be positive"):
        plan_window(12, 4, 0)
