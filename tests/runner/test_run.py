"""The run skeleton (runner/run.py): the steps in order, the work folder, the backend glue."""
import os

import pytest

from int8batch.errors import ConfigError
from int8batch.window import plan_window
from int8batch.runner import run
from int8batch.runner.imagenet import ImagenetSettings

CAL = plan_window(1000, None, 50, first=1, max_batches=2, skip="exact")


class _Report:
    def __init__(self):
        self.notes, self.paths, self.written = [], {}, False

    def write(self):
        self.written = True


class _Sample(run.Sample):
    """Records the hooks the skeleton calls."""

    name = "fake"

    def __init__(self, settings, calls):
        super().__init__(settings)
        self.calls = calls

    def check(self):
        self.calls.append("check")

    def prepare(self, tmp, stack):
        self.calls.append("prepare")
        self.tmp = tmp
        stack.callback(self.calls.append, "closed")
        return run.Windows("cal_set", CAL, "score_set", "win")

    def before_calibration(self, w):
        self.calls.append("before_calibration")

    def calibrate_options(self):
        return {"intra_op_threads": 3}

    def report(self, w, calibration, scored, backend, out):
        self.calls.append(("report", calibration, scored, backend))
        return _Report()

    def annotate(self, report, w, out):
        self.calls.append("annotate")


def test_steps_in_order_and_the_work_folder_removed(tmp_path, monkeypatch):
    calls = []

    def calibrate(model, cal_set, out, **kw):
        calls.append(("calibrate", cal_set, kw["first"], kw["max_batches"], kw["intra_op_threads"]))
        return "calibration"

    def score(backend, s, calibration, w, out, progress=None):
        calls.append(("score", backend, calibration))
        return "scored"
    monkeypatch.setattr(run, "calibrate", calibrate)
    monkeypatch.setattr(run, "score", score)
    sample = _Sample(ImagenetSettings(model="m.onnx", images="i"), calls)
    report = run.run(sample, str(tmp_path / "out"))
    assert calls == ["check", "prepare", "before_calibration", ("calibrate", "cal_set", 1, 2, 3),
                     ("score", "onnxruntime", "calibration"), ("report", "calibration", "scored", "onnxruntime"),
                     "annotate", "closed"]
    assert report.written and not os.path.exists(sample.tmp)    # the temporary work folder is gone
    calls.clear()
    work = tmp_path / "work"
    work.mkdir()
    run.run(_Sample(ImagenetSettings(model="m.onnx", images="i"), calls), str(tmp_path / "out"), workdir=str(work))
    assert work.exists()                                          # a given work folder stays


def test_an_unknown_backend_fails_before_anything_runs():
    calls = []
    with pytest.raises(ConfigError, match="unknown backend 'gpu'"):
        run.run(_Sample(ImagenetSettings(model="m", images="i", backend="gpu"), calls), "out")
    assert calls == []


def test_trt_algorithm_of_each_method():
    # int8batch's entropy is TensorRT's Entropy2 (the legacy calibrator of that name only when asked by its key)
    assert run.trt_algorithm("entropy") == "entropy2" and run.trt_algorithm("minmax") == "minmax"
    assert run.trt_algorithm("mse") == "entropy2" and run.trt_algorithm("legacy") == "legacy"
    assert run.describe(object()) is None
