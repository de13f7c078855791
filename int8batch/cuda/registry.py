"""``FileRegistry``: page-locks the mapped batch files of a set, ahead of need.

Registration (``cudaHostRegister``) pins every page of a file and costs about
as much time as copying it over PCIe, so it runs on ``threads`` background
threads (each bound to the feeder's CUDA context) while the copy engine moves
earlier batches; with ``threads=0`` it runs on the calling thread.  Files stay
registered (up to ``limit`` bytes) so a second pass costs only the copies, and
are unregistered in parallel on ``close()``.
"""
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import runtime as cu
from .buffers import RegisteredMapping
from ..errors import CudaError

log = logging.getLogger(__name__)

_BORROWED = "borrowed"   # registered by someone else: usable, not ours to unregister
_REFUSED = "refused"     # registration failed: copy this file pageable


class FileRegistry:
    """Registrations of the files of one ``BatchSet``.

    Parameters
    ----------
    batchset : BatchSet
    readonly : bool
        Register with ``cudaHostRegisterReadOnly``.
    threads : int
        Background registration threads (0: register on the calling thread).
    limit : int
        Most bytes kept registered; least recently used files go first.
    context : int
        CUDA context handle the worker threads bind to.
    """

    def __init__(self, batchset, readonly, threads, limit, context):
        self.batchset, self.readonly, self.limit, self.context = batchset, readonly, int(limit), context
        self.threads = max(0, int(threads))
        self._done = {}        # k -> RegisteredMapping | _BORROWED | _REFUSED
        self._pending = {}     # k -> Future
        self._last_use = {}
        self._lock = threading.Lock()
        self.stats = {"register_s": 0.0, "registered_files": 0, "unregistered_files": 0, "fallback_files": 0}
        self._pool = (ThreadPoolExecutor(self.threads, thread_name_prefix="int8batch-register",
                                         initializer=self._bind) if self.threads else None)

    def _bind(self):
        if self.context:
            cu.set_current_context(self.context)

    def _register(self, k):
        t0 = time.perf_counter()
        try:
            result = RegisteredMapping(self.batchset.file_buffer(k), readonly=self.readonly,
                                       name=self.batchset.paths[k])
            counted = "registered_files"
        except CudaError as exc:
            if exc.name == "cudaErrorHostMemoryAlreadyRegistered":
                log.info("%s is already registered by another user; copying from it as is",
                         self.batchset.paths[k])
                result, counted = _BORROWED, None
            else:
                log.warning("%s: registration refused (%s); copying this file pageable",
                            self.batchset.paths[k], exc.name)
                result, counted = _REFUSED, "fallback_files"
        with self._lock:
            self.stats["register_s"] += time.perf_counter() - t0
            if counted:
                self.stats[counted] += 1
        return result

    def register_now(self, k):
        """Register file ``k`` on this thread; raise ``CudaError`` if refused (used to pick the strategy)."""
        reg = RegisteredMapping(self.batchset.file_buffer(k), readonly=self.readonly, name=self.batchset.paths[k])
        self._done[k] = reg
        self.stats["registered_files"] += 1

    def _bytes_held(self):
        size = self.batchset.file_buffer(0).size() if self.batchset.num_files else 0
        return size * (len(self._pending) + sum(isinstance(r, RegisteredMapping) for r in self._done.values()))

    def request(self, files, busy_after):
        """Start registering ``files`` (in order) unless done or under way.

        ``busy_after``: files last used by a batch at or after this position may
        still be read by an in-flight copy and are never evicted.
        """
        for k in files:
            if k in self._done or k in self._pending:
                continue
            self._evict(set(files), busy_after)
            if self._pool is None:
                self._done[k] = self._register(k)
            else:
                self._pending[k] = self._pool.submit(self._register, k)

    def source(self, k, j):
        """Registered mapping for file ``k`` used by batch ``j`` (waits if under way); None: copy pageable."""
        fut = self._pending.pop(k, None)
        if fut is not None:
            self._done[k] = fut.result()
        elif k not in self._done:
            self._done[k] = self._register(k)
        self._last_use[k] = j
        reg = self._done[k]
        return reg if isinstance(reg, RegisteredMapping) else None

    def _evict(self, keep, busy_after):
        if self._bytes_held() < self.limit:
            return
        for k in sorted(self._done, key=lambda f: self._last_use.get(f, -1)):
            if self._bytes_held() < self.limit:
                break
            reg = self._done[k]
            if k in keep or not isinstance(reg, RegisteredMapping) or self._last_use.get(k, -1) >= busy_after:
                continue
            del self._done[k]
            reg.close()
            self.stats["unregistered_files"] += 1

    @property
    def registered(self):
        return sorted(k for k, r in self._done.items() if isinstance(r, RegisteredMapping))

    def close(self):
        """Finish or cancel pending registrations, then unregister everything (in parallel)."""
        errors = []
        for fut in self._pending.values():
            fut.cancel()
        for k, fut in self._pending.items():
            if not fut.cancelled():
                try:
                    self._done[k] = fut.result()
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
        self._pending.clear()
        regs = [r for r in self._done.values() if isinstance(r, RegisteredMapping)]
        self._done.clear()
        if self._pool is not None and len(regs) > 1:
            for fut in [self._pool.submit(r.close) for r in regs]:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
            regs = [r for r in regs if r.registered]   # anything a worker could not release
        for r in regs:
            try:
                r.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if errors:
            raise errors[0]
