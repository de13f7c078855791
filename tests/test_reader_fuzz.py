"""Property-based fuzzing of the batch-file reader and the manifest reader (issue 12).

Every input either reads correctly or raises an ``Int8BatchError``; never another
exception, a crash or a hang.  Bounded and seeded for CI (about 200 examples,
seconds); ``pytest -m slow tests/test_reader_fuzz.py`` runs the long variants.
"""
import json
import os
import struct
import tempfile

import numpy as np
import pytest

from int8batch.errors import Int8BatchError
from int8batch.manifest import MANIFEST_NAME, read_manifest
from int8batch.reader import BatchSet

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install .[test])")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

# seeded (derandomize), no example database written into the checkout, no deadline on a loaded machine
_FUZZ = dict(deadline=None, database=None, derandomize=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHORT, LONG = 120, 5000


def _long_run(request):
    """The long variants run only when asked for (``-m slow``): CI runs ``pytest -q``, everything else."""
    expr = (request.config.option.markexpr or "").replace(" ", "")
    if "slow" not in expr or "notslow" in expr:
        pytest.skip("long fuzzing: run with -m slow")


# ------------------------------------------------------------- batch files
_DIMS = st.tuples(*[st.integers(1, 3)] * 4)
_INT32 = st.one_of(st.integers(-3, 4), st.sampled_from([0, -1, 2 ** 31 - 1, -2 ** 31, 2 ** 16, 2 ** 20]),
                   st.integers(-2 ** 31, 2 ** 31 - 1))


@st.composite
def batch_file(draw, dims):
    """Bytes of one batch file: valid for ``dims``, then maybe damaged."""
    n, c, h, w = dims
    count = n * c * h * w
    data = draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=count + n,
                         max_size=count + n))
    raw = struct.pack("<4i", *dims) + struct.pack(f"<{count + n}f", *data)
    damage = draw(st.sampled_from(["none", "none", "header", "truncate", "append", "flip", "random"]))
    if damage == "header":
        k = draw(st.integers(0, 3))
        raw = raw[:4 * k] + struct.pack("<i", draw(_INT32)) + raw[4 * k + 4:]
    elif damage == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif damage == "append":
        raw += draw(st.binary(min_size=1, max_size=64))
    elif damage == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    elif damage == "random":
        raw = draw(st.binary(max_size=200))
    return raw


@st.composite
def batch_folder(draw):
    dims = draw(_DIMS)
    files = draw(st.lists(batch_file(dims), min_size=1, max_size=3))
    names = [f"batch{k}" for k in range(len(files))]
    if draw(st.booleans()):                       # a name out of sequence: gaps, strays, a missing batch0
        names[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(
            ["batch7", "batch01", "batch-1", "batchx", "batch", "batch0.tmp", "batch99999999999999",
             "batch" + "9" * 200]))
    return dims, dict(zip(names, files))


def _reference(folder, names):
    """Plain-bytes parse of every file, for a set that opened."""
    out = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            raw = f.read()
        n, c, h, w = struct.unpack("<4i", raw[:16])
        data = np.frombuffer(raw, "<f4", n * c * h * w, 16).reshape(n, c, h, w)
        out.append((data, np.frombuffer(raw, "<f4", n, 16 + 4 * n * c * h * w)))
    return out


