"""``FileRegistry``: page-locks the mapped batch files of a set in the background.

Registration (``cudaHostRegister``) pins every page of a file and costs about
as much time as copying it over PCIe, and the driver serialises it (more
threads do not register faster).  So the feeder does not wait for it: the
registry's ``threads`` background threads walk the files in the order the
batches need them, while the feeder *claims* each file when it plans a batch:

* registered (or registered by someone else) -> the copy engine reads it in place;
* being registered right now -> the copy waits for that registration;
* not started yet -> the feeder copies it through pinned staging this time,
  and the file moves to the back of the registration queue, so it is
  registered for the next pass all the same.

The two paths therefore share the work of the first pass by themselves, and
every file ends up registered (up to ``limit`` bytes; files past the limit are
always staged).  With ``threads=0`` a claimed file is registered on the
calling thread.  Registrations are released on ``close()``.
"""
import collections
import logging
import threading
import time

from . import runtime as cu
from .buffers import PAGE, RegisteredMapping, host_address
from ..errors import CudaError

log = logging.getLogger(__name__)

_BORROWED = "borrowed"   # registered by someone else: usable in place, not ours to unregister
_REFUSED = "refused"     # registration failed: stage this file

DIRECT, STAGE = "direct", "stage"


class FileRegistry:
    """Registrations of the files of one ``BatchSet``.

    Parameters
    ----------
    batchset : BatchSet
    readonly : bool
        Register with ``cudaHostRegisterReadOnly``.
    threads : int
        Background registration threads (0: register on the calling thread when claimed).
    limit : int
        Most bytes registered at once; files past it are staged, never registered.
    context : int
        CUDA context handle the worker threads bind to.
    """

    def __init__(self, batchset, readonly, threads, limit, context):
        self.batchset, self.readonly, self.limit, self.context = batchset, readonly, int(limit), context
        self.threads = max(0, int(threads))
        self._done = {}                     # k -> RegisteredMapping | _BORROWED | _REFUSED
        self._running = {}                  # k -> threading.Event, set when the registration ends
        self._queue = collections.deque()   # files still to register, in order
        self._cond = threading.Condition()
        self._closing = False
        self._workers = []
        self._active = 0                    # workers that have not decided to exit (under the lock)
        self._started = False
        self.stats = {"register_s": 0.0, "registered_files": 0, "unregistered_files": 0, "fallback_files": 0}

    # ------------------------------------------------------------ registering
    def probe(self, k):
        """Register and release the first page of file ``k``; raise ``CudaError`` if refused.

        Tells whether the driver accepts this kind of registration at all
        (used to pick the strategy) for the price of one page.
        """
        buf = self.batchset.file_buffer(k)
        base = host_address(buf)
        if base % PAGE:
            raise CudaError(f"{self.batchset.paths[k]}: mapping at 0x{base:x} is not page aligned",
                            name="cudaErrorInvalidValue")
        cu.host_register(base, PAGE, readonly=self.readonly)
        cu.host_unregister(base)

    def _register(self, k):
        t0 = time.perf_counter()
        try:
            result = RegisteredMapping(self.batchset.file_buffer(k), readonly=self.readonly,
                                       name=self.batchset.paths[k])
            counted = "registered_files"
        except CudaError as exc:
            if exc.name == "cudaErrorHostMemoryAlreadyRegistered":
                log.info("%s is already registered by another user; copying from it in place",
                         self.batchset.paths[k])
                result, counted = _BORROWED, None
            else:
                log.warning("%s: registration refused (%s); staging this file through pinned memory",
                            self.batchset.paths[k], exc.name)
                result, counted = _REFUSED, "fallback_files"
        with self._cond:
            self.stats["register_s"] += time.perf_counter() - t0
            if counted:
                self.stats[counted] += 1
        return result

    def _file_bytes(self, k):
        return -(-self.batchset.file_buffer(k).size() // PAGE) * PAGE

    def _held(self):
        regs = [k for k, r in self._done.items() if isinstance(r, RegisteredMapping)]
        return sum(self._file_bytes(k) for k in regs + list(self._running))

    def _fits(self, k):
        return self._held() + self._file_bytes(k) <= self.limit

    def _next_job(self):
        """Pop the next file to register (under the lock); None when there is none (or the limit is reached)."""
        while self._queue and not self._closing:
            k = self._queue[0]
            if k in self._done or k in self._running:
                self._queue.popleft()
                continue
            if not self._fits(k):
                return None
            self._queue.popleft()
            self._running[k] = threading.Event()
            return k
        return None

    def _finish(self, k, result):
        with self._cond:
            self._done[k] = result
            self._running.pop(k).set()
            self._cond.notify_all()

    def _work(self):
        if self.context:
            cu.set_current_context(self.context)
        while True:
            with self._cond:
                k = self._next_job()
                if k is None:
                    self._active -= 1
                    return
            try:
                result = self._register(k)
            except BaseException:
                self._finish(k, _REFUSED)
                raise
            self._finish(k, result)

    def plan(self, files, start=True):
        """Queue ``files`` for registration in this order; with ``start`` (and threads > 0) begin in the background.

        ``start=False`` only queues them; :meth:`start` (or a later ``plan``) begins.
        """
        with self._cond:
            seen = set(self._queue)
            for k in files:
                if k not in self._done and k not in self._running and k not in seen:
                    self._queue.append(k)
                    seen.add(k)
            self._started = self._started or start
            if not self.threads or not self._queue or not self._started:
                return
            self._workers = [t for t in self._workers if t.is_alive()]
            while not self._closing and self._active < min(self.threads, len(self._queue)):
                t = threading.Thread(target=self._work, name="int8batch-register", daemon=True)
                self._active += 1
                t.start()
                self._workers.append(t)

    def start(self):
        """Begin registering what is queued (background threads)."""
        self.plan((), start=True)

    def claim(self, k, wait=True):
        """How to copy file ``k`` now.

        Returns
        -------
        (DIRECT, None)
            Registered (by us or someone else): copy in place.
        (DIRECT, threading.Event)
            Being registered: copy in place once the event is set (only with ``wait``).
        (STAGE, None)
            Not registered and not ``wait`` (or refused, or past the limit):
            copy through pinned staging; the file stays queued for
            registration, behind the others.

        With ``wait`` (or ``threads=0``) a file not registered yet is
        registered on the calling thread, then ``(DIRECT, None)``.
        """
        with self._cond:
            if (k not in self._done and k not in self._running and (not self.threads or wait)
                    and self._fits(k)):
                self._running[k] = threading.Event()
                sync = True
            else:
                sync = False
        if sync:                    # threads=0, or not reached yet by them: register on the calling thread
            self._finish(k, self._register(k))
        with self._cond:
            reg = self._done.get(k)
            if reg is not None:
                return (STAGE, None) if reg is _REFUSED else (DIRECT, None)
            if k in self._running:
                return (DIRECT, self._running[k]) if wait else (STAGE, None)
            if self.threads:                    # not started: stage it now, register it later
                try:
                    self._queue.remove(k)
                except ValueError:
                    pass
                self._queue.append(k)
                self.plan((), start=False)
            return STAGE, None

    def wait(self, timeout=None):
        """Wait until the background threads have nothing left to register; True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._workers):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._workers)

    @property
    def registered(self):
        with self._cond:
            return sorted(k for k, r in self._done.items() if isinstance(r, RegisteredMapping))

    def close(self):
        """Stop the background threads (a registration under way finishes), then unregister everything.

        Unregistering runs on the calling thread: the driver serialises it and
        one thread is the fastest (measured).
        """
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
        for t in self._workers:
            t.join()
        self._workers = []
        errors = []
        regs = [r for r in self._done.values() if isinstance(r, RegisteredMapping)]
        self._done.clear()
        for r in regs:
            try:
                r.close()
                self.stats["unregistered_files"] += 1
            except Exception as exc:  # noqa: BLE001 - release the rest, report the first
                errors.append(exc)
        if errors:
            raise errors[0]
