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
    # onnx, onnxruntime, cv2, tensorrt and cuda load only inside the functions that need them
    code = ("import sys, int8batch, int8batch.cli.main, int8batch.reader, int8batch.calib.api;"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'cv2', 'tensorrt', 'cuda', 'matplotlib', 'torch')"
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
