"""``calibrate()``: batch files + an FP32 ONNX model -> INT8 scales and every artefact.

One streaming pass of ONNX Runtime over the batches feeds per-tensor |x|
histograms (O(bins) memory per tensor, never the activations themselves);
the thresholds are then computed per tensor and written as one set of
artefacts (:mod:`int8batch.calib.artefacts`): a TensorRT calibration cache,
a sampleINT8API dynamic-range file, a JSON summary, the Q/DQ model for
TensorRT 11 and the bias-corrected FP32 model for TensorRT 10.

The settings and their defaults live in :mod:`int8batch.calib.settings`;
the model is analysed once (:class:`int8batch.onnx.facts.ModelFacts`).
"""
import logging
import os
import time

import numpy as np

from .._lock import FolderLock
from .._progress import reporter
from ..manifest import recipe as manifest_recipe
from ..errors import CalibrationError, ConfigError, ModelError
from ..onnx import graph as G
from ..onnx.centre import centre_bounded
from ..onnx.facts import ModelFacts
from ..onnx.inputs import check_batch_shape
from ..onnx.layers import quantized_layers, reader_macs
from ..reader import BatchSet
from . import thresholds as th
from ..cuda.kernels import DeviceKernels, DeviceTensor
from .biascorr import DeviceMeanCollector, MeanCollector
from .rounding import DeviceMomentCollector, MomentCollector, round_weights
from . import sequential
from .artefacts import (ARTEFACTS, CORRECTED_MODEL, CalibrationResult, check_replaceable,  # noqa: F401
                        write_artefacts)
from .collector import HOST_KERNELS, HistogramCollector, MaxCollector
from .ort_exec import providers_for, resolve_device
from .passes import DevicePass, Pass
from .report import most_saturated
from .sensitivity import choose_kept, rank_sensitivity
from .settings import (ACTIVATION_BUDGET, BIAS_CORRECTION_IMAGES, DEFAULT_METHOD, DEVICE_BUDGET,  # noqa: F401
                       METHODS, SATURATION_WARNING, SENSITIVITY_IMAGES, SENSITIVITY_MAC_BUDGET, SENSITIVITY_MAX_KEPT,
                       SENSITIVITY_MIN_ENERGY,
                       SENSITIVITY_MAX_KEPT_UNCOUNTED, SENSITIVITY_THRESHOLD, CalibrationConfig)

log = logging.getLogger(__name__)


