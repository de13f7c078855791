"""Score an FP32 and an INT8 (Q/DQ) ONNX model on labelled batch files with ONNX Runtime."""


def add_parser(sub):
    p = sub.add_parser("eval", help=__doc__.splitlines()[0], description=__doc__)
    p.add_argument("fp32", help="FP32 ONNX model")
    p.add_argument("int8", help="INT8 Q/DQ ONNX model (int8batch calibrate's model.qdq.onnx)")
    p.add_argument("--batches", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, help="default: the files' N")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    return p


def run(args):
    from ..reader import BatchSet
    from ..runner.scoring import compare
    with BatchSet(args.batches) as bs:
        b = args.batch_size or bs.per_file
        n = bs.num_batches(b, args.first) if args.max_batches is None else min(args.max_batches,
                                                                              bs.num_batches(b, args.first))
        c = compare(args.fp32, args.int8, bs.batches(b, args.first, n), keep=0, threads=args.threads)
    labelled = bool(bs.manifest is None or bs.manifest.get("labels", {}).get("source") != "none")
    print(f"{c.images} images in {n} batches of {b}")
    for name, s in (("FP32", c.fp32), ("INT8", c.int8)):
        acc = f"top-1 {100 * s.top1_rate:.2f} %, top-5 {100 * s.top5_rate:.2f} %, " if labelled else ""
        print(f"{name}: {acc}{s.ms_per_image:.3f} ms/image")
    print(f"top-1 agreement {100 * c.agreement:.2f} %, mean softmax KL {c.mean_kl:.3g}, "
          f"largest output difference {c.max_abs_diff:.3g}")
    return 0
