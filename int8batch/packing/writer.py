"""Atomic output: batch files written under temporary names, the manifest last.

Protocol for one pack into ``folder``:

1. refuse if the folder holds batch files or a manifest, unless ``force``;
   with ``force`` refuse anyway if it holds batch files that no manifest
   describes (they were not written by int8batch);
2. each batch file is written under a hidden temporary name: preallocated
   (so a full disk fails early, not with SIGBUS in the mapping), filled
   through a memory map and checksummed;
3. only when every file is complete: the marker ``.int8batch-incomplete`` is
   created and the old manifest removed (the folder now reads as unfinished),
   the files are renamed into place, stale files of the old pack are removed,
   the new manifest is written to a temporary name and renamed, and the
   marker goes.

On failure before step 3 the temporary files are removed and a previous pack
in the folder is left exactly as it was.
"""
import json
import logging
import mmap
import os
import queue
import shutil

import numpy as np

from .. import format as fmt
from .._atomic import write_text_atomic
from ..errors import DiskSpaceError, OutputExistsError
from ..reader import INCOMPLETE_MARKER, MANIFEST_NAME

log = logging.getLogger(__name__)


class BatchFile:
    """One batch file being written: ``data`` (N,C,H,W) and ``labels`` (N,) are views of its map."""

    def __init__(self, tmp_path, final_path, dims):
        self.tmp_path, self.final_path, self.dims = tmp_path, final_path, dims
        size = fmt.file_size(*dims)
        fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except AttributeError:  # not on this platform
                os.ftruncate(fd, size)
            except OSError as exc:
                raise DiskSpaceError(f"{final_path}: cannot reserve {size} bytes ({exc.strerror}); "
                                     "the disk is full", final_path) from exc
            self._mm = mmap.mmap(fd, size)
        finally:
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
        _remove_quietly(self.tmp_path)


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
            try:
                with open(self.tmp_path, "wb") as f:
                    f.write(self._buf)
            except OSError as exc:
                _remove_quietly(self.tmp_path)
                raise DiskSpaceError(f"{self.final_path}: cannot write ({exc.strerror})", self.final_path) \
                    from exc
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
        _remove_quietly(self.tmp_path)


class PackWriter:
    """Owns the output folder for the duration of one pack (see module docstring)."""

    def __init__(self, folder, dims, prefix="batch", suffix="", force=False):
        self.folder, self.dims, self.prefix, self.suffix = os.fspath(folder), tuple(dims), prefix, suffix
        self.force = force
        self._open = []
        self._buffers = None
        self._complete = []
        self._old_files = []
        self.checksums = []

    def path(self, k):
        return os.path.join(self.folder, fmt.batch_name(k, self.prefix, self.suffix))

    def prepare(self, expected_files):
        """Check the folder, the disk space, and mark the folder as an unfinished pack."""
        os.makedirs(self.folder, exist_ok=True)
        existing = _existing_batch_files(self.folder, self.prefix, self.suffix)
        man_path = os.path.join(self.folder, MANIFEST_NAME)
        old = _read_old_manifest(man_path)
        if (existing or old is not None) and not self.force:
            what = f"{len(existing)} batch file(s)" if existing else "a manifest"
            raise OutputExistsError(f"{self.folder}: already holds {what}; use --force to replace a previous "
                                    "pack, or choose another output folder", self.folder)
        if existing:
            described = set()
            if old is not None:
                described = {fmt.batch_name(k, old.get("prefix", "batch"), old.get("suffix", ""))
                             for k in range(int(old.get("files", 0)))}
            foreign = sorted(set(existing) - described, key=_natural)
            if foreign:
                raise OutputExistsError(
                    f"{self.folder}: holds batch files that no int8batch manifest describes ({', '.join(foreign[:3])}"
                    f"{'...' if len(foreign) > 3 else ''}); int8batch will not overwrite files it did not "
                    "write: move them away or choose another output folder", self.folder)
            self._old_files = sorted(described & set(existing), key=_natural)
        need = expected_files * fmt.file_size(*self.dims)
        free = shutil.disk_usage(self.folder).free
        reclaim = sum(os.path.getsize(os.path.join(self.folder, f)) for f in self._old_files)
        if need > free + reclaim:
            raise DiskSpaceError(f"{self.folder}: the pack needs {need / 1e6:.1f} MB but only "
                                 f"{(free + reclaim) / 1e6:.1f} MB are free", self.folder)

    def open_file(self, k, buffered=False):
        """A new file ``k``: memory-mapped, or (``buffered``) assembled in one of two reused buffers."""
        tmp = os.path.join(self.folder, f".{fmt.batch_name(k, self.prefix, self.suffix)}.tmp{os.getpid()}")
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
        """Rename the completed files into place, remove stale ones, write the manifest."""
        marker = os.path.join(self.folder, INCOMPLETE_MARKER)
        with open(marker, "w") as f:
            f.write("an int8batch pack is being written here, or one failed; readers refuse this folder\n")
        _remove_quietly(os.path.join(self.folder, MANIFEST_NAME))
        for bf in self._complete:
            os.replace(bf.tmp_path, bf.final_path)
        self._complete = []
        keep = {fmt.batch_name(k, self.prefix, self.suffix) for k in range(len(self.checksums))}
        for name in self._old_files:
            if name not in keep:
                _remove_quietly(os.path.join(self.folder, name))
        write_text_atomic(os.path.join(self.folder, MANIFEST_NAME), manifest_text(manifest))
        _remove_quietly(marker)

    def abort(self):
        """Remove every temporary file; the folder's previous contents are untouched."""
        for c in self.checksums:
            if hasattr(c, "exception"):
                c.exception()  # wait: the file must be unmapped before it is removed
        for bf in list(self._open):
            self.discard_file(bf)
        for bf in self._complete:
            _remove_quietly(bf.tmp_path)
        self._complete = []


def manifest_text(manifest, long_lists=("images_list", "padded", "dropped", "skipped")):
    """The manifest as indented JSON, with its per-image lists one entry per line.

    An indented ``json.dumps`` of 60000 entries goes through the pure-Python
    encoder and costs more than packing MNIST itself, so the ``[name, label]``
    pairs of ``images_list`` are encoded with the C string encoder directly.
    """
    enc = json.encoder.encode_basestring_ascii
    head = {k: v for k, v in manifest.items() if k not in long_lists}
    text = json.dumps(head, indent=1)[:-2]
    for key in long_lists:
        if key not in manifest:
            continue
        items = manifest[key]
        if key == "images_list":
            lines = [f"[{enc(n)},{'null' if lab is None else int(lab)}]" for n, lab in items]
        else:
            lines = [json.dumps(v, separators=(",", ":")) for v in items]
        body = "[\n  " + ",\n  ".join(lines) + "\n ]" if lines else "[]"
        text += f",\n {json.dumps(key)}: {body}"
    return text + "\n}\n"


def _read_old_manifest(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _existing_batch_files(folder, prefix, suffix):
    try:
        return [os.path.basename(p) for p in fmt.list_batch_files(folder, prefix, suffix)]
    except Exception:  # gaps or none: fall back to a plain pattern scan
        import re
        pat = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix) + r"\Z")
        return sorted((n for n in os.listdir(folder) if pat.match(n)), key=_natural)


def _natural(name):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
