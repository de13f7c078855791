"""Look inside a batch folder: a summary with checks, and a picture of the images.

:func:`inspect` reports dims, files, images, the label histogram, per-channel
statistics of the data (streamed over the mapped files in float64), and whether
the manifest agrees with the files, checksums included.  :func:`save_grid`
writes a PNG of images spread evenly over the pack (or the first ones),
de-normalized back to pixels with the manifest's recipe
(:func:`int8batch.preprocess.denormalize`: ``pixel = (out * std + mean) / scale``),
so a person can see what the model will see.  What is checked in the manifest
is :func:`int8batch.manifest.audit_manifest`'s.
"""
import logging
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from . import format as fmt
from ._atomic import atomic_file
from ._optional import require
from .errors import ConfigError
from .manifest import (MANIFEST_NAME, audit_manifest, labels as manifest_labels, pack_naming, read_pack_manifest,
                       recipe)
from .preprocess import PreprocessConfig, denormalize
from .reader import BatchSet

log = logging.getLogger(__name__)

_CHUNK_VALUES = 1 << 21   # float values per statistics chunk (16 MiB as float64)
_SHOWN_LABELS = 20        # histogram entries printed by InspectReport.format()


@dataclass
class InspectReport:
    """What :func:`inspect` found.  ``problems`` empty means the folder is sound.

    Attributes
    ----------
    folder : str
    dims : tuple of int
        (N, C, H, W) of every file.
    files, images : int
    label_histogram : dict of float to int
        Label value -> number of images, sorted by label.
    mean, std, min, max : list of float, one per channel
        Over every value of the data; ``std`` is the population std (ddof 0).
    nonfinite : int
        NaN or infinite values in the data.
    manifest : dict or None
    recipe : PreprocessConfig or None
        The manifest's preprocessing recipe, when it has a valid one.
    checksums : str
        ``"ok"``, ``"mismatch"``, ``"not verified"`` or ``"absent"``.
    problems, notes : list of str
    """

    folder: str
    dims: tuple
    files: int
    images: int
    prefix: str
    suffix: str
    label_histogram: dict
    mean: list
    std: list
    min: list
    max: list
    nonfinite: int = 0
    manifest: dict = None
    checksums: str = "absent"
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    recipe: PreprocessConfig = None

    @property
    def ok(self):
        return not self.problems

    def to_dict(self):
        """JSON-ready form (histogram keys become label strings; the manifest and the recipe are left out)."""
        d = asdict(self)
        d.pop("manifest")
        d.pop("recipe")
        d["dims"] = list(self.dims)
        d["label_histogram"] = {_label_text(k): v for k, v in self.label_histogram.items()}
        d["has_manifest"] = self.manifest is not None
        d["ok"] = self.ok
        return d

    def format(self):
        """A human-readable multi-line summary."""
        n, c, h, w = self.dims
        names = _channel_names(self.recipe, c)
        classes = manifest_labels(self.manifest)
        lines = [f"batch folder  {self.folder}",
                 f"files         {self.files} ({fmt.batch_name(0, self.prefix, self.suffix)} .. "
                 f"{fmt.batch_name(self.files - 1, self.prefix, self.suffix)}), "
                 f"{fmt.file_size(n, c, h, w):,} bytes each",
                 f"dims          N={n} C={c} H={h} W={w} per file; {self.images} images",
                 f"labels        {len(self.label_histogram)} distinct value(s)"]
        for k, (label, count) in enumerate(self.label_histogram.items()):
            if k == _SHOWN_LABELS:
                lines.append(f"  ... {len(self.label_histogram) - _SHOWN_LABELS} more")
                break
            name = classes.class_name(label)
            lines.append(f"  {_label_text(label):>8} {count:>8}" + (f"  {name}" if name else ""))
        lines.append(f"data          {'channel':>8} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}")
        for i in range(c):
            lines.append(f"              {names[i]:>8} {self.mean[i]:12.6g} {self.std[i]:12.6g} "
                         f"{self.min[i]:12.6g} {self.max[i]:12.6g}")
        lines.append(f"manifest      {'present' if self.manifest is not None else 'none'}")
        lines.append(f"checksums     {self.checksums}")
        lines += [f"note          {t}" for t in self.notes]
        if self.problems:
            lines.append(f"PROBLEMS      {len(self.problems)}")
            lines += [f"  - {t}" for t in self.problems]
        else:
            lines.append("problems      none")
        return "\n".join(lines)


