"""Atomic writes of one file or of a set of files, with temporaries a later run recognises.

One file (:func:`write_bytes_atomic`): the bytes go to a temporary file beside
the target, which is then renamed over it.  A reader never sees a half-written
file under the final name, a failure leaves any previous file of that name
untouched, and the new file is a new inode (a reader that has the old one
open or memory-mapped keeps reading the old bytes).

A set of files is :mod:`int8batch._staged`'s (staged, journalled, recoverable).

Temporaries are named ``.int8batch-tmp-<host>-<pid>-<random>[.<name>]``
(backups ``.int8batch-old-...``, journals ``.int8batch-journal-....json``),
``<host>`` being 6 hex digits of the host name.  :func:`clean_leftovers`
removes those of processes that are gone: same host and the pid no longer
alive; with the folder's lock held (:mod:`int8batch._lock`) also those of
other hosts.  It never removes those of a live process.
"""
import errno
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import zlib
from contextlib import contextmanager

from .errors import DiskSpaceError, Int8BatchError, OutputExistsError, OutputWriteError

log = logging.getLogger(__name__)

# mkstemp creates files readable by the owner only; artefacts get the usual
# permissions (0666 minus the umask), read once at import.
_UMASK = os.umask(0)
os.umask(_UMASK)

TMP_TAG = ".int8batch-tmp-"
OLD_TAG = ".int8batch-old-"
JOURNAL_TAG = ".int8batch-journal-"
#: journals and temporary names longer than this are not int8batch's own
MAX_JOURNAL_BYTES = 256 << 20
_NAME = re.compile(r"\.int8batch-(tmp|old|journal)-([0-9a-f]{6})-([0-9]{1,10})-([0-9a-f]{8})(?:\.(.*))?\Z", re.S)
_HOST = f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')) & 0xFFFFFF:06x}"
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EBADF}

_tokens_lock = threading.Lock()
_finished_tokens = set()   # tokens of this process whose staged set is over: their leftovers are stale


# --------------------------------------------------------------------------- errors
def write_error(exc, path, doing):
    """A typed error for an ``OSError`` met while ``doing`` something to ``path``.

    A full disk or quota gives :class:`DiskSpaceError`, anything else
    :class:`OutputWriteError`; both keep ``errno``.  Typed errors pass through.
    """
    if isinstance(exc, Int8BatchError) or not isinstance(exc, OSError):
        return exc
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        cls, hint = DiskSpaceError, "the disk is full: free some space or write elsewhere"
    elif code in (errno.EACCES, errno.EPERM):
        cls, hint = OutputWriteError, "no permission to write there: choose a folder you can write to"
    elif code == errno.EROFS:
        cls, hint = OutputWriteError, "the file system is read-only: choose another output folder"
    else:
        cls, hint = OutputWriteError, "check the disk and the folder, then run again"
    err = cls(f"{path}: {doing} failed ({exc.strerror or exc}); {hint}", path)
    err.errno = code   # (strerror and filename left unset: OSError.__str__ would replace the message)
    return err


