"""Device, pinned and host-registered memory, each released deterministically.

* :class:`DeviceBuffer` -- ``cudaMalloc``'d memory.
* :class:`PinnedBuffer` -- ``cudaHostAlloc``'d page-locked host memory with a
  NumPy view.
* :class:`RegisteredMapping` -- an existing (read-only) ``mmap`` of a batch file
  page-locked in place with ``cudaHostRegister``, so the GPU's copy engine reads
  straight out of the page cache.

Every class has ``close()`` (idempotent) and is a context manager.
"""
import ctypes
import logging
import mmap

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
