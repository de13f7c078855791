"""Durable output of a pack: the new pack is built aside and swapped in whole, one writer at a time.

Protocol for one pack into ``folder`` (``OUT``):

1. **lock**: ``OUT/.int8batch.lock`` is locked (:mod:`int8batch._lock`) for
   the whole pack; a second writer gets ``OutputLockedError`` naming the
   folder and the holder's pid.
2. **recover**: leftovers of earlier runs are dealt with
   (:func:`int8batch._staged.clean_leftovers`): an interrupted swap is
   finished or undone from its journal, and temporaries of dead processes
   (also the ``.batch3.tmp<pid>`` names of older versions) are removed,
   with a log line naming them.
3. **check**: refuse if ``OUT`` holds batch files or a manifest, unless
   ``force``.  With ``force`` the old manifest is validated first
   (:func:`int8batch.manifest.replaceable_manifest`: size, JSON, ``format``,
   types of ``files``/``prefix``/``suffix``); it is never
   trusted further than the files it names that exist, and a folder whose
   manifest is not a valid int8batch manifest, or that holds batch files the
   manifest does not describe, is refused (int8batch never replaces files it
   did not write).  The free space must hold the whole new pack (each file
   rounded up to the file system's block, the manifest, the journal): the
   old pack stays on the disk until the new one is complete.
4. **build**: every batch file is written into a hidden staging folder
   ``OUT/.int8batch-tmp-<host>-<pid>-<random>/`` (preallocated, so a full disk
   fails early rather than with SIGBUS in the mapping; filled through a
   memory map or one buffered write; checksummed), then the manifest.
5. **swap** (:meth:`int8batch._staged.StagedSet.commit`): a journal is
   written and fsynced; the unfinished marker ``.int8batch-incomplete`` is
   created; the old manifest and then the old batch files are renamed into
   ``OUT/.int8batch-old-.../``; the new batch files are renamed in; the new
   manifest is renamed in last (the commit point); the marker, the old
   files, the staging folder and the journal are removed.

So at every instant ``OUT`` holds the complete old pack, or the complete new
pack, or (only between the first and last rename of step 5) a marked
mid-swap state that the journal describes exactly: a failure there is undone
at once, and after a crash the next pack into ``OUT`` (with or without
``--force``), or :func:`recover`, finishes the swap if the new manifest was
already in place and otherwise puts the old pack back.  A failure before
step 5 only removes the staging folder.

Batch files are never rewritten in place: each is a new inode renamed over
the name, so a reader that has the old file mapped keeps reading the old,
complete bytes until it closes it (the old inode is freed then).
"""
import logging
import mmap
import os
import queue
import re
import shutil
import stat

import numpy as np

from .. import format as fmt
from .._atomic import unlink_quietly, write_all, write_error
from .._staged import StagedSet, clean_leftovers
from .._lock import FolderLock
from ..errors import DiskSpaceError, Int8BatchError, OutputExistsError
from ..manifest import INCOMPLETE_MARKER, MANIFEST_NAME, PREVIEW_NAME, manifest_text, replaceable_manifest

log = logging.getLogger(__name__)


class BatchFile:
    """One batch file being written: ``data`` (N,C,H,W) and ``labels`` (N,) are views of its map."""

    def __init__(self, tmp_path, final_path, dims):
        self.tmp_path, self.final_path, self.dims = tmp_path, final_path, dims
        size = fmt.file_size(*dims)
        try:
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise write_error(exc, final_path, "creating the batch file") from exc
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except AttributeError:  # not on this platform
                os.ftruncate(fd, size)
            except OSError as exc:
                raise DiskSpaceError(f"{final_path}: cannot reserve {size} bytes ({exc.strerror}); "
                                     "the disk is full", final_path) from exc
            self._mm = mmap.mmap(fd, size)
        except BaseException as exc:
            os.close(fd)
            unlink_quietly(tmp_path)
            if isinstance(exc, OSError) and not isinstance(exc, Int8BatchError):
                raise write_error(exc, final_path, "reserving the batch file") from exc
            raise
        os.close(fd)
        n, c, h, w = dims
        self._mm[:fmt.HEADER_BYTES] = fmt.encode_header(*dims)
        self.data = np.frombuffer(self._mm, dtype=fmt.DATA_DTYPE, count=n * c * h * w,
                                  offset=fmt.HEADER_BYTES).reshape(dims)
        self.labels = np.frombuffer(self._mm, dtype=fmt.DATA_DTYPE, count=n,
                                    offset=fmt.HEADER_BYTES + 4 * n * c * h * w)

    def complete(self):
        """Checksum and unmap (the file keeps its temporary name); returns the checksum."""
        crc = fmt.checksum(self._mm)
        self.data = self.labels = None
        self._mm.close()
        return crc

    def discard(self):
        self.data = self.labels = None
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass
        unlink_quietly(self.tmp_path)


