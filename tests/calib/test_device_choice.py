"""``device`` auto/cpu/cuda: the choice, its errors and what the output says, on a machine without a GPU path.

(The GPU path itself is tested in tests/cuda/test_gpu_calibration.py, on a GPU.)
"""
import pytest

import int8batch
from int8batch.calib import api, ort_exec, passes
from int8batch.calib.evaluate import evaluate
from int8batch.cli.main import main
from int8batch.errors import ConfigError
from int8batch.runner.mnist import MODEL


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(ort_exec, "cuda_status", lambda: (False, "no CUDA provider in this test"))


def test_auto_falls_back_to_cpu_and_cuda_names_the_reason(no_cuda):
    assert ort_exec.resolve_device("auto") == "cpu"
    assert ort_exec.resolve_device(None) == "cpu"
    assert ort_exec.resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA provider in this test"):
        ort_exec.resolve_device("cuda")
    with pytest.raises(ConfigError, match="device must be one of"):
        ort_exec.resolve_device("tpu")


def test_cuda_status_says_what_is_missing_here():
    ok, why = ort_exec.cuda_status()
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not ok and "onnxruntime-gpu" in why
    else:
        assert ok or why


def test_providers_follow_the_device():
    assert ort_exec.providers_for("cpu") == ["CPUExecutionProvider"]
    assert ort_exec.providers_for("cuda", ["X"]) == ["X"]


def test_calibrate_on_cpu_says_so(no_cuda, tmp_path):
    b = tmp_path / "b"
    int8batch.pack("mnist", b, batch_size=50, limit=100)
    res = api.calibrate(MODEL, b, None, method="minmax", device="auto")
    assert res.device == "cpu" and res.executed_by == "ONNX Runtime CPU provider"
    assert "ONNX Runtime CPU provider" in res.summary().splitlines()[0]
    with int8batch.BatchSet(b) as bs:
        r = evaluate(MODEL, MODEL, bs, 50, device="auto")
    assert r.executed_by == {"fp32": "ONNX Runtime CPU provider", "int8": "ONNX Runtime CPU provider"}
    with pytest.raises(ConfigError, match="device must be one of"):
        api.calibrate(MODEL, b, None, device="gpu")


def test_cli_device_cuda_without_a_gpu_path_is_a_clear_error(no_cuda, tmp_path, capsys):
    b = tmp_path / "b"
    int8batch.pack("mnist", b, batch_size=50, limit=100)
    rc = main(["calibrate", MODEL, "--batches", str(b), "--out", str(tmp_path / "c"), "--device", "cuda", "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "device 'cuda' cannot be used: no CUDA provider in this test" in err
    assert "Traceback" not in err
    assert not (tmp_path / "c" / "calibration.cache").exists()
    rc = main(["eval", MODEL, MODEL, "--batches", str(b), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "FP32 ran on: ONNX Runtime CPU provider" in out


def test_the_environment_decides_what_auto_means(monkeypatch):
    monkeypatch.setattr(ort_exec, "cuda_status", lambda: (True, ""))
    monkeypatch.setenv("INT8BATCH_DEVICE", "cpu")
    assert ort_exec.resolve_device("auto") == "cpu"
    assert ort_exec.resolve_device("cuda") == "cuda"          # explicit wins
    monkeypatch.setenv("INT8BATCH_DEVICE", "")
    assert ort_exec.resolve_device("auto") == "cuda"


@pytest.mark.parametrize("batch,limit,want", [(64, 57, 32), (64, 64, 64), (64, 200, 64), (50, 30, 25),
                                              (50, 9, 5), (7, 3, 1), (64, 0, 1)])
def test_gpu_sub_batches_have_one_shape(batch, limit, want):
    """The largest divisor of the batch that fits: ONNX Runtime's CUDA convolutions set up again on
    every change of input shape (0.2-0.5 s each, measured), so a pass never alternates two sizes."""
    from types import SimpleNamespace
    p = passes.DevicePass.__new__(passes.DevicePass)
    p.win = SimpleNamespace(batch_size=batch)
    got = p._sub_batch(limit)
    assert got == want and batch % got == 0


def test_cli_device_budget_is_checked_in_the_users_units(tmp_path, capsys):
    rc = main(["calibrate", MODEL, "--batches", str(tmp_path), "--device-budget", "-1", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc != 0 and "--device-budget must be a positive number of GB, got -1" in err


def test_run_with_device_cuda_stops_with_the_reason_and_writes_nothing(no_cuda, tmp_path, capsys):
    rc = main(["run", "mnist", "--device", "cuda", "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc != 0 and "device 'cuda' cannot be used" in err
    assert not (tmp_path / "out").exists()