def inspect(folder, verify=True, prefix=None, suffix=None):
    """Summarize and check a folder of batch files.

    Parameters
    ----------
    folder : str or PathLike
        The pack folder (``batch0``, ``batch1``, ... and usually ``manifest.json``).
    verify : bool
        Recompute every file's CRC-32 and compare it with the manifest.
    prefix, suffix : str or None
        File name parts; by default the manifest's, else ``batch`` and ``""``.

    Returns
    -------
    InspectReport

    Raises
    ------
    BatchFormatError
        When the batch files themselves cannot be read (see :class:`BatchSet`).
    ManifestError
        For an unfinished pack or an unreadable manifest.
    """
    folder = os.fspath(folder)
    manifest = read_pack_manifest(folder)
    prefix, suffix = _naming(manifest, prefix, suffix)
    with BatchSet(folder, prefix=prefix, suffix=suffix, manifest="ignore") as bs:
        stats = _data_stats(bs)
        report = InspectReport(folder=folder, dims=tuple(bs.dims), files=bs.num_files, images=bs.num_images,
                               prefix=prefix, suffix=suffix, label_histogram=_histogram(bs),
                               manifest=manifest, **stats)
        if report.nonfinite:
            report.problems.append(f"{report.nonfinite} NaN or infinite value(s) in the data; "
                                   "calibration on them is meaningless, pack again")
        odd = [v for v in report.label_histogram if not (math.isfinite(v) and v == int(v))]
        if odd:
            count = sum(report.label_histogram[v] for v in odd)
            report.problems.append(
                f"{count} label(s) are no whole number (e.g. {odd[0]}): eval and run count those images as "
                "unlabelled, and TensorRT's samples read them as classes")
        if manifest is None:
            report.notes.append(f"no {MANIFEST_NAME}: foreign batch files (e.g. from Caffe), nothing to cross-check")
        else:
            _check_manifest(bs, manifest, report, verify)
    return report


