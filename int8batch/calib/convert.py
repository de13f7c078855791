"""Existing calibration files -> Q/DQ ONNX model (``int8batch qdq``).

The calibration side of the conversion: reads a TensorRT calibration cache or
a sampleINT8API dynamic-range file (:mod:`int8batch.calib.cache`) and hands
the scales to the ONNX layer (:func:`int8batch.onnx.qdq.qdq_from_scales`).
"""
import logging
import os

from ..errors import CacheError
from ..onnx.qdq import MIN_SCALE, qdq_from_scales
from . import cache as C

log = logging.getLogger(__name__)


def _is_trt_cache(path):
    with open(path, "rb") as f:
        first = f.readline()
    return first.lstrip(b"\xef\xbb\xbf").strip().startswith(b"TRT-")


def _left_out_float(cache_path):
    """Tensors an int8batch calibration left out of this cache on purpose (``cache_keep_float``), as
    the calibration.json beside it records them: ``{name: why}``, empty when there is no such file."""
    side = os.path.join(os.path.dirname(os.path.abspath(cache_path)), "calibration.json")
    if not os.path.isfile(side):
        return {}
    try:
        doc = C.read_calibration_json(side)
    except CacheError:
        return {}
    names = (doc.get("metadata") or {}).get("cache_left_out_float") or []
    return {n: "kept float by int8batch calibrate (left out of the cache; calibration.json)" for n in names
            if isinstance(n, str)}


def qdq_from_cache(model_path, cache_path, out_path, **kwargs):
    """Q/DQ model from a TensorRT calibration cache or a dynamic-range file.

    The format is told by content: a first line starting with ``TRT-`` (after
    an optional BOM) is a calibration cache of any TensorRT version, read by
    :func:`~int8batch.calib.cache.read_trt_cache` and used bit for bit;
    anything else is read as ``name:amax`` lines.

    What the cache holds but a Q/DQ model cannot use is reported, not fatal:

    * an infinite or NaN scale (a tensor TensorRT could not calibrate): the
      tensor stays float; ``report.unusable`` maps every such entry to the
      reason, and ``report.skipped`` lists the tensors the placement wanted;
    * a scale (or amax) of 0: quantized with :data:`MIN_SCALE`, listed in
      ``report.zero_scale``;
    * a name that is no tensor of the model (``ONNXTRT_*`` and other parser
      names): listed in ``report.extra``.

    A tensor the placement needs but the file lacks raises
    :class:`~int8batch.errors.ModelError` unless ``on_missing="skip"``.  A
    malformed file, or an amax whose ``amax/127`` overflows float32, raises
    :class:`~int8batch.errors.CacheError` naming the file and line.  Returns
    the :class:`QdqReport`.
    """
    cache_path = os.fspath(cache_path)
    try:
        is_cache = _is_trt_cache(cache_path)
    except FileNotFoundError:
        raise CacheError(f"calibration file {cache_path!r} does not exist", path=cache_path) from None
    except IsADirectoryError:
        raise CacheError(f"calibration file {cache_path!r} is a directory", path=cache_path) from None
    left_out = _left_out_float(cache_path)
    if left_out:
        log.info("%s: %d tensor(s) kept float by the calibration that wrote this cache (calibration.json beside "
                 "it) stay float", cache_path, len(left_out))
        kwargs["keep_float"] = {**left_out, **(kwargs.get("keep_float") or {})}
    if is_cache:
        data = C.read_trt_cache(cache_path)
        scales, zero, unusable = data.usable, data.zero, data.unusable
        scales.update({k: MIN_SCALE for k in zero})   # TensorRT writes 0 for an all-zero tensor
        keep_float = {k: f"{why}, kept float" for k, why in unusable.items()}
        report = qdq_from_scales(model_path, None, out_path, act_scales=scales,
                                 keep_float={**keep_float, **(kwargs.pop("keep_float", None) or {})},
                                 **kwargs)
    else:
        amax = C.read_dynamic_range(cache_path)
        if not amax:
            raise CacheError(f"{cache_path}: the file holds no scales (it is empty); give the calibration.cache "
                             "or dynamic_range.txt that calibrate wrote", path=cache_path)
        zero, unusable = [k for k, a in amax.items() if a == 0.0], {}
        report = qdq_from_scales(model_path, amax, out_path, **kwargs)
    report.extra = [k for k in report.extra if k not in left_out]   # the original model's names of them
    report.unusable, report.zero_scale = dict(unusable), list(zero)
    named = len(report.activations) + len([t for t, _ in report.skipped if t in unusable])
    entries = len(report.activations) + len(report.extra) + len(unusable)
    if entries and named < 0.5 * (named + len(report.missing)):
        log.warning("%s: only %d of the %d tensors this model quantizes have a scale in the file (%d of its "
                    "entries name no tensor of the model): is it the cache of another model?", cache_path,
                    named, named + len(report.missing), len(report.extra))
    if zero:
        used = [t for t in zero if t in report.activations]
        log.warning("%s: %d entr%s with scale 0; %d tensor(s) of the model quantized with scale %g "
                    "instead: %s%s", cache_path, len(zero), "y" if len(zero) == 1 else "ies", len(used),
                    MIN_SCALE, ", ".join(used[:5]) or "none", " ..." if len(used) > 5 else "")
    if unusable:
        kept = [t for t, _ in report.skipped if t in unusable]
        log.warning("%s: %d entr%s with an infinite or NaN scale; %d tensor(s) of the model kept float: "
                    "%s%s", cache_path, len(unusable), "y" if len(unusable) == 1 else "ies", len(kept),
                    ", ".join(kept[:5]) or "none", " ..." if len(kept) > 5 else "")
    return report
