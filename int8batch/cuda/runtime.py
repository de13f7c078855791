"""A thin, checked wrapper over the CUDA runtime of cuda-python.

Every call goes through :func:`call`, which turns a non-success return code into
:class:`~int8batch.errors.CudaError` carrying the CUDA error name and the call
that failed.  ``cuda.bindings`` is imported lazily (``int8batch[cuda]``).

Context rule: int8batch never creates a context of its own.  It works in the
context current on the calling thread (TensorRT's, PyTorch's, CuPy's or a
user's pycuda context); only when no context is current does
:func:`ensure_context` make the device's *primary* context current, which is the
one the CUDA runtime, TensorRT, PyTorch and CuPy all share.
"""
import logging

from .._optional import require
from ..errors import CudaError, Int8BatchError

log = logging.getLogger(__name__)

_RT = None


def rt():
    """The ``cuda.bindings.runtime`` module (imported on first use)."""
    global _RT
    if _RT is None:
        _RT = require("cuda.bindings.runtime")
    return _RT


def _driver():
    return require("cuda.bindings.driver")


def error_name(err):
    """The CUDA name of an error code, e.g. ``cudaErrorInvalidValue``."""
    try:
        res = rt().cudaGetErrorName(err)
        name = res[1] if isinstance(res, tuple) else res
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - a name is a nicety, never a second failure
        return str(err)