def calibrate(model, batches, out=None, config=None, *, progress=None, force=False, **options):
    """Compute INT8 scales for ``model`` from batch files and write the artefacts.

    Parameters
    ----------
    model : str, PathLike or onnx.ModelProto
        FP32 ONNX model with one float input matching the batch files.
    batches : str, PathLike or BatchSet
        The calibration batch folder.
    out : str or PathLike, optional
        Output folder for the artefacts (created; locked against a second
        writer while the run lasts); None writes nothing.  A previous
        int8batch calibration there is replaced; files of the artefacts'
        names that int8batch did not write stop the run before it starts
        (:class:`OutputExistsError`) unless ``force``.
    config : CalibrationConfig, optional
        Every setting (:class:`~int8batch.calib.settings.CalibrationConfig`);
        keyword ``options`` override its fields (``method="entropy"``,
        ``batch_size=50``, ...; None values are ignored).  In short:
        ``method`` (:data:`METHODS`; "entropy" is TensorRT's Entropy2,
        "auto" the default); ``batch_size``/``first``/``max_batches``, the
        window as TensorRT's BatchStream serves it (:meth:`BatchSet.window`,
        ``skip="batchstream"``); ``two_pass``; ``num_bins``; ``percentile``;
        ``trt_version``/``cache_algorithm`` (the cache header, see
        :mod:`int8batch.trt.vocab`); ``keep_float`` (activations left float
        in the Q/DQ model after a sensitivity pass); ``bias_correction``;
        ``write_qdq``; ``per_channel_weights``; ``device`` ("auto", "cpu",
        "cuda": where ONNX Runtime runs the model and the statistics are
        computed, :class:`~int8batch.calib.passes.DevicePass`) and ``device_budget``; ``providers``
        and ``intra_op_threads`` for ONNX Runtime.
    progress : callable(done, total), optional
        Called after each calibration batch.  A callable that also takes a
        ``phase`` keyword (:mod:`int8batch._progress`) hears every pass: "max
        pass" (``two_pass``), "histograms" (or "histograms and bias sums"),
        "sensitivity" (tensors) and "writing artefacts" (files).

    Returns
    -------
    CalibrationResult
    """
    cfg = (config or CalibrationConfig()).replace(**options)
    if cfg.report:   # a missing matplotlib fails now, not after the calibration
        from .._optional import require
        require("matplotlib")
    t0 = time.perf_counter()
    bs, owned = (batches, False) if isinstance(batches, BatchSet) else (BatchSet(batches), True)
    lock = FolderLock(out, "calibrate").acquire() if out is not None else None
    ok = False
    try:
        inputs = [model] if isinstance(model, (str, os.PathLike)) else []
        replaced = check_replaceable(out, force, inputs) if out is not None else []
        if replaced:
            log.info("%s: replacing the previous calibration (%s)", out, ", ".join(replaced))
        device = resolve_device(cfg.device)   # --device cuda where it cannot run: refused before any work
        facts = ModelFacts.of(model)
        _refuse_quantized(facts.model, model)
        # images the model cannot take (another size, NHWC): refused before centring says anything
        check_batch_shape(facts.input, (None,) + tuple(bs.image_shape), G.model_label(model))
        centred = []
        if cfg.resolved_centre and out is not None:
            shifted, centred = centre_bounded(facts.model, facts.quantizable, padded=cfg.centre_padded)
            if centred:   # calibrated as it will run: the Q/DQ and corrected models carry the shift
                shown = ", ".join(t.original for t in centred[:3]) + (", ..." if len(centred) > 3 else "")
                pads = sum(len(t.pads) for t in centred)
                log.info("centring %d bounded (ReLU6-like) activation(s) for half the int8 step (%s; "
                         "calibration.json lists them)%s", len(centred), shown,
                         f"; {pads} padded convolution(s) read them through a new Pad node of the shifted zero"
                         if pads else "")
                facts = ModelFacts.of(shifted)
            elif cfg.centre_padded or cfg.centre:
                log.warning("nothing to centre in this model: no ReLU6-like (Clip) output fed by a Conv/Gemm "
                            "and read only by Conv/Gemm layers")
        win = _window(bs, facts, cfg)
        # the pass runs facts.model (centred or not); errors name the model as the user gave it
        with (DevicePass if device == "cuda" else Pass)(facts, bs, win, cfg, model) as sweep:
            t_pass = time.perf_counter()
            hist, means, lattice, moments = _collect(sweep, facts, bs, cfg, out, progress)
            _refuse_nonfinite_input(hist, facts, bs, win)
            means, first_means = (m.means() if m is not None else None for m in means)
            if first_means:     # the early layers' means come from the first images only (_collect)
                means = {**means, **first_means}
            t_pass = time.perf_counter() - t_pass
        result = _result(hist, lattice, facts, cfg, win, sweep.seconds)
        result.pass_seconds = t_pass
        result.device, result.executed_by = device, sweep.executed_by
        result.centred, result.cache_keep_float = centred, cfg.cache_keep_float
        _warn_saturated(result, cfg.method)
        if cfg.resolved_keep_float and cfg.write_qdq and out is not None:
            result.kept_float = _most_sensitive(facts, result.amax, bs, win, cfg, sweep.dynamic,
                                                reporter(progress, "sensitivity", "tensors"), device)
        if cfg.cache_keep_float and not result.kept_float and out is not None:
            log.warning("no activation was kept float (the sensitivity pass found none above its threshold), so "
                        "the cache holds every tensor as without --cache-keep-float")
        if out is not None:
            ints = _rounded_weights(facts, moments) if moments is not None else None
            write_artefacts(result, model, facts, out, cfg, bs, win, means,
                            reporter(progress, "writing artefacts", "files"), weight_ints=ints,
                            first_means=first_means)
        result.seconds = time.perf_counter() - t0
        ok = True
        return result
    finally:
        if lock is not None:
            lock.release(discard=not ok)   # a failed run leaves no empty output folder it made
        if owned:
            bs.close()


