"""``calibrate()``: batch files + an FP32 ONNX model -> INT8 scales and every artefact.

One streaming pass of ONNX Runtime over the batches feeds per-tensor |x|
histograms (O(bins) memory per tensor, never the activations themselves);
the thresholds are then computed per tensor and written as

- ``calibration.cache``: TensorRT calibration cache (TensorRT 10 ``--calib``),
- ``dynamic_range.txt``: ``name:amax`` lines (sampleINT8API format),
- ``calibration.json``: amax, observed max, method and saturation per tensor,
- ``model.qdq.onnx``: explicit Q/DQ model for TensorRT 11 / strongly typed 10.
"""
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .._progress import reporter
from ..errors import CalibrationError, ConfigError
from ..reader import BatchSet
from ..trt import vocab
from . import cache as cache_io
from . import thresholds as th
from .collector import HistogramCollector, MaxCollector

log = logging.getLogger(__name__)

#: "auto" (the default): observed max for tensors whose op bounds them (ReLU6/Clip,
#: Sigmoid, Tanh, Softmax: clipping them only loses signal), the smallest expected
#: quantization error (MSE) for every other tensor, and for the network input, when
#: the batch files hold normalized 8-bit pixels that 127 steps cover, the pixel step
#: itself (:func:`pixel_step`: the input then quantizes exactly); the Q/DQ model
#: leaves the rare activation that INT8 alone damages in float (see ``keep_float``).
METHODS = ("auto",) + th.METHODS
DEFAULT_METHOD = "auto"
# the TensorRT calibrator whose cache header a method's scales are written under (vocab names)
CACHE_ALGORITHM = {"minmax": "minmax"}  # every other method: entropy2
ACTIVATION_BUDGET = 256 << 20  # bytes of activations per ONNX Runtime call
# keep_float="auto": an activation whose quantization ALONE changes the output by more than this
# fraction of its energy (||y_q - y||^2 / ||y||^2, measured on SENSITIVITY_IMAGES images) stays float.
SENSITIVITY_THRESHOLD = 2.5e-4
SENSITIVITY_IMAGES = 4
SENSITIVITY_MAX_KEPT = 3
# bias correction: input means from the first calibration images only (they settle fast)
BIAS_CORRECTION_IMAGES = 256
ARTEFACTS = {"cache": "calibration.cache", "dynamic_range": "dynamic_range.txt",
             "json": "calibration.json", "qdq": "model.qdq.onnx"}
# with bias correction: the FP32 model with int8-grid weights and corrected biases (int8batch.onnx.snap)
CORRECTED_MODEL = "model.corrected.onnx"


