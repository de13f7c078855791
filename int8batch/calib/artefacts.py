"""The artefacts of a calibration, written as one set, and the result that names them.

``calibration.cache`` (TensorRT), ``dynamic_range.txt`` (sampleINT8API),
``calibration.json`` (people and scripts), ``model.qdq.onnx`` (TensorRT 11 /
strongly typed 10) and, with bias correction, ``model.corrected.onnx`` (the
FP32 model with int8-grid weights and corrected biases, for TensorRT 10 with
the cache).  They are staged in a hidden folder inside ``out`` and swapped in
together (:func:`int8batch._staged.atomic_output_set`): a failure leaves the
previous run's set as it was, and no file of an earlier run stays beside new
ones.
"""
import os
from dataclasses import dataclass, field

from .._staged import atomic_output_set, refuse_foreign_files
from ..errors import CacheError, OutputExistsError
from ..onnx import qdq
from ..onnx.graph import model_label
from ..onnx.layers import MeanPair
from ..onnx.snap import snap_weights
from ..trt import vocab
from . import cache as cache_io
from . import sequential
from .ort_exec import providers_for

ARTEFACTS = {"cache": "calibration.cache", "dynamic_range": "dynamic_range.txt",
             "json": "calibration.json", "qdq": "model.qdq.onnx"}
CORRECTED_MODEL = "model.corrected.onnx"
#: the histogram plot of ``calibrate --report``, written after the set
REPORT_PNG = "report.png"
#: every name a calibration may write (replaced or removed as a set; the old plot goes with the old set)
SET_NAMES = (*ARTEFACTS.values(), CORRECTED_MODEL, ARTEFACTS["qdq"] + ".data", CORRECTED_MODEL + ".data",
             REPORT_PNG)


def check_replaceable(out, force=False, inputs=()):
    """Before a calibration writes into ``out``: refuse to replace files int8batch did not write.

    The artefacts are replaced as a set (:data:`SET_NAMES`, stale ones
    removed).  A folder whose ``calibration.json`` reads as int8batch's holds a
    previous calibration, which a new run replaces; any of those names present
    without it belongs to someone else (:func:`refuse_foreign_files`).
    ``inputs``: the calibration's input files (its model); one of them among the names the set
    would replace is refused, ``force`` or not (the new ``calibration.json`` would describe a
    model that it had just overwritten).
    Returns the names that will be replaced.
    """
    for name in SET_NAMES:
        path = os.path.join(out, name)
        if any(os.path.exists(i) and os.path.exists(path) and os.path.samefile(i, path) for i in inputs):
            raise OutputExistsError(f"{path} is the model being calibrated, and the calibration written to {out} "
                                    f"would replace it; choose another output folder (or copy the model out "
                                    f"of it first)", path)
    wrote = []

    def ours():
        try:
            doc = cache_io.read_calibration_json(os.path.join(out, ARTEFACTS["json"]))
        except CacheError as exc:
            return str(exc)
        files = (doc.get("metadata") or {}).get("files")
        wrote.append(files if isinstance(files, list) else None)
        return None
    present = refuse_foreign_files(out, SET_NAMES, ours, "an int8batch calibration", force)
    # a calibration that recorded its files owns those only (calibration.json without the list: all of them)
    if wrote and wrote[0] is not None and not force:
        foreign = [n for n in present if n not in wrote[0] and n != ARTEFACTS["json"]]
        if foreign:
            raise OutputExistsError(
                f"{out}: {', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not among the files the "
                f"calibration there wrote ({', '.join(wrote[0])}); choose another output folder, move "
                f"{'it' if len(foreign) == 1 else 'them'} away, or pass --force to replace "
                f"{'it' if len(foreign) == 1 else 'them'}", out)
    return present


