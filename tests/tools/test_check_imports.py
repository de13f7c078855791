"""tools/check_imports.py: the package's imports point down the layers of CONTRIBUTING.md."""
from script_loader import load


def _tool():
    return load("check_imports")


def test_package_imports_point_down():
    assert _tool().check() == []


def test_checker_reports_upward_and_root_imports(tmp_path):
    tool = _tool()
    pkg = tmp_path / "int8batch"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "high" / "__init__.py").write_text("")
    (pkg / "high" / "ok.py").write_text("from ..low import a\n")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import ok\n")      # lazy, still upward
    (pkg / "low" / "b.py").write_text("from .. import __version__\n")
    (pkg / "stray.py").write_text("")
    problems = tool.check(str(pkg), {"low": 0, "high": 1})
    assert any("low/a.py:2" in p and "int8batch.high.ok (layer 1)" in p for p in problems)
    assert any("low/b.py:1" in p and "package root" in p for p in problems)
    assert any("int8batch.stray has no layer" in p for p in problems)
    assert not any("high/ok.py" in p for p in problems)
