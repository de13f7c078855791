"""``int8batch run mnist``: TensorRT's MNIST INT8 sample, reproduced end to end.

The protocol of sampleINT8 and the Python ``int8_caffe_mnist`` sample:

1. pack the bundled MNIST training images into batch files of 100
   (``batches/batch0 ... batch599``, the sample's layout);
2. calibrate on 10 batches of 50 (the sample defaults) from where the chosen
   sample's stream starts (``window``, see
   :data:`int8batch.runner.protocol.CALIBRATION_WINDOWS`): ``"trt7"`` (default)
   is TensorRT 7/8's ``MNISTBatchStream``, which serves batch 1 first
   (images 50..549); ``"trt5"`` is TensorRT 5's ``BatchStream`` over the
   batch files from batch 0 (images 0..499);
3. score FP32 and INT8 on the 10000 test images (or, with
   ``score_set="train"``, on the sample's window: 400 batches of 100 from
   batch 100 of the training files), printing Top-1/Top-5, ms/image,
   expected/actual predictions of the first 100 images, and PASSED/FAILED
   (INT8 top-1 within 1 point of FP32; the command exits 1 on FAILED).

The INT8 model is the Q/DQ ONNX model written by the calibration, executed by
ONNX Runtime's int8 kernels.  Both models are scored by
:func:`int8batch.calib.evaluate.evaluate`.
"""
import os
import shutil
import tempfile
from dataclasses import dataclass

from ..calib.api import DEFAULT_METHOD, calibrate
from ..calib.evaluate import evaluate
from ..packing.packer import pack
from .._progress import accepts, reporter
from ..packing.sources import BUNDLED, DATA_DIR
from ..reader import BatchSet
from . import protocol

MODEL = os.path.join(DATA_DIR, "lenet.onnx")


@dataclass
class MnistSettings:
    """Every knob of the run (sampleINT8 defaults)."""

    calib_batches: int = 10
    calib_batch_size: int = 50
    window: str = "trt7"            # calibration window: "trt7" (MNISTBatchStream, batch 1 first) or "trt5"
    batch_size: int = 100
    score_set: str = "test"         # "test" (t10k) or "train" (the sample's window)
    first_score_batch: int = None   # default 0 for test, 100 for train
    score_batches: int = None       # default all for test, 400 for train
    method: str = DEFAULT_METHOD
    keep_float: object = None     # None: calibrate()'s default for the method; an int or "auto"
    bias_correction: bool = True
    preset: str = "mnist"
    model: str = MODEL
    threads: int = None
    backend: str = "onnxruntime"  # "onnxruntime", "tensorrt" or "auto" (TensorRT 8.6-10.x if importable)


def run_mnist(settings=None, out="int8batch-run-mnist", workdir=None, progress=None, plot=False):
    """Run the protocol; returns a :class:`int8batch.runner.report.RunReport`.

    ``plot=True`` also writes ``predictions.png`` into ``out`` (needs matplotlib).
    """
    from .report import RunReport
    from .trt_backend import describe, pick_backend, trt_algorithm, trt_evaluate
    s = settings or MnistSettings()
    backend = pick_backend(s.backend)  # a missing TensorRT fails now, not after packing
    protocol.sample_window(s.window)   # an unknown window name fails now, not after packing
    tmp = workdir or tempfile.mkdtemp(prefix="int8batch-mnist-")
    try:
        train_dir = os.path.join(tmp, "batches")
        # the bundled files by path: a local ./mnist folder must not stand in for them
        pack(_bundled("mnist"), train_dir, preset=s.preset, batch_size=100, force=True,
             progress=reporter(progress, "packing training images", "images"))
        if s.score_set == "test":
            score_dir = os.path.join(tmp, "test-batches")
            pack(_bundled("mnist-test"), score_dir, preset=s.preset, batch_size=100, force=True,
                 progress=reporter(progress, "packing test images", "images"))
            first = 0 if s.first_score_batch is None else s.first_score_batch
            count = s.score_batches
        elif s.score_set == "train":
            score_dir = train_dir
            first = 100 if s.first_score_batch is None else s.first_score_batch
            count = 400 if s.score_batches is None else s.score_batches
        else:
            from ..errors import ConfigError
            raise ConfigError(f"score set must be 'test' or 'train', got {s.score_set!r}")
        with BatchSet(train_dir) as train, BatchSet(score_dir) as score:
            sample, cal = protocol.calibration_window(train, s.window, s.calib_batch_size, s.calib_batches)
            win = protocol.window(score, s.batch_size, first, count, "scoring")
            # cal.skipped: the batches the sample's stream really skips (exact from here on)
            result = calibrate(s.model, train, out, method=s.method, batch_size=cal.batch_size,
                               keep_float=s.keep_float, bias_correction=s.bias_correction,
                               first=cal.skipped, max_batches=cal.count,
                               progress=progress if progress is not None and accepts(progress, "phase") else None)
            scoring = reporter(progress, "scoring FP32 and INT8", "batches", legacy=True)
            if backend == "tensorrt":
                scored = trt_evaluate(s.model, train, cal, score, win, os.path.join(out, "tensorrt"),
                                      algorithm=trt_algorithm(s.method), keep=100, progress=scoring)
            else:
                scored = evaluate(s.model, result.paths["qdq"], score, win.batch_size, win.count,
                                  first=win.skipped, intra_op_threads=s.threads, keep=100, progress=scoring)
            report = RunReport("mnist", s, cal, win, result, scored, out, backend=backend,
                               cal_origin=sample)
            if backend == "tensorrt":
                report.notes.append(describe(scored))
            if plot:
                from .plot import plot_predictions
                report.paths["plot"] = plot_predictions(score, win.start_image, scored,
                                                        os.path.join(out, "predictions.png"),
                                                        title="int8batch run mnist: FP32 vs INT8")
        report.write()
        return report
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _bundled(name):
    """The IDX image file of bundled data ``name`` (its labels file lies beside it)."""
    return os.path.join(DATA_DIR, BUNDLED[name][0])
