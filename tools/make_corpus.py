#!/usr/bin/env python3
"""Make a reproducible ImageNet-like JPEG corpus from real photos.

The photos are the sample images that ship with scikit-image
(``skimage.data``) and scikit-learn (``load_sample_images``): no download.
Each output image is one source photo, randomly rotated a little, cropped
(area and aspect like ImageNet's RandomResizedCrop), resized, flipped and
colour-jittered, then written as a JPEG of quality 75-95.  Sizes follow
ImageNet's validation set: mostly 500 x 375 / 500 x 333 in both orientations,
some between 300 and 800 pixels, some large (1000-2000 px) and a few small.

Everything is a function of ``--seed``, ``--split`` and the image number, so
``--count 100`` gives the first 100 files of ``--count 1000``, and two runs
write the same files (with the same OpenCV/libjpeg).

``--split calib`` and ``--split eval`` draw from DISJOINT sets of source
photos (``all``, the default, uses every photo): calibrate on one and
evaluate on the other, or the figures flatter every method.

``--recipe`` picks how each image is cut from its photo (``bench/bench_quality.py``
scores INT8 on sets made with each, so no default is tuned to one recipe):

- ``default``: the recipe above (the one the project's defaults were chosen on).
- ``strong``: another augmentation: torchvision-RandomResizedCrop-like crops
  (8-100 % of the photo's area, the crop's own aspect 3/4-4/3, then resized to
  the output size: aspect changes), rotation (50 %, +-20 degrees), flip (50 %),
  brightness / contrast 0.6-1.4, saturation 0.4-1.6 and hue +-0.06 turn
  (colour photos), gamma 0.7-1.4, Gaussian blur (25 %, sigma 0.5-1.5), noise
  (50 %, sigma 2-8), JPEG quality 50-95.  Own random stream: the same seed
  draws other crops than ``default``.
- ``plain``: no augmentation: centre crops of the photos at several scales
  (35-100 % of the largest centred crop of the output's aspect ratio, side
  ratio; aspect 4:3, 3:4, 3:2, 1:1 or 2:3), resized to a long side of 500
  (INTER_AREA down, INTER_CUBIC up), JPEG quality 90; no rotation, flip,
  colour change or noise.  Images come in rounds: one round holds every
  colour photo 3 times and every gray photo once (as ``default``'s weights),
  in an order shuffled by the seed; a photo's k-th crop has scale
  ``0.35 ** frac(k * 0.618...)`` (k = 0 is the whole centred crop) and the
  k-th aspect of the list above, so scales never repeat.

``--mix`` shapes the corpus like a folder of users' photos (issue 11's packing
benchmark): every image a baseline JPEG of quality 90 with 4:2:0 chroma
subsampling; 4 in 5 "small" (500x375 or 500x333, 75 % landscape) and 1 in 5
"large" (long side 1000-2000 px, aspect 1.2-1.5), which hold about 70 % of the
pixels.  The crops and colour jitter are ``default``'s, drawn from their own
random stream (the sizes differ, so the files do too).

Usage::

    python tools/make_corpus.py OUT [--count 1000] [--seed 0] [--split all|calib|eval]
                                    [--recipe default|strong|plain] [--mix]
                                    [--classes] [--labels] [--mixed] [--workers 2] [--force]

Output: ``OUT/corpus_00000.jpg ...`` (or ``OUT/<source>/corpus_00000.jpg``
with ``--classes``: the source photo is the class), ``OUT/corpus.json`` (the
settings and every file's source and parameters) and, with ``--labels``,
``OUT/labels.txt`` (``relative/path label`` lines, labels = index of the
source name in the sorted list of this split's sources).  ``--mixed`` also
turns 5 images in every 20 (numbers 3, 7, 11, 15, 19 mod 20) into a
single-channel grayscale JPEG, an RGB PNG, a gray PNG, an RGBA PNG (alpha 128
on the top quarter) and a 16-bit RGB PNG, for the packer's tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Colour photos and the split each belongs to.  The two views of the stereo
# motorcycle stay together; each split holds natural scenes.
COLOUR = {
    "astronaut": "calib", "hubble_deep_field": "calib", "retina": "calib",
    "china": "calib", "immunohistochemistry": "calib", "rocket": "calib",
    "chelsea": "eval", "coffee": "eval", "motorcycle_left": "eval",
    "motorcycle_right": "eval", "flower": "eval",
}
# Grayscale photos (written as RGB JPEGs with equal channels, as ImageNet's few
# gray images are), drawn less often than the colour ones.
GRAY = {
    "camera": "calib", "coins": "calib", "moon": "calib", "brick": "calib", "cell": "calib",
    "clock": "eval", "grass": "eval", "gravel": "eval", "page": "eval", "text": "eval",
}
COLOUR_WEIGHT, GRAY_WEIGHT = 3.0, 1.0
SPLIT_CODES = {"all": 0, "calib": 1, "eval": 2}
# Augmentation recipes; the code is appended to the random stream's key (None: the
# original key, so ``default`` writes exactly the files it always wrote).
RECIPES = {"default": None, "strong": 1, "plain": 2}
PLAIN_ASPECTS = (4 / 3, 3 / 4, 3 / 2, 1.0, 2 / 3)
PLAIN_MIN_SCALE = 0.35
PLAIN_LONG_SIDE = 500
PLAIN_QUALITY = 90
GOLDEN = 0.6180339887498949
# --mix: the photo-folder shape of issue 11 (random stream key suffix, quality, large share)
MIX_KEY = 3
MIX_QUALITY = 90
MIX_LARGE_EVERY = 5


def _sample_photos_modules():
    """scikit-image's data module and scikit-learn's load_sample_image, or a one-line exit saying what to install."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise SystemExit(f"make_corpus.py cuts its photos from the sample images of scikit-image and scikit-learn "
                         f"({exc}): pip install scikit-image scikit-learn") from None
    return skimage.data, load_sample_image


