"""``BatchSet``: a memory-mapped, validated view of a folder of batch files.

It serves batches of any size in order, re-batching across file boundaries the
way the C++ ``BatchStream`` of TensorRT's samples does: a batch may straddle
files, ``first`` skips whole batches, ``max_batches`` bounds the count, and a
batch is never served half full.  A batch that lies inside one file is a
zero-copy NumPy view of the mapped file.

Which batches are served is decided in one place, :meth:`BatchSet.window`
(:func:`int8batch.window.plan_window` for a bare image count): it returns a :class:`~int8batch.window.Window`,
validated once, that :meth:`BatchSet.batches` then serves.
"""
import logging
import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from ._lock import holder
from .errors import BatchFormatError, ConfigError, ManifestError, is_whole
from .manifest import (INCOMPLETE_MARKER, MANIFEST_NAME, check_manifest, expected_labels, pack_naming, read_manifest,
                       recipe)
from .window import plan_window

log = logging.getLogger(__name__)

#: seconds to wait before each new attempt to open a folder that a pack is being swapped into (None: give up)
SWAP_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, None)


@dataclass(frozen=True)
class Batch:
    """One served batch.

    Attributes
    ----------
    data : ndarray, float32, shape (B, C, H, W)
        A read-only view of the mapped file when the batch lies in one file,
        otherwise a fresh array.
    labels : ndarray, float32, shape (B,)
    index : int
        Batch number in the stream (counting skipped batches).
    start : int
        Index of the first image of the batch in the whole set.
    zero_copy : bool
        True when ``data`` is a view of the mapped file.
    """

    data: np.ndarray
    labels: np.ndarray
    index: int
    start: int
    zero_copy: bool


def _allow_open_files(count, folder):
    """Make room for ``count`` more open files (each mapped file holds one), or say how.

    Raises the soft limit on open files up to the hard one when the set needs more than the
    soft limit leaves (1024 on many systems: a 1563-file ImageNet pack at 32 per file).
    """
    try:
        import resource
    except ImportError:   # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    need = count + in_use + 64
    if soft != resource.RLIM_INFINITY and need > soft:
        target = need if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if need > soft:
            raise BatchFormatError(
                f"{folder}: the set has {count} batch files and each stays open while it is read, but this process "
                f"may open only {soft} files (ulimit -n; hard limit {hard}); raise the limit (ulimit -n {need}) "
                "or pack with more images per file", folder)


