"""``int8batch run mnist``: sampleINT8's MNIST protocol on the bundled data, its windows and its report."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imagenet_data import write_png
from int8batch.cli.main import main
from int8batch.errors import ConfigError
from int8batch.packing.sources import DATA_DIR
from int8batch.runner import run


def _env_for_package():
    # the subprocess imports the same int8batch as this test (installed, or the source tree in development)
    import int8batch
    return dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(int8batch.__file__)))


@pytest.mark.slow
def test_cli_run_mnist_fast_path(tmp_path):
    out = tmp_path / "mnist"
    p = subprocess.run([sys.executable, "-m", "int8batch.cli.main", "run", "mnist", "--calib-batches", "2",
                        "--score-batches", "5", "--threads", "1", "--out", str(out), "--plot"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, env=_env_for_package())
    assert p.returncode == 0, p.stderr
    text = p.stdout
    for needle in ("Calibration: 2 batches of 50 from image 50 (TensorRT 7/8 sampleINT8 window: MNISTBatchStream "
                   "serves batch 1 first), images 50..149",
                   "FP32 run: 5 batches of size 100 starting at 0", "INT8 run: 5 batches of size 100",
                   "Processing 500 images", "Expected predictions (first 100 images):",
                   "Actual predictions (INT8):", "&&&& PASSED int8batch run mnist",
                   "Note: 500 scoring images: one image moves top-1 and agreement by 0.2 points"):
        assert needle in text
    d = json.loads((out / "report.json").read_text())
    assert d["scoring"]["fp32"]["images"] == 500 and d["calibration"]["window"]["count"] == 2
    # the first test labels of MNIST t10k (the sample prints them): 7 2 1 0 4 1 4 9 5 9
    assert d["first_predictions"]["labels"][:10] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert d["scoring"]["fp32"]["top1_count"] >= 490
    assert (out / "predictions.png").stat().st_size > 0
    # the same run again without --plot: the earlier plot goes with the earlier reports (found as a new user)
    p = subprocess.run([sys.executable, "-m", "int8batch.cli.main", "run", "mnist", "--calib-batches", "2",
                        "--score-batches", "1", "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, env=_env_for_package())
    assert p.returncode == 0, p.stderr
    assert not (out / "predictions.png").exists() and (out / "report.json").exists()


def test_cli_run_keep_float_and_bias_correction_reach_the_q_dq_model(tmp_path):
    import onnx
    reports = {}
    for name, extra in (("default", []), ("changed", ["--keep-float", "1", "--no-bias-correction"])):
        out = tmp_path / name
        assert main(["run", "mnist", "--calib-batches", "2", "--score-batches", "2", "--threads", "1",
                     "--out", str(out)] + extra) == 0
        reports[name] = json.loads((out / "report.json").read_text())["calibration"]
        reports[name]["qdq"] = onnx.load(str(out / "model.qdq.onnx"))
    lenet = onnx.load(os.path.join(DATA_DIR, "lenet.onnx"))
    biases = {n.input[2] for n in lenet.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}

    def bias_inputs(m):
        return {n.input[2] for n in m.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    d, c = reports["default"], reports["changed"]
    assert len(d["bias_corrected"]) == 4 and d["kept_float"] == []
    assert not bias_inputs(d["qdq"]) & biases          # every bias replaced by its corrected copy
    assert c["bias_corrected"] == [] and bias_inputs(c["qdq"]) == biases
    assert len(c["kept_float"]) == 1
    quantized = {n.input[0] for n in c["qdq"].graph.node if n.op_type == "QuantizeLinear"}
    assert c["kept_float"][0] not in quantized


class RefMNISTBatchStream:
    """TensorRT 7/8 sampleINT8's ``MNISTBatchStream`` (samples/common/BatchStream.h), as a literal state machine.

    Indexed, not file-based: ``getBatch()`` points at image ``mBatchCount * B``,
    and ``next()`` increments the counter before the batch is read.
    """

    def __init__(self, batch_size, max_batches):
        self.mBatchSize, self.mMaxBatches = batch_size, max_batches
        self.mBatchCount = 0

    def reset(self, firstBatch):
        self.mBatchCount = firstBatch

    def next(self):
        if self.mBatchCount >= self.mMaxBatches:
            return False
        self.mBatchCount += 1
        return True

    def get_batch(self):
        """First image index of the current batch (the offset of getBatch())."""
        return self.mBatchCount * self.mBatchSize


def ref_mnist_calibration_images(batch_size, max_batches):
    """Images the TRT 7/8 calibrator reads: Int8EntropyCalibrator2(stream, firstBatch=0) resets to 0."""
    s = RefMNISTBatchStream(batch_size, max_batches)
    s.reset(0)
    out = []
    while s.next():
        out += list(range(s.get_batch(), s.get_batch() + batch_size))
    return out


@pytest.fixture(scope="module")
def indexed_set(tmp_path_factory):
    """12 files of 100 one-pixel images whose labels are their image indices."""
    from int8batch.format import write_batch_file
    folder = tmp_path_factory.mktemp("indexed")
    for k in range(12):
        idx = np.arange(100 * k, 100 * (k + 1), dtype=np.float32)
        write_batch_file(folder / f"batch{k}", idx.reshape(100, 1, 1, 1), idx)
    return str(folder)


@pytest.mark.parametrize("batch,count", [(50, 10), (50, 1), (100, 3), (150, 7), (32, 16), (7, 40), (30, 2)])
def test_mnist_calibration_windows(indexed_set, batch, count):
    from int8batch.reader import BatchSet
    from int8batch.runner.protocol import calibration_window
    with BatchSet(indexed_set) as bs:
        sample, w = calibration_window(bs, "trt7", batch, count)
        served = [int(v) for b in bs.batches(window=w) for v in b.labels]
        assert served == ref_mnist_calibration_images(batch, count)          # MNISTBatchStream's images
        assert (w.start_image, w.count, w.skipped) == (batch, count, 1)
        assert sample.name == "trt7" and "MNISTBatchStream serves batch 1 first" in sample.label
        sample, w5 = calibration_window(bs, "trt5", batch, count)
        assert [int(v) for b in bs.batches(window=w5) for v in b.labels] == list(range(batch * count))
        assert (w5.start_image, w5.count, w5.skipped) == (0, count, 0) and sample.name == "trt5"


def test_mnist_calibration_window_errors(indexed_set):
    from int8batch.reader import BatchSet
    from int8batch.runner.protocol import calibration_window
    with BatchSet(indexed_set) as bs:
        # MNISTBatchStream reads images B .. (count+1)*B - 1: 12 batches of 100 from batch 1 need 1300
        with pytest.raises(ConfigError) as info:
            calibration_window(bs, "trt7", 100, 12)
        msg = str(info.value)
        for needle in ("calibration window", indexed_set, "12 batches of 100 images from batch 1",
                       "need images 100..1299", "1200 images (12 files of 100)", "11 batches of 100 fit"):
            assert needle in msg, msg
        assert calibration_window(bs, "trt5", 100, 12)[1].images == 1200
        with pytest.raises(ConfigError, match="choose one of trt7, trt5"):
            calibration_window(bs, "trt6", 50, 10)


def test_cli_run_mnist_window_trt7_vs_trt5(tmp_path, monkeypatch, capsys):
    """--window picks where calibration starts; calibrate() gets it and the report says whose window it is."""
    calls = []
    real = run.calibrate

    def recording(*a, **k):
        calls.append({key: k[key] for key in ("batch_size", "first", "max_batches")})
        return real(*a, **k)
    monkeypatch.setattr(run, "calibrate", recording)
    lines = {
        "trt7": "Calibration: 10 batches of 50 from image 50 (TensorRT 7/8 sampleINT8 window: MNISTBatchStream "
                "serves batch 1 first), images 50..549, method ",
        "trt5": "Calibration: 10 batches of 50 from image 0 (TensorRT 5 sampleINT8 window: BatchStream serves the "
                "batch files from batch 0), images 0..499, method ",
    }
    for name, extra, start in (("trt7", [], 50), ("trt5", ["--window", "trt5"], 0)):
        out = tmp_path / name
        assert main(["run", "mnist", "--score-batches", "2", "--threads", "1", "--out", str(out)] + extra) == 0
        text = capsys.readouterr().out
        assert lines[name] in text, text
        d = json.loads((out / "report.json").read_text())
        assert d["settings"]["window"] == name and d["calibration"]["sample_window"] == name
        w = d["calibration"]["window"]
        assert (w["start_image"], w["images"], w["count"], w["batch_size"]) == (start, 500, 10, 50)
        assert "- calibration: " + lines[name][len("Calibration: "):] in (out / "report.md").read_text()
    assert calls == [{"batch_size": 50, "first": 1, "max_batches": 10},
                     {"batch_size": 50, "first": 0, "max_batches": 10}]


def test_cli_run_mnist_window_choices(capsys):
    with pytest.raises(SystemExit):
        main(["run", "mnist", "--window", "exact"])
    assert "invalid choice: 'exact'" in capsys.readouterr().err



def test_run_mnist_reports_every_phase_to_a_phase_aware_progress(tmp_path):
    from int8batch.runner.mnist import MnistSettings, run_mnist
    seen, plain = {}, []

    def progress(done, total, phase=None, unit=None):
        seen.setdefault((phase, unit), []).append((done, total))
    run_mnist(MnistSettings(calib_batches=2, score_batches=2, threads=1), out=str(tmp_path / "a"),
              progress=progress)
    assert list(seen) == [("packing training images", "images"), ("packing test images", "images"),
                          ("histograms and bias sums", "batches"), ("sensitivity", "tensors"),
                          ("writing artefacts", "files"), ("scoring FP32 and INT8", "batches")]
    assert seen[("packing training images", "images")][-1] == (60000, 60000)
    assert seen[("packing test images", "images")][-1] == (10000, 10000)
    assert seen[("histograms and bias sums", "batches")] == [(1, 2), (2, 2)]
    assert seen[("scoring FP32 and INT8", "batches")] == [(1, 2), (2, 2)]
    # a plain (done, total) callable keeps hearing the scoring batches only, as before
    run_mnist(MnistSettings(calib_batches=2, score_batches=2, threads=1), out=str(tmp_path / "b"),
              progress=lambda done, total: plain.append((done, total)))
    assert plain == [(1, 2), (2, 2)]


def test_run_mnist_ignores_a_local_mnist_folder(tmp_path, monkeypatch):
    from int8batch.runner.mnist import MnistSettings, run_mnist
    (tmp_path / "mnist").mkdir()
    write_png(str(tmp_path / "mnist" / "x.png"), (1, 2, 3))
    monkeypatch.chdir(tmp_path)
    r = run_mnist(MnistSettings(calib_batches=2, score_batches=1, threads=1), out=str(tmp_path / "o"))
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r.passed and d["first_predictions"]["labels"][:10] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert d["calibration"]["window"]["count"] == 2      # (a folder of one image would not even pack)



def test_run_does_not_replace_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mnist"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    args = ["run", "mnist", "--calib-batches", "2", "--score-batches", "2", "--threads", "1", "-q", "--out", str(out)]
    assert main(args) == 1
    assert "report.md already there and not from an int8batch run (no report.json of a run beside them)" \
        in capsys.readouterr().err
    assert os.listdir(out) == ["report.md"] and (out / "report.md").read_text() == "my notes\n"
    (out / "report.md").unlink()
    (out / "calibration.cache").write_text("someone's cache\n")
    assert main(args) == 1
    assert "calibration.cache already there and not from an int8batch calibration" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0                 # replaced; a second run replaces its own files
    assert main(args) == 0
    assert json.loads((out / "report.json").read_text())["run"] == "mnist"


@pytest.mark.parametrize("argv, needle", [
    (["--calib-batches", "0"], "calibration window (--calib-batch-size, --calib-batches): the number of batches must be >= 1"),
    (["--batch-size", "0"], "scoring window over the test set (--batch-size, --first-score-batch, --score-batches)"),
    (["--first-score-batch", "100"], "no full batch of 100 images after skipping 100 batches"),
])
def test_bad_windows_fail_before_anything_is_packed(argv, needle, tmp_path, monkeypatch, capsys):
    """Found by a new user: these were refused only after packing 60000 images, naming a deleted temp folder."""
    from int8batch.cli.main import main
    from int8batch.runner import mnist
    packed = []
    monkeypatch.setattr(mnist, "pack", lambda *a, **k: packed.append(a))
    assert main(["run", "mnist", "-o", str(tmp_path / "o"), *argv]) == 1
    err = capsys.readouterr().err
    assert needle in err and packed == [] and "int8batch-mnist-" not in err, err
