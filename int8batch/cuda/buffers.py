"""Device, pinned and host-registered memory, each released deterministically.

* :class:`DeviceBuffer` -- ``cudaMalloc``'d memory.
* :class:`PinnedBuffer` -- ``cudaHostAlloc``'d page-locked host memory with a
  NumPy view.
* :class:`RegisteredMapping` -- an existing (read-only) ``mmap`` of a batch file
  page-locked in place with ``cudaHostRegister``, so the GPU's copy engine reads
  straight out of the page cache.
* :class:`StagingRing` -- a few page-locked chunks that host threads fill and
  the copy engine drains, each reused once its copy is done.

Every class has ``close()`` (idempotent) and is a context manager.
"""
import ctypes
import logging
import mmap
import queue
import threading

import numpy as np

from . import runtime as cu
from ..errors import CudaError

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE


def host_address(buf):
    """Address (int) of a buffer-protocol object, read-only ones included."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    return arr.__array_interface__["data"][0]


class DeviceBuffer:
    """``nbytes`` of device memory in the current context."""

    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self.ptr = cu.malloc(max(self.nbytes, 1))

    def copy_to_host(self, out=None, nbytes=None):
        """Synchronous copy back into ``out`` (a C-contiguous array) or a new uint8 array."""
        n = self.nbytes if nbytes is None else int(nbytes)
        if out is None:
            out = np.empty(n, dtype=np.uint8)
        if not out.flags.c_contiguous or out.nbytes < n:
            raise ValueError(f"out must be C-contiguous with at least {n} bytes")
        cu.memcpy_dtoh(out.__array_interface__["data"][0], self.ptr, n)
        return out

    def copy_from_host(self, arr):
        """Synchronous copy of a C-contiguous array into the start of the buffer."""
        arr = np.ascontiguousarray(arr)
        if arr.nbytes > self.nbytes:
            raise ValueError(f"{arr.nbytes} bytes do not fit a device buffer of {self.nbytes}")
        cu.memcpy_htod(self.ptr, arr.__array_interface__["data"][0], arr.nbytes)

    def close(self):
        if self.ptr:
            p, self.ptr = self.ptr, 0
            cu.free(p)

    def __int__(self):
        return self.ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PinnedBuffer:
    """``nbytes`` of page-locked host memory (``cudaHostAlloc``, portable).

    ``array`` is a NumPy uint8 view of it; it must not be used after ``close()``.
    """

    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self.ptr = cu.host_alloc(max(self.nbytes, 1))
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.ctypeslib.as_array(raw)[: self.nbytes]

    def view(self, dtype, shape):
        """A typed view of the start of the buffer."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) * dtype.itemsize
        return self.array[:count].view(dtype).reshape(shape)

    def close(self):
        if self.ptr:
            p, self.ptr = self.ptr, 0
            self.array = None
            cu.free_host(p)

    def __int__(self):
        return self.ptr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RegisteredMapping:
    """A whole read-only ``mmap`` page-locked in place with ``cudaHostRegister``.

    The mapping starts on a page boundary; the registered length is rounded up
    to whole pages (the kernel maps whole pages, so the tail of the last page
    is valid memory).  Pointers into the file are ``base + offset``.

    Parameters
    ----------
    buf : mmap.mmap or buffer
        The mapping (``BatchSet.file_buffer(k)``).
    readonly : bool
        Use ``cudaHostRegisterReadOnly`` (required for ``PROT_READ`` mappings;
        check :func:`runtime.readonly_registration_supported`).
    name : str
        For messages (the file path).

    Raises
    ------
    CudaError
        When the driver refuses the registration; the caller falls back to
        pinned staging.
    """

    def __init__(self, buf, readonly=True, name="mapping"):
        self.name = name
        self._keep = np.frombuffer(buf, dtype=np.uint8)   # holds the mapping alive while registered
        self.base = self._keep.__array_interface__["data"][0]
        self.nbytes = self._keep.nbytes
        if self.base % PAGE:
            self._keep = None
            raise CudaError(f"{name}: mapping at 0x{self.base:x} is not page aligned; cannot register it",
                            name="cudaErrorInvalidValue")
        self.reg_bytes = -(-self.nbytes // PAGE) * PAGE
        self.readonly = readonly
        try:
            cu.host_register(self.base, self.reg_bytes, readonly=readonly)
        except CudaError:
            self._keep = None
            raise
        self.registered = True

    def ptr(self, offset=0):
        """Host address of byte ``offset`` of the file."""
        return self.base + int(offset)

    def close(self):
        if getattr(self, "registered", False):
            self.registered = False
            try:
                cu.host_unregister(self.base)
            finally:
                self._keep = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StagingRing:
    """Page-locked chunks for copying pageable host bytes to the device.

    :meth:`copy` (called from several host threads at once) takes a free chunk,
    waits until the copy engine is done with its previous contents, copies the
    source bytes into it, queues the host-to-device copy on ``stream`` and
    records the chunk's event: the chunk is reused as soon as that copy ends,
    so a few chunks keep the copy engine busy whatever the batch size.

    Parameters
    ----------
    chunks, chunk_bytes : int
        Number and size of the chunks.
    stream : int
        Stream handle for the copies.

    Notes
    -----
    The chunks are allocated by the first :meth:`copy` (so a feeder that
    never stages pays nothing).  Call :meth:`close` only when no copy is
    running and the stream is synchronised.
    """

    def __init__(self, chunks, chunk_bytes, stream):
        self.chunks, self.chunk_bytes, self.stream = max(1, int(chunks)), max(PAGE, int(chunk_bytes)), stream
        self._bufs, self._events = [], []
        self._free = queue.Queue()
        self._failed = None
        self._closed = threading.Event()
        self._alloc_lock = threading.Lock()
        self._allocated = False

    def allocate(self):
        """Allocate the chunks (once; later calls return at once), each made available at once."""
        with self._alloc_lock:
            if self._allocated:
                return
            self._allocated = True
            try:
                for i in range(self.chunks):
                    if self._closed.is_set():
                        return
                    self._bufs.append(PinnedBuffer(self.chunk_bytes))
                    self._events.append(cu.Event())
                    self._free.put(i)
            except BaseException as exc:
                self._failed = exc
                raise

    def _take(self):
        while True:
            try:
                return self._free.get(timeout=0.05)
            except queue.Empty:
                if self._failed is not None:
                    raise CudaError(f"allocating the pinned staging chunks failed: {self._failed}",
                                    name=getattr(self._failed, "name", None)) from self._failed
                if self._closed.is_set():
                    raise CudaError("the staging ring is closed", name="cudaErrorInvalidValue")

    def copy(self, dst, src):
        """Copy the C-contiguous uint8 array ``src`` (at most ``chunk_bytes``) to device address ``dst``."""
        n = src.nbytes
        if not self._allocated:
            self.allocate()
        i = self._take()
        try:
            self._events[i].synchronize()
            np.copyto(self._bufs[i].array[:n], src)
            cu.memcpy_htod_async(dst, self._bufs[i].ptr, n, self.stream)
            self._events[i].record(self.stream)
        finally:
            self._free.put(i)

    def stop(self):
        """Make copies that wait for a chunk (and an allocation under way) give up."""
        self._closed.set()

    def close(self):
        self.stop()
        errors = []
        for obj in self._bufs + self._events:
            try:
                obj.close()
            except Exception as exc:  # noqa: BLE001 - release the rest, report the first
                errors.append(exc)
        self._bufs, self._events = [], []
        if errors:
            raise errors[0]
