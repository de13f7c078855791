"""``--method entropy`` is TensorRT's IInt8EntropyCalibrator2: the cache lines TensorRT published.

Golden values, written by TensorRT itself for its MNIST sample (sampleINT8,
calibrated with ``Int8EntropyCalibrator2`` on the first 500 training images,
10 batches of 50), as listed in the sample's README in NVIDIA's TensorRT OSS
repository:

* ``samples/opensource/sampleINT8/README.md`` of the v5.1.5 and v6.0.1 trees,
  header ``TRT-5100-EntropyCalibration2``: batch files from Caffe, pixels
  ``x / 256`` (our ``mnist-caffe`` preset): ``data: 3c000889``, ``prob: 3c010a14``;
* ``samples/sampleINT8/README.md`` of the 7.1.3-8.4.1 trees (also
  ``samples/opensource/...`` in 7.1-8.0), header ``TRT-7000-EntropyCalibration2``:
  IDX files, pixels ``x / 255`` (our ``mnist`` preset): ``data: 3c008912``,
  ``prob: 3c010a14``.

``data`` is the network input and ``prob`` the softmax output; the other lines
depend on the weights of NVIDIA's own LeNet, which is not available, so only
these two are model-independent (``prob``'s max is 1.0 for any confident
classifier).  TensorRT 7/8's ``MNISTBatchStream`` serves batch 1 first, so
the window there is images 50..549; both windows give the same values.

The cache is read back here with a separate minimal parser (split at the last
``": "``), not with int8batch's reader.
"""
import pytest

import int8batch
from int8batch.calib import api
from int8batch.cli.main import main as cli_main
from int8batch.runner.mnist import MODEL as LENET

PUBLISHED = {
    # preset: (README tree and header, {tensor: hex})
    "mnist-caffe": ("TensorRT 5.1 sampleINT8 README, TRT-5100-EntropyCalibration2",
                    {"data": "3c000889", "prob": "3c010a14"}),
    "mnist": ("TensorRT 7.x-8.4 sampleINT8 README, TRT-7000-EntropyCalibration2",
              {"data": "3c008912", "prob": "3c010a14"}),
}


def _cuda_usable():
    try:
        from int8batch.calib.ort_exec import cuda_status
        return cuda_status()[0]
    except Exception:  # noqa: BLE001 - no GPU path here
        return False


#: the GPU path (statistics on the device, tests/cuda/test_gpu_calibration.py) must give the same lines
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not _cuda_usable(), reason="needs a GPU and ONNX Runtime's CUDA provider (onnxruntime-gpu)")])]


def _cache_lines(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    out = {}
    for line in lines[1:]:
        k = line.rfind(": ")
        out[line[:k]] = line[k + 2:]
    return lines[0], out


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    out = {}
    for preset in PUBLISHED:
        out[preset] = root / preset
        int8batch.pack("mnist", out[preset], preset=preset, batch_size=100, limit=600)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", sorted(PUBLISHED))
@pytest.mark.parametrize("first", [0, 1])   # images 0..499 (TensorRT 5), 50..549 (TensorRT 7/8)
def test_entropy_reproduces_published_cache(packs, tmp_path, preset, first, device):
    source, want = PUBLISHED[preset]
    res = api.calibrate(LENET, packs[preset], tmp_path, method="entropy", batch_size=50, first=first,
                        max_batches=10, bias_correction=False, write_qdq=False, device=device)
    assert res.device == device
    header, got = _cache_lines(res.paths["cache"])
    for name, hexval in want.items():
        assert got[name] == hexval, f"{name}: {got[name]} != {hexval} ({source})"
    assert header.endswith("-EntropyCalibration2")


def test_entropy_cli_reproduces_published_cache(packs, tmp_path, capsys):
    out = tmp_path / "cal"
    assert cli_main(["calibrate", LENET, "--batches", str(packs["mnist"]), "--method", "entropy",
                     "--batch-size", "50", "--max-batches", "10", "--out", str(out), "--trt-version", "7.0",
                     "--no-bias-correction", "--no-qdq", "-q"]) == 0
    header, got = _cache_lines(out / "calibration.cache")
    assert header == "TRT-7000-EntropyCalibration2"
    assert {k: got[k] for k in PUBLISHED["mnist"][1]} == PUBLISHED["mnist"][1]


def test_other_histogram_rules_do_not_reproduce(packs, tmp_path):
    # The power-of-two range of the other methods' histograms gives another `data` value:
    # the first batch's own max as the range is what TensorRT does.
    from int8batch.calib import thresholds as th
    from int8batch.calib.collector import HistogramCollector
    with int8batch.BatchSet(packs["mnist"]) as bs:
        grow, trt = HistogramCollector(2048), HistogramCollector(2048, mode="trt")
        for b in bs.batches(50, 0, 10):
            grow.collect("data", b.data)
            trt.collect("data", b.data)
    from int8batch.trt.vocab import amax_hex
    assert amax_hex(th.amax_entropy(trt.stats("data"))) == "3c008912"
    assert amax_hex(th.amax_entropy(grow.stats("data"))) != "3c008912"
