"""``pack()``: the Python API behind ``int8batch pack``."""
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import format as fmt
from .._kernels_preprocess import hwc_to_chw, lut_map_u8
from ..errors import ConfigError, ImageDecodeError, SourceError, whole_number
from ..manifest import build_manifest, manifest_size_hint
from ..preprocess import PRESETS, PreprocessConfig, preset as make_preset
from ..onnx.inputs import check_recipe
from . import decode
from .decode import check_max_pixels, cv2, decode_image, read_file
from .sources import BUNDLED, DATA_DIR, inside, nothing_packed_error, open_source
from .writer import PackWriter

log = logging.getLogger(__name__)

#: the recipe when none is given: sampleINT8's ImageNet networks are Caffe models (IDX sources: ``mnist``)
DEFAULT_PRESET = "imagenet-caffe"
#: image packs: largest batch file assembled in one of two reused buffers and written in one call
#: instead of through a memory map.  0 (off): measured on 2 cores (issue 11) it saved 0-10 % of the
#: pack's CPU on one machine and cost 0-30 % on a busy one (page-cache writes under load), so the
#: map stays the default; ``64 << 20`` turns it on for A/B runs.  IDX packs always use the buffers.
BUFFERED_MAX_BYTES = 0
#: IDX files smaller than this many pixels are mapped through the table by one thread
LUT_THREADS_MIN = 1 << 22
#: images per file when none is given (fewer images than this: one file holding them all)
DEFAULT_BATCH_SIZE = 100


@dataclass
class PackResult:
    """What a pack produced."""

    folder: str
    dims: tuple
    files: int
    images: int
    skipped: list = field(default_factory=list)   # [(relative path, reason)]
    dropped: int = 0
    padded: int = 0
    seconds: float = 0.0
    manifest: dict = None

    @property
    def images_per_second(self):
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def summary(self):
        return (f"packed {self.images} image{'s' if self.images != 1 else ''} into {self.files} "
                f"file{'s' if self.files != 1 else ''} of {self.dims[0]} "
                f"({'x'.join(map(str, self.dims[1:]))}) in {self.folder}: {len(self.skipped)} skipped, "
                f"{self.dropped} dropped, {self.padded} padded, {self.seconds:.2f} s, "
                f"{self.images_per_second:.0f} images/s")


def resolve_config(preset=None, config=None, **overrides):
    """A ``PreprocessConfig`` from a preset name and/or overrides (None values ignored)."""
    fields = {f.name for f in dataclasses.fields(PreprocessConfig)} - {"preset"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown preprocessing option(s) {', '.join(unknown)}; the recipe's fields are "
                          f"{', '.join(sorted(fields))}")
    if preset is not None and config is not None:
        raise ConfigError("give a preset or a config (a complete recipe), not both")
    if isinstance(config, PreprocessConfig):
        return config.replace(**{k: v for k, v in overrides.items() if v is not None}) if overrides else config
    if preset is not None:
        return make_preset(preset, **overrides)
    return PreprocessConfig(**{k: v for k, v in overrides.items() if v is not None})