def _refuse_quantized(m, model):
    """A model that already holds Q/DQ pairs would be quantized twice (found as a new user: model.qdq.onnx
    calibrated again, silently)."""
    qdq = G.qdq_node_count(m)
    if qdq:
        label = G.model_label(model, "the model")
        raise ModelError(f"{label} already holds {qdq} QuantizeLinear/DequantizeLinear nodes (a Q/DQ model such as "
                         f"model.qdq.onnx, or one quantized elsewhere): calibrate the FP32 model it came from; "
                         f"a Q/DQ model needs no calibration (TensorRT reads its scales)", label)


def _warn_saturated(result, method):
    """Name the tensors whose chosen amax clips a large share of their values (calibration.json has them all)."""
    if not result.amax:
        return
    # a clip of about one step (auto's pixel-step input: 255 becomes 254 + 127/128) moves a value by at most
    # that step: a white page saturates 80 % of its input that way, harmlessly
    bad = [(n, f) for n, f in most_saturated(result, top=len(result.amax)) if f >= SATURATION_WARNING
           and result.stats[n].amax - result.amax[n] > 1.5 * result.amax[n] / 127]
    if not bad:
        return
    name, frac = bad[0]
    others = f", and {len(bad) - 1} other tensor(s) {100 * SATURATION_WARNING:.0f} % or more" if len(bad) > 1 else ""
    log.warning("method %s clips %.1f %% of the values of %r (amax %.4g, observed max %.4g)%s: the INT8 model may "
                "be far from FP32; check it with int8batch eval%s (calibration.json gives every tensor's "
                "saturation)", method, 100 * frac, name, result.amax[name], result.stats[name].amax, others,
                "" if method == DEFAULT_METHOD else f", or try --method {DEFAULT_METHOD}")


def _refuse_nonfinite_input(hist, facts, bs, win):
    """A NaN or inf in the images themselves is damaged data, never something to calibrate around."""
    name = facts.input.name
    if name not in hist:
        return
    s = hist.stats(name)
    if s.nan_count or s.inf_count:
        where = bs.first_nonfinite(win.start_image, win.images)
        raise CalibrationError(
            f"{bs.folder}: the calibration images hold {s.nan_count} NaN and {s.inf_count} inf values"
            f"{f' (first: {where})' if where else ''}; the batch files are damaged or were written with "
            f"non-finite values, and scales computed from them would be wrong: check them with "
            f"int8batch inspect {bs.folder}, pack again", bs.folder)


def _window(bs, facts, cfg):
    """The calibration window: BatchStream's skip semantics, as TensorRT's calibrators read the files."""
    shape = facts.input.shape
    fixed = shape[0] if shape and isinstance(shape[0], int) else None
    batch_size = cfg.batch_size or fixed or bs.per_file
    try:
        win = bs.window(batch_size, cfg.first, cfg.max_batches, skip="batchstream")
    except ConfigError as exc:
        raise CalibrationError(str(exc), bs.folder) from exc
    if win.skipped != win.first:
        log.warning("%s: TensorRT's BatchStream skips only %d of the %d batches asked for when the batch "
                    "size (%d) is not a multiple of the files' N (%d) and first > max_batches; "
                    "calibrating on %s as TensorRT would", bs.folder, win.skipped, win.first, batch_size,
                    bs.per_file, win.span())
    return win


