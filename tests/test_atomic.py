"""Atomic writes: complete files under the final name, normal permissions, nothing left on failure."""
import os
import stat

import pytest

from int8batch import _atomic
from int8batch._atomic import write_bytes_atomic, write_json_atomic


def test_written_with_umask_permissions_and_replaced_whole(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    write_bytes_atomic(p, b"one")
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    # like open(): 0666 minus the umask (a temporary file alone would be 0600)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_atomic._UMASK
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.bin"]


def test_failure_leaves_previous_file_and_no_temporary(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"bad": object()})
    assert p.read_text() == '{\n "ok": 1\n}\n'
    assert os.listdir(tmp_path) == ["m.json"]