class BufferedBatchFile:
    """A batch file assembled in a reusable in-memory buffer, written in one ``write`` when full.

    For small files (MNIST: 314 kB) one sequential write beats faulting in a
    fresh mapping page by page.  ``data`` and ``labels`` are views of the buffer.
    """

    def __init__(self, tmp_path, final_path, dims, buffers):
        self.tmp_path, self.final_path, self.dims = tmp_path, final_path, dims
        self._buffers = buffers
        self._buf = buffers.get()
        n, c, h, w = dims
        self._buf[:fmt.HEADER_BYTES] = np.frombuffer(fmt.encode_header(*dims), np.uint8)
        self.data = self._buf[fmt.HEADER_BYTES:fmt.HEADER_BYTES + 4 * n * c * h * w].view(fmt.DATA_DTYPE)
        self.data = self.data.reshape(dims)
        self.labels = self._buf[fmt.HEADER_BYTES + 4 * n * c * h * w:].view(fmt.DATA_DTYPE)

    def complete(self):
        """Checksum and write the buffer under the temporary name; returns the checksum."""
        try:
            crc = fmt.checksum(self._buf)
            _write_new_file(self.tmp_path, self._buf, self.final_path, "writing the batch file")
            return crc
        finally:
            self._release()

    def _release(self):
        if self._buf is not None:
            self.data = self.labels = None
            self._buffers.put(self._buf)
            self._buf = None

    def discard(self):
        self._release()
        unlink_quietly(self.tmp_path)


