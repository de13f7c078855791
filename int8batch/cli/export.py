"""Export batch files as a NumPy .npy/.npz calibration set (NVIDIA ModelOpt --calibration_data)."""
from .options import refuse_existing


def add_parser(sub):
    p = sub.add_parser("export", help=__doc__.splitlines()[0], description=__doc__)
    p.add_argument("batches", help="folder of batch files")
    p.add_argument("output", help="OUT.npy (bare array) or OUT.npz (keyed by --input-name)")
    p.add_argument("--input-name", help="model input name (needed for .npz)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--first", type=int, default=0, help="first image (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p


def run(args):
    from ..interop import check_source, export_numpy
    check_source(args.batches)
    refuse_existing(args.output, args.force, example="calibration.npy")
    n = export_numpy(args.batches, args.output, args.input_name, args.limit, args.first, force=args.force)
    print(f"wrote {n} image{'s' if n != 1 else ''} to {args.output}")
    return 0
