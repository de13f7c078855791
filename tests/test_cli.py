"""The package imports without its optional dependencies and every subcommand answers --help."""
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import int8batch
from int8batch.cli.main import SUBCOMMANDS, main

MODULES = sorted(m.name for m in pkgutil.walk_packages(int8batch.__path__, "int8batch."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_import_is_light(tmp_path):
    # onnx, onnxruntime, cv2, tensorrt and cuda load only inside the functions that need them (tqdm: only
    # when a progress bar is drawn)
    code = ("import sys, int8batch, int8batch.cli.main, int8batch.reader, int8batch.calib.api;"
            "int8batch.cli.main.build_parser();"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'cv2', 'tensorrt', 'cuda', 'matplotlib', 'torch', 'tqdm')"
            " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    # cwd away from the source tree, so the installed package is the one imported
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(int8batch.__file__)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("sub", SUBCOMMANDS + ["run mnist", "run imagenet"])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main(sub.split() + ["--help"])
    assert exc.value.code == 0
    assert "usage: int8batch" in capsys.readouterr().out


def test_user_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["pack", str(tmp_path / "missing"), str(tmp_path / "out"), "--preset", "mnist"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or folder" in err[0]
    assert main(["inspect", str(tmp_path)]) == 1


@pytest.mark.parametrize("argv, needle", [
    (["export", "{pack}", "{tmp}/x.npy", "--first", "-3"], "first (--first) must be a whole number >= 0"),
    (["export", "{pack}", "{tmp}/x.npy", "--limit", "0"], "limit (--limit) must be a whole number >= 1"),
    (["export", "{pack}", "{tmp}", "--force"], "is a folder; give a file name"),
    (["inspect", "{pack}", "--show", "4", "--columns", "-2"], "at least one column"),
    (["inspect", "{pack}", "--show", "0"], "at least one image"),
])
def test_bad_option_values_are_one_line_errors_not_tracebacks(argv, needle, tmp_path, capsys):
    """Found as a new user: each of these reached the user as a Python traceback (or, --show 0, did something)."""
    pack = tmp_path / "p"
    int8batch.pack("mnist-test", pack, limit=20)
    argv = [a.format(pack=pack, tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (pack / "preview.png").exists()


def test_output_into_a_closed_pipe_is_quiet(tmp_path):
    """`int8batch inspect --json | head -1`: no BrokenPipeError traceback, exit status 0."""
    pack = tmp_path / "p"
    int8batch.pack("mnist-test", pack, limit=20)
    proc = subprocess.Popen([sys.executable, "-m", "int8batch.cli.main", "inspect", str(pack), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()       # the reader is gone before the command prints (it takes ~0.5 s to start)
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


# ------------------------------------------------------------- first contact (issue 15)
@pytest.mark.parametrize("argv, needs, example", [
    (["calibrate"], "needs an FP32 MODEL.onnx and --batches DIR",
     "int8batch calibrate model.onnx --batches out/batches"),
    (["calibrate", "model.onnx"], "--batches DIR", "int8batch calibrate model.onnx --batches"),
    (["pack"], "needs a SOURCE", "int8batch pack imgs/ out/batches"),
    (["run", "imagenet"], "needs --model M.onnx", "int8batch run imagenet --model model.onnx --images"),
    (["run"], "needs a sample: mnist", "int8batch run mnist"),
])
def test_missing_arguments_get_a_two_line_hint(argv, needs, example, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "usage:" not in err[0]
    assert err[0].startswith(f"int8batch {' '.join(argv[:2] if argv[0] == 'run' else argv[:1])} ") and needs in err[0]
    assert err[1].strip().startswith(example)
    # other usage errors keep argparse's own message
    with pytest.raises(SystemExit):
        main(["calibrate", "m.onnx", "--batches", "b", "--method", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def _images(folder, count=12):
    import cv2
    import numpy as np
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"im{i:02d}.jpg"), rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8))
    return folder


def test_pack_with_no_options_says_which_recipe_in_one_line(tmp_path, capsys, caplog):
    src = _images(tmp_path / "imgs")
    with caplog.at_level("INFO", logger="int8batch"):
        assert main(["pack", str(src), str(tmp_path / "out" / "batches")]) == 0
    said = [r.getMessage() for r in caplog.records if "preset" in r.getMessage()]
    assert len(said) == 1 and "imagenet-caffe" in said[0] and "--preset NAME" in said[0] and "\n" not in said[0]
    assert "packed 12 images into 1 file of 12 (3x224x224)" in capsys.readouterr().out


def test_pack_model_option_refuses_a_model_that_disagrees(tmp_path, capsys, caplog):
    from onnx import TensorProto, helper, save
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])])
    model = str(tmp_path / "gray28.onnx")
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    src = _images(tmp_path / "imgs")
    assert main(["pack", str(src), str(tmp_path / "out"), "--model", model]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("int8batch pack: error: " + model) and "[1, 1, 28, 28]" in err
    assert "preset imagenet-caffe makes ['N', 3, 224, 224]" in err and "--preset mnist" in err
    assert not (tmp_path / "out").exists()
    with caplog.at_level("INFO", logger="int8batch"):
        assert main(["pack", str(src), str(tmp_path / "out"), "--model", model, "--preset", "mnist"]) == 0
    assert any("fits preset mnist (1x28x28)" in r.getMessage() for r in caplog.records)


def _run_in_pty(argv, cwd, columns=100):
    """Run ``argv`` with stdin/stdout/stderr on a pseudo-terminal of ``columns`` x 30; (status, output)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(int8batch.__file__)))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:   # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)


ETA = r"\d\d:\d\d<\d\d:\d\d"   # tqdm's [elapsed<remaining, rate]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals as on Linux")
def test_progress_bars_with_eta_on_a_terminal_only(tmp_path):
    import re
    src = _images(tmp_path / "imgs")
    cli = [sys.executable, "-m", "int8batch.cli.main"]
    rc, out = _run_in_pty(cli + ["pack", str(src), str(tmp_path / "a")], tmp_path)
    assert rc == 0, out
    assert re.search(r"packing: 100%\|.*\| 12/12 \[" + ETA + r", +[\d.]+ images/s\]", out), out
    assert "packed 12 images" in out
    rc, out = _run_in_pty(cli + ["pack", str(src), str(tmp_path / "b"), "-q"], tmp_path)
    assert rc == 0 and out.strip() == "", out           # -q: nothing at all
    proc = subprocess.run(cli + ["pack", str(src), str(tmp_path / "c")], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                              int8batch.__file__))))
    assert proc.returncode == 0 and "packing:" not in proc.stderr and "%|" not in proc.stderr   # not a terminal
    # calibrate: one bar per pass
    from int8batch.packing.sources import DATA_DIR
    rc, out = _run_in_pty(cli + ["pack", "mnist-test", str(tmp_path / "m"), "--limit", "200", "-q"], tmp_path)
    assert rc == 0, out
    rc, out = _run_in_pty(cli + ["calibrate", os.path.join(DATA_DIR, "lenet.onnx"), "--batches", str(tmp_path / "m"),
                                 "--out", str(tmp_path / "cal"), "--batch-size", "50"], tmp_path)
    assert rc == 0, out
    for phase, unit in (("histograms and bias sums", "batches"), ("sensitivity", "tensors"),
                        ("writing artefacts", "files")):
        assert re.search(re.escape(phase) + r": 100%\|.*\[" + ETA + r", +[\d.]+ " + unit + "/s]", out), phase
    assert "calibrated 10 tensors on 4 batches" in out
    rc, out = _run_in_pty(cli + ["calibrate", os.path.join(DATA_DIR, "lenet.onnx"), "--batches", str(tmp_path / "m"),
                                 "-o", str(tmp_path / "cal2"), "-q"], tmp_path)
    assert rc == 0 and "%|" not in out
    assert (tmp_path / "cal2" / "calibration.cache").is_file()     # -o: the short --out, as qdq's -o


class _FakeTerminal:
    """A stream that says it is a terminal but has no size (as a bare pty)."""

    def __init__(self):
        self.text = []

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_bar_phases_and_log_lines(caplog):
    import logging
    import re

    from int8batch.cli.options import ProgressBar
    term = _FakeTerminal()
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = ProgressBar(unit="images", stream=term)
        assert bar.enabled
        for i in range(1, 5):
            bar(i, 4)                                        # a plain (done, total) caller
        logging.getLogger("int8batch.test").warning("a log line")
        for i in range(1, 3):
            bar(i, 2, phase="sensitivity", unit="tensors")
        bar.close()
        bar.close()
        assert handler in root.handlers                       # tqdm's redirect undone
    finally:
        root.removeHandler(handler)
    text = "".join(term.text)
    assert re.search(r"100%\|.*\| 4/4 \[" + ETA + r", +[\d.]+ images/s\]", text)
    assert re.search(r"sensitivity: 100%\|.*\| 2/2 \[" + ETA, text)
    assert re.search(r"\r {20,}\ra log line\n\r", text)   # the bar cleared, the line written, the bar redrawn
    silent = _FakeTerminal()
    quiet = ProgressBar(enabled=False, stream=silent)
    quiet(1, 2)
    quiet.close()
    assert silent.text == []


@pytest.mark.parametrize("argv, needle", [
    (["--algorithm", "minmax"], "--algorithm apply to --backend tensorrt only"),
    (["--cache", "x.cache"], "--cache apply to --backend tensorrt only"),
    (["--method", "mse", "--percentile", "50"], "--percentile applies to --method percentile only"),
    (["--trt-version", "0.0"], "caches with a version in their header start at TensorRT 5.1"),
])
def test_calibrate_options_it_would_not_use_are_refused_before_the_pass(argv, needle, tmp_path, capsys):
    """Found by a new user: these were ignored (or, --trt-version 0.0, refused after the whole pass)."""
    from int8batch.packing.sources import DATA_DIR
    pack = tmp_path / "p"
    int8batch.pack("mnist-test", pack, limit=20)
    out = tmp_path / "cal"
    assert main(["calibrate", os.path.join(DATA_DIR, "lenet.onnx"), "--batches", str(pack), "-o", str(out),
                 "--backend", "onnxruntime", *argv]) == 1
    err = capsys.readouterr().err
    assert needle in err and not out.exists(), err
