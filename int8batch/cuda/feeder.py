"""``DeviceFeeder``: batches of a :class:`~int8batch.reader.BatchSet` delivered to the GPU.

For every batch it hands out a device pointer that stays valid until the next
batch is asked for, while the batch after it is already on its way (two device
buffers on one stream, an event per buffer to know when its copy is done).

Strategies (``strategy=``):

``registered``
    Each batch file's read-only mapping is page-locked in place with
    ``cudaHostRegister(..., cudaHostRegisterReadOnly)`` once, and batches are
    copied by the GPU's copy engine straight out of the page cache: no host
    copy at all.  A batch that straddles two files is copied as two pieces.
    The file(s) of batch *i+2* are registered while batch *i+1* is being
    copied, by ``register_threads`` background threads that run ahead of the
    copies.  Registrations are kept (up to ``register_limit`` bytes) so a
    second pass over the same files costs only the copies.
``pinned``
    Batches are copied by ``copy_threads`` threads from the mapping into two
    page-locked staging buffers, then copied asynchronously to the device.
``pageable``
    ``cudaMemcpyAsync`` straight from the mapping (the driver stages it).  Last
    resort: no overlap.
``auto`` (default)
    ``registered`` when the device supports read-only registration and the
    driver accepts it for the first file, else ``pinned``.  The choice is
    logged.

Use it as a context manager: device memory, pinned memory, registrations,
events, the stream (if owned) and the copy threads are released on exit, also
on an exception or KeyboardInterrupt.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import runtime as cu
from .buffers import DeviceBuffer, PinnedBuffer
from .registry import FileRegistry
from .. import format as fmt
from ..errors import ConfigError, CudaError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "registered", "pinned", "pageable")
DEFAULT_REGISTER_LIMIT = 16 << 30


@dataclass(frozen=True)
class DeviceBatch:
    """One batch on the device, valid until the feeder's next batch.

    Attributes
    ----------
    ptr : int
        Device pointer to ``shape`` float32 values (NCHW, C-contiguous).
    nbytes : int
    shape : tuple
        ``(B, C, H, W)``.
    index : int
        Batch number in the stream (counting the ``first`` skipped ones).
    start : int
        Index of the batch's first image in the whole set.
    labels : ndarray
        Host float32 labels of the batch.
    """

    ptr: int
    nbytes: int
    shape: tuple
    index: int
    start: int
    labels: np.ndarray

    @property
    def pointers(self):
        """One device pointer per network input (batch files carry one input)."""
        return [self.ptr]

    def __int__(self):
        return self.ptr


class DeviceFeeder:
    """Stream the batches of a ``BatchSet`` to the GPU, double buffered.

    Parameters
    ----------
    batchset : BatchSet
        An open batch set (its mappings must outlive the feeder).
    batch_size : int or None
        Images per batch (default: the files' N).  Batches may straddle files,
        exactly as ``BatchSet.batches`` serves them.
    first, max_batches : int
        Skip ``first`` batches; stop after ``max_batches`` (None: all full batches).
    strategy : {"auto", "registered", "pinned", "pageable"}
    copy_threads : int
        Host copy threads of the ``pinned`` strategy.
    stream : None, int or stream object
        Stream for the copies (a raw handle, a CuPy/torch stream...); None
        creates a private non-blocking stream.  Passing the consumer's stream
        orders the copies after the consumer's work on the previous buffer.
    device : int or None
        Device whose primary context is used when no context is current.
    register_limit : int
        Most bytes kept registered at once; older files are unregistered when
        a new one would exceed it.
    register_threads : int
        Background threads registering files ahead of the copies (0: register
        on the calling thread, overlapping only the copy in flight).

    Notes
    -----
    A pointer handed out for batch *i* is overwritten by batch *i+2*'s copy,
    which is issued when batch *i+1* is asked for: the consumer's GPU work on
    batch *i* must be finished (or ordered on ``stream``) by then.  TensorRT's
    calibration loop meets this.
    """

    def __init__(self, batchset, batch_size=None, first=0, max_batches=None, strategy="auto",
                 copy_threads=4, stream=None, device=None, register_limit=DEFAULT_REGISTER_LIMIT,
                 register_threads=2):
        if strategy not in STRATEGIES:
            raise ConfigError(f"feeder strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        self.batchset = batchset
        self.batch_size = int(batchset.per_file if batch_size is None else batch_size)
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        if first < 0:
            raise ConfigError(f"first batch must be >= 0, got {first}")
        self.first = int(first)
        total = batchset.num_batches(self.batch_size, self.first)
        if max_batches is not None:
            total = min(total, max(0, int(max_batches)))
        self.num_batches = total
        n, c, h, w = batchset.dims
        self.shape = (self.batch_size, c, h, w)
        self.image_bytes = 4 * c * h * w
        self.nbytes = self.batch_size * self.image_bytes
        self.copy_threads = max(1, int(copy_threads))
        self.register_limit = int(register_limit)
        self.register_threads = max(0, int(register_threads))
        self.requested = strategy
        self.strategy = None
        self._batches_done = 0
        self._registry = None
        self._closed = False
        self._pos = 0
        self._primed = False
        self._stream = None
        self._dev, self._events, self._staging, self._fills = [], [], [], [None, None]
        self._pool = None
        self._src = [batchset.file_arrays(k)[0].reshape(-1).view(np.uint8) for k in range(batchset.num_files)]
        try:
            self.device = cu.ensure_context(device)
            self._stream = cu.Stream(stream)
            for _ in range(2):
                self._dev.append(DeviceBuffer(self.nbytes))
                self._events.append(cu.Event())
            self.strategy = self._resolve(strategy)
            if self.strategy == "pinned":
                for _ in range(2):
                    self._staging.append(PinnedBuffer(self.nbytes))
                self._pool = ThreadPoolExecutor(self.copy_threads, thread_name_prefix="int8batch-copy")
        except BaseException:
            self.close()
            raise
        log.info("DeviceFeeder: %d batches of %s float32 (%.1f MB) from %s, strategy %s%s",
                 self.num_batches, self.shape, self.nbytes / 1e6, batchset.folder, self.strategy,
                 "" if strategy == self.strategy else f" (asked: {strategy})")

    # --------------------------------------------------------------- strategy
    def _resolve(self, strategy):
        if strategy in ("pinned", "pageable"):
            return strategy
        readonly = cu.readonly_registration_supported(self.device)
        registry = FileRegistry(self.batchset, readonly, self.register_threads, self.register_limit,
                                cu.current_context())
        if self.num_batches:
            k0 = self._segments(0)[0][0]
            try:
                registry.register_now(k0)
            except CudaError as exc:
                registry.close()
                if strategy == "registered":
                    raise CudaError(
                        f"{self.batchset.paths[k0]}: cudaHostRegister of the read-only mapping was refused "
                        f"({exc}); use strategy='pinned' (or 'auto' to fall back automatically)",
                        name=exc.name, code=exc.code) from exc
                log.warning("host registration of %s refused (%s; read-only registration %ssupported); "
                            "falling back to pinned staging", self.batchset.paths[k0], exc.name,
                            "" if readonly else "not ")
                return "pinned"
        self._registry = registry
        return "registered"

    @property
    def stats(self):
        """Counters: batches served, registration seconds and file counts."""
        out = {"batches": self._batches_done}
        if self._registry is not None:
            out.update(self._registry.stats)
        return out

    # ------------------------------------------------------------- pipeline
    def _segments(self, j):
        """``[(file, byte offset in file data, byte offset in batch, nbytes), ...]`` of batch ``j``."""
        n = self.batchset.per_file
        start = (self.first + j) * self.batch_size
        segs, done = [], 0
        while done < self.batch_size:
            k, off = divmod(start + done, n)
            take = min(self.batch_size - done, n - off)
            segs.append((k, off * self.image_bytes, done * self.image_bytes, take * self.image_bytes))
            done += take
        return segs

    def _prepare(self, j):
        """Get batch ``j`` ready for its copy (register its files / start filling staging)."""
        if self.strategy == "registered":
            files = [seg[0] for seg in self._segments(j)]
            last = self._segments(self.num_batches - 1)[-1][0]
            ahead = range(files[-1] + 1, min(last, files[-1] + self.register_threads) + 1)
            self._registry.request(files + list(ahead), busy_after=self._pos)
        elif self.strategy == "pinned":
            slot = j % 2
            dst = self._staging[slot].array
            jobs = []
            for k, src_off, dst_off, nb in self._segments(j):
                step = -(-nb // self.copy_threads)
                for a in range(0, nb, step):
                    b = min(nb, a + step)
                    jobs.append((dst[dst_off + a:dst_off + b], self._src[k][src_off + a:src_off + b]))
            self._fills[slot] = [self._pool.submit(np.copyto, d, s) for d, s in jobs]

    def _issue(self, j):
        """Start the host-to-device copy of batch ``j`` into its device buffer."""
        slot = j % 2
        dev = self._dev[slot].ptr
        stream = self._stream.handle
        if self.strategy == "pinned":
            for fut in self._fills[slot]:
                fut.result()
            self._fills[slot] = None
            cu.memcpy_htod_async(dev, self._staging[slot].ptr, self.nbytes, stream)
        else:
            for k, src_off, dst_off, nb in self._segments(j):
                reg = self._registry.source(k, j) if self.strategy == "registered" else None
                if reg is not None:
                    src = reg.ptr(fmt.HEADER_BYTES + src_off)
                else:
                    src = self._src[k].__array_interface__["data"][0] + src_off
                cu.memcpy_htod_async(dev + dst_off, src, nb, stream)
        self._events[slot].record(stream)

    def _labels(self, j):
        parts = [self.batchset.file_arrays(k)[1][s // self.image_bytes:(s + nb) // self.image_bytes]
                 for k, s, _, nb in self._segments(j)]
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    # ----------------------------------------------------------------- public
    def next_batch(self):
        """The next :class:`DeviceBatch`, its copy complete; None at the end."""
        if self._closed:
            raise ConfigError("this DeviceFeeder is closed")
        i = self._pos
        if i >= self.num_batches:
            return None
        if not self._primed:
            self._prepare(0)
            self._issue(0)
            if self.num_batches > 1:
                self._prepare(1)
            self._primed = True
        slot = i % 2
        self._events[slot].synchronize()
        self._pos = i + 1
        if i + 1 < self.num_batches:
            self._issue(i + 1)
        if i + 2 < self.num_batches:
            self._prepare(i + 2)
        self._batches_done += 1
        index = self.first + i
        return DeviceBatch(self._dev[slot].ptr, self.nbytes, self.shape, index,
                           index * self.batch_size, self._labels(i))

    def reset(self):
        """Start again from the first batch (registrations are kept)."""
        if self._closed:
            raise ConfigError("this DeviceFeeder is closed")
        self._wait_fills()
        self._stream.synchronize()
        self._pos = 0
        self._primed = False

    def __iter__(self):
        if self._pos or self._primed:
            self.reset()
        while True:
            b = self.next_batch()
            if b is None:
                return
            yield b

    def __len__(self):
        return self.num_batches

    # --------------------------------------------------------------- lifetime
    def _wait_fills(self):
        for slot, futs in enumerate(self._fills):
            for fut in futs or ():
                fut.cancel()
            for fut in futs or ():
                if not fut.cancelled():
                    try:
                        fut.result()
                    except BaseException:  # noqa: BLE001 - only waiting for the thread to let go
                        pass
            self._fills[slot] = None

    def close(self):
        """Release everything (idempotent).  Waits for in-flight copies first."""
        if self._closed:
            return
        self._closed = True
        errors = []

        def attempt(fn):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - release the rest, report the first
                errors.append(exc)

        if self._pool is not None:
            attempt(self._wait_fills)
            attempt(lambda: self._pool.shutdown(wait=True, cancel_futures=True))
            self._pool = None
        if self._stream is not None and self._stream.handle:
            attempt(self._stream.synchronize)
        if self._registry is not None:
            attempt(self._registry.close)
            self._registry = None
        for obj in self._staging + self._dev + self._events:
            attempt(obj.close)
        self._staging, self._dev, self._events = [], [], []
        if self._stream is not None:
            attempt(self._stream.close)
        self._src = []
        if errors:
            log.error("DeviceFeeder.close: %d release step(s) failed; first: %s", len(errors), errors[0])
            raise errors[0]

    @property
    def closed(self):
        return self._closed

    @property
    def registered_files(self):
        """Indices of the files currently registered by this feeder."""
        return [] if self._registry is None else self._registry.registered

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            if exc_type is None:
                raise
            log.exception("DeviceFeeder.close failed while handling %s", exc_type.__name__)

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                log.warning("DeviceFeeder was not closed; releasing its GPU resources now "
                            "(use it as a context manager)")
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def __repr__(self):
        return (f"DeviceFeeder({self.num_batches} batches of {self.shape}, strategy={self.strategy}, "
                f"{'closed' if self._closed else 'open'})")
