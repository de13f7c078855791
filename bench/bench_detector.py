#!/usr/bin/env python3
"""INT8 fidelity on a real-weight detector: PP-OCRv4's text detector (``tools/fetch_ppocr_det.py``).

The EfficientNet-Lite models of ``bench_quality.py`` are classifiers whose
keep-float rule was chosen on their choose pair.  This script measures how the
defaults carry to a model none of them was chosen on: a DBNet text detector
with real weights, whose output is a per-pixel text probability map.  Its
figures, per calibration, on photos it was not calibrated on:

- ``rel L2``: ``sqrt(sum (p_int8 - p_fp32)^2 / sum p_fp32^2)`` over the maps;
- ``IoU``: intersection over union of the text masks ``p > 0.3`` (DBNet's
  binarization threshold) of INT8 and FP32 over every pixel of every image:
  the boxes the detector reports are drawn from that mask;
- the share of mask pixels of each model.

Sets are ``bench_quality.py``'s photo sets (made with ``tools/make_corpus.py``
when missing), packed at 640 x 640 (imagenet-torch normalization, direct
resize; the model takes any multiple of 32).  Each report set calibrates on
its first 96 images (3 batches of 32) and is scored on images 96-159 of the
other report sets (held-out pairs); the photos are scikit-image and
scikit-learn samples, so the text masks are what the detector finds in them
(signs, letters, textures), 1 % of the pixels or so.

Variants: ``auto`` (the default), ``kf3`` (``auto`` keeping 3 activations
float: sessions 1-8's cap, with today's choice of the sensitivity pass's
images; every ranked tensor of this model is above the threshold), ``kf0``
(``auto``'s thresholds, pure INT8),
``mse``, ``entropy`` (TensorRT's Entropy2), ``minmax`` (the last three pure
INT8 as ``bench_quality.py`` runs them).

    python tools/fetch_ppocr_det.py
    python bench/bench_detector.py --json .work/bench_detector.json
    python bench/bench_detector.py --variants auto kf3 --quick
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)
import bench_quality as bq  # noqa: E402  (its photo sets)

MODEL = os.path.join(ROOT, ".work", "zoo", "ppocr_v4_det.onnx")
REPORT = ("strong-calib", "strong-eval", "plain")
SIZE = 640
BATCH = 32
CALIB_BATCHES = 3          # 96 calibration images
SCORE = (96, 64)           # images 96..159 are scored
MASK = 0.3
VARIANTS = {"auto": {}, "kf3": {"keep_float": 3}, "kf0": {"keep_float": 0},
            "mse": {"method": "mse"}, "entropy": {"method": "entropy"}, "minmax": {"method": "minmax"}}


def packed(work, name, count):
    """Set ``name`` packed at SIZE (its first ``count`` images, files of BATCH)."""
    from int8batch.reader import BatchSet
    folder = os.path.join(work, "packed_det", name)
    try:
        with BatchSet(folder) as bs:
            if bs.num_images >= count and bs.per_file == BATCH and tuple(bs.image_shape) == (3, SIZE, SIZE):
                return folder
    except Exception:  # noqa: BLE001 - missing or unreadable: pack again
        pass
    import int8batch
    # bench_quality.py's own set and size (768 images): a set made here is the very set it uses
    jpeg = bq.ensure_corpus(os.path.join(ROOT, ".work", "bench_quality"), name, max(count, 768))
    int8batch.pack(jpeg, folder, preset="imagenet-torch", size=SIZE, resize="direct", resize_size=SIZE,
                   batch_size=BATCH, limit=count, labels="none", force=True)
    return folder


def outputs(model, data, threads):
    from int8batch.calib.ort_exec import ModelRunner
    run = ModelRunner(model, None, threads)
    return np.concatenate([run.run(data[i:i + 16]) for i in range(0, len(data), 16)])


def score(p0, p1):
    m0, m1 = p0 > MASK, p1 > MASK
    union = int((m0 | m1).sum())
    return {"rel_l2": float(np.sqrt(((p1 - p0) ** 2).sum() / max((p0 ** 2).sum(), 1e-30))),
            "iou": float((m0 & m1).sum() / union) if union else 1.0,
            "mask_fp32": float(m0.mean()), "mask_int8": float(m1.mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="which calibrations to score (default all; see the description above)")
    ap.add_argument("--work", default=os.path.join(ROOT, ".work", "bench_detector"),
                    help="where the 640x640 packs and the calibrations go (default .work/bench_detector)")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's)")
    ap.add_argument("--quick", action="store_true", help="one calibration set, one scoring set (smoke run)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if not os.path.exists(MODEL):
        raise SystemExit(f"{MODEL} is missing: run python tools/fetch_ppocr_det.py first")
    from int8batch.calib.api import calibrate
    from int8batch.reader import BatchSet
    t0 = time.perf_counter()
    sets = REPORT[:2] if args.quick else REPORT
    need = SCORE[0] + SCORE[1]
    folders = {s: packed(args.work, s, need) for s in sets}
    data, fp32 = {}, {}
    for s in sets:
        with BatchSet(folders[s]) as bs:
            data[s] = np.array(bs.images(*SCORE)[0])
        fp32[s] = outputs(MODEL, data[s], args.threads)
    results = {}
    for v in args.variants:
        rows = []
        for a in sets[:1] if args.quick else sets:
            t = time.perf_counter()
            res = calibrate(MODEL, folders[a], out=os.path.join(args.work, "cal", f"{v}_{a}"), batch_size=BATCH,
                            max_batches=CALIB_BATCHES, device="cpu", force=True, intra_op_threads=args.threads,
                            **VARIANTS[v])
            secs = time.perf_counter() - t
            for b in sets:
                if b == a:
                    continue
                r = score(fp32[b], outputs(res.paths["qdq"], data[b], args.threads))
                r.update(calib=a, score=b, calib_seconds=secs, kept_float=list(res.kept_float or []))
                rows.append(r)
                print(f"  {v:8s} {a:>12s} -> {b:<12s} rel L2 {r['rel_l2']:.3f}  IoU {r['iou']:.3f}  "
                      f"mask {100 * r['mask_int8']:.2f} % (FP32 {100 * r['mask_fp32']:.2f} %)  kept float "
                      f"{len(r['kept_float'])}  (calib {secs:.1f} s, shared machine)", flush=True)
        results[v] = {"pairs": rows, "mean_rel_l2": float(np.mean([r["rel_l2"] for r in rows])),
                      "mean_iou": float(np.mean([r["iou"] for r in rows])),
                      "worst_iou": float(min(r["iou"] for r in rows))}
    print(f"\nPP-OCRv4 det, held-out pairs ({len(rows)}): mean rel L2 / mean IoU / worst IoU")
    for v, r in results.items():
        print(f"  {v:8s} {r['mean_rel_l2']:.3f} / {r['mean_iou']:.3f} / {r['worst_iou']:.3f}")
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min (shared machine)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": MODEL, "size": SIZE, "calib_images": CALIB_BATCHES * BATCH, "score": SCORE,
                       "mask_threshold": MASK, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