def load_source(name: str) -> np.ndarray:
    """Return the photo as an RGB uint8 H x W x 3 array."""
    skimage_data, load_sample_image = _sample_photos_modules()

    if name in ("china", "flower"):

        img = load_sample_image(name + ".jpg")
    elif name.startswith("motorcycle_"):
        left, right, _ = skimage_data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(skimage_data, name)()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise SystemExit(f"source {name}: unexpected dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def sources_for(split: str) -> list:
    return sorted(n for n, s in {**COLOUR, **GRAY}.items() if split == "all" or s == split)


def output_size(rng: np.random.Generator) -> tuple:
    """(width, height) of one output image, ImageNet-val-like."""
    r = rng.random()
    if r < 0.60:
        long_side, short_side = 500, (375 if rng.random() < 0.7 else 333)
    elif r < 0.85:
        long_side = int(rng.integers(300, 801))
        short_side = int(round(long_side / rng.uniform(1.0, 1.6)))
    elif r < 0.95:
        long_side = int(rng.integers(1000, 2001))
        short_side = int(round(long_side / rng.uniform(1.2, 1.5)))
    else:
        long_side = int(rng.integers(100, 300))
        short_side = int(round(long_side / rng.uniform(1.0, 1.5)))
    landscape = rng.random() < 0.75
    return (long_side, short_side) if landscape else (short_side, long_side)


def mix_size(index: int, rng: np.random.Generator) -> tuple:
    """For ``--mix``: (width, height) of image ``index``; every 5th is large (long side 1000-2000)."""
    if index % MIX_LARGE_EVERY == MIX_LARGE_EVERY - 1:
        long_side = int(rng.integers(1000, 2001))
        short_side = int(round(long_side / rng.uniform(1.2, 1.5)))
    else:
        long_side, short_side = 500, (375 if rng.random() < 0.7 else 333)
    landscape = rng.random() < 0.75
    return (long_side, short_side) if landscape else (short_side, long_side)


def augment(src: np.ndarray, rng: np.random.Generator, size: tuple, colour: bool) -> tuple:
    """Rotate, crop, resize, flip and jitter ``src``; return (RGB image, parameters)."""
    import cv2

    h, w = src.shape[:2]
    out_w, out_h = size
    angle = float(rng.uniform(-10, 10)) if rng.random() < 0.3 else 0.0
    img = src
    if angle:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        img = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # Crop with the output's aspect ratio (jittered +-10%), 30-100 % of the largest such crop.
    aspect = (out_w / out_h) * float(rng.uniform(0.9, 1.1))
    cw_max, ch_max = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    frac = float(np.sqrt(rng.uniform(0.3, 1.0)))
    cw, ch = max(8, int(cw_max * frac)), max(8, int(ch_max * frac))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if out_w * out_h < cw * ch else cv2.INTER_CUBIC
    out = cv2.resize(crop, (out_w, out_h), interpolation=interp)
    flip = bool(rng.random() < 0.5)
    if flip:
        out = out[:, ::-1]
    # Colour jitter: brightness, contrast, saturation (colour sources only), light noise.
    bright, contrast = float(rng.uniform(0.75, 1.25)), float(rng.uniform(0.75, 1.25))
    sat = float(rng.uniform(0.7, 1.3)) if colour else 1.0
    f = out.astype(np.float32)
    gray = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = gray[..., None] + sat * (f - gray[..., None])
    f = (f - gray.mean()) * contrast + gray.mean()
    f *= bright
    noise = float(rng.uniform(0.0, 3.0)) if rng.random() < 0.3 else 0.0
    if noise:
        f += rng.normal(0.0, noise, f.shape).astype(np.float32)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    params = {"angle": round(angle, 2), "crop": [x0, y0, cw, ch], "flip": flip,
              "brightness": round(bright, 3), "contrast": round(contrast, 3),
              "saturation": round(sat, 3), "noise": round(noise, 2)}
    return out, params


def augment_strong(src: np.ndarray, rng: np.random.Generator, size: tuple, colour: bool) -> tuple:
    """The ``strong`` recipe: RandomResizedCrop-like crop, rotation, flip, colour, gamma, blur, noise."""
    import cv2

    h, w = src.shape[:2]
    out_w, out_h = size
    angle = float(rng.uniform(-20, 20)) if rng.random() < 0.5 else 0.0
    img = src
    if angle:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        img = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # torchvision's RandomResizedCrop: area 8-100 %, log-uniform aspect 3/4-4/3, 10 tries,
    # then the whole photo; the crop is resized to the output size whatever its aspect.
    cw, ch = w, h
    for _ in range(10):
        area = float(rng.uniform(0.08, 1.0)) * w * h
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        tw, th = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 8 <= tw <= w and 8 <= th <= h:
            cw, ch = tw, th
            break
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if out_w * out_h < cw * ch else cv2.INTER_CUBIC
    out = cv2.resize(crop, (out_w, out_h), interpolation=interp)
    flip = bool(rng.random() < 0.5)
    if flip:
        out = out[:, ::-1]
    bright, contrast = float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.6, 1.4))
    sat = float(rng.uniform(0.4, 1.6)) if colour else 1.0
    hue = float(rng.uniform(-0.06, 0.06)) if colour else 0.0
    gamma = float(rng.uniform(0.7, 1.4))
    blur = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.25 else 0.0
    noise = float(rng.uniform(2.0, 8.0)) if rng.random() < 0.5 else 0.0
    if hue:
        hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(hue * 256))) % 256
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    f = out.astype(np.float32)
    gray = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = gray[..., None] + sat * (f - gray[..., None])
    f = (f - gray.mean()) * contrast + gray.mean()
    f *= bright
    f = 255.0 * (np.clip(f, 0, 255) / 255.0) ** gamma
    if blur:
        f = cv2.GaussianBlur(f, (0, 0), blur)
    if noise:
        f += rng.normal(0.0, noise, f.shape).astype(np.float32)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    params = {"angle": round(angle, 2), "crop": [x0, y0, cw, ch], "flip": flip,
              "brightness": round(bright, 3), "contrast": round(contrast, 3), "saturation": round(sat, 3),
              "hue": round(hue, 3), "gamma": round(gamma, 3), "blur": round(blur, 2), "noise": round(noise, 2)}
    return out, params