def pack(source, out, preset=None, config=None, batch_size=None, limit=None, shuffle=False, seed=0,
         workers=None, skip_bad=False, pad=False, force=False, labels=None, prefix="batch", suffix="",
         unlabelled_value=-1.0, progress=None, model=None, max_pixels=None, dropped_hint=None, **overrides):
    """Pack images (or MNIST IDX files) into sampleINT8 batch files with a manifest.

    Parameters
    ----------
    source : str or PathLike
        A folder of images (searched recursively), an IDX image file, or a
        bundled data name (``mnist``, ``mnist-test``).
    out : str or PathLike
        Output folder; receives ``<prefix>0<suffix>``... and ``manifest.json``.
    preset : str, optional
        Name in :data:`int8batch.preprocess.PRESETS`.  When neither a preset,
        a config nor any override is given: ``mnist`` for IDX sources,
        :data:`DEFAULT_PRESET` (``imagenet-caffe``, sampleINT8's ImageNet
        recipe) otherwise, logged in one line and recorded in the manifest
        (``preprocess["preset_defaulted"]``).
    config : PreprocessConfig, optional
        A complete recipe (instead of a preset).
    batch_size : int, optional
        Images per file (the header's N).  Default :data:`DEFAULT_BATCH_SIZE`
        (100), or, when there are fewer images to pack (and no ``pad``), one
        file holding them all.
    limit : int, optional
        Pack at most this many images (after shuffling).
    shuffle, seed :
        Seeded shuffle of the source order before ``limit``.
    workers : int, optional
        Threads decoding and preprocessing (default: the cores this process may run on, e.g. under
        ``taskset``; values below 1 are refused).
    max_pixels : int, optional
        Refuse images larger than this many pixels, checked from the file's
        header before decoding (default :data:`int8batch.packing.decode.DEFAULT_MAX_PIXELS`).
    dropped_hint : str, optional
        What the warning about images left over after the last full file
        advises (default: ``--pad``; a caller without that option says its own).
    skip_bad : bool
        Skip unreadable images (listed in the manifest) instead of failing.
    pad : bool
        Fill the last file by repeating images from the start instead of
        dropping the remainder.
    force : bool
        Replace a previous int8batch pack in ``out``.
    labels : str, optional
        Label file, ``"folders"``, ``"none"``; default: class folders when
        every image lies in one.
    unlabelled_value : float
        Label stored for images without one.
    progress : callable(done, total), optional
        Called from the packing thread as images complete.
    model : str, PathLike or onnx.ModelProto, optional
        Check the recipe against this model's input before packing
        (:func:`int8batch.onnx.inputs.check_recipe`): a fixed channel count,
        height or width that differs raises ``ModelError``; dynamic ones are
        left to the recipe.
    **overrides
        Any :class:`PreprocessConfig` field, overriding the preset.

    Returns
    -------
    PackResult
    """
    t0 = time.perf_counter()
    fmt.check_name_parts(prefix, suffix, where="--prefix/--suffix")
    _note_shadowed(source)
    src = open_source(source, labels)
    if src.kind == "folder" and inside(out, src.root):
        where = "is" if os.path.realpath(out) == os.path.realpath(src.root) else "lies in"
        raise ConfigError(f"the output folder {out} {where} the images folder {source}: the next pack of that "
                          f"folder would take its batch files and manifest (and inspect's preview.png) as images; "
                          f"choose an output folder outside it")
    # the options as the command line names them (reduced_decode=False is --exact-decode)
    given = sorted("--exact-decode" if k == "reduced_decode" else f"--{k.replace('_', '-')}"
                   for k, v in overrides.items() if v is not None)
    defaulted = preset is None and config is None
    if defaulted:  # options given without a preset override the default preset's fields, never a blank recipe
        preset = "mnist" if src.kind == "idx" else DEFAULT_PRESET
    cfg = resolve_config(preset, config, **overrides)
    if defaulted and (given or preset == DEFAULT_PRESET):
        what = (f"preset {preset} with {', '.join(given)} from your options" if given else
                f"preset {preset}, sampleINT8's ImageNet recipe")
        log.info("no --preset given: using %s (%s); choose another base with --preset NAME (%s)", what,
                 _recipe_text(cfg), ", ".join(n for n in PRESETS if n != preset))
    if model is not None:
        log.info("%s", check_recipe(model, cfg).describe())
    auto_size = batch_size is None
    batch_size = DEFAULT_BATCH_SIZE if auto_size else whole_number(batch_size, "batch size (--batch-size)", 1)
    workers = whole_number(workers, "workers", 1) if workers is not None else _usable_cores()
    if shuffle:
        whole_number(seed, "seed", 0)
    if not fmt.float32_exact(unlabelled_value):
        raise ConfigError(f"unlabelled value must be a finite number stored exactly as a float32 label "
                          f"(e.g. -1 or 0), got {unlabelled_value!r}")
    max_pixels = check_max_pixels(max_pixels)

    order = np.arange(len(src))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(src))
    spare = order[:0]
    if limit is not None:
        limit = whole_number(limit, "limit (--limit)", 1)
        # with skip_bad an unreadable image is replaced by the next one: the limit counts packed images
        order, spare = order[:limit], (order[limit:] if skip_bad else spare)
    if len(order) == 0:
        raise SourceError(f"{source}: nothing to pack", source)
    pre_skipped = []
    if len(order) < batch_size and not pad and skip_bad and src.kind != "idx":
        # fewer images than one file: find the readable ones first (the count decides the file's size)
        order, pre_skipped, spare = _readable(src, cfg, order, spare, workers, max_pixels)
        if not len(order):
            raise nothing_packed_error(source, pre_skipped, 0, batch_size)
    if len(order) < batch_size and not pad and auto_size:
        log.info("%d images, fewer than the default %d per file: one file of %d (--batch-size N to choose)",
                 len(order), batch_size, len(order))
        batch_size = len(order)
    if len(order) < batch_size and not pad:
        unreadable = f" readable ({len(pre_skipped)} skipped)" if pre_skipped else ""
        raise ConfigError(f"{source}: only {len(order)}{unreadable} images, fewer than the {batch_size} images "
                          f"per file; use --batch-size {len(order)} or --pad")

    dims = (batch_size,) + cfg.chw
    expected = (len(order) + (batch_size - 1 if pad else 0)) // batch_size
    # the writer locks OUT, builds the new pack aside and swaps it in whole (see packing/writer.py);
    # any exception inside the block removes the temporaries and leaves a previous pack untouched
    with PackWriter(out, dims, prefix, suffix, force) as writer:
        writer.prepare(expected, _manifest_size_hint(src, order))
        job = _Job(src, cfg, order, writer, batch_size, workers, skip_bad, pad, unlabelled_value, progress,
                   max_pixels, spare)
        job.skipped += pre_skipped
        job.run()
        writer.wait()
        if not writer.checksums:
            raise nothing_packed_error(source, job.skipped, len(job.dropped), batch_size)
        seconds = time.perf_counter() - t0
        result = PackResult(os.fspath(out), dims, len(writer.checksums), len(writer.checksums) * batch_size,
                            job.skipped, len(job.dropped), len(job.padded), seconds)
        manifest = _manifest(src, cfg, dims, writer, job, shuffle, seed, limit, defaulted)
        writer.finish(manifest)
    result.manifest = manifest
    if job.dropped:
        log.warning("%d image(s) left over after the last full file of %d were dropped (listed in the manifest); "
                    "%s", len(job.dropped), batch_size, dropped_hint or "use --pad to keep them")
    return result


