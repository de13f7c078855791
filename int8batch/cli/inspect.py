"""Summarize and check a folder of batch files; optionally write a PNG grid of its images.

Prints dims, files, images, the label histogram, per-channel mean/std/min/max of
the data, and whether the manifest and the checksums agree with the files.
Exits with status 1 when a problem is found.
"""
import json
import os

from ..manifest import PREVIEW_NAME
from .options import refuse_existing

DEFAULT_SHOW = 16


def add_parser(sub):
    p = sub.add_parser("inspect", help=__doc__.splitlines()[0], description=__doc__)
    p.add_argument("out", help="the batch folder (batch0, batch1, ... and manifest.json)")
    p.add_argument("--show", type=int, metavar="K",
                   help="write a PNG grid of K images spread evenly over the pack, de-normalized to pixels "
                        "(to --grid, default OUT/preview.png)")
    p.add_argument("--first", action="store_true", help="show the first K images instead of an even spread "
                   f"(implies --show {DEFAULT_SHOW} when --show is not given)")
    p.add_argument("--grid", metavar="PATH",
                   help=f"where to write the PNG grid (implies --show {DEFAULT_SHOW} when --show is not given)")
    p.add_argument("--columns", type=int, help=f"tiles per row of the grid (default: about square; implies --show "
                   f"{DEFAULT_SHOW} when --show is not given)")
    p.add_argument("--force", action="store_true", help="replace an existing --grid file")
    p.add_argument("--no-verify", action="store_true", help="do not recompute the files' checksums")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--prefix", help="file name prefix (default: the manifest's, else batch)")
    p.add_argument("--suffix", help="file name suffix (default: the manifest's, else none)")
    return p


def run(args):
    from ..inspect import inspect, save_grid
    report = inspect(args.out, verify=not args.no_verify, prefix=args.prefix, suffix=args.suffix)
    grid = None
    if args.show is not None or args.grid or args.first or args.columns is not None:
        path = args.grid or os.path.join(args.out, PREVIEW_NAME)
        if args.grid:           # the default OUT/preview.png is the pack's own preview, replaced freely
            refuse_existing(args.grid, args.force, "--grid")
        grid = save_grid(args.out, path, count=DEFAULT_SHOW if args.show is None else args.show, columns=args.columns,
                         prefix=args.prefix, suffix=args.suffix, first=args.first)
    if args.json:
        doc = report.to_dict()
        if grid is not None:
            doc["grid"] = {"path": grid.path, "count": grid.count, "mode": grid.mode, "channels": grid.channels,
                           "indices": grid.indices}
        print(json.dumps(doc, indent=2))
    else:
        print(report.format())
        if grid is not None:
            how = ("de-normalized with the manifest's preprocessing" if grid.mode == "manifest"
                   else "MIN-MAX STRETCHED (no manifest preprocessing; not the true pixels)")
            which = ("the first ones" if args.first or grid.count == report.images else
                     f"spread evenly over the {report.images}, images {_ranges(grid.indices)}")
            print(f"grid          {grid.path}: {grid.count} images ({which}), {grid.columns} per row, {how}")
    return 1 if report.problems else 0


def _ranges(indices, limit=8):
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f", ... {indices[-1]}" if len(indices) > limit else "")