def _collect(sweep, facts, bs, cfg, out, progress):
    """The statistics pass (and the max pass it needs): ``(histograms, (input means, those of the first
    SEQUENTIAL_IMAGES images), lattice check, weight moments)``."""
    k = sweep.kernels
    if cfg.two_pass:
        maxes = MaxCollector(kernels=k)
        sweep.sweep(maxes, "max pass", progress)
        hist = HistogramCollector(cfg.num_bins, mode="fixed", ranges=maxes.ranges(), kernels=k)
    elif cfg.method == "entropy":
        # TensorRT's range starts at the first calibration batch's max: a model that runs a batch
        # in one call sets it itself, a sub-batched one needs that batch's maxima first
        ranges = None
        if sweep.dynamic:
            maxes = MaxCollector(kernels=k)
            sweep.first_batch(maxes)
            ranges = maxes.ranges()
        hist = HistogramCollector(cfg.num_bins, mode="trt", ranges=ranges, kernels=k)
    else:
        hist = HistogramCollector(cfg.num_bins, kernels=k)
    collectors = [hist]
    means = first = None
    if cfg.bias_correction and cfg.write_qdq and out is not None:
        layers = quantized_layers(facts)
        early = set()
        if cfg.resolved_bias_inputs == "int8":
            # the layers int8batch.calib.sequential sets take their FP32 means from its first images only
            # (the FP32 half of its pairs; the classic correction's too if the pass cannot run)
            early = {ly.key for ly in sequential.early_layers(layers, facts)}
            if early:
                first = _mean_collector(facts, [ly for ly in layers if ly.key in early], k,
                                        sequential.pass_images(facts, sweep.win.images))
        means = _mean_collector(facts, [ly for ly in layers if ly.key not in early], k)
        for m in (means, first):
            if m is not None:
                collectors.append(m)
                sweep.owned.append(m)
    moments = None
    if cfg.resolved_weight_rounding == "gptq" and cfg.write_qdq and cfg.per_channel_weights and out is not None:
        moments = _moment_collector(facts, k)
        sweep.owned.append(moments)
        collectors.append(moments)
    step = pixel_step(manifest_recipe(bs.manifest, strict=False)) if cfg.method == "auto" else None
    lattice = _LatticeCheck(facts.input.name, step, k) if step else None
    if lattice is not None:
        collectors.append(lattice)
    sweep.sweep(_Tee(*collectors) if len(collectors) > 1 else hist,
                "histograms and bias sums" if means is not None else "histograms", progress)
    if moments is not None:
        moments.wait()
    return hist, (means, first), lattice, moments


def _result(hist, lattice, facts, cfg, win, seconds):
    """Thresholds per tensor (and the exact pixel-step input scale where it applies)."""
    stats = {n: hist.stats(n) for n in facts.quantizable if n in hist}
    amax, used = choose_amax(cfg.method, stats, facts.bounded, cfg.thresholds)
    name = facts.input.name
    if lattice is not None and lattice.holds and name in stats:
        # 127 pixel steps cover the input (at most the top level clips): quantizing it is exact
        if stats[name].amax <= 128 * lattice.step * (1 + 1e-6):
            amax[name], used[name] = 127 * lattice.step, "pixel-step"
            log.debug("input %s: amax 127 pixel steps (%g), exact int8", name, 127 * lattice.step)
    return CalibrationResult(amax, used, stats, batches=win.count, images=win.images, inference_seconds=seconds)


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


def pixel_step(recipe):
    """Step between the values 8-bit pixels take after the pack's normalization, or None.

    The packer writes ``(pixel * scale - mean_c) / std_c``.  With one ``std``
    for every channel and every ``mean_c / scale`` a whole number, each value is
    a whole multiple of ``scale / std``: the network input lies on that
    lattice, and an int8 scale equal to it quantizes the input exactly.
    ``recipe`` is the pack's :class:`~int8batch.preprocess.PreprocessConfig`
    (:func:`int8batch.manifest.recipe`), or None.
    """
    if recipe is None:
        return None
    scale, mean, std = float(recipe.scale), [float(v) for v in recipe.mean], [float(v) for v in recipe.std]
    if scale <= 0 or not std or any(v != std[0] for v in std) or std[0] <= 0:
        return None
    if any(abs(m / scale - round(m / scale)) > 1e-9 for m in mean):
        return None
    return scale / std[0]


