"""A fault-injecting file layer for tests: the k-th file-system call under a folder fails.

It wraps the ``os`` functions int8batch's writers go through (``open``,
``write``, ``fsync``, ``posix_fallocate``, ``ftruncate``, ``replace``,
``rename``, ``unlink``, ``remove``, ``mkdir``, ``rmdir``) and counts the calls
whose path (for a descriptor: the file it is open on) lies under ``root``.
``arm(k)`` makes call k fail (``persistent=True``: k and every later one,
like a disk that filled up or went read-only) with ENOSPC for calls that
allocate and EIO for renames and removals.
"""
import errno
import os

OPS = ("open", "write", "fsync", "posix_fallocate", "ftruncate", "replace", "rename", "unlink", "remove",
       "mkdir", "rmdir")
_FD_OPS = {"write", "fsync", "posix_fallocate", "ftruncate"}
_ALLOCATING = {"open", "write", "fsync", "posix_fallocate", "ftruncate", "mkdir"}


class FaultLayer:
    def __init__(self, monkeypatch, root):
        self.roots = {os.path.abspath(os.fspath(root)), os.path.realpath(os.fspath(root))}
        self.calls = []            # (op, path) of every counted call, in order
        self.fail_at = None
        self.persistent = False
        self.failed = []           # indexes that raised
        self._real = {name: getattr(os, name) for name in OPS if hasattr(os, name)}
        for name, real in self._real.items():
            monkeypatch.setattr(os, name, self._wrap(name, real))

    def arm(self, k, persistent=False):
        self.calls, self.failed = [], []
        self.fail_at, self.persistent = k, persistent

    def disarm(self):
        self.fail_at = None

    def count(self):
        self.arm(None)

    def _path(self, name, args, kwargs):
        if not args:
            return ""
        a = args[0]
        if name in _FD_OPS:
            if not isinstance(a, int):
                return ""
            try:
                return os.readlink(f"/proc/self/fd/{a}")
            except OSError:
                return ""
        if kwargs.get("dir_fd") is not None:
            return ""
        try:
            return os.path.abspath(os.fspath(a))
        except TypeError:
            return ""

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            path = self._path(name, args, kwargs)
            if any(path == r or path.startswith(r + os.sep) for r in self.roots):
                k = len(self.calls)
                self.calls.append((name, path))
                if self.fail_at is not None and (k == self.fail_at or (self.persistent and k > self.fail_at)):
                    self.failed.append(k)
                    code = errno.ENOSPC if name in _ALLOCATING else errno.EIO
                    raise OSError(code, os.strerror(code), path)
            return real(*args, **kwargs)
        call.__name__ = name
        return call
