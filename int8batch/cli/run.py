"""Reproduce TensorRT's INT8 samples end to end: FP32 vs INT8 accuracy, speed, predictions."""
import sys

from .options import ProgressBar


def add_parser(sub):
    from ..calib.api import DEFAULT_METHOD, METHODS
    p = sub.add_parser("run", help=__doc__.splitlines()[0], description=__doc__)
    runs = p.add_subparsers(dest="sample", metavar="SAMPLE", required=True)
    m = runs.add_parser("mnist", help="sampleINT8 on the bundled MNIST and LeNet (exit 1 on FAILED)")
    m.add_argument("--calib-batches", type=int, default=10, help="calibration batches (default 10)")
    m.add_argument("--calib-batch-size", type=int, default=50, help="calibration batch size (default 50)")
    m.add_argument("--batch-size", type=int, default=100, help="scoring batch size (default 100)")
    m.add_argument("--score-set", choices=("test", "train"), default="test",
                   help="test: the 10000 test images (default); train: the sample's window of the training "
                        "batch files (400 batches of 100 from batch 100)")
    m.add_argument("--first-score-batch", type=int)
    m.add_argument("--score-batches", type=int)
    m.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    m.add_argument("--preset", choices=("mnist", "mnist-caffe"), default="mnist")
    m.add_argument("--out", default="int8batch-run-mnist", help="artefacts and reports (default "
                                                               "./int8batch-run-mnist)")
    m.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    m.add_argument("--plot", action="store_true", help="write predictions.png (needs matplotlib)")
    m.set_defaults(_sample="mnist")
    return p


def run(args):
    bar = ProgressBar("batches", enabled=None)
    try:
        if args.sample == "mnist":
            from ..runner.mnist import MnistSettings, run_mnist
            s = MnistSettings(calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size,
                              batch_size=args.batch_size, score_set=args.score_set,
                              first_score_batch=args.first_score_batch, score_batches=args.score_batches,
                              method=args.method, preset=args.preset, threads=args.threads)
            report = run_mnist(s, out=args.out, progress=bar)
    finally:
        bar.close()
    print(report.text())
    print(f"reports: {', '.join(report.paths.values())}")
    sys.stdout.flush()
    return 0 if report.passed else 1