def _check_batch_folder(case):
    dims, files = case
    with tempfile.TemporaryDirectory() as folder:
        for name, raw in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(raw)
        try:
            bs = BatchSet(folder)
        except Int8BatchError as exc:
            assert exc.path is not None and str(exc)
            return
        with bs:
            ref = _reference(folder, [os.path.basename(p) for p in bs.paths])
            assert bs.num_files == len(ref) and bs.dims == ref[0][0].shape
            data, labels = bs.images(0, bs.num_images)
            np.testing.assert_array_equal(data, np.concatenate([d for d, _ in ref]))
            np.testing.assert_array_equal(labels, np.concatenate([lab for _, lab in ref]))
            for b in bs.batches(max(1, bs.num_images // 2 + 1)):
                assert np.isfinite(b.data).sum() >= 0  # touch every byte served


@settings(max_examples=SHORT, **_FUZZ)
@given(batch_folder())
def test_fuzz_batch_files_read_or_raise_typed(case):
    _check_batch_folder(case)


@pytest.mark.slow
def test_fuzz_batch_files_long(request):
    _long_run(request)
    settings(max_examples=LONG, **_FUZZ)(given(batch_folder())(_check_batch_folder))()


# ---------------------------------------------------------------- manifests
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False,
                                                                                   allow_infinity=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
DIMS = [2, 1, 2, 3]
_GOOD = {"format": "sampleINT8-batch", "manifest_version": 1, "dims": DIMS, "files": 2, "images": 4,
         "prefix": "batch", "suffix": "", "dtype": "float32", "byte_order": "little", "layout": "NCHW",
         "labels": {"source": "folders", "classes": ["a", "b"], "unlabelled_value": None},
         "preprocess": {"scale": 1.0, "mean": [0.0], "std": [1.0]},
         "images_list": [["a/0.png", 0], ["a/1.png", 0], ["b/0.png", 1], ["b/1.png", 1]],
         "padded": [], "dropped": [], "skipped": [],
         "checksums": {"algorithm": "crc32", "files": ["00000000", "00000000"]}}


@st.composite
def manifest_text(draw):
    kind = draw(st.sampled_from(["mutated", "mutated", "json", "bytes", "text"]))
    if kind == "mutated":                         # the real manifest with fields replaced, removed or added
        man = json.loads(json.dumps(_GOOD))
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(sorted(_GOOD) + ["extra"]))
            action = draw(st.sampled_from(["replace", "remove", "nested"]))
            if action == "remove":
                man.pop(key, None)
            elif action == "nested" and isinstance(man.get(key), (dict, list)) and man[key]:
                sub = man[key]
                k = draw(st.sampled_from(sorted(sub))) if isinstance(sub, dict) else draw(
                    st.integers(0, len(sub) - 1))
                sub[k] = draw(_JSON)
            else:
                man[key] = draw(_JSON)
        return json.dumps(man).encode()
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "text":
        return draw(st.text(alphabet='{}[]":,0123456789.eE-+ natrufl\\NInfy', max_size=60)).encode()
    return draw(st.binary(max_size=120))


def _golden_folder(folder):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "batches")
    for k in range(2):
        with open(os.path.join(here, f"batch{k}"), "rb") as src, open(os.path.join(folder, f"batch{k}"), "wb") as f:
            f.write(src.read())


def _check_manifest(raw):
    with tempfile.TemporaryDirectory() as folder:
        _golden_folder(folder)
        path = os.path.join(folder, MANIFEST_NAME)
        with open(path, "wb") as f:
            f.write(raw)
        try:
            man = read_manifest(path)
        except Int8BatchError as exc:
            assert exc.path == path
            man = None
        try:
            with BatchSet(folder, manifest="require") as bs:
                assert isinstance(bs.manifest, dict) and bs.manifest == man
                assert bs.manifest["files"] == 2 and bs.manifest["dims"] == DIMS
                listing = bs.manifest.get("images_list")
                assert listing is None or [len(e) for e in listing] == [2] * 4
        except Int8BatchError as exc:
            assert exc.path is not None


@settings(max_examples=SHORT, **_FUZZ)
@given(manifest_text())
def test_fuzz_manifest_reads_or_raises_typed(raw):
    _check_manifest(raw)


@pytest.mark.slow
def test_fuzz_manifest_long(request):
    _long_run(request)
    settings(max_examples=LONG, **_FUZZ)(given(manifest_text())(_check_manifest))()


def test_the_unmutated_manifest_reads():
    _check_manifest(json.dumps(_GOOD).encode())
    with tempfile.TemporaryDirectory() as folder:
        _golden_folder(folder)
        with open(os.path.join(folder, MANIFEST_NAME), "w") as f:
            json.dump(_GOOD, f)
        with BatchSet(folder, manifest="require") as bs:
            assert bs.manifest["labels"]["classes"] == ["a", "b"]
