"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader never sees a half-written file under the final name, and a failure
leaves any previous file of that name untouched.
"""
import json
import os
import tempfile

# mkstemp creates files readable by the owner only; artefacts get the usual
# permissions (0666 minus the umask), read once at import.
_UMASK = os.umask(0)
os.umask(_UMASK)


def make_temp(path):
    """A temporary file (fd, name) beside ``path``, with normal permissions; the folder is created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def write_bytes_atomic(path, data, fsync=False):
    """Write ``data`` to ``path`` atomically (the folder is created)."""
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path, text):
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, **dump_kwargs):
    dump_kwargs.setdefault("indent", 1)
    write_text_atomic(path, json.dumps(obj, **dump_kwargs) + "\n")
