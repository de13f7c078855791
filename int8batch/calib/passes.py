"""The statistics passes of ``calibrate()``: the model over the calibration window, activations to collectors.

:class:`Pass` runs ONNX Runtime on the host (any provider) and hands NumPy
activations to the collectors; :class:`DevicePass` keeps everything on the
GPU (batch files -> device -> ONNX Runtime CUDA -> the collectors' device
kernels).  Both size the sub-batches of a dynamic-batch model from the
inferred shapes and give every run of a pass the same shape.
"""
import logging
import time

from .._progress import reporter
from ..onnx.graph import model_label
from ..cuda.feeder import DeviceFeeder
from ..cuda.kernels import DeviceKernels, DeviceTensor
from .collector import HOST_KERNELS
from .ort_exec import ActivationRunner, DeviceActivationRunner
from .settings import ACTIVATION_BUDGET, DEVICE_BUDGET

log = logging.getLogger(__name__)


class Pass:
    """Runs the model over the window's batches, in sub-batches, feeding collectors.

    A dynamic-batch model runs on sub-batches sized so that one sub-batch's
    activations stay under ``ACTIVATION_BUDGET`` bytes: peak memory does not
    grow with the batch size, and the histograms are the same (they do not
    depend on how the data is split).  The bytes per image come from the
    inferred shapes (:meth:`ModelFacts.bytes_per_image`) or, where shape
    inference cannot tell, from a probe run on one image whose activations are
    not collected; either way every collected run has the sub-batch's shape.
    """

    kernels = HOST_KERNELS

    def __init__(self, facts, bs, win, cfg, model):
        self.bs, self.win = bs, win
        self.budget = self._budget(cfg)
        self.owned = []     # collectors holding resources, closed on exit
        shape = facts.input.shape
        self.dynamic = not isinstance(shape[0] if shape else None, int)
        self.chunk = win.batch_size
        self.seconds = 0.0
        self.runner = self._runner(facts, cfg, model_label(model, None))
        self.per_image = facts.bytes_per_image(self.runner.tensor_names) if self.dynamic else None
        self.measured = not self.dynamic

    def _budget(self, cfg):
        return ACTIVATION_BUDGET

    def _sub_batch(self, limit):
        return limit

    def _runner(self, facts, cfg, label):
        return ActivationRunner(facts.model, facts.quantizable, providers=cfg.providers,
                                intra_op_threads=cfg.intra_op_threads,
                                batch_dims=(self.win.batch_size,) + tuple(self.bs.image_shape), label=label,
                                types=facts.types)

    @property
    def executed_by(self):
        return self.runner.executed_by

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.runner.close()

    def _run(self, data):
        return self.runner.run(data)

    def _size(self, per_image):
        self.chunk = self._sub_batch(int(max(1, min(self.win.batch_size, self.budget // max(per_image, 1)))))

    def _measure(self, data):
        """Size the sub-batches (a dynamic-batch model, before its first run)."""
        per_image = self.per_image
        if per_image is None:
            t = time.perf_counter()
            outs = self._run(data[0:1])
            self.seconds += time.perf_counter() - t
            per_image = sum(a.nbytes for a in outs.values())
            del outs
        self._size(per_image)
        self.measured = True
        log.debug("sub-batches of %d images (%.1f MB of activations per image%s)", self.chunk, per_image / 1e6,
                  "" if self.per_image is not None else ", measured on one image")

    def feed(self, data, collector):
        """Run one batch's images and hand every activation of each sub-batch to ``collector``."""
        if not self.measured:
            self._measure(data)
        s = 0
        while s < len(data):
            n = self.chunk
            t = time.perf_counter()
            outs = self._run(data[s:s + n])
            self.seconds += time.perf_counter() - t
            if self.per_image is not None:
                self._check_estimate(outs, min(n, len(data) - s))
            collector.collect_many(outs)
            del outs
            s += n

    def _check_estimate(self, outs, images):
        """The first run checks the shape-inferred bytes per image; more than estimated re-sizes the rest."""
        real = sum(a.nbytes for a in outs.values()) // max(images, 1)
        estimate, self.per_image = self.per_image, None      # checked once
        if real > estimate * 1.25:
            log.warning("the activations take %.1f MB per image, not the %.1f MB shape inference gave: "
                        "sub-batches re-sized to stay under the budget", real / 1e6, estimate / 1e6)
            self._size(real)

    def first_batch(self, collector):
        self.feed(next(iter(self.bs.batches(window=self.win))).data, collector)

    def sweep(self, collector, label, progress):
        tick = reporter(progress, label, "batches", legacy=True)
        for i, b in enumerate(self.bs.batches(window=self.win, release=True)):
            self.feed(b.data, collector)
            if tick:
                tick(i + 1, self.win.count)
        log.debug("%s: %d batches done (sub-batches of %d)", label, self.win.count, self.chunk)


class DevicePass(Pass):
    """:class:`Pass` on the GPU: batch files -> device -> ONNX Runtime CUDA -> statistics on the device.

    The batches reach the device through :class:`~int8batch.cuda.DeviceFeeder`
    (registered memory-mapped files, no host staging), are bound to the
    session with IOBinding, every activation stays in device memory, and the
    collectors compute their statistics there with
    :class:`~int8batch.cuda.kernels.DeviceKernels` (the CPU kernels'
    arithmetic; only histogram rows and scalars come back).  The activations
    of one run stay under ``cfg.device_budget`` bytes (default
    :data:`DEVICE_BUDGET`), whatever the number of images: a dynamic-batch
    model runs in sub-batches of one size, the largest divisor of the batch
    size that fits (ONNX Runtime's CUDA convolutions set up again on every
    change of shape, :meth:`DeviceActivationRunner.run_device`).  Everything
    is freed on exit, also after an exception.
    """

    def __init__(self, facts, bs, win, cfg, model):
        self.kernels, self.owned = None, []
        self.feeder = cfg.device_feeder
        try:
            self.kernels = DeviceKernels()
            super().__init__(facts, bs, win, cfg, model)
        except BaseException:
            self.__exit__()
            raise

    def _runner(self, facts, cfg, label):
        return DeviceActivationRunner(facts.model, facts.quantizable, intra_op_threads=cfg.intra_op_threads,
                                      batch_dims=(self.win.batch_size,) + tuple(self.bs.image_shape),
                                      label=label, types=facts.types)

    def __exit__(self, *exc):
        try:
            for c in self.owned:
                c.close()
            self.owned = []
            if getattr(self, "runner", None) is not None:
                self.runner.close()
        finally:
            if self.kernels is not None:
                self.kernels.close()
                self.kernels = None

    def _budget(self, cfg):
        return int(cfg.device_budget or DEVICE_BUDGET)

    def _sub_batch(self, limit):
        """The largest divisor of the batch size <= ``limit``: every run has the same shape."""
        b = self.win.batch_size
        return max(d for d in range(1, b + 1) if b % d == 0 and d <= max(1, limit))

    def _run(self, data):
        # the collectors' last launches read the previous run's activations, which ONNX Runtime
        # may reuse for this run's: they finish first
        self.kernels.synchronize()
        return self.runner.run_device(data)

    def _batches(self):
        with DeviceFeeder(self.bs, window=self.win, strategy=self.feeder) as feeder:
            for b in feeder:
                yield DeviceTensor(b.ptr, b.shape)

    def first_batch(self, collector):
        for b in self._batches():
            self.feed(b, collector)
            return

    def sweep(self, collector, label, progress):
        tick = reporter(progress, label, "batches", legacy=True)
        for i, b in enumerate(self._batches()):
            self.feed(b, collector)
            if tick:
                tick(i + 1, self.win.count)
        log.debug("%s on the GPU: %d batches done (sub-batches of %d)", label, self.win.count, self.chunk)