class _LatticeCheck:
    """Checks that every value of one tensor is a whole multiple of ``step``."""

    def __init__(self, name, step, kernels=HOST_KERNELS):
        self.name, self.step, self.worst, self.kernels = name, float(step), 0.0, kernels

    def collect_many(self, arrays):
        x = arrays.get(self.name)
        if x is None or self.worst > 1e-3:
            return
        if isinstance(x, DeviceTensor):
            self.worst = max(self.worst, self.kernels.lattice_worst(x, self.step))
        else:
            k = np.asarray(x, np.float64) / self.step
            with np.errstate(invalid="ignore"):   # inf - inf: damaged input, refused after the pass
                off = np.abs(k - np.rint(k))
            self.worst = max(self.worst, float(np.max(off, initial=0.0)))

    @property
    def holds(self):
        return self.worst <= 1e-3


def _most_sensitive(facts, amax, bs, win, cfg, dynamic, progress=None, device="cpu"):
    keep = cfg.resolved_keep_float
    candidates = list(facts.plan().requests)
    # a dynamic-batch model is measured on SENSITIVITY_IMAGES of the first batch (those whose output shows
    # something: informative_images), a fixed-batch one on its whole first batch
    count = min(SENSITIVITY_IMAGES, win.batch_size) if dynamic else None
    data = bs.images(win.start_image, win.batch_size)[0]
    try:
        ranked = rank_sensitivity(facts.model, amax, np.ascontiguousarray(data), candidates,
                                  providers_for(device, cfg.providers), cfg.intra_op_threads, progress=progress,
                                  types=facts.types, count=count, min_energy=SENSITIVITY_MIN_ENERGY)
    except CalibrationError as exc:
        if keep != "auto":
            raise
        log.warning("the sensitivity pass cannot run on this model, so no activation is kept float (%s)", exc)
        return []
    if keep == "auto":
        counted = reader_macs(facts.model, bs.image_shape)
        if counted is None or not counted[1]:
            kept, _ = choose_kept(ranked, SENSITIVITY_THRESHOLD, SENSITIVITY_MAX_KEPT_UNCOUNTED)
            cost = "their readers' multiply-adds could not be counted, so at most " \
                   f"{SENSITIVITY_MAX_KEPT_UNCOUNTED}"
        else:
            readers, total = counted
            kept, used = choose_kept(ranked, SENSITIVITY_THRESHOLD, SENSITIVITY_MAX_KEPT,
                                     {t: v / total for t, v in readers.items()}, SENSITIVITY_MAC_BUDGET)
            cost = (f"their readers do {100 * used:.1f} % of the network's multiply-adds, budget "
                    f"{100 * SENSITIVITY_MAC_BUDGET:.0f} %")
        if kept:
            log.info("keeping %d activation(s) in float (each alone costs > %g of the output energy; %s): %s",
                     len(kept), SENSITIVITY_THRESHOLD, cost, ", ".join(kept))
        return kept
    if keep > len(ranked):   # a value given is used or said to be capped, never silently cut
        log.warning("--keep-float %d: the sensitivity pass ranked %d of the %d quantized activations (%s), so %d "
                    "are kept float", keep, len(ranked), len(candidates),
                    "every one" if len(ranked) == len(candidates) else "its search reaches only the most sensitive "
                    "groups of a deep model", len(ranked))
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


def _moment_collector(facts, kernels=HOST_KERNELS):
    layers = quantized_layers(facts)
    values = G.constant_values(facts.model)
    shapes = {ly.weight: values[ly.weight].shape for ly in layers}
    if kernels is not HOST_KERNELS:
        return DeviceMomentCollector(layers, shapes, kernels)
    return MomentCollector(layers, shapes)


def _rounded_weights(facts, moments):
    """Error-compensating integer weights (:mod:`int8batch.calib.rounding`) of the layers the pass saw."""
    nodes = facts.model.graph.node
    axes = {nodes[i].input[k]: axis for i, k, axis in facts.plan().weights}
    return round_weights(moments, G.constant_values(facts.model), axes)


def _mean_collector(facts, layers, kernels=HOST_KERNELS, images=BIAS_CORRECTION_IMAGES):
    values = G.constant_values(facts.model)
    shapes = {ly.weight: values[ly.weight].shape for ly in layers}
    if isinstance(kernels, DeviceKernels):
        return DeviceMeanCollector(layers, shapes, kernels, max_images=images)
    return MeanCollector(layers, shapes, max_images=images)
