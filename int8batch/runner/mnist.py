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
:func:`int8batch.calib.evaluate.evaluate` (or, with ``backend="tensorrt"``, as
TensorRT engines).  The steps are :func:`int8batch.runner.run.run`'s;
:class:`MnistSample` fills in the packing and the windows.
"""
import os
from dataclasses import dataclass

from .._progress import accepts, reporter
from ..calib.api import DEFAULT_METHOD
from ..errors import ConfigError
from ..packing.packer import pack
from ..packing.sources import BUNDLED, DATA_DIR, idx_count
from ..reader import BatchSet
from ..window import plan_window
from . import protocol
from .report import RunReport
from .run import Sample, Windows, run

MODEL = os.path.join(DATA_DIR, "lenet.onnx")
#: images per packed batch file (sampleINT8's MNIST batches hold 100)
PER_FILE = 100


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
    device: str = "auto"          # where ONNX Runtime runs (calibration and scoring): auto, cpu or cuda
    backend: str = "onnxruntime"  # "onnxruntime", "tensorrt" or "auto" (TensorRT 8.6-10.x if importable)


class MnistSample(Sample):
    """The MNIST protocol's steps for :func:`int8batch.runner.run.run`."""

    name = "mnist"
    tmp_prefix = "int8batch-mnist-"

    def check(self):
        """The windows planned over the bundled sets' image counts: a bad one fails now, not after packing."""
        s = self.settings
        sample = protocol.sample_window(s.window)
        train = idx_count(_bundled("mnist"))
        plan_window(train, PER_FILE, s.calib_batch_size, sample.first, s.calib_batches, sample.skip, strict=True,
                    where="calibration window (--calib-batch-size, --calib-batches)")
        first, count, images = self._scoring(train)
        plan_window(images, PER_FILE, s.batch_size, first, count, "exact", strict=True,
                    where=f"scoring window over the {s.score_set} set (--batch-size, --first-score-batch, "
                          "--score-batches)")

    def _scoring(self, train_images):
        """(first batch, batch count, images of the scoring set)."""
        s = self.settings
        if s.score_set == "test":
            return (0 if s.first_score_batch is None else s.first_score_batch, s.score_batches,
                    idx_count(_bundled("mnist-test")))
        if s.score_set == "train":
            return (100 if s.first_score_batch is None else s.first_score_batch,
                    400 if s.score_batches is None else s.score_batches, train_images)
        raise ConfigError(f"score set must be 'test' or 'train', got {s.score_set!r}")

    def prepare(self, tmp, stack):
        s, progress = self.settings, self.progress
        train_dir = os.path.join(tmp, "batches")
        # the bundled files by path: a local ./mnist folder must not stand in for them
        pack(_bundled("mnist"), train_dir, preset=s.preset, batch_size=PER_FILE, force=True,
             progress=reporter(progress, "packing training images", "images"))
        if s.score_set == "test":
            score_dir = os.path.join(tmp, "test-batches")
            pack(_bundled("mnist-test"), score_dir, preset=s.preset, batch_size=PER_FILE, force=True,
                 progress=reporter(progress, "packing test images", "images"))
        else:
            score_dir = train_dir
        first, count, _ = self._scoring(None)
        train = stack.enter_context(BatchSet(train_dir))
        score = stack.enter_context(BatchSet(score_dir))
        self.origin, cal = protocol.calibration_window(train, s.window, s.calib_batch_size, s.calib_batches)
        win = protocol.window(score, s.batch_size, first, count, "scoring")
        return Windows(train, cal, score, win)

    def calibrate_options(self):
        progress = self.progress
        return {"progress": progress if progress is not None and accepts(progress, "phase") else None}

    def score_progress(self):
        return reporter(self.progress, "scoring FP32 and INT8", "batches", legacy=True)

    def report(self, w, calibration, scored, backend, out):
        return RunReport("mnist", self.settings, w.cal, w.win, calibration, scored, out, backend=backend,
                         cal_origin=self.origin)


def run_mnist(settings=None, out="int8batch-run-mnist", workdir=None, progress=None, plot=False, force=False):
    """Run the protocol; returns a :class:`int8batch.runner.report.RunReport`.

    ``plot=True`` also writes ``predictions.png`` into ``out`` (needs matplotlib).
    """
    return run(MnistSample(settings or MnistSettings(), progress), out, workdir, plot, force)


def _bundled(name):
    """The IDX image file of bundled data ``name`` (its labels file lies beside it)."""
    return os.path.join(DATA_DIR, BUNDLED[name][0])
