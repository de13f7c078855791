"""Look inside a batch folder: a summary with checks, and a picture of the images.

:func:`inspect` reports dims, files, images, the label histogram, per-channel
statistics of the data (streamed over the mapped files in float64), and whether
the manifest agrees with the files, checksums included.  :func:`save_grid`
writes a PNG of images spread evenly over the pack (or the first ones),
de-normalized back to pixels with the
manifest's preprocessing, ``pixel = (out * std + mean) / scale``, so a person
can see what the model will see.

The summary and the grid share the manifest handling, so they stay in one
module (about 500 lines; the grid is the last section).
"""
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from . import format as fmt
from ._optional import require
from .errors import ConfigError, ManifestError
from .reader import MANIFEST_NAME, BatchSet, read_manifest

log = logging.getLogger(__name__)

_CHUNK_VALUES = 1 << 21   # float values per statistics chunk (16 MiB as float64)
_HEX8 = re.compile(r"[0-9a-f]{8}\Z")
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

    @property
    def ok(self):
        return not self.problems

    def to_dict(self):
        """JSON-ready form (histogram keys become label strings; the manifest is left out)."""
        d = asdict(self)
        d.pop("manifest")
        d["dims"] = list(self.dims)
        d["label_histogram"] = {_label_text(k): v for k, v in self.label_histogram.items()}
        d["has_manifest"] = self.manifest is not None
        d["ok"] = self.ok
        return d

    def format(self):
        """A human-readable multi-line summary."""
        n, c, h, w = self.dims
        names = _channel_names(self.manifest, c)
        classes = ((self.manifest or {}).get("labels") or {}).get("classes") or []
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
            name = _class_name(label, classes)
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
    manifest = _read_manifest(folder)
    if prefix is None:
        prefix = (manifest or {}).get("prefix", "batch")
    if suffix is None:
        suffix = (manifest or {}).get("suffix", "")
    with BatchSet(folder, prefix=prefix, suffix=suffix, manifest="ignore") as bs:
        stats = _data_stats(bs)
        report = InspectReport(folder=folder, dims=tuple(bs.dims), files=bs.num_files, images=bs.num_images,
                               prefix=prefix, suffix=suffix, label_histogram=_histogram(bs),
                               manifest=manifest, **stats)
        if report.nonfinite:
            report.problems.append(f"{report.nonfinite} NaN or infinite value(s) in the data; "
                                   "calibration on them is meaningless, pack again")
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
def _read_manifest(folder):
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.lexists(path):
        return None
    return read_manifest(path)   # typed errors for a FIFO, a directory, bad JSON, a non-object


def _check_manifest(bs, man, report, verify):
    problems = report.problems
    n, c, h, w = bs.dims
    expect = {"format": "sampleINT8-batch", "dtype": "float32", "byte_order": "little", "layout": "NCHW"}
    for key, want in expect.items():
        if key in man and man[key] != want:
            problems.append(f"manifest {key} is {man[key]!r}, expected {want!r}")
    if list(man.get("dims") or []) != [n, c, h, w]:
        problems.append(f"manifest dims {man.get('dims')} but the files hold {[n, c, h, w]}")
    if man.get("files") != bs.num_files:
        problems.append(f"manifest says {man.get('files')} files but the folder holds {bs.num_files}")
    if man.get("images") != bs.num_images:
        problems.append(f"manifest says {man.get('images')} images but the files hold {bs.num_images}")
    _check_labels(bs, man, report)
    _check_preprocess(man, c, problems)
    for key in ("padded", "dropped", "skipped"):
        if man.get(key):
            report.notes.append(f"{len(man[key])} image(s) {key} (listed in the manifest)")
    _check_checksums(bs, man, report, verify)


def _check_labels(bs, man, report):
    listing = man.get("images_list")
    if listing is None:
        return
    if not isinstance(listing, list) or not all(isinstance(e, list) and len(e) == 2 for e in listing):
        report.problems.append("manifest images_list is malformed (want [[path, label], ...])")
        return
    if len(listing) != bs.num_images:
        report.problems.append(f"manifest images_list has {len(listing)} entries for {bs.num_images} images")
        return
    fallback = (man.get("labels") or {}).get("unlabelled_value")
    values = [e[1] if e[1] is not None else fallback for e in listing]
    want = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    got = np.concatenate([bs.file_arrays(k)[1] for k in range(bs.num_files)]).astype(np.float64)
    known = ~np.isnan(want)
    bad = np.flatnonzero(known & (want != got))
    if bad.size:
        i = int(bad[0])
        report.problems.append(f"{bad.size} label(s) in the files differ from the manifest's images_list; first: "
                               f"image {i} ({listing[i][0]}) has {got[i]:g} in "
                               f"{os.path.basename(bs.paths[i // bs.per_file])}, manifest says {want[i]:g}")


