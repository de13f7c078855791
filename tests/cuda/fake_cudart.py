"""A CPU stand-in for ``int8batch.cuda.runtime`` used to test the feeder's logic without a GPU.

Device and pinned memory are ctypes buffers; copies on a stream are queued and
run only when an event recorded after them (or the stream) is synchronized, the
latest moment CUDA allows.  A pipeline that overwrites a copy's source before
waiting for the copy therefore delivers wrong bytes here, as it could on a GPU.
Every allocation and registration is tracked, so tests can check that
everything was released.
"""
import ctypes
import threading

from int8batch.errors import CudaError

NAMES = ["ensure_context", "current_context", "set_current_context", "Stream", "Event", "readonly_registration_supported", "memcpy_htod_async",
         "malloc", "free", "memcpy_dtoh", "memcpy_htod", "host_alloc", "free_host", "host_register",
         "host_unregister"]


class FakeCuda:
    def __init__(self, readonly_supported=True, refuse_register=False):
        self.readonly_supported = readonly_supported
        self.refuse_register = refuse_register
        self.device = {}      # ptr -> ctypes buffer
        self.pinned = {}
        self.registered = {}  # ptr -> nbytes
        self.streams = []
        self.events = 0
        self.copies = 0
        self.lock = threading.RLock()   # one stream engine: ops run one at a time, in order
        fake = self

        class Stream:
            def __init__(self, handle=None):
                self.queue = []
                self.handle = len(fake.streams) + 1
                self.owned = handle is None
                fake.streams.append(self)

            def run_until(self, marker=None):
                with fake.lock:
                    while self.queue:
                        op = self.queue.pop(0)
                        if op is marker:
                            return
                        if callable(op):
                            op()

            def synchronize(self):
                self.run_until(None)

            def close(self):
                self.handle = 0

        class Event:
            def __init__(self, timing=False):
                with fake.lock:
                    fake.events += 1
                self.stream, self.marker, self.handle = None, None, fake.events

            def record(self, stream):
                s = fake._stream(stream)
                with fake.lock:
                    self.stream, self.marker = s, object()
                    s.queue.append(self.marker)

            def synchronize(self):
                with fake.lock:
                    if self.stream is not None and self.marker in self.stream.queue:
                        self.stream.run_until(self.marker)

            def close(self):
                with fake.lock:
                    fake.events -= 1

        self.Stream, self.Event = Stream, Event

    def _stream(self, handle):
        for s in self.streams:
            if s.handle == int(handle):
                return s
        raise CudaError("unknown stream", name="cudaErrorInvalidResourceHandle")

    # -- runtime API
    def ensure_context(self, device=None):
        return 0

    def current_context(self):
        return 1

    def set_current_context(self, handle):
        assert handle == 1

    def readonly_registration_supported(self, device=None):
        return self.readonly_supported

    def _alloc(self, table, nbytes):
        buf = ctypes.create_string_buffer(int(nbytes))
        table[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def malloc(self, nbytes):
        return self._alloc(self.device, nbytes)

    def free(self, ptr):
        if self.device.pop(int(ptr), None) is None:
            raise CudaError("cudaFree of unknown pointer", name="cudaErrorInvalidValue")

    def host_alloc(self, nbytes, portable=True):
        return self._alloc(self.pinned, nbytes)

    def free_host(self, ptr):
        if self.pinned.pop(int(ptr), None) is None:
            raise CudaError("cudaFreeHost of unknown pointer", name="cudaErrorInvalidValue")

    def host_register(self, ptr, nbytes, readonly=False):
        if self.refuse_register or (not readonly):
            raise CudaError("refused", name="cudaErrorNotSupported")
        if ptr in self.registered:
            raise CudaError("already", name="cudaErrorHostMemoryAlreadyRegistered")
        if ptr % 4096:
            raise CudaError("unaligned", name="cudaErrorInvalidValue")
        self.registered[int(ptr)] = int(nbytes)

    def host_unregister(self, ptr):
        if self.registered.pop(int(ptr), None) is None:
            raise CudaError("not registered", name="cudaErrorHostMemoryNotRegistered")

    def memcpy_htod_async(self, dst, src, nbytes, stream):
        self._check_device(dst, nbytes)
        s = self._stream(stream)

        def op():
            self.copies += 1
            ctypes.memmove(dst, src, nbytes)
        with self.lock:
            s.queue.append(op)

    def memcpy_htod(self, dst, src, nbytes):
        self._check_device(dst, nbytes)
        ctypes.memmove(dst, src, nbytes)

    def memcpy_dtoh(self, dst, src, nbytes):
        self._check_device(src, nbytes)
        ctypes.memmove(dst, src, nbytes)

    def _check_device(self, ptr, nbytes):
        for base, buf in self.device.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return
        raise CudaError(f"0x{ptr:x}+{nbytes} is not inside a device allocation", name="cudaErrorInvalidValue")

    def live(self):
        """What is still allocated: (device, pinned, registered, events)."""
        return len(self.device), len(self.pinned), len(self.registered), self.events

    def install(self, monkeypatch):
        from int8batch.cuda import runtime
        for name in NAMES:
            monkeypatch.setattr(runtime, name, getattr(self, name))
        return self