def centred_phrase(count):
    """How the summaries name the centred activations (:mod:`int8batch.onnx.centre`)."""
    return f"{count} bounded (ReLU6-like) activation{'s' if count != 1 else ''} centred"


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
    pass_seconds: float = 0.0           # the statistics pass(es): inference and statistics, no set-up
    qdq_report: object = None
    kept_float: list = field(default_factory=list)
    cache_header: str = ""
    notes: list = field(default_factory=list)
    corrected_report: object = None   # QdqReport of model.corrected.onnx (weights snapped, biases corrected)
    dynamic_range_lines: int = 0
    device: str = "cpu"                 # where the statistics were computed ("cpu" / "cuda")
    executed_by: str = "ONNX Runtime"   # which ONNX Runtime provider(s) ran the model
    centred: list = field(default_factory=list)   # CentredTensor of int8batch.onnx.centre
    cache_keep_float: bool = False      # the cache leaves the kept-float tensors out (CalibrationConfig)

    def cache_scales(self, keep_float=False):
        """The amax the cache and dynamic-range file hold: every calibrated tensor, and for each
        centred activation the original names too (the Clip's output and input) with the uncentred
        bound (the cache then serves the original model and model.corrected.onnx alike).
        ``keep_float``: without the tensors the Q/DQ model keeps float (:meth:`left_out`)."""
        scales = dict(self.amax)
        for t in self.centred:
            for name, amax in t.original_names().items():
                scales.setdefault(name, float(amax))
        if keep_float:
            for name in self.left_out():
                scales.pop(name, None)
        return scales

    def left_out(self):
        """The names a ``cache_keep_float`` cache leaves out: the tensors kept float, and the original
        name of each of them that was centred."""
        kept = list(self.kept_float)
        by_name = {t.name: t.original for t in self.centred}
        return kept + [by_name[k] for k in kept if k in by_name]

    def summary(self):
        """The run in one line, then one line per artefact written, then the notes."""
        where = "GPU: statistics on the device, " if self.device == "cuda" else ""
        lines = [f"calibrated {len(self.amax)} tensors on {self.batches} batch{'es' if self.batches != 1 else ''} "
                 f"({self.images} images) in "
                 f"{self.seconds:.2f} s ({self.inference_seconds:.2f} s in ONNX Runtime; "
                 f"{where}{self.executed_by})"]
        width = max((len(p) for p in self.paths.values()), default=0)
        lines += [f"  {p:<{width}}  {self.describe(k)}".rstrip() for k, p in self.paths.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def describe(self, key):
        """What the artefact ``paths[key]`` holds, in a few words."""
        q, c = self.qdq_report, self.corrected_report
        if key == "cache":
            scales = self.cache_scales(keep_float=self.cache_keep_float)
            extra = (f" ({sum(k not in self.amax for k in scales)} of them under the original names of the "
                     f"{len(self.centred)} centred activations and their Clip inputs, for the original model)"
                     if self.centred else "")
            if self.cache_keep_float and self.kept_float:
                extra += (f"; the {len(self.kept_float)} activations kept float left out, so TensorRT runs their "
                          f"layers in higher precision")
            return f"TensorRT calibration cache: {len(scales)} scales{extra}, header {self.cache_header}"
        if key == "dynamic_range":
            return f"{self.dynamic_range_lines} name:amax lines (ITensor::setDynamicRange)"
        if key == "json":
            return "amax, method and saturation per tensor, and the settings"
        if key == "qdq" and q is not None:
            fused = sum("fused by TensorRT" in why for _, why in q.skipped)
            kept = [t for t in self.kept_float if t in {s for s, _ in q.skipped}]
            other = sum(not why.startswith("bias of") for _, why in q.skipped) - fused - len(kept)
            parts = [f"{len(q.activations)} activations and {len(q.weights)} weights int8"]
            if fused:
                parts.append(f"{fused} residual branches left to TensorRT's Conv+Add fusion")
            if kept:
                parts.append(f"{len(kept)} kept float by the sensitivity pass ({', '.join(kept)})")
            if other:
                parts.append(f"{other} other tensors float (Softmax outputs, non-float tensors; see the JSON)")
            parts.append(f"{len(q.biases)} bias{'es' if len(q.biases) != 1 else ''} corrected")
            if self.centred:
                parts.append(centred_phrase(len(self.centred)))
            return "Q/DQ model (TensorRT 11, strongly typed 10): " + ", ".join(parts)
        if key == "corrected" and c is not None:
            centred = f", {centred_phrase(len(self.centred))}" if self.centred else ""
            return (f"FP32 model for TensorRT 10 with the cache: {len(c.weights)} weights on the int8 grid, "
                    f"{len(c.biases)} bias{'es' if len(c.biases) != 1 else ''} corrected{centred}")
        if key == "report":
            return "histograms of the most saturated tensors"
        return ""



def _settings(cfg):
    """The settings a calibration ran with, as calibration.json records them (defaults resolved)."""
    return {"method": cfg.method, "two_pass": cfg.two_pass, "num_bins": cfg.num_bins, "percentile": cfg.percentile,
            "keep_float": cfg.keep_float, "bias_correction": cfg.bias_correction,
            "weight_rounding": cfg.resolved_weight_rounding, "bias_inputs": cfg.resolved_bias_inputs,
            "centre": cfg.resolved_centre,
            "centre_padded": cfg.centre_padded, "cache_keep_float": cfg.cache_keep_float,
            "write_qdq": cfg.write_qdq,
            "per_channel_weights": cfg.per_channel_weights, "device": cfg.device}


def write_artefacts(result, model, facts, out, cfg, bs, win, input_means=None, progress=None, weight_ints=None,
                    first_means=None):
    """Write every artefact of ``result`` into ``out`` as one set; fills ``result.paths``.

    ``first_means``: FP32 input means of the first ``SEQUENTIAL_IMAGES`` images, for bias correction
    on the Q/DQ model's own inputs (:mod:`int8batch.calib.sequential`).  The caller holds ``out``'s
    folder lock.
    """
    final = {k: os.path.join(out, v) for k, v in ARTEFACTS.items()}
    todo = 3 + (2 if cfg.write_qdq and (input_means or result.centred or weight_ints) else
                1 if cfg.write_qdq else 0)
    done = 0

    def wrote():
        nonlocal done
        done += 1
        if progress:
            progress(done, todo)

    header, source = vocab.choose_header(cfg.trt_version, cfg.cache_calibrator)
    result.cache_header = str(header)
    result.notes += vocab.header_advice(header, source)
    m = facts.model
    with atomic_output_set(out, stale=SET_NAMES, lock_held=True) as staged:
        path = {k: staged.path(v) for k, v in ARTEFACTS.items()}
        scales = result.cache_scales(keep_float=cfg.cache_keep_float)
        cache_io.write_trt_cache(path["cache"], scales, header.number, header.algorithm)
        wrote()
        # TensorRT's sampleINT8API splits a dynamic-range line at its first ':', so a tensor named
        # like "conv:0" (TensorFlow exports) cannot go in that file; the cache and Q/DQ model keep it
        dr_skipped = cache_io.write_dynamic_range(path["dynamic_range"], scales, skip_colon_names=True)
        result.dynamic_range_lines = len(scales) - len(dr_skipped)
        wrote()
        entries = {n: cache_io.calibration_entry(result.stats[n], a, result.methods[n])
                   for n, a in result.amax.items()}
        meta = {"model": os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else None,
                "batches_folder": os.path.abspath(bs.folder), "batch_size": win.batch_size,
                "first_batch": win.skipped, "first_image": win.start_image,
                "batches": result.batches, "images": result.images, "method": cfg.method,
                "cache_header": str(header), "trt_version": ".".join(map(str, header.version)),
                "trt_version_source": source, "cache_algorithm": header.algorithm,
                "qdq_kept_float": list(result.kept_float), "dynamic_range_left_out": list(dr_skipped),
                "centred": [t.as_dict() for t in result.centred],
                "cache_left_out_float": result.left_out() if cfg.cache_keep_float else []}
        if cfg.write_qdq:
            kept = set(result.kept_float)
            act = {k: v for k, v in result.amax.items() if k not in kept}
            qmodel, report = qdq.insert_qdq_with_report(m, act, per_channel_weights=cfg.per_channel_weights,
                                                        on_missing="skip" if kept else "raise",
                                                        input_means=input_means, facts=facts,
                                                        weight_ints=weight_ints,
                                                        kept_amax={k: result.amax[k] for k in kept if k in result.amax})
            meta["bias_inputs"] = "fp32" if input_means else None
            if first_means and input_means:
                images = bs.images(win.start_image, sequential.pass_images(facts, win.images))[0]
                input_means = sequential.apply(qmodel, report, facts, input_means, first_means, images,
                                               # on the host even after a GPU pass: one run of 64 images
                                               providers=providers_for("cpu", cfg.providers),
                                               intra_op_threads=cfg.intra_op_threads, label=model_label(model))
                meta["bias_inputs"] = "int8" if any(isinstance(v, MeanPair) for v in input_means.values()) \
                    else "fp32"
            meta["qdq_bias_corrected"] = sorted(report.biases)
        if not cfg.write_qdq:
            del final["qdq"]
        else:
            qdq.save_model_atomic(qmodel, path["qdq"])
            result.qdq_report = report
            wrote()
            if input_means or result.centred or weight_ints:
                # the same weights and biases as an FP32 model, for TensorRT 10 with calibration.cache
                final["corrected"] = os.path.join(out, CORRECTED_MODEL)
                corrected, result.corrected_report = snap_weights(m, input_means, cfg.per_channel_weights,
                                                                  facts=facts, weight_ints=weight_ints)
                qdq.save_model_atomic(corrected, staged.path(CORRECTED_MODEL))
                wrote()
        if cfg.report:
            from .report import save_report
            final["report"] = os.path.join(out, REPORT_PNG)
            save_report(result, staged.path(REPORT_PNG), shown_as=final["report"])  # logged where it will be
        # last: the settings and the files this run wrote (a later run replaces exactly those)
        meta["settings"] = _settings(cfg)
        meta["files"] = sorted(set(os.listdir(os.path.dirname(path["json"]))) | {ARTEFACTS["json"]})
        cache_io.write_calibration_json(path["json"], entries, meta)
        wrote()
    result.paths = final