def call(what, result):
    """Check the result tuple of a cuda-python call.

    Parameters
    ----------
    what : str
        The call as the user should read it, e.g. ``"cudaMalloc(1024)"``.
    result : tuple or cudaError_t
        What cuda-python returned: ``(err, value, ...)`` or a bare error.

    Returns
    -------
    None, the single value, or a tuple of the values after the error code.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        name = error_name(err)
        raise CudaError(f"{what} failed with {name} (CUDA error {code})", name=name, code=code)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# ------------------------------------------------------------- devices, contexts
def device_count():
    """Number of usable CUDA devices; 0 when there is no driver or no device."""
    try:
        r = rt()
        err, n = r.cudaGetDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no GPU"
        log.debug("cudaGetDeviceCount unavailable: %s", exc)
        return 0
    if int(err) != 0:
        log.debug("cudaGetDeviceCount: %s", error_name(err))
        return 0
    return int(n)


def gpu_available():
    """True when cuda-python imports and at least one device answers."""
    return device_count() > 0


def current_context():
    """Handle (int) of the context current on this thread, 0 when there is none.

    Raises :class:`CudaError` when the driver library cannot be loaded (cuda-python installed on a
    machine without an NVIDIA driver).
    """
    drv = _driver()
    try:
        res = drv.cuCtxGetCurrent()
    except Int8BatchError:
        raise
    except Exception as exc:  # noqa: BLE001 - cuda-python's own loader errors: no driver here
        raise CudaError(f"the NVIDIA driver cannot be loaded ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                        "a GPU with its driver is needed (int8batch.cuda.gpu_available() says whether one is usable)",
                        name="cudaErrorNoDevice") from exc
    err, ctx = res
    if int(err) != 0:
        # CUDA_ERROR_NOT_INITIALIZED: the driver has not been used yet, so no
        # context can be current.
        return 0
    return int(ctx) if ctx is not None else 0


def set_current_context(handle):
    """Bind the context ``handle`` (from :func:`current_context`) to the calling thread."""
    drv = _driver()
    err = drv.cuCtxSetCurrent(drv.CUcontext(int(handle)))
    err = err[0] if isinstance(err, tuple) else err
    if int(err) != 0:
        raise CudaError(f"cuCtxSetCurrent(0x{int(handle):x}) failed with {err}", name=str(err), code=int(err))


def ensure_context(device=None):
    """Make sure a context is current on this thread; return the device ordinal.

    When a context is already current (TensorRT, PyTorch, CuPy, pycuda pushed
    one) it is used as is, and ``device`` must match it if given.  Otherwise
    the primary context of ``device`` (default 0) is made current with
    ``cudaSetDevice`` and initialised with ``cudaFree(0)``.
    """
    r = rt()
    if current_context():
        dev = call("cudaGetDevice()", r.cudaGetDevice())
        if device is not None and int(device) != int(dev):
            raise CudaError(
                f"a CUDA context for device {dev} is current on this thread but device {device} was asked "
                "for; pass device=None to use the current context, or make the other device current first",
                name="cudaErrorInvalidDevice")
        return int(dev)
    dev = 0 if device is None else int(device)
    n = device_count()
    if n == 0:
        raise CudaError("no CUDA device is available (cudaGetDeviceCount found none or the driver is missing)",
                        name="cudaErrorNoDevice")
    if dev >= n:
        raise CudaError(f"device {dev} asked for but only {n} CUDA device(s) exist", name="cudaErrorInvalidDevice")
    call(f"cudaSetDevice({dev})", r.cudaSetDevice(dev))
    call("cudaFree(0)", r.cudaFree(0))
    log.debug("made the primary context of device %d current", dev)
    return dev


def device_name(device=None):
    """Marketing name of the device, e.g. ``NVIDIA H100 80GB HBM3``."""
    r = rt()
    dev = call("cudaGetDevice()", r.cudaGetDevice()) if device is None else device
    prop = call(f"cudaGetDeviceProperties({dev})", r.cudaGetDeviceProperties(dev))
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name)


def device_attribute(attr_name, device=None):
    """Integer device attribute by its cudaDeviceAttr name (``"cudaDevAttr..."``)."""
    r = rt()
    dev = call("cudaGetDevice()", r.cudaGetDevice()) if device is None else device
    attr = getattr(r.cudaDeviceAttr, attr_name)
    return int(call(f"cudaDeviceGetAttribute({attr_name}, {dev})", r.cudaDeviceGetAttribute(attr, dev)))


def readonly_registration_supported(device=None):
    """True when ``cudaHostRegisterReadOnly`` is supported on the device."""
    try:
        return bool(device_attribute("cudaDevAttrHostRegisterReadOnlySupported", device))
    except (AttributeError, CudaError):
        return False


def mem_get_info():
    """``(free, total)`` bytes of device memory of the current device."""
    free, total = call("cudaMemGetInfo()", rt().cudaMemGetInfo())
    return int(free), int(total)


# ------------------------------------------------------------------- memory
def malloc(nbytes):
    """``cudaMalloc``: device pointer (int)."""
    return int(call(f"cudaMalloc({nbytes})", rt().cudaMalloc(int(nbytes))))


def free(ptr):
    call(f"cudaFree(0x{int(ptr):x})", rt().cudaFree(int(ptr)))


def host_alloc(nbytes, portable=True):
    """``cudaHostAlloc``: page-locked host pointer (int)."""
    r = rt()
    flags = r.cudaHostAllocPortable if portable else r.cudaHostAllocDefault
    return int(call(f"cudaHostAlloc({nbytes})", r.cudaHostAlloc(int(nbytes), flags)))


def free_host(ptr):
    call(f"cudaFreeHost(0x{int(ptr):x})", rt().cudaFreeHost(int(ptr)))


def host_register(ptr, nbytes, readonly=False):
    """``cudaHostRegister`` of an existing host range (``cudaHostRegisterReadOnly`` if asked)."""
    r = rt()
    flags = r.cudaHostRegisterReadOnly if readonly else r.cudaHostRegisterDefault
    what = f"cudaHostRegister(0x{int(ptr):x}, {nbytes}, {'ReadOnly' if readonly else 'Default'})"
    call(what, r.cudaHostRegister(int(ptr), int(nbytes), flags))


def host_unregister(ptr):
    call(f"cudaHostUnregister(0x{int(ptr):x})", rt().cudaHostUnregister(int(ptr)))


def memory_type(ptr):
    """Name of the memory type CUDA sees at ``ptr`` (``"unregistered"``, ``"host"``, ``"device"``...)."""
    attrs = call("cudaPointerGetAttributes", rt().cudaPointerGetAttributes(int(ptr)))
    name = getattr(attrs.type, "name", str(attrs.type))
    return name.replace("cudaMemoryType", "").lower()


def memcpy_htod_async(dst, src, nbytes, stream):
    r = rt()
    call("cudaMemcpyAsync(HostToDevice)",
         r.cudaMemcpyAsync(int(dst), int(src), int(nbytes), r.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))


def memcpy_htod(dst, src, nbytes):
    r = rt()
    call("cudaMemcpy(HostToDevice)",
         r.cudaMemcpy(int(dst), int(src), int(nbytes), r.cudaMemcpyKind.cudaMemcpyHostToDevice))


def memcpy_dtoh(dst, src, nbytes):
    r = rt()
    call("cudaMemcpy(DeviceToHost)",
         r.cudaMemcpy(int(dst), int(src), int(nbytes), r.cudaMemcpyKind.cudaMemcpyDeviceToHost))


def device_synchronize():
    call("cudaDeviceSynchronize()", rt().cudaDeviceSynchronize())


# ------------------------------------------------------------ streams, events
def stream_handle(stream):
    """Raw handle (int) of a stream given as int, cuda-python handle, CuPy or torch stream."""
    if stream is None:
        return 0
    for attr in ("cuda_stream", "ptr", "handle"):  # torch, CuPy, int8batch/pycuda
        if hasattr(stream, attr) and not isinstance(stream, int):
            return int(getattr(stream, attr))
    return int(stream)


class Stream:
    """A CUDA stream: owned (created non-blocking) or wrapping a caller's handle.

    Parameters
    ----------
    handle : int, stream object or None
        None creates a new non-blocking stream owned (and destroyed) by this
        object; anything else is wrapped and never destroyed here.
    """

    def __init__(self, handle=None):
        r = rt()
        if handle is None:
            h = call("cudaStreamCreateWithFlags(NonBlocking)", r.cudaStreamCreateWithFlags(r.cudaStreamNonBlocking))
            self.handle, self.owned = int(h), True
        else:
            self.handle, self.owned = stream_handle(handle), False

    def synchronize(self):
        call("cudaStreamSynchronize", rt().cudaStreamSynchronize(self.handle))

    def close(self):
        if self.owned and self.handle:
            h, self.handle = self.handle, 0
            call("cudaStreamDestroy", rt().cudaStreamDestroy(h))

    def __int__(self):
        return self.handle


class Event:
    """A CUDA event without timing (``timing=True`` to time with it)."""

    def __init__(self, timing=False):
        r = rt()
        flags = r.cudaEventDefault if timing else r.cudaEventDisableTiming
        self.handle = int(call("cudaEventCreateWithFlags", r.cudaEventCreateWithFlags(flags)))

    def record(self, stream):
        call("cudaEventRecord", rt().cudaEventRecord(self.handle, int(stream)))

    def synchronize(self):
        call("cudaEventSynchronize", rt().cudaEventSynchronize(self.handle))

    def query(self):
        """True when all work captured by the last record has completed."""
        r = rt()
        err = r.cudaEventQuery(self.handle)
        err = err[0] if isinstance(err, tuple) else err
        if int(err) == int(r.cudaError_t.cudaErrorNotReady):
            return False
        call("cudaEventQuery", (err,))
        return True

    def elapsed_ms(self, start):
        """Milliseconds from ``start`` (an Event) to this event."""
        return float(call("cudaEventElapsedTime", rt().cudaEventElapsedTime(start.handle, self.handle)))

    def close(self):
        if self.handle:
            h, self.handle = self.handle, 0
            call("cudaEventDestroy", rt().cudaEventDestroy(h))
