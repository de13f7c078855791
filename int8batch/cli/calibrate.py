"""Compute INT8 scales from batch files: TensorRT cache, dynamic ranges, Q/DQ ONNX model."""
import logging
import os

from .options import ProgressBar, add_device_option, keep_float_value, log_level

log = logging.getLogger("int8batch")


def add_parser(sub):
    from ..calib.api import DEFAULT_METHOD, METHODS
    from ..calib.settings import SENSITIVITY_MAC_BUDGET, SENSITIVITY_MAX_KEPT, SENSITIVITY_THRESHOLD
    p = sub.add_parser("calibrate", help=__doc__.splitlines()[0], description=__doc__ + """

backend onnxruntime (default without TensorRT 8.6-10.x): ONNX Runtime runs the model,
int8batch computes the scales and writes calibration.cache (TensorRT 10 format),
dynamic_range.txt, calibration.json, model.qdq.onnx (TensorRT 11 / strongly typed) and,
when weights were rounded, biases corrected or activations centred, model.corrected.onnx (the
FP32 model carrying them, to build with calibration.cache on TensorRT 8.6-10).
backend tensorrt: TensorRT 10's own calibrator builds an INT8 engine and its cache.""")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--batches", required=True, metavar="DIR", help="folder of batch files (int8batch pack)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="auto (default): observed max for ReLU6/Clip-bounded tensors, least quantization "
                        "error (mse) elsewhere; entropy: TensorRT's IInt8EntropyCalibrator2, bit for bit on "
                        "the values TensorRT published")
    p.add_argument("-o", "--out", default="calibration", metavar="DIR", help="output folder (default ./calibration)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                   help="auto: tensorrt when TensorRT 8.6-10.x is installed, else onnxruntime")
    p.add_argument("--batch-size", type=int, help="calibration batch (default: model's batch, else files' N)")
    p.add_argument("--first", type=int, default=0, help="batches to skip first")
    p.add_argument("--max-batches", type=int, help="most calibration batches (default: all)")
    p.add_argument("--two-pass", action="store_true", help="exact histograms: a max pass, then fixed ranges")
    p.add_argument("--percentile", type=float, help="percentile of --method percentile (default 99.99)")
    p.add_argument("--bins", type=int, default=2048, help="histogram bins (default 2048)")
    p.add_argument("--trt-version", default=None, metavar="X.Y[.Z]",
                   help="TensorRT that will read the cache (its header must name it; default: the installed "
                        "TensorRT, else 10.16.0, with a note)")
    p.add_argument("--cache-algorithm", choices=("entropy2", "minmax", "entropy", "legacy"), default=None,
                   help="calibrator named in the cache header (default: minmax for --method minmax, else "
                        "entropy2, the one trtexec --calib reads)")
    p.add_argument("--cache", metavar="FILE", help="tensorrt backend: cache to reuse (skips calibration)")
    p.add_argument("--algorithm", choices=("entropy2", "entropy", "minmax", "legacy"), default=None,
                   help="tensorrt backend: TensorRT calibrator (default entropy2)")
    p.add_argument("--no-qdq", action="store_true",
                   help="write the cache, the dynamic ranges and calibration.json only: no Q/DQ model and no "
                        "model.corrected.onnx (no weight rounding, no bias correction, no centring)")
    p.add_argument("--keep-float", type=keep_float_value, default=None, metavar="K|auto",
                   help="activations left without Q/DQ (TensorRT runs their consumers in higher precision), "
                        "chosen by a one-at-a-time sensitivity pass: K most sensitive, or auto: those whose "
                        f"quantization alone costs > {100 * SENSITIVITY_THRESHOLD:g}%% of the output energy, "
                        f"while their readers do at most {100 * SENSITIVITY_MAC_BUDGET:g}%% of the multiply-adds "
                        f"(at most {SENSITIVITY_MAX_KEPT} tensors; default for --method auto; "
                        "0 = pure INT8, the default for the other methods)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="keep the model's biases in the Q/DQ model (default: each Conv/Gemm bias absorbs the "
                        "mean output shift of its int8 weights, measured in the same pass)")
    p.add_argument("--bias-inputs", choices=("fp32", "int8"), default=None,
                   help="which input mean bias correction takes: int8 (default for --method auto) sets each "
                        "Conv bias, layer after layer, from the Q/DQ model's own input mean on the first 64 "
                        "calibration images, so that its mean output matches FP32 (the early layers only: input "
                        "at most 8x smaller than the image); fp32 (default for the other methods) from the FP32 "
                        "model's, cancelling the int8 weights' own shift only")
    p.add_argument("--weight-rounding", choices=("nearest", "gptq"), default=None,
                   help="int8 weights of the Q/DQ model: gptq (default for --method auto) compensates each "
                        "rounding error through the layer's input correlations, measured on the first 64 "
                        "calibration images; nearest (default for the other methods) rounds each weight alone")
    p.add_argument("--no-centre", action="store_true",
                   help="turn off the centring that --method auto does by default: a ReLU6 output read only by "
                        "unpadded Conv/Gemm layers is shifted to [-3, 3], exactly, folded into the biases, so int8 "
                        "covers it with half the step (the Q/DQ and corrected models carry it; the cache holds "
                        "the original names too)")
    p.add_argument("--centre-padded", action="store_true",
                   help="also centre the inputs of padded convolutions (the depthwise inputs of MobileNet and "
                        "EfficientNet-Lite blocks): each such convolution reads an explicit Pad of the shifted "
                        "zero instead of padding itself; exact, but new Pad nodes in the Q/DQ and corrected "
                        "models (see the README for what it gains and why it is not the default)")
    p.add_argument("--cache-keep-float", action="store_true",
                   help="leave the activations kept float in the Q/DQ model (--keep-float) out of "
                        "calibration.cache and dynamic_range.txt too: TensorRT 10's implicit INT8 then runs the "
                        "layers reading or producing them in higher precision instead of quantizing them "
                        "(default: the cache holds every tensor)")
    add_device_option(p, "the model and where the statistics are computed")
    p.add_argument("--device-budget", type=float, metavar="GB",
                   help="device memory one run's activations may take on the GPU (default 8 GB); larger "
                        "calibration batches run in sub-batches")
    p.add_argument("--report", action="store_true", help="also write report.png (needs matplotlib)")
    p.add_argument("--force", action="store_true",
                   help="replace files of the artefacts' names in --out that int8batch did not write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings and errors only")
    return p


def _refuse_unused(args, backend):
    """An option that this run would not use is an error, not silently dropped."""
    from ..errors import ConfigError
    if backend != "tensorrt":
        given = [o for o, v in (("--cache", args.cache), ("--algorithm", args.algorithm)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to --backend tensorrt only; this run uses ONNX "
                              "Runtime (choose the header's calibrator with --cache-algorithm)")
    if args.percentile is not None and args.method != "percentile":
        raise ConfigError(f"--percentile applies to --method percentile only, not {args.method}")


def run(args):
    from ..runner.run import pick_backend
    backend = pick_backend(args.backend)   # the one rule: auto is TensorRT 8.6-10.x when it imports
    _refuse_unused(args, backend)
    if backend == "tensorrt":
        from ..trt.build import build_int8_engine
        os.makedirs(args.out, exist_ok=True)
        cache = args.cache or os.path.join(args.out, "calibration.cache")
        res = build_int8_engine(args.model, args.batches, os.path.join(args.out, "model.int8.engine"), cache,
                                algorithm=args.algorithm or "entropy2", batch_size=args.batch_size,
                                max_batches=args.max_batches, first=args.first)
        print(res)   # the BuildResult: engine, cache, batches served, shape, TensorRT version
        return 0
    from ..calib.api import calibrate
    if args.device_budget is not None and not args.device_budget > 0:
        from ..errors import ConfigError
        raise ConfigError(f"--device-budget must be a positive number of GB, got {args.device_budget:g}")
    bar = ProgressBar("batches", enabled=False if args.quiet else None)
    try:
        with log_level(logging.WARNING if args.quiet else None):
            res = calibrate(args.model, args.batches, args.out, method=args.method, batch_size=args.batch_size,
                            first=args.first, max_batches=args.max_batches, two_pass=args.two_pass,
                            num_bins=args.bins, percentile=args.percentile,
                            trt_version=args.trt_version, cache_algorithm=args.cache_algorithm,
                            write_qdq=not args.no_qdq,
                            keep_float=args.keep_float, bias_correction=not args.no_bias_correction,
                            device=args.device, progress=bar, weight_rounding=args.weight_rounding,
                            bias_inputs=args.bias_inputs,
                            force=args.force, report=args.report,
                            centre=False if args.no_centre else None, centre_padded=args.centre_padded,
                            cache_keep_float=args.cache_keep_float,
                            device_budget=None if args.device_budget is None else int(args.device_budget * 1e9))
    finally:
        bar.close()
    if not args.quiet:
        print(res.summary())
    return 0