def _readable(src, cfg, order, spare, workers, max_pixels):
    """``(the images of order that decode, [(name, reason)] of those that do not, spare left)``.

    Each unreadable image is replaced by the next of ``spare`` (``--limit`` with ``--skip-bad``), which
    is checked in turn; warnings name the unreadable ones.
    """
    def check(i):
        path = os.path.join(src.root, src.files[i])
        try:
            decode_image(path, cfg, read_file(path), max_pixels)
            return None
        except ImageDecodeError as err:
            return str(err)
    good, bad, todo, spare = [], [], list(order), list(spare)
    with ThreadPoolExecutor(workers) as pool:
        while todo:
            reasons = list(pool.map(check, todo))
            good += [i for i, why in zip(todo, reasons) if why is None]
            bad += [(src.files[i], why) for i, why in zip(todo, reasons) if why is not None]
            need = sum(why is not None for why in reasons)
            todo, spare = spare[:need], spare[need:]
    for name, why in bad:
        log.warning("skipping %s", why)
    return np.array(good, dtype=np.int64), bad, np.array(spare, dtype=np.int64)


def _usable_cores():
    """Cores this process may run on (``taskset``, cgroup cpusets), not every core of the machine:
    16 decode threads on 2 allowed cores only contend (issue 11)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _recipe_text(cfg):
    """E.g. ``3x224x224 BGR, resize direct 256x256, crop center, mean 104/117/123, std 1, scale 1``."""
    rs = "x".join(map(str, cfg.resize_size)) if isinstance(cfg.resize_size, tuple) else cfg.resize_size
    nums = lambda v: "/".join(f"{x:g}" for x in dict.fromkeys(v))  # noqa: E731
    return (f"{'x'.join(map(str, cfg.chw))} {cfg.channels.upper()}, resize {cfg.resize} {rs or ''}".rstrip()
            + f", crop {cfg.crop}, mean {nums(cfg.mean)}, std {nums(cfg.std)}, scale {cfg.scale:g}")


def _note_shadowed(source):
    """A path wins over bundled data of the same name (``./mnist``): say so, and how to get the other."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if name in BUNDLED and os.path.exists(name):
        kind = "folder" if os.path.isdir(name) else "file"
        log.warning("%r is both a local %s and the name of bundled data; packing the %s ./%s. For the bundled "
                    "%s data give its file instead: %s", name, kind, kind, name, name,
                    os.path.join(DATA_DIR, BUNDLED[name][0]))


