"""``BatchSet``: a memory-mapped, validated view of a folder of batch files.

It serves batches of any size in order, re-batching across file boundaries the
way the C++ ``BatchStream`` of TensorRT's samples does: a batch may straddle
files, ``first`` skips whole batches, ``max_batches`` bounds the count, and a
batch is never served half full.  A batch that lies inside one file is a
zero-copy NumPy view of the mapped file.
"""
import json
import logging
import mmap
import os
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from .errors import BatchFormatError, ConfigError, ManifestError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
INCOMPLETE_MARKER = ".int8batch-incomplete"


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


class BatchSet:
    """A validated folder of sampleINT8 batch files, memory-mapped.

    Parameters
    ----------
    folder : str or PathLike
        Folder holding ``<prefix>0<suffix>``, ``<prefix>1<suffix>``, ...
    prefix, suffix : str
        File name parts (sampleINT8: ``batch`` and ``""``).
    manifest : {"auto", "require", "ignore"}
        ``auto`` checks a manifest when there is one and accepts foreign batch
        files without one (e.g. written by Caffe); ``require`` insists on it.
        A folder with an unfinished-pack marker is always refused.

    Every header and file size is validated on open; the files are mapped
    read-only.  Use as a context manager, or call ``close()``, to unmap.
    """

    def __init__(self, folder, prefix="batch", suffix="", manifest="auto"):
        if manifest not in ("auto", "require", "ignore"):
            raise ConfigError(f"manifest must be 'auto', 'require' or 'ignore', got {manifest!r}")
        self.folder = os.fspath(folder)
        if os.path.exists(os.path.join(self.folder, INCOMPLETE_MARKER)):
            raise ManifestError(
                f"{self.folder}: this is an unfinished pack (marker {INCOMPLETE_MARKER} present, "
                "the packer did not complete); pack again with --force", self.folder)
        self.paths = fmt.list_batch_files(self.folder, prefix, suffix)
        self.dims = self._validate_headers()
        self.manifest = self._load_manifest(manifest)
        self._maps = []
        self._arrays = []
        try:
            for p in self.paths:
                self._map(p)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- setup
    def _validate_headers(self):
        first = None
        for p in self.paths:
            dims = fmt.read_header(p)
            if first is None:
                first = dims
            elif dims != first:
                raise BatchFormatError(
                    f"{p}: header N,C,H,W = {dims} differs from {first} in {self.paths[0]}; "
                    "every file of a set must have the same dims (the C++ reader asserts this)", p)
            size = os.path.getsize(p)
            want = fmt.file_size(*dims)
            if size != want:
                what = "truncated" if size < want else "longer than its header says"
                raise BatchFormatError(
                    f"{p}: file is {size} bytes but header {dims} needs exactly {want} "
                    f"(16 + 4*N*C*H*W + 4*N); the file is {what}", p)
        return first

    def _load_manifest(self, mode):
        path = os.path.join(self.folder, MANIFEST_NAME)
        if mode == "ignore":
            return None
        if not os.path.exists(path):
            if mode == "require":
                raise ManifestError(f"{self.folder}: no {MANIFEST_NAME}; not a complete int8batch pack",
                                    self.folder)
            log.info("%s: no manifest; reading the batch files as foreign sampleINT8 files", self.folder)
            return None
        try:
            with open(path, encoding="utf-8") as f:
                man = json.load(f)
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{path}: unreadable manifest ({exc})", path) from exc
        n, c, h, w = self.dims
        if man.get("files") != len(self.paths) or list(man.get("dims", [])) != [n, c, h, w]:
            raise ManifestError(
                f"{path}: manifest says {man.get('files')} files of dims {man.get('dims')} but the folder "
                f"holds {len(self.paths)} files of dims {[n, c, h, w]}; the folder was changed after packing",
                path)
        return man

    def _map(self, path):
        n, c, h, w = self.dims
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mm)
        data = np.frombuffer(mm, dtype=fmt.DATA_DTYPE, count=n * c * h * w, offset=fmt.HEADER_BYTES)
        labels = np.frombuffer(mm, dtype=fmt.DATA_DTYPE, count=n, offset=fmt.HEADER_BYTES + 4 * n * c * h * w)
        self._arrays.append((data.reshape(n, c, h, w), labels))

    # ------------------------------------------------------------ properties
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

    @property
    def num_images(self):
        return self.per_file * self.num_files

    def __len__(self):
        return self.num_images

    def file_arrays(self, k):
        """``(data, labels)`` views of file ``k`` (read-only, zero-copy)."""
        return self._arrays[k]

    def file_buffer(self, k):
        """The mapped bytes of file ``k`` (the ``mmap`` object)."""
        return self._maps[k]

    def num_batches(self, batch_size, first=0):
        """How many full batches of ``batch_size`` are served after skipping ``first``."""
        return max(0, self.num_images // batch_size - first)

    # ---------------------------------------------------------------- access
    def images(self, start, count, out=None):
        """Images ``start .. start+count`` as ``(data, labels)``.

        A zero-copy view when the range lies in one file and ``out`` is None;
        otherwise copied into ``out`` (float32, ``(count, C, H, W)``) or a new array.
        """
        if start < 0 or count < 0 or start + count > self.num_images:
            raise IndexError(f"images {start}..{start + count} out of range 0..{self.num_images}")
        n = self.per_file
        k, off = divmod(start, n)
        if out is None and off + count <= n:
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
        mm = self._maps[k]
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def batches(self, batch_size, first=0, max_batches=None, release=False):
        """Yield :class:`Batch` objects in order, as ``BatchStream`` serves them.

        Parameters
        ----------
        batch_size : int
            Images per served batch; need not equal the files' N.
        first : int
            Batches to skip first (sampleINT8's ``firstBatch``).
        max_batches : int or None
            Stop after this many batches; None means until the data runs out.
            A trailing partial batch is never served.
        release : bool
            Release each file's pages (:meth:`release_pages`) once the stream
            has moved past it, so a long pass over many files does not grow
            the resident memory.

        Notes
        -----
        ``first`` always skips exactly ``first`` batches.  The C++
        ``BatchStream`` does the same when the batch size is a multiple of N;
        otherwise its ``skip`` counts the skipped batches against
        ``maxBatches`` and skips at most ``maxBatches`` of them (a quirk that
        ``tools/batchstream_reader.cpp`` reproduces and the tests record).
        """
        if int(batch_size) <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if first < 0:
            raise ConfigError(f"first batch must be >= 0, got {first}")
        total = self.num_batches(batch_size, first)
        if max_batches is not None:
            total = min(total, max(0, int(max_batches)))
        for i in range(total):
            index = first + i
            start = index * batch_size
            data, labels = self.images(start, batch_size)
            yield Batch(data, labels, index, start,
                        zero_copy=(start % self.per_file) + batch_size <= self.per_file)
            if release:
                done_files = (start + batch_size) // self.per_file
                for k in range(start // self.per_file, done_files):
                    self.release_pages(k)

    def __iter__(self):
        """Iterate over files as batches of N (the files' own size)."""
        return self.batches(self.per_file)

    def as_feed(self, input_name, batch_size=None, first=0, max_batches=None):
        """An iterable of ``{input_name: array}`` dicts (a Polygraphy-style data loader).

        Every call of ``iter()`` starts again, so it can be reused.
        """
        return _Feed(self, input_name, batch_size or self.per_file, first, max_batches)

    # ------------------------------------------------------------- lifetime
    def close(self):
        """Drop the mappings.  Views handed out earlier keep their map alive."""
        self._arrays = []
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
    def __init__(self, batchset, name, batch_size, first, max_batches):
        self._bs, self._name = batchset, name
        self._args = (batch_size, first, max_batches)

    def __iter__(self):
        for b in self._bs.batches(*self._args):
            yield {self._name: b.data}

    def __len__(self):
        batch_size, first, max_batches = self._args
        n = self._bs.num_batches(batch_size, first)
        return n if max_batches is None else min(n, max_batches)