def _identity(st):
    """What tells a rewritten file: (device, inode, size, modification time in ns)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class BatchSet:
    """A validated folder of sampleINT8 batch files, memory-mapped.

    Parameters
    ----------
    folder : str or PathLike
        Folder holding ``<prefix>0<suffix>``, ``<prefix>1<suffix>``, ...
    prefix, suffix : str or None
        File name parts (sampleINT8: ``batch`` and ``""``).  None (the
        default): the ones the folder's manifest records (``int8batch pack
        --prefix/--suffix``), ``batch`` and ``""`` without a manifest.
    manifest : {"auto", "require", "ignore"}
        ``auto`` checks a manifest when there is one and accepts foreign batch
        files without one (e.g. written by Caffe); ``require`` insists on it.
        A folder with an unfinished-pack marker is always refused.
    verify : bool
        Also compare every file's CRC-32 and the labels with the manifest
        (reads every byte once; see :meth:`verify`).

    Every header and file size is validated on open and the files are mapped
    read-only; a manifest must agree with them
    (:func:`int8batch.manifest.check_manifest`).
    Anything but a regular file where a batch file or the manifest should be
    (a FIFO, a folder, a link loop, no permission) raises
    :class:`BatchFormatError` / :class:`ManifestError`; nothing blocks.  Use
    as a context manager, or call ``close()``, to unmap.

    Files changed underneath
    ------------------------
    The files are mapped, not copied.  Before serving data from a file the
    set checks (one ``stat``) that the file it mapped was not changed: when
    it was rewritten in place (its size or modification time differ) every
    later access raises :class:`BatchFormatError` instead of serving mixed
    data or dying of SIGBUS on pages cut off by a truncation.  A file
    replaced by rename (as ``int8batch pack --force`` does) is harmless: the
    set keeps serving the complete file it opened.  Not covered: a file
    truncated *while* a batch is being copied from it, or while the caller
    holds a zero-copy view of it, still ends the process with SIGBUS, as
    for any memory-mapped reader; never rewrite batch files in place while
    they are read.
    """

    def __init__(self, folder, prefix=None, suffix=None, manifest="auto", verify=False):
        if manifest not in ("auto", "require", "ignore"):
            raise ConfigError(f"manifest must be 'auto', 'require' or 'ignore', got {manifest!r}")
        self.folder = os.fspath(folder)
        self.dims, self._maps, self._arrays, self._stats, self.paths = None, [], [], [], []
        self._closed = False
        # A pack swapped in by `pack --force` while this set opens its files would give a mix of both:
        # the swap holds the unfinished marker from its first rename to its last and replaces the manifest,
        # so the same (marker, manifest) state before and after opening means one pack was opened.
        for wait in SWAP_WAITS:
            before = self._pack_state()
            if before[0]:
                self._refuse_unfinished(wait)
                time.sleep(wait)
                continue
            try:
                self._open_all(prefix, suffix, manifest)
            except Exception:
                self._unmap()
                if wait is not None and self._pack_state() != before:
                    time.sleep(wait)      # the folder changed under us: open again
                    continue
                raise
            except BaseException:         # Ctrl-C: no retry
                self._unmap()
                raise
            if self._pack_state() == before:
                break
            self._unmap()
            if wait is None:
                raise ManifestError(f"{self.folder}: the batch files kept changing while they were opened (another "
                                    "process is packing into this folder); open it again when it has finished",
                                    self.folder)
            time.sleep(wait)
        try:
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    def _pack_state(self):
        """(unfinished marker present, the manifest's identity or None): what a swap changes."""
        marker = os.path.lexists(os.path.join(self.folder, INCOMPLETE_MARKER))
        try:
            st = os.stat(os.path.join(self.folder, MANIFEST_NAME))
            return marker, _identity(st)
        except OSError:
            return marker, None

    def _refuse_unfinished(self, wait):
        """The marker is there: a pack is being swapped in (wait, unless ``wait`` is None) or one died."""
        writer = holder(self.folder)
        if writer is None:
            raise ManifestError(
                f"{self.folder}: this is an unfinished pack (marker {INCOMPLETE_MARKER} present, "
                "the packer did not complete); pack again with --force", self.folder)
        if wait is None:
            who = f"process {writer[0]} on {writer[1]}" if writer[0] else "another process"
            raise ManifestError(f"{self.folder}: {who} is writing a pack into this folder right now; open it "
                                "again when it has finished", self.folder)

    def _open_all(self, prefix, suffix, manifest):
        self.dims, self.paths = None, []
        self._man = self._read_manifest(manifest) if os.path.isdir(self.folder) else None
        names = pack_naming(self._man)
        self.prefix = names[0] if prefix is None else prefix
        self.suffix = names[1] if suffix is None else suffix
        fmt.check_name_parts(self.prefix, self.suffix)
        try:
            self.paths = fmt.list_batch_files(self.folder, self.prefix, self.suffix)
        except BatchFormatError as exc:
            if self._man is None or (prefix is not None and suffix is not None):
                raise
            man_path = os.path.join(self.folder, MANIFEST_NAME)
            raise ManifestError(f"{man_path}: the manifest names the batch files "
                                f"{fmt.batch_name(0, self.prefix, self.suffix)}, ... (prefix {self.prefix!r}, "
                                f"suffix {self.suffix!r}); {exc}", man_path) from None
        _allow_open_files(len(self.paths), self.folder)
        for p in self.paths:
            self._open_file(p)
        self.manifest = self._load_manifest(manifest)

    # ----------------------------------------------------------------- setup
    def _open_file(self, path):
        """Validate one file's header and size against the first file's, then map it."""
        fd, st = fmt.open_regular(path)
        try:
            dims = fmt.decode_header(fmt.read_at(fd, fmt.HEADER_BYTES, path), path)
            if self.dims is None:
                self.dims = dims
            elif dims != self.dims:
                raise BatchFormatError(
                    f"{path}: header N,C,H,W = {dims} differs from {self.dims} in {self.paths[0]}; "
                    "every file of a set must have the same dims (the C++ reader asserts this)", path)
            want = fmt.file_size(*dims)
            if st.st_size != want:
                what = "truncated" if st.st_size < want else "longer than its header says"
                raise BatchFormatError(
                    f"{path}: file is {st.st_size} bytes but header {dims} needs exactly {want} "
                    f"(16 + 4*N*C*H*W + 4*N); the file is {what}", path)
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise BatchFormatError(f"{path}: cannot map the file ({exc})", path) from exc
        finally:
            os.close(fd)
        self._maps.append(mm)
        self._stats.append(_identity(st))
        n, c, h, w = dims
        data = np.frombuffer(mm, dtype=fmt.DATA_DTYPE, count=n * c * h * w, offset=fmt.HEADER_BYTES)
        labels = np.frombuffer(mm, dtype=fmt.DATA_DTYPE, count=n, offset=fmt.HEADER_BYTES + 4 * n * c * h * w)
        self._arrays.append((data.reshape(n, c, h, w), labels))

    def _read_manifest(self, mode):
        """The folder's manifest, read and parsed (None: ``ignore``, or none there under ``auto``)."""
        path = os.path.join(self.folder, MANIFEST_NAME)
        if mode == "ignore":
            return None
        if not os.path.lexists(path):
            if mode == "require":
                raise ManifestError(f"{self.folder}: no {MANIFEST_NAME}; not a complete int8batch pack",
                                    self.folder)
            return None
        man = read_manifest(path)
        try:   # the rest is checked by check_manifest once the files are open
            fmt.check_name_parts(man.get("prefix", "batch"), man.get("suffix", ""), where=path)
        except ConfigError as exc:
            raise ManifestError(str(exc), path) from None
        return man

    def _load_manifest(self, mode):
        man, path = self._man, os.path.join(self.folder, MANIFEST_NAME)
        if man is None:
            if mode == "auto":
                log.info("%s: no manifest; reading the batch files as foreign sampleINT8 files", self.folder)
            return None
        check_manifest(man, self.dims, len(self.paths), self.prefix, self.suffix, path)
        return man

    def _check_open(self):
        if self._closed:
            raise BatchFormatError(f"{self.folder}: this BatchSet was closed; open the folder again", self.folder)

    def check_unchanged(self, k):
        """Raise :class:`BatchFormatError` if file ``k`` was rewritten in place since it was mapped.

        One ``stat`` of the path.  A file replaced by rename or removed
        leaves the mapped (complete) file intact, so that is not an error.
        """
        self._check_open()
        if not (is_whole(k) and 0 <= k < len(self.paths)):
            raise IndexError(f"{self.folder}: no batch file {k!r}; the set has files 0..{len(self.paths) - 1}")
        path = self.paths[k]
        try:
            now = _identity(os.stat(path))
        except OSError:
            return  # removed or renamed away: the mapping holds the unlinked file, intact
        then = self._stats[k]
        if now[:2] != then[:2] or now == then:
            return
        raise BatchFormatError(
            f"{path}: the batch file was changed in place after it was opened (size {then[2]} -> {now[2]} bytes, "
            f"modified {(now[3] - then[3]) / 1e9:+.3f} s later); the mapped data can no longer be trusted "
            "(a truncated mapping kills the process with SIGBUS): open the set again once the writer is done, "
            "and never rewrite batch files in place while they are read", path)

    def verify(self):
        """Compare every file's CRC-32 and every label with the manifest.

        Reads every byte once.  Without a manifest (or one without
        checksums) only the labels it lists are compared.

        Raises
        ------
        BatchFormatError
            Naming the first file whose checksum or labels disagree.
        """
        self._check_open()
        man = self.manifest
        if man is None:
            return
        sums = (man.get("checksums") or {}).get("files")
        for k, path in enumerate(self.paths):
            self.check_unchanged(k)
            if sums is not None:
                got = f"{fmt.checksum(self._maps[k]):08x}"
                if got != sums[k].lower():
                    raise BatchFormatError(f"{path}: CRC-32 is {got} but the manifest says {sums[k]}; the file "
                                           "was changed or corrupted after packing: pack again", path)
        want = expected_labels(man)
        if want is None:
            return
        listing = man["images_list"]
        n = self.per_file
        for k, path in enumerate(self.paths):
            got = self._arrays[k][1].astype(np.float64)
            wk = want[k * n:(k + 1) * n]
            bad = np.flatnonzero(~np.isnan(wk) & (wk != got))
            if bad.size:
                j = int(bad[0])
                raise BatchFormatError(
                    f"{path}: image {j} ({listing[k * n + j][0]}) has label {got[j]:g} but the manifest says "
                    f"{wk[j]:g} ({bad.size} label(s) of this file differ); the file was changed after packing: "
                    "pack again", path)

    # ------------------------------------------------------------ properties
    @property
    def recipe(self):
        """The manifest's preprocessing recipe (:func:`int8batch.manifest.recipe`), or None.

        None without a manifest or without a recipe in it; a recipe that is
        not valid raises :class:`ManifestError`.
        """
        return recipe(self.manifest, os.path.join(self.folder, MANIFEST_NAME))

    @property
    def per_file(self):
        """Images per file (N of the header)."""
        return self.dims[0]

    @property
    def image_shape(self):
        """(C, H, W) of one image."""
        return self.dims[1:]

    @property
    def num_files(self):
        return len(self.paths)

    def first_nonfinite(self, start=0, count=None):
        """Where the first NaN or inf value lies among images ``[start, start + count)``, in words, or None.

        E.g. ``"batch1, image 3 of the file (image 67 of the set): 4 inf values"``; reads the images
        (a check for error messages, not for every batch).
        """
        stop = self.num_images if count is None else min(self.num_images, start + count)
        n = self.per_file
        for i in range(max(start, 0), stop):
            k, j = divmod(i, n)
            img = self._arrays[k][0][j]
            bad = img.size - int(np.count_nonzero(np.isfinite(img)))
            if bad:
                nan = int(np.count_nonzero(np.isnan(img)))
                kinds = " and ".join(f"{c} {w}" for c, w in ((nan, "NaN"), (bad - nan, "inf")) if c)
                return (f"{os.path.basename(self.paths[k])}, image {j} of the file (image {i} of the set): "
                        f"{kinds} values")
        return None

    @property
    def num_images(self):
        return self.per_file * self.num_files

    def __len__(self):
        return self.num_images

    def file_arrays(self, k):
        """``(data, labels)`` views of file ``k`` (read-only, zero-copy; see "Files changed underneath")."""
        self.check_unchanged(k)
        return self._arrays[k]

    def file_buffer(self, k):
        """The mapped bytes of file ``k`` (the ``mmap`` object)."""
        self.check_unchanged(k)
        return self._maps[k]

    def num_batches(self, batch_size, first=0):
        """How many full batches of ``batch_size`` remain after skipping exactly ``first`` (may be 0)."""
        return self.window(batch_size, first, skip="exact", allow_empty=True).count

    def window(self, batch_size, first=0, max_batches=None, skip="batchstream", *, strict=False,
               allow_empty=False):
        """The batches a stream over this set serves: a validated :class:`Window`.

        Parameters
        ----------
        batch_size : int
            Images per batch (> 0); need not equal the files' N.
        first : int
            Batches to skip first (>= 0; sampleINT8's ``firstBatch``, what
            ``EntropyCalibrator(stream, firstBatch)`` passes to ``reset``).
        max_batches : int or None
            Serve at most this many (>= 1); None: every full batch that remains.
        skip : {"batchstream", "exact"}
            ``"batchstream"`` reproduces ``BatchStream::skip`` of TensorRT's C++
            samples (5.x to 8.x) exactly.  When the batch size is a multiple
            of N it skips ``first`` batches (whole files, not read); otherwise
            it calls ``next()`` ``first`` times, and ``next()`` is refused once
            ``max_batches`` batches were counted, so only
            ``min(first, max_batches)`` batches are skipped.  ``"exact"``
            always skips ``first`` batches.  The two differ only when the
            batch size is not a multiple of N and ``first > max_batches``
            (``max_batches=None`` is unbounded: no difference).
        strict : bool
            Refuse a window that serves fewer than ``max_batches`` batches
            (the C++ samples exit when the files run out) instead of serving
            the full batches that remain.
        allow_empty : bool
            Return a window of 0 batches instead of refusing it (and accept
            ``max_batches=0``).

        Raises
        ------
        ConfigError
            One message naming the folder, the numbers and what would fit:
            a batch size <= 0, ``first < 0``, ``max_batches < 1``, or no full
            batch left after the skip.
        """
        return plan_window(self.num_images, self.per_file, batch_size, first, max_batches, skip,
                           strict=strict, allow_empty=allow_empty, where=self.folder)

    # ---------------------------------------------------------------- access
    def images(self, start, count, out=None):
        """Images ``start .. start+count`` as ``(data, labels)``.

        A zero-copy view when the range lies in one file and ``out`` is None;
        otherwise copied into ``out`` (float32, ``(count, C, H, W)``) or a new array.
        """
        for name, v in (("start", start), ("count", count)):
            if not is_whole(v):
                raise TypeError(f"{name} must be a whole number of images, got {v!r}")
        if start < 0 or count < 0 or start + count > self.num_images:
            raise IndexError(f"{self.folder}: images {start}..{start + count - 1} asked for, the set holds images "
                             f"0..{self.num_images - 1}")
        n = self.per_file
        if count == 0:
            self.check_unchanged(0)
            return (np.empty((0,) + tuple(self.image_shape), np.float32) if out is None else out[:0],
                    np.empty(0, np.float32))
        k, off = divmod(start, n)
        if out is None and off + count <= n:
            self.check_unchanged(k)
            data, labels = self._arrays[k]
            return data[off:off + count], labels[off:off + count]
        if out is None:
            out = np.empty((count,) + tuple(self.image_shape), dtype=np.float32)
        elif out.shape[0] < count or out.shape[1:] != tuple(self.image_shape) or out.dtype != np.float32:
            raise ConfigError(f"out must be float32 of shape ({count}, {self.image_shape}), got "
                              f"{out.dtype} {out.shape}")
        labels_out = np.empty(count, dtype=np.float32)
        done = 0
        while done < count:
            k, off = divmod(start + done, n)
            take = min(count - done, n - off)
            self.check_unchanged(k)
            data, labels = self._arrays[k]
            out[done:done + take] = data[off:off + take]
            labels_out[done:done + take] = labels[off:off + take]
            done += take
        return out[:count], labels_out

    def release_pages(self, k):
        """Drop file ``k``'s pages from this process's resident memory.

        The pages stay in the OS page cache and views of the file stay valid
        (they fault the pages back in on access); only this process's RSS
        shrinks.  A no-op where ``madvise`` is unavailable.
        """
        self._check_open()
        mm = self._maps[k]
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def batches(self, batch_size=None, first=0, max_batches=None, release=False, *, window=None):
        """Serve :class:`Batch` objects in order, as ``BatchStream`` serves them.

        Either ``window`` (a :class:`Window` from :meth:`window`) or
        ``batch_size``/``first``/``max_batches``.

        Parameters
        ----------
        batch_size : int
            Images per served batch; need not equal the files' N.
        first : int
            Batches to skip first (sampleINT8's ``firstBatch``), exactly.
        max_batches : int or None
            Stop after this many batches; None means until the data runs out.
            A trailing partial batch is never served.
        release : bool
            Release each file's pages (:meth:`release_pages`) once the stream
            has moved past it, so a long pass over many files does not grow
            the resident memory.
        window : Window
            The batches to serve, as planned by :meth:`window` (with either
            skip semantics).

        Notes
        -----
        Without ``window`` this is ``window(batch_size, first, max_batches,
        skip="exact", allow_empty=True)``: ``first`` always skips exactly
        ``first`` batches and no batch to serve is not an error (nothing is
        served).  The C++ ``BatchStream`` does the same when the batch size
        is a multiple of N; otherwise its ``skip`` counts the skipped batches
        against ``maxBatches`` and skips at most ``maxBatches`` of them (a
        quirk that ``tools/batchstream_reader.cpp`` reproduces): ask
        ``window(..., skip="batchstream")`` for that window.  Arguments are
        checked when this is called, before the first batch.
        """
        self._check_open()
        if window is None:
            if batch_size is None:
                raise ConfigError("batches() needs a batch size or a window")
            window = self.window(batch_size, first, max_batches, skip="exact", allow_empty=True)
        elif batch_size is not None or first != 0 or max_batches is not None:
            raise ConfigError("batches(): give a window or batch_size/first/max_batches, not both")
        elif window.count and window.stop_image > self.num_images:
            raise ConfigError(f"{self.folder}: the window ({window.describe()}) needs {window.stop_image} "
                              f"images but the set holds {self.num_images}; plan it with this set's window()")
        return self._serve(window, release)

    def _serve(self, window, release):
        b, n = window.batch_size, self.per_file
        for i in range(window.count):
            start = window.start_image + i * b
            data, labels = self.images(start, b)
            yield Batch(data, labels, window.skipped + i, start, zero_copy=(start % n) + b <= n)
            if release:
                for k in range(start // n, (start + b) // n):
                    self.release_pages(k)

    def __iter__(self):
        """Iterate over files as batches of N (the files' own size)."""
        return self.batches(self.per_file)

    def as_feed(self, input_name, batch_size=None, first=0, max_batches=None, *, window=None):
        """An iterable of ``{input_name: array}`` dicts (a Polygraphy-style data loader).

        The batches of ``window``, else those :meth:`batches` serves for
        ``batch_size`` (default N), ``first`` and ``max_batches``.  Every
        call of ``iter()`` starts again, so it can be reused.
        """
        if window is None:
            if max_batches is not None:
                max_batches = max(0, int(max_batches))
            window = self.window(batch_size or self.per_file, first, max_batches, skip="exact",
                                 allow_empty=True)
        return _Feed(self, input_name, window)

    # ------------------------------------------------------------- lifetime
    def close(self):
        """Drop the mappings (every later read raises).  Views handed out earlier keep their map alive."""
        self._closed = True
        self._unmap()

    def _unmap(self):
        self._arrays = []
        self._stats = []
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:
                # a NumPy view handed to the caller still references it; the
                # mapping is freed when that view is garbage collected
                pass
        self._maps = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        n, c, h, w = self.dims
        return (f"BatchSet({self.folder!r}: {self.num_files} files x {n} images of {c}x{h}x{w}, "
                f"manifest={'yes' if self.manifest else 'no'})")


class _Feed:
    def __init__(self, batchset, name, window):
        self._bs, self._name, self.window = batchset, name, window

    def __iter__(self):
        for b in self._bs.batches(window=self.window):
            yield {self._name: b.data}

    def __len__(self):
        return self.window.count
