"""Checks of the bundled data and model (int8batch/data/), made by tools/.

The IDX files are parsed here with a small NumPy reader of their own, so the
test is independent of the package's IDX reader.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "int8batch", "data")
MNIST = os.path.join(DATA, "mnist")
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def read_idx(path: str) -> np.ndarray:
    """Parse a (gzip) IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype_code == 0x08, f"{path}: bad IDX magic {raw[:4].hex()}"
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    assert len(body) == int(np.prod(dims)), f"{path}: {len(body)} bytes for dims {dims}"
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


@pytest.fixture(scope="module")
def test_set():
    images = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))
    return images, labels


def test_idx_magic_numbers():
    expected = {
        "train-images-idx3-ubyte.gz": b"\x00\x00\x08\x03",
        "train-labels-idx1-ubyte.gz": b"\x00\x00\x08\x01",
        "t10k-images-idx3-ubyte.gz": b"\x00\x00\x08\x03",
        "t10k-labels-idx1-ubyte.gz": b"\x00\x00\x08\x01",
    }
    for name, magic in expected.items():
        with gzip.open(os.path.join(MNIST, name), "rb") as fh:
            assert fh.read(4) == magic, name


def test_test_set_shape_and_labels(test_set):
    images, labels = test_set
    assert images.shape == (10000, 28, 28)
    assert labels.shape == (10000,)
    assert labels[:10].tolist() == FIRST_TEST_LABELS
    assert 0 <= labels.min() and labels.max() <= 9
    assert np.bincount(labels, minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Real digits: black background, strokes up to full white.
    assert images.min() == 0 and images.max() == 255
    assert images[:, 0, :].max() < 64  # the top row is (almost) empty


def test_training_set_shape_and_labels():
    images = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"))
    assert images.ndim == 3 and images.shape[1:] == (28, 28)
    assert 10000 <= images.shape[0] <= 60000
    assert labels.shape == (images.shape[0],)
    assert 0 <= labels.min() and labels.max() <= 9
    assert images.min() == 0 and images.max() == 255
    # The canonical training set starts 5 0 4 1 9 2 1 3 1 4.
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    if images.shape[0] == 60000:
        assert np.bincount(labels, minlength=10).tolist() == [
            5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_lenet_onnx_signature_and_accuracy(test_set):
    import onnxruntime as ort
    images, labels = test_set
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(DATA, "lenet.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "data" and out.name == "prob"
    assert inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)
    assert inp.type == "tensor(float)"
    x = (images[:100].astype(np.float32) / 255.0)[:, None]  # the `mnist` preset
    prob = sess.run(["prob"], {"data": x})[0]
    assert prob.shape == (100, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)  # softmax is inside
    assert (prob.argmax(axis=1) == labels[:100]).mean() >= 0.98
    # The batch dimension really is dynamic: one image gives the same answer.
    one = sess.run(["prob"], {"data": x[7:8]})[0]
    np.testing.assert_allclose(one[0], prob[7], rtol=1e-5, atol=1e-6)


def test_lenet_json_matches_model():
    import hashlib
    import json

    with open(os.path.join(DATA, "lenet.json")) as fh:
        info = json.load(fh)
    with open(os.path.join(DATA, "lenet.onnx"), "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    assert info["sha256"] == digest
    assert info["preset"] == "mnist"
    assert info["input"]["name"] == "data" and info["output"]["name"] == "prob"
    assert info["test_accuracy"] >= 0.99
