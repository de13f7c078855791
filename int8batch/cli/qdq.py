"""Turn a TensorRT calibration cache or dynamic-range file + FP32 ONNX model into a Q/DQ model."""


def add_parser(sub):
    p = sub.add_parser("qdq", help=__doc__.splitlines()[0], description=__doc__ + """

The migration path from TensorRT 10 implicit INT8 to TensorRT 11 explicit quantization:
no recalibration; the cache's scales are used bit for bit. Tensors the placement needs
but the cache lacks, and cache entries that name no tensor of the model, are reported.""")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--cache", required=True, metavar="FILE",
                   help="TensorRT calibration cache (any version) or dynamic-range file (name:amax lines)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--allow-missing", action="store_true",
                   help="keep tensors without a scale in float instead of failing")
    return p


def run(args):
    from ..onnx.qdq import qdq_from_cache
    res = qdq_from_cache(args.model, args.cache, args.output,
                         on_missing="skip" if args.allow_missing else "raise")
    report = res[1] if isinstance(res, tuple) else res
    print(report.summary() if hasattr(report, "summary") else report)
    print(f"wrote {args.output}")
    return 0