def _check_preprocess(man, c, problems):
    pre = man.get("preprocess")
    if not isinstance(pre, dict):
        return
    channels = pre.get("channels")
    if channels is not None and (channels == "gray") != (c == 1):
        problems.append(f"manifest preprocess channels {channels!r} does not fit C={c}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if isinstance(v, list) and len(v) not in (1, c):
            problems.append(f"manifest preprocess {key} has {len(v)} values for C={c}")


def _check_checksums(bs, man, report, verify):
    sums = man.get("checksums")
    if not isinstance(sums, dict) or not sums:
        report.checksums = "absent"
        report.notes.append("manifest records no checksums")
        return
    if sums.get("algorithm") != fmt.CHECKSUM_ALGO:
        report.checksums = "absent"
        report.problems.append(f"manifest checksum algorithm {sums.get('algorithm')!r} is not "
                               f"{fmt.CHECKSUM_ALGO!r}; cannot verify")
        return
    recorded = sums.get("files") or []
    if len(recorded) != bs.num_files:
        report.problems.append(f"manifest has {len(recorded)} checksums for {bs.num_files} files")
    malformed = [r for r in recorded if not (isinstance(r, str) and _HEX8.match(r))]
    if malformed:
        report.problems.append(f"manifest checksums must be 8 lowercase hex digits; got {malformed[0]!r}")
    if not verify:
        report.checksums = "not verified"
        return
    bad = []
    for path, want in zip(bs.paths, recorded):
        got = f"{fmt.file_checksum(path):08x}"
        if not isinstance(want, str) or got != want.lower():
            bad.append(f"{os.path.basename(path)} (crc32 {got}, manifest {want})")
    if bad:
        report.checksums = "mismatch"
        report.problems.append(f"checksum mismatch in {len(bad)} file(s): {', '.join(bad[:5])}"
                               f"{' ...' if len(bad) > 5 else ''}; the files changed after packing")
    else:
        report.checksums = "ok" if len(recorded) == bs.num_files and not malformed else "mismatch"


# -------------------------------------------------------------------- labels
def _label_text(v):
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _class_name(label, classes):
    if classes and float(label).is_integer() and 0 <= int(label) < len(classes):
        return str(classes[int(label)])
    return ""


def _channel_names(manifest, c):
    channels = ((manifest or {}).get("preprocess") or {}).get("channels")
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


def denormalize(data, preprocess=None):
    """Packed values back to 8-bit pixels.

    Parameters
    ----------
    data : ndarray, float32, shape (K, C, H, W)
    preprocess : dict or None
        The manifest's ``preprocess`` (``mean``, ``std``, ``scale``); pixels are
        ``(out * std + mean) / scale`` per channel.  None stretches the range of
        all values to 0..255 instead.

    Returns
    -------
    ndarray, uint8, shape (K, C, H, W)
        Rounded to the nearest integer and clipped to 0..255; NaN becomes 0.
    """
    x = np.asarray(data, dtype=np.float64)
    c = x.shape[1]
    if preprocess is None:
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        pix = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    else:
        mean = _per_channel(preprocess.get("mean"), c, "mean", 0.0)
        std = _per_channel(preprocess.get("std"), c, "std", 1.0)
        scale = preprocess.get("scale", 1.0)
        scale = 1.0 if scale is None else float(scale)
        if scale == 0 or np.any(std == 0):
            raise ManifestError(f"manifest preprocess has scale {scale} and std {std.tolist()}; "
                                "a zero cannot be undone")
        pix = (x * std[:, None, None] + mean[:, None, None]) / scale
    return np.clip(np.rint(np.nan_to_num(pix, nan=0.0)), 0, 255).astype(np.uint8)


def _per_channel(value, c, name, default):
    v = np.atleast_1d(np.asarray(default if value is None else value, dtype=np.float64))
    if v.size not in (1, c):
        raise ManifestError(f"manifest preprocess {name} has {v.size} values for {c} channels")
    return np.broadcast_to(v, (c,)).copy()


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
        raise ConfigError(f"the grid needs at least one image, got count={count}")
    folder, path = os.fspath(folder), os.fspath(path)
    manifest = _read_manifest(folder)
    prefix = (manifest or {}).get("prefix", "batch") if prefix is None else prefix
    suffix = (manifest or {}).get("suffix", "") if suffix is None else suffix
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
    pre = (manifest or {}).get("preprocess")
    if not isinstance(pre, dict):
        pre = None
        log.warning("%s: no manifest preprocessing; values are min-max stretched, not true pixels", folder)
    pix = denormalize(data, pre)
    _, c, h, w = pix.shape
    channels = (pre or {}).get("channels") or ("gray" if c == 1 else "bgr")
    if c == 3 and channels in ("rgb", "bgr"):
        tiles = pix.transpose(0, 2, 3, 1)
        tiles = tiles[..., ::-1] if channels == "rgb" else tiles  # OpenCV writes BGR
    else:
        if c != 1:
            log.warning("%d channels: showing channel 0 as gray", c)
        channels = "gray"
        tiles = np.repeat(pix[:, :1].transpose(0, 2, 3, 1), 3, axis=3)
    draw_labels = ((manifest or {}).get("labels") or {}).get("source") != "none"
    classes = ((manifest or {}).get("labels") or {}).get("classes") or []

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
            text = " ".join(filter(None, (_label_text(labels[i]), _class_name(labels[i], classes))))
            while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] > tw - 2:
                text = text[:-1]
            cv2.putText(canvas, text, (x + 1, y + th + band - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    try:
        if not ok:
            raise OSError("PNG encoding failed")
        with open(path, "wb") as f:
            f.write(png.tobytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the grid PNG ({exc}); check that its folder exists "
                          "and is writable", path) from exc
    return GridInfo(path=path, count=k, columns=cols, rows=rows, zoom=zoom, origins=origins,
                    mode="manifest" if pre is not None else "min-max stretch", channels=channels,
                    labels=draw_labels, indices=indices)


def spread(n, k):
    """``k`` distinct positions spread evenly over ``0 .. n-1``, first and last included (``k <= n``)."""
    if k <= 1:
        return [0][:k]
    return [i * (n - 1) // (k - 1) for i in range(k)]
