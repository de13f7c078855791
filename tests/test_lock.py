"""One writer per output folder: the advisory lock of ``int8batch._lock``."""
import os
import subprocess
import sys

import pytest

from int8batch._lock import LOCK_NAME, FolderLock, folder_lock
from int8batch.errors import OutputLockedError


def test_second_holder_is_refused_with_the_folder_and_pid(tmp_path):
    out = tmp_path / "o"
    with folder_lock(out, "calibrate"):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(OutputLockedError) as err:
            FolderLock(out, "pack").acquire()   # a second open file description: refused even in-process
        assert err.value.pid == os.getpid() and str(out) in str(err.value) and "calibrate" in str(err.value)
        assert isinstance(err.value, OSError)
    assert os.listdir(out) == []   # released: the lock file goes with it
    with FolderLock(out) as again:
        assert again.held


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from int8batch._lock import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"process {p.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    with FolderLock(tmp_path) as lock:   # kill -9 dropped the lock; the file it left is reused
        assert lock.held and (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_lock_file_removed_under_a_waiting_writer_is_not_trusted(tmp_path, monkeypatch):
    """The classic race: B opens the file, A unlinks and releases, B locks an unlinked inode."""
    import fcntl
    a = FolderLock(tmp_path).acquire()
    real_flock = fcntl.flock
    calls = []

    def flock(fd, op):
        if not calls:   # B's first attempt: A releases (and removes the file) just before B locks
            calls.append(1)
            a.release()
            c.acquire()   # a third writer creates a new lock file and takes it
        return real_flock(fd, op)

    c = FolderLock(tmp_path)
    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OutputLockedError):
        FolderLock(tmp_path).acquire()   # B: must not believe it holds the lock as well as C
    monkeypatch.undo()
    assert c.held
    c.release()


def test_output_folder_that_is_a_file_is_a_typed_error(tmp_path):
    from int8batch.errors import OutputExistsError
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        FolderLock(tmp_path / "f").acquire()


def test_a_failed_write_removes_the_empty_folders_it_made(tmp_path):
    """pack and calibrate that fail leave no empty output folder behind (found as a new user); folders that
    existed before, or that hold anything, stay."""
    import int8batch
    from int8batch.calib.api import calibrate
    from int8batch.errors import Int8BatchError
    from int8batch.packing.sources import DATA_DIR
    import cv2
    import numpy as np
    src = tmp_path / "imgs"
    src.mkdir()
    cv2.imwrite(str(src / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (src / "1.jpg").write_bytes(b"not a jpeg")          # fails while packing, after the folder was made
    with pytest.raises(Int8BatchError, match="1.jpg"):
        int8batch.pack(src, tmp_path / "a" / "b" / "out", preset="mnist", batch_size=1)
    assert not (tmp_path / "a").exists()
    bad = tmp_path / "m.onnx"
    bad.write_text("not a model")
    pack = tmp_path / "p"
    int8batch.pack("mnist-test", pack, limit=10)
    with pytest.raises(Int8BatchError):
        calibrate(str(bad), pack, tmp_path / "cal" / "x")
    assert not (tmp_path / "cal").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(Int8BatchError):
        calibrate(str(bad), pack, tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()
    ok = calibrate(os.path.join(DATA_DIR, "lenet.onnx"), pack, tmp_path / "good")
    assert os.path.exists(ok.paths["cache"])