# ---------------------------------------------------------------- statistics
def _data_stats(bs):
    """Per-channel mean/std (float64, merged chunk by chunk), min/max and non-finite count."""
    c = bs.dims[1]
    count, mean, m2 = 0, np.zeros(c), np.zeros(c)
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    nonfinite = 0
    per_image = int(np.prod(bs.image_shape))
    step = max(1, _CHUNK_VALUES // per_image)
    with np.errstate(invalid="ignore", over="ignore"):   # inf/NaN data is counted and reported, not warned
        for k in range(bs.num_files):
            data = bs.file_arrays(k)[0]
            for s in range(0, data.shape[0], step):
                x = np.asarray(data[s:s + step], dtype=np.float64)
                nb = x.size // c
                mb = x.mean(axis=(0, 2, 3))
                m2b = np.square(x - mb[:, None, None]).sum(axis=(0, 2, 3))
                delta = mb - mean
                total = count + nb
                mean = mean + delta * (nb / total)
                m2 = m2 + m2b + delta * delta * (count * nb / total)
                count = total
                lo = np.minimum(lo, x.min(axis=(0, 2, 3)))
                hi = np.maximum(hi, x.max(axis=(0, 2, 3)))
                nonfinite += int(x.size - np.count_nonzero(np.isfinite(x)))
        std = np.sqrt(m2 / count)
    return dict(mean=mean.tolist(), std=std.tolist(), min=lo.tolist(), max=hi.tolist(), nonfinite=nonfinite)


def _histogram(bs):
    counts = {}
    for k in range(bs.num_files):
        values, n = np.unique(bs.file_arrays(k)[1], return_counts=True)
        for v, m in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + m
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------ manifest
def _check_manifest(bs, man, report, verify):
    """The manifest's findings (:func:`int8batch.manifest.audit_manifest`) into ``report``."""
    labels = np.concatenate([bs.file_arrays(k)[1] for k in range(bs.num_files)])
    audit = audit_manifest(man, bs.dims, bs.num_files, labels=labels,
                           file_names=[os.path.basename(p) for p in bs.paths],
                           checksum=(lambda k: fmt.file_checksum(bs.paths[k])) if verify else None)
    report.problems += audit.problems
    report.notes += audit.notes
    report.checksums = audit.checksums
    report.recipe = audit.recipe


def _naming(manifest, prefix, suffix):
    """File name parts: the caller's, else the manifest's, else ``batch`` and ``""``."""
    named = pack_naming(manifest)
    return named[0] if prefix is None else prefix, named[1] if suffix is None else suffix


# -------------------------------------------------------------------- labels
def _label_text(v):
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _channel_names(recipe, c):
    channels = recipe.channels if recipe is not None else None
    if channels in ("rgb", "bgr") and c == 3:
        return list(channels.upper())
    if channels == "gray" and c == 1:
        return ["gray"]
    return [str(i) for i in range(c)]

# ---------------------------------------------------------------------- grid
@dataclass
class GridInfo:
    """What :func:`save_grid` drew, and where.

    Attributes
    ----------
    path : str
    count, columns, rows, zoom : int
        Images shown, grid shape, and the integer (nearest-neighbour) magnification.
    origins : list of (int, int)
        Canvas (y, x) of the top-left pixel of each image, in order.
    mode : str
        ``"manifest"`` (exact de-normalization) or ``"min-max stretch"`` (no manifest).
    channels : str
        Channel order assumed for the data: ``"rgb"``, ``"bgr"`` or ``"gray"``.
    labels : bool
        Whether a label was drawn under each tile.
    indices : list of int
        Position in the pack of each image shown, in grid order.
    """

    path: str
    count: int
    columns: int
    rows: int
    zoom: int
    origins: list
    mode: str
    channels: str
    labels: bool
    indices: list = None


def save_grid(folder, path, count=16, columns=None, zoom=None, prefix=None, suffix=None, first=False):
    """Write a PNG grid of ``count`` images spread evenly over the pack, de-normalized to pixels.

    Parameters
    ----------
    folder : str or PathLike
        The pack folder.
    path : str or PathLike
        The PNG to write (always PNG, whatever the extension).
    count : int
        Images to show (fewer if the set is smaller).
    columns : int or None
        Tiles per row; default ``ceil(sqrt(count))``.
    zoom : int or None
        Integer magnification of each image (nearest neighbour, so pixels stay
        exact); default enlarges small images to about 96 pixels.
    prefix, suffix : str or None
        As for :func:`inspect`.
    first : bool
        Show the first ``count`` images instead.  The even spread (images
        ``i * (n - 1) // (count - 1)``, first and last included) shows every
        class of an unshuffled class-folder pack, not only the first one.

    Returns
    -------
    GridInfo
        Where each image landed.  Without a manifest the values are min-max
        stretched (``mode`` says so) and 3 channels are assumed to be BGR.
    """
    cv2 = require("cv2")
    if int(count) <= 0:
        raise ConfigError(f"the grid needs at least one image (--show K with K >= 1), got {count}")
    if columns is not None and int(columns) <= 0:
        raise ConfigError(f"the grid needs at least one column (--columns >= 1), got {columns}")
    if zoom is not None and int(zoom) <= 0:
        raise ConfigError(f"zoom must be a whole number >= 1, got {zoom}")
    folder, path = os.fspath(folder), os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ConfigError(f"{path}: the grid is written as PNG; give a file name ending in .png (--grid)")
    manifest = read_pack_manifest(folder)
    prefix, suffix = _naming(manifest, prefix, suffix)
    with BatchSet(folder, prefix=prefix, suffix=suffix, manifest="ignore") as bs:
        k = min(int(count), bs.num_images)
        if k < count:
            log.warning("%s holds only %d images; showing %d", folder, bs.num_images, k)
        indices = list(range(k)) if first else spread(bs.num_images, k)
        if first:
            data, labels = (np.array(a) for a in bs.images(0, k))
        else:
            picked = [bs.images(i, 1) for i in indices]
            data = np.concatenate([d for d, _ in picked])
            labels = np.concatenate([lab for _, lab in picked])
    rec = recipe(manifest, os.path.join(folder, MANIFEST_NAME))
    if rec is None:
        log.warning("%s: no manifest preprocessing; values are min-max stretched, not true pixels", folder)
    pix = denormalize(data, rec)
    _, c, h, w = pix.shape
    channels = rec.channels if rec is not None else ("gray" if c == 1 else "bgr")
    if c == 3 and channels in ("rgb", "bgr"):
        tiles = pix.transpose(0, 2, 3, 1)
        tiles = tiles[..., ::-1] if channels == "rgb" else tiles  # OpenCV writes BGR
    else:
        if c != 1:
            log.warning("%d channels: showing channel 0 as gray", c)
        channels = "gray"
        tiles = np.repeat(pix[:, :1].transpose(0, 2, 3, 1), 3, axis=3)
    classes = manifest_labels(manifest)
    draw_labels = classes.labelled

    zoom = int(zoom) if zoom else max(1, min(8, math.ceil(96 / max(h, w))))
    cols = int(columns) if columns else math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    th, tw, band, gap = h * zoom, w * zoom, (16 if draw_labels else 0), 2
    canvas = np.full((gap + rows * (th + band + gap), gap + cols * (tw + gap), 3), 48, np.uint8)
    origins = []
    for i in range(k):
        r, col = divmod(i, cols)
        y, x = gap + r * (th + band + gap), gap + col * (tw + gap)
        canvas[y:y + th, x:x + tw] = np.repeat(np.repeat(tiles[i], zoom, axis=0), zoom, axis=1)
        origins.append((y, x))
        if draw_labels:
            canvas[y + th:y + th + band, x:x + tw] = (90, 50, 20)  # dark blue band, white text
            text = " ".join(filter(None, (_label_text(labels[i]), classes.class_name(labels[i]))))
            while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] > tw - 2:
                text = text[:-1]
            cv2.putText(canvas, text, (x + 1, y + th + band - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ConfigError(f"{path}: PNG encoding of the grid failed", path)
    with atomic_file(path, "writing the grid PNG") as f:    # whole or not at all; its folder is created
        f.write(png.tobytes())
    return GridInfo(path=path, count=k, columns=cols, rows=rows, zoom=zoom, origins=origins,
                    mode="manifest" if rec is not None else "min-max stretch", channels=channels,
                    labels=draw_labels, indices=indices)


def spread(n, k):
    """``k`` distinct positions spread evenly over ``0 .. n-1``, first and last included (``k <= n``)."""
    if k <= 1:
        return [0][:k]
    return [i * (n - 1) // (k - 1) for i in range(k)]