@dataclass
class CalibrationResult:
    """What :func:`calibrate` computed and wrote."""

    amax: dict
    methods: dict
    stats: dict
    paths: dict = field(default_factory=dict)
    batches: int = 0
    images: int = 0
    seconds: float = 0.0
    inference_seconds: float = 0.0
    qdq_report: object = None
    kept_float: list = field(default_factory=list)
    cache_header: str = ""
    notes: list = field(default_factory=list)
    corrected_report: object = None   # QdqReport of model.corrected.onnx (weights snapped, biases corrected)
    dynamic_range_lines: int = 0

    def summary(self):
        """The run in one line, then one line per artefact written, then the notes."""
        lines = [f"calibrated {len(self.amax)} tensors on {self.batches} batches ({self.images} images) in "
                 f"{self.seconds:.2f} s ({self.inference_seconds:.2f} s in ONNX Runtime)"]
        width = max((len(p) for p in self.paths.values()), default=0)
        lines += [f"  {p:<{width}}  {self.describe(k)}".rstrip() for k, p in self.paths.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def describe(self, key):
        """What the artefact ``paths[key]`` holds, in a few words."""
        q, c = self.qdq_report, self.corrected_report
        if key == "cache":
            return f"TensorRT calibration cache: {len(self.amax)} scales, header {self.cache_header}"
        if key == "dynamic_range":
            return f"{self.dynamic_range_lines} name:amax lines (ITensor::setDynamicRange)"
        if key == "json":
            return "amax, method and saturation per tensor, and the settings"
        if key == "qdq" and q is not None:
            return (f"Q/DQ model (TensorRT 11, strongly typed 10): {len(q.activations)} activations and "
                    f"{len(q.weights)} weights int8, {len(q.skipped)} tensors kept float, {len(q.biases)} biases "
                    "corrected" + (f", {len(q.missing)} without a scale" if q.missing else ""))
        if key == "corrected" and c is not None:
            return (f"FP32 model for TensorRT 10 with the cache: {len(c.weights)} weights on the int8 grid, "
                    f"{len(c.biases)} biases corrected")
        if key == "report":
            return "histograms of the most saturated tensors"
        return ""


def choose_amax(method, stats, bounded=None, config=None):
    """Per-tensor amax for ``method`` over ``{name: TensorStats}``; returns (amax, method used)."""
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    bounded = bounded or {}
    amax, used = {}, {}
    for name, s in stats.items():
        m = method
        if method == "auto":
            m = "minmax" if name in bounded else "mse"
        amax[name] = th.compute_amax(m, s, config)
        used[name] = m
    return amax, used


def pixel_step(manifest):
    """Step between the values 8-bit pixels take after the pack's normalization, or None.

    The packer writes ``(pixel * scale - mean_c) / std_c``.  With one ``std``
    for every channel and every ``mean_c / scale`` a whole number, each value is
    a whole multiple of ``scale / std``: the network input lies on that
    lattice, and an int8 scale equal to it quantizes the input exactly.
    """
    pre = (manifest or {}).get("preprocess") or {}
    try:
        scale, mean, std = float(pre["scale"]), [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
    except (KeyError, TypeError, ValueError):
        return None
    if scale <= 0 or not std or any(v != std[0] for v in std) or std[0] <= 0:
        return None
    if any(abs(m / scale - round(m / scale)) > 1e-9 for m in mean):
        return None
    return scale / std[0]


class _LatticeCheck:
    """Checks that every value of one tensor is a whole multiple of ``step``."""

    def __init__(self, name, step):
        self.name, self.step, self.worst = name, float(step), 0.0

    def collect_many(self, arrays):
        x = arrays.get(self.name)
        if x is not None and self.worst <= 1e-3:
            k = np.asarray(x, np.float64) / self.step
            self.worst = max(self.worst, float(np.max(np.abs(k - np.rint(k)), initial=0.0)))

    @property
    def holds(self):
        return self.worst <= 1e-3


def _open_batches(batches):
    return (batches, False) if isinstance(batches, BatchSet) else (BatchSet(batches), True)


def calibrate(model, batches, out=None, method=DEFAULT_METHOD, batch_size=None, first=0, max_batches=None,
              two_pass=False, num_bins=2048, percentile=None, trt_version=None,
              cache_algorithm=None, providers=None, intra_op_threads=None, write_qdq=True,
              per_channel_weights=True, keep_float=None, bias_correction=True, progress=None):
    """Compute INT8 scales for ``model`` from batch files and write the artefacts.

    Parameters
    ----------
    model : str or PathLike
        FP32 ONNX model with one float input matching the batch files.
    batches : str, PathLike or BatchSet
        The calibration batch folder.
    out : str or PathLike, optional
        Output folder for the artefacts (created); None writes nothing.
    method : {"auto", "entropy", "minmax", "percentile", "mse"}
        "entropy" is TensorRT's KL-divergence recipe; "auto" (default) is
        documented in :data:`METHODS`.
    batch_size, first, max_batches :
        Calibration batches as sampleINT8's BatchStream serves them
        (:meth:`BatchSet.window` with ``skip="batchstream"``: when the batch
        size is not a multiple of the files' N, BatchStream skips at most
        ``max_batches`` batches, and so does this); batch size defaults to the
        model's fixed batch dimension, else the files' N.
    two_pass : bool
        Exact histograms: a first pass finds each tensor's max, the second
        histograms over a fixed range (twice the inference, no range growth).
    num_bins, percentile :
        Histogram resolution and the percentile of ``method="percentile"``.
    trt_version, cache_algorithm :
        Header of the TensorRT cache: the TensorRT version that will read it
        (None: the installed TensorRT, else the vocabulary's default, with a
        note in the result) and the calibrator whose header it carries (None:
        ``minmax`` for method minmax, ``entropy2`` otherwise; short or header
        names, see :mod:`int8batch.trt.vocab`).
    keep_float : int, "auto" or None
        Activations left without Q/DQ in the Q/DQ model, so TensorRT runs their
        consumers in higher precision (the cache and dynamic-range file still
        hold every tensor).  A sensitivity pass (:mod:`int8batch.calib.sensitivity`,
        on the first few calibration images) measures each quantized
        activation alone.  An int K keeps the K most sensitive; "auto" keeps
        those whose quantization alone costs more than
        ``SENSITIVITY_THRESHOLD`` of the output's energy (at most
        ``SENSITIVITY_MAX_KEPT``); None (default) means "auto" for
        ``method="auto"`` and 0 (pure INT8) for the other methods.
    bias_correction : bool
        Give each Conv / Gemm of the Q/DQ model a float bias that cancels the
        mean output shift its int8 weights cause on the calibration data
        (:mod:`int8batch.calib.biascorr`; the same pass collects the input
        means, over the first ``BIAS_CORRECTION_IMAGES`` images).  The cache
        and dynamic-range file do not change.
    progress : callable(done, total), optional
        Called after each calibration batch.  A callable that also takes a
        ``phase`` keyword (:mod:`int8batch._progress`) hears every pass: "max
        pass" (``two_pass``), "histograms" (or "histograms and bias sums"),
        "sensitivity" (tensors) and "writing artefacts" (files).

    Returns
    -------
    CalibrationResult
    """
    from ..onnx import graph as G
    from .ort_exec import ActivationRunner

    t0 = time.perf_counter()
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    config = th.DEFAULTS.replace(percentile=percentile)
    bs, owned = _open_batches(batches)
    try:
        m = G.load_model(model)
        names = G.quantizable_tensors(m)
        bounded = G.bounded_tensors(m)
        bounded = {k: v for k, v in bounded.items() if all(map(_finite, v))}
        info = G.input_info(m)[0]
        fixed = info.shape[0] if info.shape and isinstance(info.shape[0], int) else None
        batch_size = int(batch_size or fixed or bs.per_file)
        # BatchStream's skip semantics, as TensorRT's calibrators serve the same files
        try:
            win = bs.window(batch_size, first, max_batches, skip="batchstream")
        except ConfigError as exc:
            raise CalibrationError(str(exc), bs.folder) from exc
        total = win.count
        if win.skipped != win.first:
            log.warning("%s: TensorRT's BatchStream skips only %d of the %d batches asked for when the batch "
                        "size (%d) is not a multiple of the files' N (%d) and first > max_batches; "
                        "calibrating on %s as TensorRT would", bs.folder, win.skipped, win.first, batch_size,
                        bs.per_file, win.span())
        runner = ActivationRunner(m, names, providers=providers, intra_op_threads=intra_op_threads,
                                  batch_dims=(batch_size,) + tuple(bs.image_shape),
                                  label=os.fspath(model) if isinstance(model, (str, os.PathLike)) else None)
        infer = [0.0]

        dynamic = not isinstance(info.shape[0] if info.shape else None, int)
        chunk = [batch_size]

        def run_chunks(data, collector):
            # A dynamic-batch model runs on sub-batches sized so that all of one
            # sub-batch's activations stay under ``ACTIVATION_BUDGET`` bytes: peak
            # memory then no longer grows with the batch size, and the histograms
            # are the same (they do not depend on how the data is split).
            s = 0
            while s < len(data):
                n = chunk[0]
                t = time.perf_counter()
                outs = runner.run(data[s:s + n])
                infer[0] += time.perf_counter() - t
                if dynamic and n == 1 and not measured[0]:
                    per_image = sum(a.nbytes for a in outs.values())
                    chunk[0] = int(max(1, min(batch_size, ACTIVATION_BUDGET // max(per_image, 1))))
                    measured[0] = True
                collector.collect_many(outs)
                del outs
                s += n

        measured = [False]

        def _first_batch_ranges():
            # TensorRT's histogram range starts at the first calibration batch's max.  A model
            # that runs a batch in one call sets it itself; a sub-batched one needs that batch's
            # maxima first (one extra inference of one batch).
            if not dynamic:
                return None
            maxes = MaxCollector()
            run_chunks(next(iter(bs.batches(window=win))).data, maxes)
            return maxes.ranges()

        def sweep(collector, label):
            if dynamic and not measured[0]:
                chunk[0] = 1  # the first image measures the activation size
            tick = reporter(progress, label, "batches", legacy=True)
            for i, b in enumerate(bs.batches(window=win, release=True)):
                run_chunks(b.data, collector)
                if tick:
                    tick(i + 1, total)
            log.debug("%s: %d batches done (sub-batches of %d)", label, total, chunk[0])

        if two_pass:
            maxes = MaxCollector()
            sweep(maxes, "max pass")
            hist = HistogramCollector(num_bins, mode="fixed", ranges=maxes.ranges())
        elif method == "entropy":
            hist = HistogramCollector(num_bins, mode="trt", ranges=_first_batch_ranges())
        else:
            hist = HistogramCollector(num_bins)
        collectors = [hist]
        means = None
        if bias_correction and write_qdq and out is not None:
            means = _mean_collector(m)
            collectors.append(means)
        step = pixel_step(bs.manifest) if method == "auto" else None
        lattice = _LatticeCheck(info.name, step) if step else None
        if lattice is not None:
            collectors.append(lattice)
        sweep(_Tee(*collectors) if len(collectors) > 1 else hist,
              "histograms and bias sums" if means is not None else "histograms")
        runner.close()
        stats = {n: hist.stats(n) for n in names if n in hist.names()}
        amax, used = choose_amax(method, stats, bounded, config)
        if lattice is not None and lattice.holds and info.name in stats:
            # 127 pixel steps cover the input (at most the top level clips): quantizing it is exact
            if stats[info.name].amax <= 128 * step * (1 + 1e-6):
                amax[info.name], used[info.name] = 127 * step, "pixel-step"
                log.debug("input %s: amax 127 pixel steps (%g), exact int8", info.name, 127 * step)
        result = CalibrationResult(amax, used, stats, batches=total, images=total * batch_size,
                                   inference_seconds=infer[0])
        if keep_float is None:
            keep_float = "auto" if method == "auto" else 0
        if keep_float and write_qdq and out is not None:
            result.kept_float = _most_sensitive(m, result.amax, bs, batch_size, win, keep_float, dynamic,
                                                providers, intra_op_threads,
                                                reporter(progress, "sensitivity", "tensors"))
        if out is not None:
            _write_artefacts(result, m, out, method, trt_version, cache_algorithm, write_qdq,
                             per_channel_weights, model, bs, batch_size, win,
                             means.means() if means is not None else None,
                             reporter(progress, "writing artefacts", "files"))
        result.seconds = time.perf_counter() - t0
        return result
    finally:
        if owned:
            bs.close()


def _most_sensitive(m, amax, bs, batch_size, win, keep, dynamic, providers, intra_op_threads, progress=None):
    from ..onnx.placement import plan_qdq
    from .sensitivity import rank_sensitivity
    if keep != "auto" and (not isinstance(keep, int) or keep < 0):
        raise ConfigError(f"keep_float must be a number >= 0 or 'auto', got {keep!r}")
    candidates = list(plan_qdq(m)[0])
    count = min(SENSITIVITY_IMAGES, batch_size) if dynamic else batch_size
    data = bs.images(win.start_image, count)[0]
    ranked = rank_sensitivity(m, amax, np.ascontiguousarray(data), candidates, providers, intra_op_threads,
                              progress=progress)
    if keep == "auto":
        kept = [t for t, err in ranked[:SENSITIVITY_MAX_KEPT] if err > SENSITIVITY_THRESHOLD]
        if kept:
            log.info("keeping %d activation(s) in float (each alone costs > %g of the output energy): %s",
                     len(kept), SENSITIVITY_THRESHOLD, ", ".join(kept))
        return kept
    return [t for t, _ in ranked[:keep]]


class _Tee:
    """Feeds one calibration pass to several collectors, each a whole run's activations at once.

    Collector by collector rather than tensor by tensor: the histogram collector
    takes all of a run's tensors in one kernel call (one thread team), which
    costs far less than the cache misses of the later collectors reading them again.
    """

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect_many(self, arrays):
        for c in self.collectors:
            c.collect_many(arrays)


def _mean_collector(m):
    from ..onnx import graph as G
    from ..onnx.layers import layers_of
    from .biascorr import MeanCollector
    layers = layers_of(m)
    values = G.constant_values(m)
    return MeanCollector(layers, {ly.weight: values[ly.weight].shape for ly in layers},
                         max_images=BIAS_CORRECTION_IMAGES)


def _finite(v):
    return v is not None and abs(float(v)) != float("inf")


def _write_artefacts(result, m, out, method, trt_version, cache_algorithm, write_qdq, per_channel, model, bs,
                     batch_size, win, input_means=None, progress=None):
    from ..onnx import qdq
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, v) for k, v in ARTEFACTS.items()}
    todo, done = 3 + (2 if write_qdq and input_means else 1 if write_qdq else 0), [0]

    def wrote():
        done[0] += 1
        if progress:
            progress(done[0], todo)
    header, source = vocab.choose_header(trt_version, cache_algorithm or CACHE_ALGORITHM.get(method, "entropy2"))
    result.cache_header = str(header)
    result.notes += vocab.header_advice(header, source)
    cache_io.write_trt_cache(paths["cache"], result.amax, header.number, header.algorithm)
    wrote()
    # TensorRT's sampleINT8API splits a dynamic-range line at its first ':', so a tensor named
    # like "conv:0" (TensorFlow exports) cannot go in that file; the cache and Q/DQ model keep it
    dr_skipped = cache_io.write_dynamic_range(paths["dynamic_range"], result.amax, skip_colon_names=True)
    result.dynamic_range_lines = len(result.amax) - len(dr_skipped)
    wrote()
    entries = {n: cache_io.calibration_entry(result.stats[n], a, result.methods[n]) for n, a in result.amax.items()}
    meta = {"model": os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else None,
            "batches_folder": os.path.abspath(bs.folder), "batch_size": batch_size, "first_batch": win.skipped,
            "first_image": win.start_image,
            "batches": result.batches, "images": result.images, "method": method,
            "cache_header": str(header), "trt_version": ".".join(map(str, header.version)),
            "trt_version_source": source, "cache_algorithm": header.algorithm,
            "qdq_kept_float": list(result.kept_float), "dynamic_range_left_out": list(dr_skipped)}
    if write_qdq:
        act = {k: v for k, v in result.amax.items() if k not in set(result.kept_float)}
        qmodel, report = qdq.insert_qdq_with_report(m, act, per_channel_weights=per_channel,
                                                    on_missing="skip" if result.kept_float else "raise",
                                                    input_means=input_means)
        meta["qdq_bias_corrected"] = sorted(report.biases)
    cache_io.write_calibration_json(paths["json"], entries, meta)
    wrote()
    if not write_qdq:
        del paths["qdq"]
    else:
        qdq.save_model_atomic(qmodel, paths["qdq"])
        result.qdq_report = report
        wrote()
        if input_means:
            # the same weights and biases as an FP32 model, for TensorRT 10 with calibration.cache
            from ..onnx.snap import snap_weights
            paths["corrected"] = os.path.join(out, CORRECTED_MODEL)
            corrected, result.corrected_report = snap_weights(m, input_means, per_channel)
            qdq.save_model_atomic(corrected, paths["corrected"])
            wrote()
    result.paths = paths
