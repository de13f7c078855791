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


# ---------------------------------------------------------------- typed errors, recognisable temporaries
def test_os_errors_become_typed_errors_and_leave_nothing(tmp_path, monkeypatch):
    import errno

    from faultfs import FaultLayer
    from int8batch.errors import DiskSpaceError, OutputWriteError
    p = tmp_path / "a.bin"
    write_bytes_atomic(p, b"old")
    faults = FaultLayer(monkeypatch, tmp_path)
    faults.count()
    write_bytes_atomic(p, b"old")
    steps = [k for k, (op, _) in enumerate(faults.calls) if op != "mkdir"]   # makedirs(exist_ok) copes
    assert [faults.calls[k][0] for k in steps] == ["open", "write", "replace"]
    for k in steps:
        faults.arm(k)
        with pytest.raises((DiskSpaceError, OutputWriteError)) as err:
            write_bytes_atomic(p, b"new")
        assert err.value.errno in (errno.ENOSPC, errno.EIO) and str(p) in str(err.value)
        faults.disarm()
        assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_temporaries_are_named_recognisably_and_dead_ones_are_removed(tmp_path):
    import subprocess
    import sys
    fd, tmp = _atomic.make_temp(tmp_path / "x.cache")
    os.close(fd)
    name = os.path.basename(tmp)
    assert name.startswith(f".int8batch-tmp-{_atomic._HOST}-{os.getpid()}-") and name.endswith(".x.cache")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".int8batch-tmp-{_atomic._HOST}-{dead.pid}-0badc0de.x.cache"
    stale.write_bytes(b"half")
    other = tmp_path / f".int8batch-tmp-{_atomic._HOST}-{dead.pid}-0badc0de.y.cache"   # another target: kept
    other.write_bytes(b"half")
    write_bytes_atomic(tmp_path / "x.cache", b"new")
    # the live process's own temporary (this one) stays; the dead one's for the same target goes
    assert sorted(os.listdir(tmp_path)) == sorted([name, other.name, "x.cache"])


# ---------------------------------------------------------------- sets of files