def plain_plan(index: int, seed: int, split: str, names: list) -> tuple:
    """For ``--recipe plain``: (photo name, crop number k) of image ``index``.

    Round r = index // R holds R slots: every colour photo 3 times, every gray one once,
    shuffled by (seed, split, r); a photo's k counts its crops over all rounds.
    """
    slots = [(n, j) for n in names for j in range(int(COLOUR_WEIGHT if n in COLOUR else GRAY_WEIGHT))]
    r, pos = divmod(index, len(slots))
    order = np.random.default_rng([seed, SPLIT_CODES[split], r, RECIPES["plain"]]).permutation(len(slots))
    name, j = slots[int(order[pos])]
    per_round = int(COLOUR_WEIGHT if name in COLOUR else GRAY_WEIGHT)
    return name, r * per_round + j


def plain_crop(src: np.ndarray, k: int) -> tuple:
    """The ``plain`` recipe: photo ``src``'s k-th centred crop, resized, nothing else; (image, size, params)."""
    import cv2

    h, w = src.shape[:2]
    aspect = PLAIN_ASPECTS[k % len(PLAIN_ASPECTS)]
    scale = float(PLAIN_MIN_SCALE ** ((k * GOLDEN) % 1.0))
    cw_max, ch_max = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    cw, ch = max(8, int(round(cw_max * scale))), max(8, int(round(ch_max * scale)))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if aspect >= 1:
        size = (PLAIN_LONG_SIDE, int(round(PLAIN_LONG_SIDE / aspect)))
    else:
        size = (int(round(PLAIN_LONG_SIDE * aspect)), PLAIN_LONG_SIDE)
    interp = cv2.INTER_AREA if size[0] * size[1] < cw * ch else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(crop), size, interpolation=interp)
    return out, size, {"crop_number": k, "scale": round(scale, 4), "aspect": round(aspect, 4),
                       "crop": [x0, y0, cw, ch]}


