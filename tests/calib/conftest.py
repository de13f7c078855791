"""Shared fixtures of the calibration tests."""
import pytest

import int8batch


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """300 bundled MNIST training images packed in files of 50."""
    out = tmp_path_factory.mktemp("mnist") / "b"
    int8batch.pack("mnist", out, batch_size=50, limit=300)
    return out