class PackWriter:
    """Owns the output folder for the duration of one pack (see module docstring).

    Use as a context manager around :meth:`prepare` ... :meth:`finish`: an
    exception aborts (temporaries removed, the previous pack untouched) and
    the folder lock is always released.
    """

    def __init__(self, folder, dims, prefix="batch", suffix="", force=False, durable=False):
        self.folder, self.dims, self.prefix, self.suffix = os.fspath(folder), tuple(dims), prefix, suffix
        self.force = force
        self.durable = durable   # fsync every file before the swap (power-loss safety, slower)
        self._open = []
        self._buffers = None
        self._complete = []
        self._old_files = []
        self._lock = None
        self._set = None
        self.checksums = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                self.abort()
        finally:
            self.release(failed=exc_type is not None)
        return False

    def path(self, k):
        return os.path.join(self.folder, fmt.batch_name(k, self.prefix, self.suffix))

    def prepare(self, expected_files, manifest_bytes=0):
        """Lock the folder, recover leftovers, check it and the disk space, open the staging folder.

        ``manifest_bytes`` is an estimate of the manifest's size (for the space check).
        """
        if os.path.lexists(self.folder) and not os.path.isdir(self.folder):
            raise OutputExistsError(f"{self.folder}: exists and is not a folder; give a folder for the batch "
                                    "files", self.folder)
        self._lock = FolderLock(self.folder, "pack").acquire()
        try:
            clean_leftovers(self.folder, lock_held=True, legacy=_legacy_temp_pattern(self.prefix, self.suffix))
            self._old_files = self._check_existing()
            self._check_space(expected_files, manifest_bytes)
            self._set = StagedSet(self.folder, lock_held=True, durable=self.durable, clean=False)
        except BaseException:
            self.release(failed=True)
            raise

    def _check_existing(self):
        """The old pack's batch files to replace (validated); refuse what int8batch may not touch."""
        man_path = os.path.join(self.folder, MANIFEST_NAME)
        existing = _batch_names(self.folder, self.prefix, self.suffix)
        has_manifest = os.path.lexists(man_path)
        if not existing and not has_manifest:
            return []
        if not self.force:
            what = f"{len(existing)} batch file(s)" if existing else "a manifest"
            raise OutputExistsError(f"{self.folder}: already holds {what}; use --force to replace a previous "
                                    "pack, or choose another output folder", self.folder)
        old, reason = replaceable_manifest(man_path)
        if reason is not None:
            raise OutputExistsError(
                f"{man_path}: not a valid int8batch manifest ({reason}); int8batch will not replace it or the "
                "batch files beside it, which it cannot tell it wrote: move them away or choose another output "
                "folder", man_path)
        old_files = []
        if old is not None:
            described = _batch_names(self.folder, old["prefix"], old["suffix"], below=old["files"])
            old_files = [n for n, mode in described.items() if stat.S_ISREG(mode)]
            if len(old_files) != old["files"]:
                raise OutputExistsError(
                    f"{man_path}: says the pack has {old['files']} batch files but {len(old_files)} of them are "
                    "here; it does not describe this folder (changed after packing?), so int8batch will not "
                    "replace it or the files beside it: move them away or choose another output folder", man_path)
            for name in sorted(old_files, key=_natural):   # and each is the file it describes: header, size
                why = _not_described(os.path.join(self.folder, name), old["dims"])
                if why:
                    raise OutputExistsError(
                        f"{man_path}: does not describe {name} ({why}); int8batch will not replace files it cannot "
                        "tell it wrote: move them away or choose another output folder", man_path)
        foreign = sorted(set(existing) - set(old_files), key=_natural)
        if foreign:
            why = "that no int8batch manifest describes" if old is None else \
                "that the manifest does not describe (or that are not regular files)"
            hint = (f" (the folder is marked unfinished, {INCOMPLETE_MARKER}: these may be the remains of a pack "
                    "by an earlier int8batch version that failed; check them and remove them by hand)"
                    if os.path.lexists(os.path.join(self.folder, INCOMPLETE_MARKER)) else "")
            raise OutputExistsError(
                f"{self.folder}: holds batch files {why} ({', '.join(foreign[:3])}"
                f"{'...' if len(foreign) > 3 else ''}){hint}; int8batch will not overwrite files it did not "
                "write: move them away or choose another output folder", self.folder)
        preview = os.path.join(self.folder, PREVIEW_NAME)
        if old is not None and os.path.isfile(preview) and not os.path.islink(preview):
            old_files.append(PREVIEW_NAME)   # the grid of the old pack's images goes with them
        return sorted(old_files, key=_natural)

    def _check_space(self, expected_files, manifest_bytes):
        block = _block_size(self.folder)
        rounded = lambda n: -(-int(n) // block) * block  # noqa: E731
        need = (expected_files * rounded(fmt.file_size(*self.dims)) + rounded(max(int(manifest_bytes), 1))
                + 4 * block)   # journal, marker, staging and backup folder entries
        free = shutil.disk_usage(self.folder).free
        if need > free:
            keep = (" (the previous pack stays until the new one is complete, so both must fit)"
                    if self._old_files else "")
            raise DiskSpaceError(f"{self.folder}: the pack needs {need / 1e6:.1f} MB ({expected_files} files, the "
                                 f"manifest and block rounding) but only {free / 1e6:.1f} MB are free{keep}",
                                 self.folder)

    def open_file(self, k, buffered=False):
        """A new file ``k``: memory-mapped, or (``buffered``) assembled in one of two reused buffers."""
        tmp = self._set.path(fmt.batch_name(k, self.prefix, self.suffix))
        if buffered:
            if self._buffers is None:
                self._buffers = queue.Queue()
                for _ in range(2):  # one being filled while the other is written
                    self._buffers.put(np.empty(fmt.file_size(*self.dims), np.uint8))
            bf = BufferedBatchFile(tmp, self.path(k), self.dims, self._buffers)
        else:
            bf = BatchFile(tmp, self.path(k), self.dims)
        self._open.append(bf)
        return bf

    def commit_file(self, bf, executor=None):
        """File ``bf`` is full: checksum and unmap it, on ``executor`` when given."""
        self._open.remove(bf)
        self._complete.append(bf)
        self.checksums.append(executor.submit(bf.complete) if executor else bf.complete())

    def wait(self):
        """Wait for background commits; checksums become 8-digit hex strings."""
        self.checksums = [f"{c if isinstance(c, int) else c.result():08x}" if not isinstance(c, str) else c
                          for c in self.checksums]

    def discard_file(self, bf):
        bf.discard()
        self._open.remove(bf)

    def finish(self, manifest):
        """Write the manifest beside the staged files and swap the new pack in (module docstring, step 5)."""
        man = self._set.path(MANIFEST_NAME)
        _write_new_file(man, manifest_text(manifest).encode("utf-8"), os.path.join(self.folder, MANIFEST_NAME),
                        "writing the manifest", fsync=self.durable)
        if self.durable:
            for bf in self._complete:
                _fsync_path(bf.tmp_path)
        self._set.commit(replace=[MANIFEST_NAME] + self._old_files, marker=INCOMPLETE_MARKER,
                         commit_name=MANIFEST_NAME)
        self._complete = []
        self.release()

    def abort(self):
        """Remove every temporary file; the folder's previous contents are untouched (never raises)."""
        for c in self.checksums:
            if hasattr(c, "exception"):
                c.exception()  # wait: the file must be unmapped before it is removed
        for bf in list(self._open):
            try:
                self.discard_file(bf)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the original error
                log.warning("could not discard %s: %s", bf.tmp_path, exc)
        self._complete = []
        if self._set is not None:
            self._set.discard()

    def release(self, failed=False):
        """Drop the folder lock (idempotent); ``failed``: remove the output folder again if this pack made it
        and nothing is in it."""
        if self._lock is not None:
            self._lock.release(discard=failed)
            self._lock = None


def recover(folder, prefix="batch", suffix=""):
    """Finish or undo an interrupted pack in ``folder`` and remove leftovers of dead processes.

    Every pack does this first; call it to make a folder readable again without
    packing (e.g. after a crash left it marked unfinished).  Returns the names
    of the journals and temporaries it dealt with.
    """
    with FolderLock(folder, "recover"):
        return clean_leftovers(folder, lock_held=True, legacy=_legacy_temp_pattern(prefix, suffix))


def _write_new_file(path, data, final_path, doing, fsync=False):
    """Create ``path`` (which must not exist) holding ``data``; typed errors; nothing left on failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise write_error(exc, final_path, doing) from exc
    try:
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        unlink_quietly(path)
        if isinstance(exc, OSError) and not isinstance(exc, Int8BatchError):
            raise write_error(exc, final_path, doing) from exc
        raise


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _not_described(path, dims):
    """Why the batch file at ``path`` is not one of ``dims`` (the manifest's N, C, H, W), or None."""
    try:
        head = fmt.read_header(path)
        size = os.stat(path).st_size
    except Int8BatchError as exc:
        return str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    if list(head) != dims:
        return f"its header says N,C,H,W = {tuple(head)}, the manifest {tuple(dims)}"
    if size != fmt.file_size(*dims):
        return f"it is {size} bytes, a file of {tuple(dims)} is {fmt.file_size(*dims)}"
    return None


def _batch_names(folder, prefix, suffix, below=None):
    """``{name: st_mode}`` of the entries named ``<prefix><k><suffix>`` (k < ``below`` when given).

    One directory listing, whatever a manifest claims: never a loop over ``range(files)``.
    """
    pat = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]*)" + re.escape(suffix) + r"\Z", re.S)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise write_error(exc, folder, "listing the output folder") from exc
    out = {}
    for n in names:
        m = pat.match(n)
        if m and (below is None or int(m.group(1)) < below):
            try:
                out[n] = os.lstat(os.path.join(folder, n)).st_mode
            except FileNotFoundError:
                pass
    return out


def _legacy_temp_pattern(prefix, suffix):
    """Temporaries of int8batch before 0.2: ``.<prefix><k><suffix>.tmp<pid>``."""
    return re.compile(r"\." + re.escape(prefix) + r"(0|[1-9][0-9]*)" + re.escape(suffix)
                      + r"\.tmp(?P<pid>[0-9]{1,10})\Z", re.S)


def _block_size(folder):
    try:
        st = os.statvfs(folder)
        return max(int(st.f_frsize or st.f_bsize or 4096), 512)
    except (OSError, AttributeError):
        return 4096


def _natural(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
