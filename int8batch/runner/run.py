"""The skeleton every ``int8batch run`` follows, and the choice of backend.

sampleINT8's protocol, whatever the data: pack the images into batch files,
plan a calibration window and a scoring window over them, calibrate on the
first, score FP32 and INT8 on the second, print and write the report.
:func:`run` takes these steps in that order; a :class:`Sample`
(:class:`int8batch.runner.mnist.MnistSample`,
:class:`int8batch.runner.imagenet.ImagenetSample`) fills in what differs: the
checks made before packing, the packing and the windows (:meth:`Sample.prepare`),
checks before the calibration, and what its report adds.

Scoring runs on one of two backends (:func:`pick_backend`): ONNX Runtime with
the Q/DQ model the calibration wrote (:func:`int8batch.calib.evaluate.evaluate`),
or FP32 and INT8 TensorRT engines (:func:`int8batch.trt.engine.evaluate_engines`).
"""
import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from ..calib.api import calibrate
from ..calib.artefacts import check_replaceable as check_artefact_files
from ..calib.evaluate import evaluate
from ..calib.ort_exec import resolve_device
from ..errors import ConfigError, Int8BatchError
from ..packing.sources import inside
from ..reader import BatchSet
from ..trt import vocab
from ..trt.calibrator import load_tensorrt
from ..trt.engine import evaluate_engines
from ..window import Window
from .plot import plot_predictions
from .report import check_replaceable as check_report_files

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
# int8batch method -> the TensorRT calibrator that computes the same thing (int8batch's
# "entropy" is TensorRT's Entropy2; methods TensorRT has no calibrator for get Entropy2)
TRT_CALIBRATOR_OF = {"entropy": "entropy2", "minmax": "minmax"}


@dataclass(frozen=True)
class Windows:
    """The batch sets of a run and the windows planned over them (the calibration set may be the scoring set)."""

    cal_set: BatchSet
    cal: Window
    score_set: BatchSet
    win: Window


class Sample:
    """What one sample adds to the skeleton of :func:`run`; subclasses override the hooks.

    Parameters
    ----------
    settings
        The sample's settings dataclass: :func:`run` reads ``model``,
        ``method``, ``keep_float``, ``bias_correction``, ``threads``,
        ``device`` and ``backend`` from it.
    progress : callable, optional
        The caller's progress callback.
    """

    #: the run's name in reports (``int8batch run <name>``)
    name = None
    #: prefix of the temporary work folder
    tmp_prefix = "int8batch-run-"

    def __init__(self, settings, progress=None):
        self.settings, self.progress = settings, progress

    def input_folders(self):
        """Folders the run reads images from (the output folder may not lie inside one)."""
        return []

    def check(self):
        """Refuse what would fail later, before anything is packed (called after the backend is picked)."""

    def prepare(self, tmp, stack):
        """Pack into ``tmp``, open the batch sets (entered into the ExitStack ``stack``); return :class:`Windows`."""
        raise NotImplementedError

    def before_calibration(self, w):
        """Checks that need the windows but must not wait for the (long) calibration."""

    def calibrate_options(self):
        """Extra keyword arguments of :func:`int8batch.calib.api.calibrate`."""
        return {}

    def score_progress(self):
        """The progress callback of the scoring."""
        return self.progress

    def report(self, w, calibration, scored, backend, out):
        """The :class:`~int8batch.runner.report.RunReport` of the run."""
        raise NotImplementedError

    def annotate(self, report, w, out):
        """Additions to the report once the backend's note is in (and files beside it)."""

    def plot_title(self):
        return f"int8batch run {self.name}: FP32 vs INT8"