MIXED_KINDS = {3: "gray-jpeg", 7: "png", 11: "gray-png", 15: "rgba-png", 19: "png16"}


def mixed_kind(index: int) -> str:
    """For --mixed: the file kind of image ``index``; every 20 images hold one of each."""
    return MIXED_KINDS.get(index % 20, "jpeg")


def make_one(index: int, args, names: list, weights: np.ndarray, photos: dict) -> dict:
    """Write image ``index``; return its record for corpus.json."""
    import cv2

    recipe = getattr(args, "recipe", "default")
    if getattr(args, "mix", False):
        rng = np.random.default_rng([args.seed, SPLIT_CODES[args.split], index, MIX_KEY])
        name = names[int(rng.choice(len(names), p=weights))]
        size = mix_size(index, rng)
        rgb, params = augment(photos[name], rng, size, name in COLOUR)
        quality, progressive = MIX_QUALITY, False
    elif recipe == "plain":
        name, k = plain_plan(index, args.seed, args.split, names)
        rgb, size, params = plain_crop(photos[name], k)
        quality, progressive = PLAIN_QUALITY, False
    else:
        key = [args.seed, SPLIT_CODES[args.split], index]
        if RECIPES[recipe] is not None:
            key.append(RECIPES[recipe])
        rng = np.random.default_rng(key)
        name = names[int(rng.choice(len(names), p=weights))]
        size = output_size(rng)
        if recipe == "strong":
            rgb, params = augment_strong(photos[name], rng, size, name in COLOUR)
            quality = int(rng.integers(50, 96))
        else:
            rgb, params = augment(photos[name], rng, size, name in COLOUR)
            quality = int(rng.integers(75, 96))
        progressive = bool(rng.random() < 0.1)
    kind = mixed_kind(index) if args.mixed else "jpeg"
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    stem = f"corpus_{index:05d}"
    folder = os.path.join(args.out, name) if args.classes else args.out
    if kind in ("jpeg", "gray-jpeg"):
        fname = stem + ".jpg"
        data = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if kind == "gray-jpeg" else bgr
        opts = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
        if getattr(args, "mix", False) and kind == "jpeg":
            opts += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
        ok, buf = cv2.imencode(".jpg", data, opts)
    else:
        fname = stem + ".png"
        if kind == "gray-png":
            data = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        elif kind == "rgba-png":
            alpha = np.full(bgr.shape[:2] + (1,), 255, np.uint8)
            alpha[: bgr.shape[0] // 4] = 128  # a partly transparent band
            data = np.concatenate([bgr, alpha], axis=2)
        elif kind == "png16":
            data = bgr.astype(np.uint16) * 257
        else:
            data = bgr
        ok, buf = cv2.imencode(".png", data, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SystemExit(f"OpenCV could not encode image {index}")
    path = os.path.join(folder, fname)
    with open(path, "wb") as fh:
        fh.write(buf.tobytes())
    rel = os.path.relpath(path, args.out).replace(os.sep, "/")
    return {"file": rel, "source": name, "label": names.index(name), "kind": kind,
            "size": list(size), "quality": quality if kind.endswith("jpeg") else None,
            "progressive": progressive if kind.endswith("jpeg") else None, **params}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--count", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=sorted(SPLIT_CODES), default="all",
                    help="source photos: all, or the disjoint calib / eval halves")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                    help="how images are cut from the photos: default (augmented, the original recipe), "
                         "strong (another augmentation) or plain (centre crops at several scales, no augmentation)")
    ap.add_argument("--mix", action="store_true",
                    help="photo-folder mix (issue 11): quality 90, 4:2:0, 4/5 about 500x375, 1/5 long side "
                         "1000-2000 px; crops as --recipe default")
    ap.add_argument("--classes", action="store_true", help="one sub-folder per source photo")
    ap.add_argument("--labels", action="store_true", help="also write OUT/labels.txt")
    ap.add_argument("--mixed", action="store_true", help="include gray JPEGs and PNGs (8/16-bit, RGBA)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="write into a non-empty folder")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        ap.error(f"{args.out} is not empty (use --force to write into it)")

    names = sources_for(args.split)
    weights = np.array([COLOUR_WEIGHT if n in COLOUR else GRAY_WEIGHT for n in names])
    weights /= weights.sum()
    photos = {n: load_source(n) for n in names}
    os.makedirs(args.out, exist_ok=True)
    if args.classes:
        for n in names:
            os.makedirs(os.path.join(args.out, n), exist_ok=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        records = list(pool.map(lambda i: make_one(i, args, names, weights, photos), range(args.count)))
    seconds = time.perf_counter() - t0

    info = {"made_by": "tools/make_corpus.py", "seed": args.seed, "split": args.split, "recipe": args.recipe,
            "mix": args.mix, "count": args.count, "classes": names, "class_folders": args.classes, "mixed": args.mixed,
            "sources": {n: {"shape": list(photos[n].shape), "colour": n in COLOUR,
                            "split": COLOUR.get(n) or GRAY.get(n)} for n in names},
            "images": records}
    with open(os.path.join(args.out, "corpus.json"), "w") as fh:
        json.dump(info, fh, indent=1)
        fh.write("\n")
    if args.labels:
        with open(os.path.join(args.out, "labels.txt"), "w") as fh:
            fh.writelines(f"{r['file']} {r['label']}\n" for r in records)
    total = sum(os.path.getsize(os.path.join(args.out, r["file"])) for r in records)
    print(f"wrote {args.count} images ({total / 1e6:.1f} MB) from {len(names)} photos "
          f"(split {args.split}, recipe {args.recipe}) to {args.out} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
