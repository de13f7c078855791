"""Reproduce TensorRT's INT8 samples end to end: FP32 vs INT8 accuracy, speed, predictions."""
import logging
import sys

from .options import ProgressBar, add_device_option, keep_float_value, log_level, size_value


def _common(p, default_out):
    from ..calib.api import DEFAULT_METHOD, METHODS
    p.add_argument("--first-score-batch", type=int,
                   help="first scoring batch (default: mnist 0 on the test set, 100 on the training set as "
                        "sampleINT8; imagenet the first after the calibration images, 0 with a separate "
                        "calibration folder)")
    p.add_argument("--score-batches", type=int, help="scoring batches (default: every full one that remains)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"calibration method, as int8batch calibrate --method (default {DEFAULT_METHOD})")
    p.add_argument("--keep-float", type=keep_float_value, default=None, metavar="K|auto",
                   help="activations the Q/DQ model leaves float (as int8batch calibrate --keep-float)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="keep the model's biases in the Q/DQ model (as int8batch calibrate)")
    p.add_argument("-o", "--out", default=default_out, help=f"artefacts and reports (default ./{default_out})")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    add_device_option(p)
    p.add_argument("--plot", action="store_true", help="write predictions.png (needs matplotlib)")
    p.add_argument("--force", action="store_true",
                   help="replace files in --out that an earlier run or calibration did not write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="onnxruntime",
                   help="onnxruntime: the Q/DQ model on ONNX Runtime (default); tensorrt: FP32 and INT8 "
                        "(calibrator) engines on TensorRT 8.6-10.x; auto: tensorrt when it imports")


def add_parser(sub):
    from ..preprocess import PRESETS
    p = sub.add_parser("run", help=__doc__.splitlines()[0], description=__doc__)
    runs = p.add_subparsers(dest="sample", metavar="SAMPLE", required=True)
    m = runs.add_parser("mnist", help="sampleINT8 on the bundled MNIST and LeNet (exit 1 on FAILED)")
    m.add_argument("--calib-batches", type=int, default=10, help="calibration batches (default 10)")
    m.add_argument("--calib-batch-size", type=int, default=50, help="calibration batch size (default 50)")
    m.add_argument("--window", choices=("trt7", "trt5"), default="trt7",
                   help="whose calibration window: trt7 = TensorRT 7/8 sampleINT8, whose MNISTBatchStream "
                        "serves batch 1 first (images 50..549 with the defaults; default); trt5 = TensorRT 5 "
                        "sampleINT8, BatchStream over the batch files from batch 0 (images 0..499)")
    m.add_argument("--batch-size", type=int, default=100, help="scoring batch size (default 100)")
    m.add_argument("--score-set", choices=("test", "train"), default="test",
                   help="test: the 10000 test images (default); train: the sample's window of the training "
                        "batch files (400 batches of 100 from batch 100)")
    m.add_argument("--preset", choices=("mnist", "mnist-caffe"), default="mnist")
    _common(m, "int8batch-run-mnist")

    i = runs.add_parser("imagenet", help="sampleINT8 on an ImageNet classifier and your image folder "
                        "(exit 1 on FAILED)",
                        description="Pack --images (shuffled with --seed), calibrate on the first --calib-images, "
                        "score FP32 and INT8 on the images after them (disjoint), report Top-1/Top-5 (with "
                        "labels), agreement and speed. PASSED: INT8 top-1 within 1 point of FP32 with labels, "
                        "top-1 agreement >= 95 % without.")
    i.add_argument("--model", required=True, help="FP32 ONNX classifier (NCHW input, logits or probabilities)")
    i.add_argument("--images", required=True, metavar="DIR",
                   help="images: ILSVRC2012_val_*.JPEG with --labels FILE, or class sub-folders")
    i.add_argument("--labels", metavar="FILE|folders|none",
                   help="'filename label' lines (Caffe val.txt), class folders, or none (agreement only); "
                        "default: folders when every image lies in one, none when none does (a mix is refused: "
                        "choose)")
    i.add_argument("--preset", choices=sorted(n for n in PRESETS if not n.startswith("mnist")),
                   default="efficientnet-lite", help="the images' recipe (default: efficientnet-lite)")
    i.add_argument("--size", type=size_value, metavar="H[xW]",
                   help="replace the preset's output size, e.g. 240 for EfficientNet-Lite1 (as pack --size)")
    i.add_argument("--resize-size", type=size_value, metavar="S|HxW",
                   help="replace the preset's resize size, e.g. 272 for EfficientNet-Lite1 (as pack --resize-size)")
    i.add_argument("--calib-images", default="500", metavar="N|DIR",
                   help="calibrate on the first N shuffled images (default 500 = 10 batches of 50) or on a "
                        "separate folder DIR")
    i.add_argument("--calib-batch-size", type=int, default=50, help="calibration batch size (default 50)")
    i.add_argument("--batch-size", type=int, default=50, help="scoring batch size (default 50)")
    i.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    i.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    _common(i, "int8batch-run-imagenet")
    return p


def run(args):
    bar = ProgressBar("batches", enabled=False if args.quiet else None)
    # the report printed below says everything the library would log; -v shows the log too
    try:
        with log_level(None if getattr(args, "verbose", False) else logging.WARNING):
            report = _run_sample(args, bar)
    finally:
        bar.close()
    print(report.text())
    print(f"reports: {', '.join(report.paths.values())}")
    sys.stdout.flush()
    return 0 if report.passed else 1


def _run_sample(args, bar):
    if args.sample == "mnist":
        from ..runner.mnist import MnistSettings, run_mnist
        s = MnistSettings(calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
                          window=args.window, batch_size=args.batch_size, score_set=args.score_set,
                          first_score_batch=args.first_score_batch, score_batches=args.score_batches,
                          method=args.method, preset=args.preset, threads=args.threads, backend=args.backend, device=args.device,
                          keep_float=args.keep_float, bias_correction=not args.no_bias_correction)
        return run_mnist(s, out=args.out, progress=bar, plot=args.plot, force=args.force)
    from ..runner.imagenet import ImagenetSettings, run_imagenet
    s = ImagenetSettings(model=args.model, images=args.images, labels=args.labels, preset=args.preset,
                         size=args.size, resize_size=args.resize_size,
                         calib_images=args.calib_images, calib_batch_size=args.calib_batch_size,
                         batch_size=args.batch_size, first_score_batch=args.first_score_batch,
                         score_batches=args.score_batches, method=args.method, seed=args.seed,
                         skip_bad=args.skip_bad, threads=args.threads, backend=args.backend, device=args.device,
                         keep_float=args.keep_float, bias_correction=not args.no_bias_correction)
    return run_imagenet(s, out=args.out, progress=bar, plot=args.plot, force=args.force)
