"""``DeviceFeeder``: batches of a :class:`~int8batch.reader.BatchSet` delivered to the GPU.

For every batch it hands out a device pointer that stays valid until the next
batch is asked for, while the following batches are already on their way
(``depth`` device buffers on one stream, an event per buffer to know when its
copy is done).

Strategies (``strategy=``):

``registered``
    Each batch file's read-only mapping is page-locked in place with
    ``cudaHostRegister(..., cudaHostRegisterReadOnly)`` and batches are copied
    by the GPU's copy engine straight out of the page cache: no host copy.
    Registration runs on ``register_threads`` background threads in the order
    the batches need the files; a file whose registration has not started
    when its batch is planned is copied through pinned staging this once (and
    registered afterwards), so the first pass is not held back by
    registration.  Registrations are kept (up to ``register_limit`` bytes;
    files past it are always staged), so a later pass costs only the copies.
    A batch that straddles two files is copied as two pieces.
``pinned``
    ``copy_threads`` threads copy the batches from the mapping into a ring of
    page-locked chunks, each copied asynchronously to the device as soon as
    it is filled.
``pageable``
    ``cudaMemcpyAsync`` straight from the mapping (the driver stages it).  Last
    resort: no overlap.
``auto`` (default)
    ``registered`` when the device supports read-only registration and the
    driver accepts it (probed on one page of the first file), else
    ``pinned``.  The choice is logged.

Use it as a context manager: device memory, pinned memory, registrations,
events, the stream (if owned) and the threads are released on exit, also on an
exception or KeyboardInterrupt.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import runtime as cu
from .buffers import DeviceBuffer, StagingRing
from .registry import DIRECT, FileRegistry
from ..errors import ConfigError, CudaError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "registered", "pinned", "pageable")
DEFAULT_REGISTER_LIMIT = 16 << 30
STAGE_CHUNK_BYTES = 8 << 20


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


class _Plan:
    """How batch ``j`` gets to its device buffer: direct copies to issue, staged chunks under way."""

    __slots__ = ("direct", "staged")

    def __init__(self):
        self.direct = []    # (dst, src address, nbytes, threading.Event or None)
        self.staged = []    # futures of StagingRing.copy

    def ready(self):
        return all(w is None or w.is_set() for *_, w in self.direct) and all(f.done() for f in self.staged)


class DeviceFeeder:
    """Stream the batches of a ``BatchSet`` to the GPU, ``depth`` buffers deep.

    Parameters
    ----------
    batchset : BatchSet
        An open batch set (its mappings must outlive the feeder).
    batch_size : int or None
        Images per batch (default: the files' N).  Batches may straddle files,
        exactly as ``BatchSet.batches`` serves them.
    first, max_batches : int
        Skip ``first`` batches; stop after ``max_batches`` (None: all full batches).
    window : int8batch.window.Window, optional
        The batches to stream, from ``batchset.window(...)`` (either skip
        semantics); replaces ``batch_size``, ``first`` and ``max_batches``.
        Without it the window is ``batchset.window(batch_size, first,
        max_batches, skip="exact", allow_empty=True)``, as ``BatchSet.batches``
        serves it.
    strategy : {"auto", "registered", "pinned", "pageable"}
    copy_threads : int
        Host threads filling pinned staging chunks (``pinned``, and files not
        yet registered under ``registered``).
    stream : None, int or stream object
        Stream for the copies (a raw handle, a CuPy/torch stream...); None
        creates a private non-blocking stream.  Passing the consumer's stream
        orders the copies after the consumer's work on the previous buffers.
    device : int or None
        Device whose primary context is used when no context is current.
    register_limit : int
        Most bytes kept registered at once; files past it are staged.
    register_threads : int
        Background threads registering files (0: register on the calling
        thread when a batch is planned; nothing is staged then).
    depth : int
        Device buffers (>= 2): batches planned and copied ahead of the consumer.
    stage_chunks, stage_chunk_bytes : int
        Pinned staging ring: number and size of its chunks.
    register_during_copies : bool
        True (default): registration runs alongside the copies from the start;
        a batch whose file is being registered waits for it, and a file the
        background threads have not reached yet is registered by the planning
        thread.  False: files not registered when their batch is planned are
        staged, and background registration starts once the pass's last batch
        is planned (registration competes with the copy engine).

    Notes
    -----
    A pointer handed out for batch *i* is overwritten by batch *i+depth*,
    whose copy may start as soon as batch *i+1* is asked for: the consumer's
    GPU work on batch *i* must be finished (or ordered on ``stream``) by then.
    TensorRT's calibration loop meets this.
    """

    def __init__(self, batchset, batch_size=None, first=0, max_batches=None, strategy="auto",
                 copy_threads=4, stream=None, device=None, register_limit=DEFAULT_REGISTER_LIMIT,
                 register_threads=1, depth=3, stage_chunks=8, stage_chunk_bytes=STAGE_CHUNK_BYTES,
                 register_during_copies=True, window=None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"feeder strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if int(depth) < 2:
            raise ConfigError(f"depth must be >= 2 (double buffering), got {depth}")
        self.batchset = batchset
        if window is None:
            if max_batches is not None:
                max_batches = max(0, int(max_batches))
            window = batchset.window(batchset.per_file if batch_size is None else batch_size, first, max_batches,
                                     skip="exact", allow_empty=True)
        elif window.count and window.stop_image > batchset.num_images:
            raise ConfigError(f"{batchset.folder}: the window ({window.describe()}) needs {window.stop_image} "
                              f"images but the set holds {batchset.num_images}")
        self.window = window
        self.batch_size = window.batch_size
        self.first = window.skipped           # batches really skipped
        self.num_batches = window.count
        n, c, h, w = batchset.dims
        self.shape = (self.batch_size, c, h, w)
        self.image_bytes = 4 * c * h * w
        self.nbytes = self.batch_size * self.image_bytes
        self.copy_threads = max(1, int(copy_threads))
        self.register_limit = int(register_limit)
        self.register_threads = max(0, int(register_threads))
        self.depth = int(depth)
        self.register_during_copies = bool(register_during_copies)
        self.requested = strategy
        self.strategy = None
        self._counts = {"batches": 0, "direct_bytes": 0, "staged_bytes": 0}
        self._registry = None
        self._ring = None
        self._closed = False
        self._pos = self._planned = self._issued = 0
        self._plans = {}
        self._stream = None
        self._dev, self._events = [], []
        self._pool = None
        self._src = [batchset.file_arrays(k)[0].reshape(-1).view(np.uint8) for k in range(batchset.num_files)]
        self._addr = [a.__array_interface__["data"][0] for a in self._src]
        try:
            self.device = cu.ensure_context(device)
            self._stream = cu.Stream(stream)
            ctx = cu.current_context()
            self._pool = ThreadPoolExecutor(self.copy_threads, thread_name_prefix="int8batch-copy",
                                            initializer=cu.set_current_context, initargs=(ctx,))
            if strategy != "pageable":     # chunks are allocated by the first staged copy
                self._ring = StagingRing(stage_chunks, min(int(stage_chunk_bytes), max(self.nbytes, 1)),
                                         self._stream.handle)
            for _ in range(self.depth):
                self._dev.append(DeviceBuffer(self.nbytes))
                self._events.append(cu.Event())
            self.strategy = self._resolve(strategy)
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
                registry.probe(k0)
            except CudaError as exc:
                if strategy == "registered":
                    raise CudaError(
                        f"{self.batchset.paths[k0]}: cudaHostRegister of the read-only mapping was refused "
                        f"({exc}); use strategy='pinned' (or 'auto' to fall back automatically)",
                        name=exc.name, code=exc.code) from exc
                log.warning("host registration of %s refused (%s; read-only registration %ssupported); "
                            "falling back to pinned staging", self.batchset.paths[k0], exc.name,
                            "" if readonly else "not ")
                return "pinned"
            files = []
            for j in range(self.num_batches):
                files += [seg[0] for seg in self._segments(j) if not files or files[-1] != seg[0]]
            registry.plan(files, start=self.register_during_copies)
        self._registry = registry
        return "registered"

    @property
    def stats(self):
        """Counters: batches served, bytes copied in place / staged, registration seconds and file counts."""
        out = dict(self._counts)
        if self._registry is not None:
            out.update(self._registry.stats)
        return out

    def wait_registered(self, timeout=None):
        """Wait until background registration has nothing left to do; True when done."""
        return True if self._registry is None else self._registry.wait(timeout)

    # ------------------------------------------------------------- pipeline
    def _segments(self, j):
        """``[(file, byte offset in file data, byte offset in batch, nbytes), ...]`` of batch ``j``."""
        n = self.batchset.per_file
        start = self.window.start_image + j * self.batch_size
        segs, done = [], 0
        while done < self.batch_size:
            k, off = divmod(start + done, n)
            take = min(self.batch_size - done, n - off)
            segs.append((k, off * self.image_bytes, done * self.image_bytes, take * self.image_bytes))
            done += take
        return segs

    def _plan(self, j):
        """Decide how each piece of batch ``j`` travels and start the staged ones."""
        plan = _Plan()
        dev = self._dev[j % self.depth].ptr
        for k, src_off, dst_off, nb in self._segments(j):
            if self.strategy == "registered":
                how, waiter = self._registry.claim(k, wait=self.register_during_copies)
            else:
                how, waiter = (DIRECT if self.strategy == "pageable" else "stage"), None
            if how == DIRECT:
                plan.direct.append((dev + dst_off, self._addr[k] + src_off, nb, waiter))
                self._counts["direct_bytes"] += nb
            else:
                src = self._src[k][src_off:src_off + nb]
                step = self._ring.chunk_bytes
                plan.staged += [self._pool.submit(self._ring.copy, dev + dst_off + a, src[a:a + step])
                                for a in range(0, nb, step)]
                self._counts["staged_bytes"] += nb
        self._plans[j] = plan

    def _issue(self, j):
        """Queue the direct copies of batch ``j``, wait for its staged chunks, record its event."""
        plan = self._plans.pop(j)
        stream = self._stream.handle
        for dst, src, nb, waiter in plan.direct:
            if waiter is not None:
                waiter.wait()
            cu.memcpy_htod_async(dst, src, nb, stream)
        for fut in plan.staged:
            fut.result()        # the chunk's copy is queued on the stream
        self._events[j % self.depth].record(stream)

    def _advance(self, block_until):
        """Plan every batch whose buffer is free; issue in order, waiting for batches up to ``block_until``."""
        limit = min(self.num_batches, max(self._pos - 1, 0) + self.depth)
        while self._planned < limit:
            self._plan(self._planned)
            self._planned += 1
            if self._planned == self.num_batches and self._registry is not None:
                self._registry.start()     # no-op once started
        while self._issued < self._planned and (self._issued <= block_until
                                                or self._plans[self._issued].ready()):
            self._issue(self._issued)
            self._issued += 1

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
        self._advance(i)
        self._events[i % self.depth].synchronize()
        self._pos = i + 1
        self._advance(i + 1)        # the next batch is on its way before this one is handed out
        self._counts["batches"] += 1
        index = self.first + i
        return DeviceBatch(self._dev[i % self.depth].ptr, self.nbytes, self.shape, index,
                           index * self.batch_size, self._labels(i))

    def reset(self):
        """Start again from the first batch (registrations are kept)."""
        if self._closed:
            raise ConfigError("this DeviceFeeder is closed")
        self._drop_plans()
        self._stream.synchronize()
        self._pos = self._planned = self._issued = 0

    def __iter__(self):
        if self._pos or self._planned:
            self.reset()
        while True:
            b = self.next_batch()
            if b is None:
                return
            yield b

    def __len__(self):
        return self.num_batches

    # --------------------------------------------------------------- lifetime
    def _drop_plans(self):
        """Cancel staged chunks not started and wait for the running ones to let go."""
        futs = [f for plan in self._plans.values() for f in plan.staged]
        self._plans.clear()
        for fut in futs:
            fut.cancel()
        errors = []
        for fut in futs:
            if not fut.cancelled():
                try:
                    fut.result()
                except BaseException as exc:  # noqa: BLE001 - only waiting for the thread to let go
                    errors.append(exc)
        if errors:
            log.debug("DeviceFeeder: %d staged copies failed while being dropped: %s", len(errors), errors[0])

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

        if self._ring is not None:
            self._ring.stop()            # copies waiting for a chunk give up
        if self._pool is not None:
            attempt(self._drop_plans)
            attempt(lambda: self._pool.shutdown(wait=True, cancel_futures=True))
            self._pool = None
        if self._stream is not None and self._stream.handle:
            attempt(self._stream.synchronize)
        if self._registry is not None:
            attempt(self._registry.close)
            self._registry = None
        if self._ring is not None:
            attempt(self._ring.close)
            self._ring = None
        for obj in self._dev + self._events:
            attempt(obj.close)
        self._dev, self._events = [], []
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
