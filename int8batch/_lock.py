"""One writer per output folder: an advisory lock file, ``<folder>/.int8batch.lock``.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on that file, held for the whole
write; the file holds the holder's pid, host and command for the error a
second writer gets.  The operating system drops the lock when the holder
exits in any way (kill -9 included), so a lock is never left stale; the file
itself is removed on release, while still locked, and a writer that locked a
file that was removed meanwhile tries again (the usual lock-file race).

It is advisory: int8batch's writers take it, other programs do not.  On NFS,
Linux emulates ``flock`` with POSIX byte-range locks, so it works across hosts
where the NFS lock manager does.
"""
import errno
import os
import socket
from contextlib import contextmanager

from ._atomic import _makedirs, pid_alive, write_all, write_error
from .errors import OutputLockedError

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

LOCK_NAME = ".int8batch.lock"


class FolderLock:
    """``with FolderLock(folder, "pack"):`` -- or :meth:`acquire` / :meth:`release`."""

    def __init__(self, folder, purpose="write"):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.purpose = purpose
        self._fd = None
        self.created = []    # folders acquire() made, deepest first (removed by release(discard=True) if empty)

    @property
    def held(self):
        return self._fd is not None

    def acquire(self):
        """Take the lock or raise :class:`OutputLockedError` naming the folder and the holder."""
        if self._fd is not None:
            return self
        missing, here = [], os.path.abspath(self.folder)
        while here and not os.path.lexists(here):
            missing.append(here)
            parent = os.path.dirname(here)
            here = parent if parent != here else ""
        _makedirs(self.folder)
        self.created = missing
        if fcntl is None:
            return self
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise write_error(exc, self.folder, "creating the lock file") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise write_error(exc, self.folder, "locking the output folder") from exc
                pid = holder[0] if holder else None
                who = f"process {holder[0]} on {holder[1]}, {holder[2]}" if holder else "another process"
                raise OutputLockedError(
                    f"{self.folder}: {who} is writing into this folder (lock {LOCK_NAME}); wait for it to "
                    "finish or choose another output folder", self.folder, pid) from None
            # the previous holder may have removed the file between our open and our lock
            try:
                now = os.stat(self.path)
                same = (now.st_dev, now.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                self._note_holder()
                return self
            os.close(fd)
        raise OutputLockedError(f"{self.folder}: the lock {LOCK_NAME} keeps changing hands; another "
                                "int8batch process is writing here", self.folder)

    def release(self, discard=False):
        """Remove the lock file and drop the lock (never raises).

        ``discard``: the write failed; the folders :meth:`acquire` created are removed again when
        they are empty, so a failed command leaves no empty output folder behind.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)   # while still locked: nobody can hold this file now
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
        if discard:
            for folder in self.created:     # deepest first; rmdir never removes a folder with anything in it
                try:
                    os.rmdir(folder)
                except OSError:
                    break
        self.created = []

    def _note_holder(self):
        # the holder's identity is for the error message only: a full disk must not stop the lock
        try:
            os.ftruncate(self._fd, 0)
            write_all(self._fd, f"{os.getpid()} {socket.gethostname()} {self.purpose}\n".encode())
        except OSError:
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


@contextmanager
def folder_lock(folder, purpose="write"):
    """Hold ``folder``'s int8batch lock for the block (see :class:`FolderLock`)."""
    lock = FolderLock(folder, purpose).acquire()
    try:
        yield lock
    finally:
        lock.release()


def holder(folder):
    """``(pid, host, purpose)`` of the process writing into ``folder`` now, or None when none is.

    Reads the lock file without locking it (a probe that took the lock, even shared, could make a
    writer starting at that instant fail): a holder on this host counts while its pid is alive; one on
    another host cannot be checked and counts.
    """
    try:
        fd = os.open(os.path.join(os.fspath(folder), LOCK_NAME), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        who = _read_holder(fd)
    finally:
        os.close(fd)
    if who is None or (who[1] == socket.gethostname() and not pid_alive(who[0])):
        return None
    return who


def _read_holder(fd):
    """``(pid, host, purpose)`` from a lock file, or None when unreadable."""
    try:
        raw = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        return int(raw[0]), raw[1], " ".join(raw[2:]) or "?"
    except (OSError, ValueError, IndexError):
        return None