class _Job:
    """Fills files one at a time; the order of images never depends on thread timing."""

    def __init__(self, src, cfg, order, writer, n, workers, skip_bad, pad, unlabelled, progress, max_pixels=None,
                 spare=()):
        self.src, self.cfg, self.order, self.writer, self.n = src, cfg, order, writer, n
        self.spare = deque(int(i) for i in spare)   # replaces a skipped image, in order (--limit with --skip-bad)
        self._replaced = 0
        self.workers, self.skip_bad, self.pad, self.unlabelled = workers, skip_bad, pad, unlabelled
        self.max_pixels = max_pixels
        self.progress = progress
        self.packed = []      # source indices, in file order
        self.skipped = []     # (name, reason)
        self.dropped = []     # source indices left over
        self.padded = []      # positions in the pack filled by repetition
        self._luts = {}
        self._done = 0
        self._lock = threading.Lock()

    def name(self, i):
        if self.src.kind == "folder":
            return self.src.files[i]
        return f"{os.path.basename(self.src.images_path)}#{i}"


    def label(self, i):
        return float(self.src.labels[i]) if self.src.labels is not None else self.unlabelled

    def run(self):
        if self.src.kind == "idx" and self.cfg.chw == (1,) + tuple(self.src.images.shape[1:]):
            return self._run_idx_fast()
        cv = cv2()
        threads = cv.getNumThreads()
        cv.setNumThreads(1)  # parallelism is over images; nested OpenCV threads only contend
        try:
            with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as committer:
                self._run_stream(pool, committer)
        finally:
            cv.setNumThreads(threads)

    def _run_stream(self, pool, committer):
        """Decode ahead on the pool, place images in source order, commit files in the background.

        Workers decode and resize (the expensive part, GIL released); this thread
        takes the results strictly in source order and runs the fused kernel
        straight into the next free slot of the mapped file, so a skipped image
        leaves no hole and the layout never depends on thread timing.  A full
        file is checksummed and unmapped on ``committer`` while the next fills.
        """
        queue = deque(int(i) for i in self.order)
        inflight = deque()
        window = 16 * self.workers + 4
        k, bf, slots = 0, None, []

        def refill():
            while queue and len(inflight) < window:
                i = queue.popleft()
                inflight.append((i, pool.submit(self._decode, i)))

        refill()
        try:
            while inflight or queue:
                i, fut = inflight.popleft()
                refill()
                placed = False
                try:
                    img = fut.result()
                    if bf is None:
                        bf = self.writer.open_file(k, buffered=self._buffered())
                    self._place(i, img, bf, len(slots))
                    placed = True
                except ImageDecodeError as err:
                    if not self.skip_bad:
                        raise ImageDecodeError(f"{err}; pass --skip-bad to skip unreadable images (the manifest "
                                               f"lists each one skipped)", err.path) from None
                    log.warning("skipping %s", err)
                    self.skipped.append((self.name(i), str(err)))
                    if self.spare:      # the next image beyond --limit takes its place
                        queue.append(self.spare.popleft())
                        self._replaced += 1
                        refill()
                finally:
                    self._tick()
                if placed:
                    slots.append(i)
                    if len(slots) == self.n:
                        bf.labels[:] = [self.label(j) for j in slots]
                        self.writer.commit_file(bf, committer)
                        self.packed.extend(slots)
                        k, bf, slots = k + 1, None, []
                # (also after a skipped last image: --pad must not drop the remainder because of it)
                if not inflight and not queue and slots and self.pad:
                    # pad: repeat images already packed, from the start, wrapping around
                    pool_src = self.packed + slots
                    need = self.n - len(slots)
                    start = k * self.n + len(slots)
                    self.padded.extend(range(start, start + need))
                    queue.extend(pool_src[j % len(pool_src)] for j in range(need))
                    refill()
        except BaseException:
            for _, f in inflight:
                f.cancel()
            raise
        if bf is not None:
            self.writer.discard_file(bf)
        self.dropped = slots

    def _buffered(self):
        """Assemble files in two reused buffers written with one ``write`` each when a file is at most
        :data:`BUFFERED_MAX_BYTES` (off by default, see there); otherwise through a memory map."""
        return fmt.file_size(*((self.n,) + self.cfg.chw)) <= BUFFERED_MAX_BYTES

    def _decode(self, i):
        """Decode and resize image ``i`` (runs on a worker thread)."""
        if self.src.kind == "idx":
            return self._idx_image(i)
        path = os.path.join(self.src.root, self.src.files[i])
        return decode_image(path, self.cfg, read_file(path), self.max_pixels)[0]

    def _place(self, i, img, bf, slot):
        """Crop, reorder and normalize ``img`` into slot ``slot`` of ``bf`` (fused kernel, GIL released)."""
        y0x0 = self.cfg.crop_origin(img.shape[0], img.shape[1])
        if y0x0 is None:
            raise ImageDecodeError(f"{self.name(i)}: image is {img.shape[1]}x{img.shape[0]} after the resize "
                                   f"step, too small for the {self.cfg.size[1]}x{self.cfg.size[0]} output "
                                   f"(crop {self.cfg.crop})", self.name(i))
        hwc_to_chw(img, y0x0[0], y0x0[1], self.cfg.channel_map(img.shape[2]), self._lut(img.dtype),
                   bf.data[slot])

    def _idx_image(self, i):
        img = self.src.images[i]
        h, w = img.shape
        rh, rw = self.cfg.resized_shape(h, w)
        if (rh, rw) != (h, w):
            img = cv2().resize(img, (rw, rh), interpolation=decode._INTERP[self.cfg.interpolation])  # set by cv2()
        return np.ascontiguousarray(img)[:, :, None]

    def _lut(self, dtype):
        depth = 8 if dtype == np.uint8 else 16
        if depth not in self._luts:
            self._luts[depth] = self.cfg.lut(depth)
        return self._luts[depth]

    def _tick(self, count=1):
        if self.progress is None:
            return
        with self._lock:
            self._done += count
            done = self._done
        self.progress(done, len(self.order) + self._replaced)

    def _run_idx_fast(self):
        """IDX images already at the output size: one table lookup per byte, no decode, no resize."""
        lut = self.cfg.lut(8)[0]
        imgs = self.src.images
        full = len(self.order) // self.n
        contiguous = bool(np.all(np.diff(self.order) == 1)) if len(self.order) > 1 else True
        files = full + (1 if self.pad and len(self.order) % self.n else 0)
        # two committers: checksum + write of one file overlaps the next (the write is most of the cost)
        with ThreadPoolExecutor(min(2, self.workers)) as committer:
            for k in range(files):
                self._idx_file(k, imgs, lut, contiguous, committer)
        self.dropped = [int(i) for i in self.order[files * self.n:]]

    def _idx_file(self, k, imgs, lut, contiguous, committer):
        idx = self.order[k * self.n:(k + 1) * self.n]
        if len(idx) < self.n:  # pad from the start
            need = self.n - len(idx)
            start = k * self.n + len(idx)
            self.padded.extend(range(start, start + need))
            idx = np.concatenate([idx, self.order[np.arange(need) % len(self.order)]])
        bf = self.writer.open_file(k, buffered=True)
        src = imgs[idx[0]:idx[0] + self.n] if contiguous and len(idx) == self.n and not self.padded \
            else imgs[idx]
        flat = np.ascontiguousarray(src).reshape(-1)
        # one thread for a small file: an OpenMP team per 78 kB MNIST file costs more than the lookups
        # (and on a busy machine waits for a core; 600 files took 5 s instead of 0.2 s, issue 11)
        threads = self.workers if flat.size >= LUT_THREADS_MIN else 1
        lut_map_u8(flat, lut, bf.data.reshape(-1), threads)
        if self.src.labels is not None:
            bf.labels[:] = self.src.labels[idx]
        else:
            bf.labels[:] = self.unlabelled
        self.writer.commit_file(bf, committer)
        self.packed.extend(idx.tolist())
        self._tick(len(idx))


