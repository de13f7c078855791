"""Turn a TensorRT calibration cache or dynamic-range file + FP32 ONNX model into a Q/DQ model."""
from .options import refuse_existing


def add_parser(sub):
    p = sub.add_parser("qdq", help=__doc__.splitlines()[0], description=__doc__ + """

The migration path from TensorRT 10 implicit INT8 to TensorRT 11 explicit quantization:
no recalibration; the cache's scales are used bit for bit. Caches of every TensorRT
from 5 to 10 are read as TensorRT wrote them. Entries with an infinite or NaN scale
(tensors TensorRT could not calibrate) leave that tensor in float; a scale of 0 is
replaced by a tiny positive one; entries that name no tensor of the model (such as
ONNXTRT_* parser names) are ignored. All three are listed by name. Tensors the
placement needs but the cache lacks are an error unless --allow-missing.""")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--cache", required=True, metavar="FILE",
                   help="TensorRT calibration cache (any version) or dynamic-range file (name:amax lines)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--allow-missing", action="store_true",
                   help="keep tensors without a scale in float instead of failing")
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    return p


def run(args):
    from ..calib.convert import qdq_from_cache
    refuse_existing(args.output, args.force, "-o", inputs=(args.model, args.cache))
    report = qdq_from_cache(args.model, args.cache, args.output,
                            on_missing="skip" if args.allow_missing else "raise")
    print(report.summary())
    for line in report.details():   # the names behind unusable / zero / unknown / missing counts
        print(f"  {line}")
    print(f"wrote {args.output}")
    return 0