# --------------------------------------------------------------------------- one file
def write_all(fd, data):
    """Write every byte of ``data`` (any contiguous buffer) to the file descriptor ``fd``."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


def fsync_dir(folder):
    """Make renames and creations in ``folder`` durable (no-op where directories cannot be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def _makedirs(folder, what="output folder"):
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise OutputExistsError(f"{folder}: exists and is not a folder; give a folder for the {what}",
                                folder) from None
    except NotADirectoryError:
        raise OutputExistsError(f"{folder}: a part of this path is a file, not a folder", folder) from None
    except OSError as exc:
        raise write_error(exc, folder, "creating the folder") from exc


def make_temp(path):
    """A new temporary file ``(fd, name)`` beside ``path``, with normal permissions; the folder is created.

    The name is ``.int8batch-tmp-<host>-<pid>-<random>.<basename>``; leftovers
    of dead processes for the same ``path`` are removed first.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _makedirs(folder)
    base = os.path.basename(path)[:120]
    _remove_dead_temps(folder, base)
    for _ in range(100):
        tmp = os.path.join(folder, f"{TMP_TAG}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.{base}")
        try:
            # 0666 minus the umask, as open() gives: a temporary file alone would be 0600
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, path, "creating a temporary file beside it") from exc
    raise OutputWriteError(f"{path}: could not find a free temporary name beside it", path)


@contextmanager
def atomic_file(path, doing="writing", fsync=False):
    """``with atomic_file(path) as f:`` write a binary file object; ``path`` appears whole or not at all.

    The data goes to a temporary file beside ``path`` (the folder is created),
    renamed over ``path`` when the block ends; any failure removes the
    temporary and leaves an existing ``path`` as it was.  OS errors become
    typed errors naming ``path`` and what was being done.
    """
    path = os.fspath(path)
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        unlink_quietly(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, Int8BatchError):
            raise write_error(exc, path, doing) from exc
        raise
    finally:
        _temp_done(tmp)


def write_bytes_atomic(path, data, fsync=False):
    """Write ``data`` to ``path`` atomically (the folder is created); OS errors become typed errors."""
    with atomic_file(path, fsync=fsync) as f:
        write_all(f.fileno(), data)   # straight to the descriptor: no copy into the file's buffer


def _temp_done(tmp):
    """``tmp`` (from :func:`make_temp`) is renamed or given up: should it linger, it is stale."""
    m = _NAME.match(os.path.basename(tmp))
    if m:
        with _tokens_lock:
            _finished_tokens.add("-".join(m.group(2, 3, 4)))


def write_text_atomic(path, text):
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj, **dump_kwargs):
    dump_kwargs.setdefault("indent", 1)
    write_text_atomic(path, json.dumps(obj, **dump_kwargs) + "\n")


def unlink_quietly(path):
    """Remove a file; a missing one is fine, any other failure is logged, never raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s (%s); a later int8batch run removes it", path, exc.strerror or exc)


def pid_alive(pid):
    """True when a process ``pid`` exists on this host (or we cannot tell)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # EPERM: alive, another user's
    return True


def _stale(m, lock_held):
    host, pid, token = m.group(2), int(m.group(3)), "-".join(m.group(2, 3, 4))
    if host != _HOST:
        return lock_held   # its pid means nothing here; only the folder lock says nobody is writing
    if pid == os.getpid():
        with _tokens_lock:
            return token in _finished_tokens
    return not pid_alive(pid)

def _remove_dead_temps(folder, base):
    """Remove temporaries for ``base`` in ``folder`` left by dead processes of this host."""
    suffix = "." + base
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TMP_TAG) and n.endswith(suffix)]
    except OSError:
        return
    for name in names:
        m = _NAME.match(name)
        if m and m.group(1) == "tmp" and m.group(5) == base and _stale(m, False):
            log.info("removing %s, left by an interrupted int8batch run", os.path.join(folder, name))
            _remove_tree(os.path.join(folder, name))


# --------------------------------------------------------------------------- small helpers
def _plain_name(name):
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name \
        and (os.sep == "/" or os.sep not in name)


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _ident(st):
    return None if st is None else [st.st_dev, st.st_ino]


def _unlink_missing_ok(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_marker(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        write_all(fd, b"an int8batch write is being swapped in here, or was interrupted: readers refuse this "
                      b"folder until the next int8batch run into it finishes or undoes the swap\n")
    finally:
        os.close(fd)


def _remove_tree(path):
    """Remove a file or a folder tree without following links; returns the bytes freed (never raises)."""
    st = _lstat(path)
    if st is None:
        return 0
    size = 0
    if stat.S_ISDIR(st.st_mode):
        try:
            names = os.listdir(path)
        except OSError as exc:
            log.warning("could not list %s (%s); a later int8batch run removes it", path, exc.strerror or exc)
            return 0
        for name in names:
            size += _remove_tree(os.path.join(path, name))
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s (%s); a later int8batch run removes it", path, exc.strerror or exc)
        return size
    unlink_quietly(path)
    return st.st_size