def _manifest_size_hint(src, order):
    """Bytes the manifest will take, about (the space check counts it)."""
    if src.kind == "folder":
        return manifest_size_hint(src.files[i] for i in order)
    base = os.path.basename(src.images_path)
    return manifest_size_hint(()) + len(order) * (len(base) + len(str(len(src))) + 28)


def _images_list(src, job):
    if src.kind == "folder":
        names = [src.files[i] for i in job.packed]
    else:
        base = os.path.basename(src.images_path)
        names = [f"{base}#{i}" for i in job.packed]
    labels = src.labels[job.packed].tolist() if src.labels is not None else [None] * len(names)
    return list(zip(names, labels))


def _manifest(src, cfg, dims, writer, job, shuffle, seed, limit, defaulted):
    if src.kind == "folder":
        source = {"kind": "folder", "root": os.path.abspath(src.root)}
    else:
        source = {"kind": "idx", "images": os.path.abspath(src.images_path),
                  "labels": src.labels_path and os.path.abspath(src.labels_path)}
    source.update(shuffle=bool(shuffle), seed=int(seed) if shuffle else None,
                  limit=None if limit is None else int(limit))
    return build_manifest(dims, writer.prefix, writer.suffix, writer.checksums, recipe=cfg,
                          preset_defaulted=defaulted, label_source=src.label_source, classes=src.classes,
                          unlabelled_value=None if src.labels is not None else float(job.unlabelled),
                          source=source, images_list=_images_list(src, job), padded=job.padded,
                          dropped=[job.name(i) for i in job.dropped], skipped=job.skipped)
