"""Score an FP32 and an INT8 (Q/DQ) ONNX model on batch files with ONNX Runtime (top-k needs labels)."""


from .options import add_device_option


def add_parser(sub):
    p = sub.add_parser("eval", help=__doc__.splitlines()[0], description=__doc__)
    p.add_argument("fp32", help="FP32 ONNX model")
    p.add_argument("int8", help="INT8 Q/DQ ONNX model (int8batch calibrate's model.qdq.onnx)")
    p.add_argument("--batches", required=True, metavar="DIR", help="folder of batch files to score on")
    p.add_argument("--batch-size", type=int, help="images per run (default: the model's fixed N, else the files' N)")
    p.add_argument("--first", type=int, default=0, help="batches to skip first (default 0)")
    p.add_argument("--max-batches", type=int, help="score at most this many batches (default: all)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    add_device_option(p)
    return p


def run(args):
    from ..calib.evaluate import evaluate
    from ..reader import BatchSet
    with BatchSet(args.batches) as bs:
        r = evaluate(args.fp32, args.int8, bs, args.batch_size, args.max_batches, first=args.first,
                     intra_op_threads=args.threads, device=args.device)
    b = r.batch_size
    print(f"{r.images} images in {r.images // b} batch{'es' if r.images // b != 1 else ''} of {b} "
          f"({r.labelled} labelled)")
    for name, t1, t5, ms in (("FP32", r.top1_fp32, r.top5_fp32, r.ms_per_image_fp32),
                             ("INT8", r.top1_int8, r.top5_int8, r.ms_per_image_int8)):
        acc = f"top-1 {100 * t1:.2f} %, top-5 {100 * t5:.2f} %, " if r.labelled else ""
        print(f"{name}: {acc}{ms:.3f} ms/image")
    for name in ("fp32", "int8"):
        print(f"{name.upper()} ran on: {r.executed_by[name]}")
    print(f"top-1 agreement {100 * r.top1_agreement:.2f} %, mean softmax KL {r.mean_kl:.3g}, "
          f"largest output difference {r.max_abs_diff:.3g}")
    print(r.output_note())
    for line in r.other_output_notes():
        print(line)
    return 0