def run(sample, out, workdir=None, plot=False, force=False):
    """Run ``sample``'s protocol; returns its :class:`~int8batch.runner.report.RunReport` (written).

    The batch files are packed into ``workdir`` (a temporary folder, removed,
    when None); the artefacts and reports go into ``out``.  ``plot=True``
    also writes ``predictions.png`` (needs matplotlib).  Files in ``out``
    that an earlier run or calibration did not write stop the run before it
    packs anything, unless ``force``.
    """
    s = sample.settings
    backend = pick_backend(s.backend)  # a missing TensorRT fails now, not after packing
    resolve_device(getattr(s, "device", "auto"))   # and so does --device cuda where it cannot run
    sample.check()
    for folder in sample.input_folders():           # its reports would be packed as images by the next run
        if inside(out, folder):
            raise ConfigError(f"the output folder {out} lies in the images folder {folder}: the next run would pack "
                              "its files (predictions.png) as images; choose an output folder outside it")
    check_report_files(out, force)                  # before anything is packed
    check_artefact_files(out, force)
    with _workspace(workdir, sample.tmp_prefix) as tmp:
        with contextlib.ExitStack() as stack:
            w = sample.prepare(tmp, stack)
            sample.before_calibration(w)
            # w.cal.skipped: the batches the sample's stream really skips (exact from here on)
            result = calibrate(s.model, w.cal_set, out, method=s.method, batch_size=w.cal.batch_size,
                               keep_float=s.keep_float, bias_correction=s.bias_correction,
                               first=w.cal.skipped, max_batches=w.cal.count, device=s.device, force=force,
                               **sample.calibrate_options())
            scored = score(backend, s, result, w, out, sample.score_progress())
            report = sample.report(w, result, scored, backend, out)
            ran = getattr(scored, "executed_by", None) or {}
            if backend != "tensorrt" and (getattr(result, "device", "cpu") == "cuda" or "CUDA" in str(ran)):
                report.notes.append(f"calibration: {getattr(result, 'executed_by', '?')}; scoring: FP32 "
                                    f"{ran.get('fp32')}, INT8 {ran.get('int8')}")
            if backend == "tensorrt":
                report.notes.append(describe(scored))
            sample.annotate(report, w, out)
            plot_path = os.path.join(out, "predictions.png")
            if plot:
                report.paths["plot"] = plot_predictions(w.score_set, w.win.start_image, scored, plot_path,
                                                        title=sample.plot_title())
            elif os.path.isfile(plot_path) and not os.path.islink(plot_path):
                os.unlink(plot_path)   # an earlier run's plot (checked replaceable above) must not outlive it
        report.write()
        return report


@contextlib.contextmanager
def _workspace(workdir, prefix):
    """``workdir``, or a temporary folder removed afterwards."""
    tmp = workdir or tempfile.mkdtemp(prefix=prefix)
    try:
        yield tmp
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ backends
def pick_backend(name):
    """The backend that will run: ``"onnxruntime"`` or ``"tensorrt"``.

    ``"auto"`` is TensorRT when a TensorRT with implicit INT8 calibration
    (8.6-10.x) imports, else ONNX Runtime.  ``"tensorrt"`` without one raises.

    Raises
    ------
    ConfigError
        An unknown name.
    MissingDependencyError, CalibrationError
        ``"tensorrt"`` asked for but TensorRT is missing or is 11+.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "onnxruntime":
        return name
    try:
        load_tensorrt()
    except Int8BatchError as exc:
        if name == "tensorrt":
            raise
        # the normal case without TensorRT: said once at debug level (-v), the output names what ran
        log.debug("backend auto: ONNX Runtime, as TensorRT 8.6-10.x does not import here (%s)",
                  str(exc).split(";")[0])
        return "onnxruntime"
    return "tensorrt"


def trt_algorithm(method):
    """The TensorRT calibrator for an int8batch calibration method.

    :data:`TRT_CALIBRATOR_OF` first (int8batch's ``"entropy"`` is TensorRT's
    Entropy2, not the legacy ``IInt8EntropyCalibrator`` of the same name),
    then a TensorRT calibrator name as is, else entropy2.
    """
    if method in TRT_CALIBRATOR_OF:
        return TRT_CALIBRATOR_OF[method]
    return method if method in vocab.CALIBRATORS else "entropy2"


def score(backend, s, calibration, w, out, progress=None):
    """FP32 vs INT8 on the scoring window: an :class:`~int8batch.calib.evaluate.EvalResult`.

    ONNX Runtime scores the Q/DQ model of ``calibration``; TensorRT builds
    its engines into ``out/tensorrt`` (the INT8 one calibrated by TensorRT on
    the calibration window).  The first 100 predictions are kept.
    """
    if backend == "tensorrt":
        return evaluate_engines(s.model, w.cal_set, w.cal, w.score_set, w.win, os.path.join(out, "tensorrt"),
                                algorithm=trt_algorithm(s.method), keep=100, progress=progress)
    return evaluate(s.model, calibration.paths["qdq"], w.score_set, w.win.batch_size, w.win.count,
                    first=w.win.skipped, intra_op_threads=s.threads, keep=100, progress=progress,
                    device=s.device)


def describe(res):
    """A report note line about the engines :func:`~int8batch.trt.engine.evaluate_engines` ran."""
    e = getattr(res, "engines", None) or {}
    if not e:
        return None
    chunked = "" if e["int8_batch"] == e["fp32_batch"] else f", scoring batches run in chunks of {e['int8_batch']}"
    return (f"TensorRT {e['tensorrt']} engines: FP32 (batch {e['fp32_batch']}) and INT8 ({e['algorithm']} calibrator"
            f"{'' if e['calibrated'] else ', scales from the cache'}{chunked}): {e['fp32']}, {e['int8']}")
