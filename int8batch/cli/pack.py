"""Pack images or MNIST IDX files into sampleINT8 batch files with a manifest."""
import logging

from .._progress import reporter
from .options import ProgressBar, add_preprocess_options, log_level, preprocess_overrides


def add_parser(sub):
    p = sub.add_parser("pack", help=__doc__.splitlines()[0], description=__doc__)
    p.add_argument("source", help="folder of images (recursive), an IDX image file, or bundled data: "
                                  "mnist (60000 training images), mnist-test")
    p.add_argument("out", help="output folder for batch0, batch1, ... and manifest.json")
    p.add_argument("-n", "--batch-size", type=int, help="images per batch file (default 100, or all the images "
                   "in one file when there are fewer)")
    p.add_argument("--limit", type=int, help="pack at most this many images (after --shuffle)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the images (seeded) before --limit")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    p.add_argument("--labels", metavar="FILE|folders|none",
                   help="label file ('path label' lines), class folders, or none (default: folders when "
                        "every image is in a class folder)")
    p.add_argument("--unlabelled-value", type=float, default=-1.0, help="label stored without labels (-1)")
    p.add_argument("--pad", action="store_true", help="fill the last file by repeating images instead of "
                                                       "dropping the remainder")
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed in the manifest)")
    p.add_argument("--max-pixels", type=int, metavar="N", help="refuse images of more than N pixels (width x "
                   "height, read from the header before decoding; default 178956970, as Pillow's bomb check)")
    p.add_argument("--force", action="store_true", help="replace a previous int8batch pack in OUT")
    p.add_argument("--prefix", default="batch", help="file name prefix (default batch)")
    p.add_argument("--suffix", default="", help="file name suffix (default none)")
    p.add_argument("--model", metavar="M.onnx", help="check the recipe against this model's input first: a fixed "
                   "channel count, height or width that differs is refused; dynamic ones are left to the recipe")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    add_preprocess_options(p)
    return p


def run(args):
    from ..packing.packer import pack
    bar = ProgressBar(enabled=False if args.quiet else None)
    try:
        with log_level(logging.ERROR if args.quiet else None):
            result = pack(args.source, args.out, preset=args.preset, batch_size=args.batch_size,
                          limit=args.limit, shuffle=args.shuffle, seed=args.seed, workers=args.workers,
                          skip_bad=args.skip_bad, pad=args.pad, force=args.force, labels=args.labels,
                          prefix=args.prefix, suffix=args.suffix, unlabelled_value=args.unlabelled_value,
                          progress=reporter(bar, "packing", "images"), model=args.model,
                          max_pixels=args.max_pixels,
                          **preprocess_overrides(args))
    finally:
        bar.close()
    if not args.quiet:
        print(result.summary())
    return 0
