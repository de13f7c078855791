"""Calibration: int8batch vs ONNX Runtime's quantize_static, time, memory and INT8 accuracy.

One run, on the same calibration batch files for every tool:

- EfficientNet-Lite0 (real ImageNet weights), 256 and 1024 calibration photos
  at 224x224, INT8 vs FP32 top-1 agreement and mean softmax KL on 512
  held-out photos (other source photos than the calibration ones);
- LeNet on MNIST, 10 batches of 50 training images, top-1 accuracy of the
  FP32 and INT8 models on the 10000 test images.

Configurations (each in a fresh subprocess: ``--one CONFIG`` re-invokes this
script, which prints one JSON line; peak RSS is the child's ``VmHWM`` read
right after calibration, before the evaluation):

- ``fp32``: plain ONNX Runtime inference over the calibration images, same
  session options as int8batch (the baseline of the time ratios);
- ``int8batch/<method>``: ``calibrate()`` with every artefact written (cache,
  dynamic range, JSON, Q/DQ model), methods auto (default), entropy, minmax,
  percentile, mse, and ``auto-no-bias-corr`` (the default without the bias
  correction, EfficientNet only);
- ``ort/...``: ``onnxruntime.quantization.quantize_static``, QDQ, per-channel
  QInt8 weights: MinMax with the default asymmetric QUInt8 activations and
  with symmetric QInt8 activations (``ActivationSymmetric``, TensorRT-
  deployable), Entropy at its defaults (128 bins), Entropy with 2048 bins and
  symmetric QInt8 activations (the TensorRT recipe), Percentile at its
  defaults (99.999, a symmetric range).  quantize_static has no extra_options
  key for the histogram bins (only CalibTensorRangeSymmetric, CalibMovingAverage,
  CalibMovingAverageConstant, CalibMaxIntermediateOutputs, CalibPercentile
  reach the calibrator), so the 2048-bin run wraps its ``create_calibrator``
  to pass ``num_bins=2048``.  ORT Entropy/Percentile keep every activation of
  every batch (16 GB at 256 EfficientNet images), so on EfficientNet they run
  at 256 images only; MinMax runs at every size.

Prints one table per model, the ratios and each target of issue 4 with
PASS/FAIL, and writes everything as JSON with ``--json``.  ``--batch-size``
(default 64, the files' N) is the inference batch of every tool; int8batch's
peak RSS scales with it, as one batch's activations are alive at a time
(measured: 128 images, auto, 0.77 GB at batch 8, 4.4 GB at batch 64).
Expected duration of the full run alone on 2 cores: about 17-22 minutes
(ORT Entropy 2048 bins ~2 min, Entropy and Percentile ~1.5 min each).

    python bench/bench_calibrate.py --json bench_calibrate.json        # full (lead only)
    python bench/bench_calibrate.py --quick                           # smoke run
    python bench/bench_calibrate.py --skip-ort-entropy                # no ORT Entropy/Percentile on EfficientNet

Zoo mode (issue 10, item 2): ``--zoo [NAMES...]`` runs every model of
``tools/make_zoo.py``'s index (``.work/zoo/zoo.json``; default all of them)
instead of the two models above.  Per model, the calibration photos (the
``make_corpus.py --split calib`` corpus, or ``--corpus DIR``) are packed once
with the model's own ``pack_args`` (YOLO at 640x640) into
``.work/bench_calibrate/zoo_<name>_<n>`` (reused while the corpus, recipe and
count are unchanged, also across models with the same recipe), and so are
``--eval-images`` (128) held-out photos of the ``--split eval`` corpus.  Rows,
each in a fresh subprocess as above:

- ``fp32``: the fastest plain inference over the same images (the baseline);
- ``int8batch/mse``, ``minmax``, ``percentile``, ``entropy``: the "pure
  methods" (pure INT8: ``keep_float=0, bias_correction=False``);
- ``int8batch/auto``: the defaults (sensitivity pass and bias correction);
  its sensitivity pass is timed on its own and shown as the row
  ``int8batch/auto:sensitivity``;
- ``ort/minmax-sym``: ``quantize_static`` MinMax, symmetric QInt8 activations,
  QDQ, per-channel QInt8 weights (TensorRT-deployable); ``ort/entropy`` and
  ``ort/percentile`` at their defaults when the activations they keep
  (one image's activation bytes, measured by a probe child with int8batch's
  ``ActivationRunner``, x images) stay under ``--ort-mem-gb`` (12), else a
  row saying why it was skipped;
- ``modelopt/max``: NVIDIA ModelOpt's ONNX PTQ (``modelopt.onnx.quantization
  .quantize``, int8, ``calibration_method="max"``, CPU, FP32 kept as the high
  precision) when ``import modelopt.onnx.quantization`` works, else a note.

Each row: seconds, x FP32, seconds in ONNX Runtime (int8batch), peak RSS
(VmHWM), and top-1 agreement / mean softmax KL / mean |difference| of the
INT8 model vs FP32 on the held-out photos (``int8batch.calib.evaluate``; the
first output, flattened: for the YOLO detector the argmax over the whole
p3 map).  The zoo models other than EfficientNet-Lite have random weights:
these figures measure numerical fidelity only, not accuracy.  ``--rss-check
MODEL...`` (default densenet121 and yolo_csp, when selected) also runs FP32 and
the five int8batch rows on ``--rss-images`` (1024) photos, without evaluation.
Targets, PASS/FAIL per model: pure methods <= 3x FP32; auto <= 6x FP32;
every int8batch row faster than ORT MinMax; ORT Entropy/Percentile >= 10x
the time of int8batch auto where they ran; int8batch peak RSS < 2 GB; peak RSS
at 1024 within 10 % of 256 images (--rss-check models).  Then one summary
table over the models.  ``--threads N`` sets ONNX Runtime's intra-op threads
of every tool (int8batch, FP32, evaluation, quantize_static and ModelOpt,
whose sessions are opened with N threads) and OMP_NUM_THREADS of the
children.  Needs numpy, onnx, onnxruntime, opencv and int8batch only (and the
JPEG folders: ``make_corpus.py`` needs scikit-image/scikit-learn, so pass
``--corpus``/``--eval-corpus`` where they are missing); the JSON is rewritten
after every row.

    python bench/bench_calibrate.py --zoo --json zoo.json                # every zoo model (lead only)
    python bench/bench_calibrate.py --zoo resnet50 yolo_csp --zoo-images 16 --quick   # smoke run
    python bench/bench_calibrate.py --zoo densenet121 --threads 16 --corpus JPEGS --eval-corpus EVAL_JPEGS
"""
import argparse
import glob
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

MARK = "BENCH_RESULT "
METHODS = ("auto", "entropy", "minmax", "percentile", "mse")
DEFAULT_METHOD = "auto"
# (label, ORT CalibrationMethod, activation type, extra_options, num_bins override)
ORT_CONFIGS = {
    "minmax": ("MinMax", "QUInt8", {}, None),
    "minmax-sym": ("MinMax", "QInt8", {"ActivationSymmetric": True}, None),
    "entropy": ("Entropy", "QUInt8", {}, None),
    "entropy2048-sym": ("Entropy", "QInt8", {"ActivationSymmetric": True, "CalibTensorRangeSymmetric": True},
                        2048),
    "percentile": ("Percentile", "QUInt8", {}, None),
}
ORT_HISTOGRAM = ("entropy", "entropy2048-sym", "percentile")
TARGETS = {"time_x_fp32": 6.0, "x_faster_than_ort": 10.0, "rss_mb": 1500.0, "rss_growth": 0.10,
           "agreement": 0.88, "kl": 0.04, "mnist_points": 0.2}


# ----------------------------------------------------------------------------- child side
def _peak_rss():
    """Peak and current RSS of this process in MB (1e6 bytes), from /proc/self/status."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(val.split()[0]) * 1024 / 1e6
    except OSError:
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    return {"rss_mb": out.get("VmHWM"), "rss_anon_mb_end": out.get("RssAnon"),
            "rss_file_mb_end": out.get("RssFile")}


def _evaluate(cfg, int8_model):
    if not cfg.get("eval"):
        return {}
    from int8batch.calib.evaluate import evaluate
    t = time.perf_counter()
    r = evaluate(cfg["model"], int8_model, cfg["eval"], max_batches=cfg.get("eval_batches"),
                 intra_op_threads=cfg.get("threads"))
    return {"agreement": r.top1_agreement, "kl": r.mean_kl, "top1_fp32": r.top1_fp32, "top1_int8": r.top1_int8,
            "mean_abs_diff": r.mean_abs_diff, "eval_images": r.images, "eval_seconds": time.perf_counter() - t}


def _ort_threads(n):
    """Open every ONNX Runtime session of this process with ``n`` intra-op threads.

    quantize_static and ModelOpt create their sessions themselves, with no thread
    option: their ``InferenceSession`` gets ``n`` unless the caller set a count.
    Returns a function that undoes the patch.
    """
    if not n:
        return lambda: None
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_inference_collection as C
    cls = C.InferenceSession
    original = cls.__init__

    def init(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kw):
        if sess_options is None:
            sess_options = ort.SessionOptions()
        if not sess_options.intra_op_num_threads:
            sess_options.intra_op_num_threads = int(n)
        original(self, path_or_bytes, sess_options, providers, provider_options, **kw)
    cls.__init__ = init

    def undo():
        cls.__init__ = original
    return undo


def _fp32(cfg):
    from int8batch.calib.ort_exec import ModelRunner
    from int8batch.reader import BatchSet
    t = time.perf_counter()
    runner = ModelRunner(cfg["model"], None, cfg.get("threads"))
    session = time.perf_counter() - t
    # The baseline is the FASTEST plain inference over the same images: each batch is also run
    # in sub-batches (ONNX Runtime on a whole batch of 64 EfficientNet images is memory-bound,
    # and calibrate() itself runs on sub-batches), and the best time counts.
    times = {}
    with BatchSet(cfg["calib"]) as bs:
        for sub in sorted({cfg["batch_size"], 16, 4}, reverse=True):
            first = next(iter(bs.batches(cfg["batch_size"], max_batches=1))).data
            runner.run(first[:sub])   # warm-up, not timed
            t = time.perf_counter()
            n = 0
            for b in bs.batches(cfg["batch_size"], max_batches=cfg["batches"]):
                for s in range(0, b.data.shape[0], sub):
                    runner.run(b.data[s:s + sub])
                n += b.data.shape[0]
            times[sub] = time.perf_counter() - t
    best = min(times, key=times.get)
    return {"seconds": times[best], "best_sub_batch": best, "seconds_by_sub_batch": times,
            "session_seconds": session, "images": n, **_peak_rss()}


def _int8batch(cfg):
    # onnx and onnxruntime are imported before the clock starts, as the ORT children import
    # onnxruntime.quantization before theirs and the FP32 baseline times inference only
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    from int8batch.calib import api
    from int8batch.calib.api import calibrate
    # the sensitivity pass (keep_float="auto") timed on its own: api's private step, when it exists
    sens = []
    step = getattr(api, "_most_sensitive", None)
    if step is not None:
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return step(*a, **kw)
            finally:
                sens.append(time.perf_counter() - t0)
        api._most_sensitive = timed
    extra = {"keep_float": cfg["keep_float"]} if "keep_float" in cfg else {}
    t = time.perf_counter()
    res = calibrate(cfg["model"], cfg["calib"], out=cfg["out"], method=cfg["method"],
                    batch_size=cfg["batch_size"], max_batches=cfg["batches"], intra_op_threads=cfg.get("threads"),
                    bias_correction=cfg.get("bias_correction", True), **extra)
    seconds = time.perf_counter() - t
    rec = {"seconds": seconds, "inference_seconds": res.inference_seconds, "images": res.images,
           "tensors": len(res.amax), "sensitivity_seconds": sum(sens) if sens else None,
           "kept_float": list(getattr(res, "kept_float", None) or []), **_peak_rss()}
    rec.update(_evaluate(cfg, res.paths["qdq"]))
    return rec


def _ort(cfg):
    import onnxruntime.quantization as oq
    oqq = sys.modules["onnxruntime.quantization.quantize"]   # the package's ``quantize`` name is a function
    from int8batch.onnx import graph as G
    from int8batch.reader import BatchSet
    method, act, extra, bins = ORT_CONFIGS[cfg["ort"]]
    _ort_threads(cfg.get("threads"))
    if bins is not None:
        original = oqq.create_calibrator

        def with_bins(*a, **kw):
            opts = dict(kw.get("extra_options") or {})
            opts["num_bins"] = bins
            kw["extra_options"] = opts
            return original(*a, **kw)
        oqq.create_calibrator = with_bins
    input_name = G.input_info(G.load_model(cfg["model"]))[0].name

    class Reader(oq.CalibrationDataReader):
        def __init__(self, bs):
            self._it = bs.batches(cfg["batch_size"], max_batches=cfg["batches"])
            self.images = 0

        def get_next(self):
            b = next(self._it, None)
            if b is None:
                return None
            self.images += b.data.shape[0]
            return {input_name: b.data}

    os.makedirs(cfg["out"], exist_ok=True)
    out_model = os.path.join(cfg["out"], "model.qdq.onnx")
    with BatchSet(cfg["calib"]) as bs:
        reader = Reader(bs)
        t = time.perf_counter()
        oq.quantize_static(cfg["model"], out_model, reader, quant_format=oq.QuantFormat.QDQ, per_channel=True,
                           activation_type=getattr(oq.QuantType, act), weight_type=oq.QuantType.QInt8,
                           calibrate_method=getattr(oq.CalibrationMethod, method), extra_options=dict(extra))
        seconds = time.perf_counter() - t
        rec = {"seconds": seconds, "images": reader.images, **_peak_rss()}
    rec.update(_evaluate(cfg, out_model))
    return rec


def _modelopt(cfg):
    """NVIDIA ModelOpt's ONNX PTQ: int8, max calibration, on the CPU, FP32 kept as the high precision."""
    import onnxruntime.quantization as oq
    import modelopt.onnx.quantization as moq   # imports torch: before the clock, as the others' imports
    from int8batch.onnx import graph as G
    from int8batch.reader import BatchSet
    _ort_threads(cfg.get("threads"))
    input_name = G.input_info(G.load_model(cfg["model"]))[0].name

    class Reader(oq.CalibrationDataReader):
        """Streams the batch files; ModelOpt also asks for the first batch and rewinds."""

        def __init__(self, bs):
            self.bs, self.images, self._first = bs, 0, None
            self.rewind()

        def rewind(self):
            self._it = self.bs.batches(cfg["batch_size"], max_batches=cfg["batches"])

        def get_first(self):
            if self._first is None:
                self._first = {input_name: next(iter(self.bs.batches(cfg["batch_size"], max_batches=1))).data}
            return self._first

        def get_next(self):
            b = next(self._it, None)
            if b is None:
                return None
            self.images += b.data.shape[0]
            return {input_name: b.data}

    os.makedirs(cfg["out"], exist_ok=True)
    out_model = os.path.join(cfg["out"], "model.qdq.onnx")
    with BatchSet(cfg["calib"]) as bs:
        reader = Reader(bs)
        t = time.perf_counter()
        moq.quantize(cfg["model"], quantize_mode="int8", calibration_method="max",
                     calibration_data_reader=reader, calibration_eps=["cpu"], high_precision_dtype="fp32",
                     output_path=out_model, log_level="WARNING")
        seconds = time.perf_counter() - t
        rec = {"seconds": seconds, "images": reader.images, **_peak_rss()}
    rec.update(_evaluate(cfg, out_model))
    return rec


def _probe(cfg):
    """One image's activation bytes (every tensor int8batch calibrates), for the ORT memory estimate."""
    import numpy as np
    from int8batch.calib.ort_exec import ActivationRunner
    from int8batch.onnx import graph as G
    from int8batch.reader import BatchSet
    model = G.load_model(cfg["model"])
    names = G.quantizable_tensors(model)
    runner = ActivationRunner(model, names, intra_op_threads=cfg.get("threads"))
    with BatchSet(cfg["calib"]) as bs:
        first = np.ascontiguousarray(bs.images(0, 1)[0])
    outs = runner.run(first)
    return {"activation_bytes_per_image": int(sum(a.nbytes for a in outs.values())), "tensors": len(outs)}


def run_one(cfg):
    """Child entry point: run one configuration, print one JSON line."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    fn = {"fp32": _fp32, "int8batch": _int8batch, "ort": _ort, "modelopt": _modelopt, "probe": _probe}[cfg["kind"]]
    rec = fn(cfg)
    print(MARK + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------- parent side
def spawn(cfg, timeout, env=None):
    """Run ``cfg`` in a fresh interpreter; return its record (with ``error`` on failure)."""
    t = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(cfg)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=dict(os.environ, **env) if env else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "child_seconds": time.perf_counter() - t}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if p.returncode != 0 or not lines:
        why = "killed by SIGKILL (out of memory?)" if p.returncode == -9 else f"exit status {p.returncode}"
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"{why}: {' | '.join(tail)}", "child_seconds": time.perf_counter() - t}
    rec = json.loads(lines[-1][len(MARK):])
    rec["child_seconds"] = time.perf_counter() - t
    return rec


def ensure_efficientnet_data(calib, eval_, need_calib, need_eval, work):
    """Reuse packed folders when they hold enough images, else make the corpus and pack it."""
    import int8batch
    from int8batch.reader import BatchSet
    for folder, need, split, seed, count in ((calib, need_calib, "calib", 1, 1024), (eval_, need_eval, "eval", 2, 512)):
        try:
            with BatchSet(folder) as bs:
                if bs.num_images >= need and tuple(bs.image_shape) == (3, 224, 224):
                    continue
        except Exception:  # noqa: BLE001 - missing or unreadable: rebuild
            pass
        jpg = os.path.join(work, f"corpus_{split}{count}")
        print(f"making {count} {split} photos in {jpg} and packing them into {folder} ...", flush=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), jpg, "--count", str(count),
                        "--split", split, "--seed", str(seed), "--force"], check=True)
        int8batch.pack(jpg, folder, preset="efficientnet-lite", batch_size=64, labels="none", force=True)


def ensure_mnist_data(work, train_images, test_images):
    import int8batch
    from int8batch.reader import BatchSet
    folders = {}
    for name, src, n, bsz in (("train", "mnist", train_images, 50), ("test", "mnist-test", test_images, 100)):
        folder = os.path.join(work, f"mnist_{name}{n}")
        try:
            with BatchSet(folder) as bs:
                ok = bs.num_images == n and bs.per_file == bsz
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            int8batch.pack(src, folder, batch_size=bsz, limit=n, force=True)
        folders[name] = folder
    return folders


def _fmt(v, kind):
    if v is None:
        return "-"
    return {"s": f"{v:.2f}", "x": f"{v:.1f}x", "mb": f"{v:.0f}", "pct": f"{100 * v:.2f}", "kl": f"{v:.4f}"}[kind]


def print_table(title, rows, fp32_by_size, mnist):
    print(f"\n== {title} ==")
    head = ["config", "images", "seconds", "x FP32", "in ORT s", "peak RSS MB", "agree %", "KL"]
    head += ["top1 FP32 %", "top1 INT8 %"] if mnist else []
    table = [head]
    for r in rows:
        fp = fp32_by_size.get(r["images_requested"], {}).get("seconds")
        if "error" in r:
            table.append([r["name"], str(r["images_requested"]), "ERROR: " + r["error"][:90]])
            continue
        x = r["seconds"] / fp if fp and r["kind"] != "fp32" else None
        line = [r["name"], str(r["images_requested"]), _fmt(r["seconds"], "s"), _fmt(x, "x"),
                _fmt(r.get("inference_seconds"), "s"), _fmt(r.get("rss_mb"), "mb"),
                _fmt(r.get("agreement"), "pct"), _fmt(r.get("kl"), "kl")]
        if mnist:
            line += [_fmt(r.get("top1_fp32"), "pct"), _fmt(r.get("top1_int8"), "pct")]
        table.append(line)
    widths = [max(len(t[i]) for t in table if i < len(t)) for i in range(len(head))]
    for t in table:
        print("  ".join(c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(t)).rstrip())


def check(checks, label, ok, detail):
    checks.append({"target": label, "pass": bool(ok), "detail": detail})
    print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}")


def summarize_efficientnet(rows, sizes, ort_size, checks):
    get = {(r["name"], r["images_requested"]): r for r in rows if "error" not in r}
    print("\nratios and targets (EfficientNet-Lite0):")
    for n in sizes:
        fp = get.get(("fp32", n))
        for m in METHODS:
            r = get.get((f"int8batch/{m}", n))
            if fp and r:
                x = r["seconds"] / fp["seconds"]
                check(checks, f"int8batch/{m} time <= {TARGETS['time_x_fp32']:.0f}x FP32 inference ({n} images)",
                      x <= TARGETS["time_x_fp32"], f"{r['seconds']:.2f} s / {fp['seconds']:.2f} s = {x:.1f}x")
    base = get.get((f"int8batch/{DEFAULT_METHOD}", ort_size))
    for o in ORT_HISTOGRAM:
        r = get.get((f"ort/{o}", ort_size))
        same = get.get((f"int8batch/{'percentile' if o == 'percentile' else 'entropy'}", ort_size))
        if r and base:
            x = r["seconds"] / base["seconds"]
            extra = (f"; vs int8batch/{same['name'].split('/')[1]}: {r['seconds'] / same['seconds']:.1f}x"
                     if same else "")
            check(checks, f"ort/{o} time / int8batch/{DEFAULT_METHOD} time >= {TARGETS['x_faster_than_ort']:.0f}x "
                  f"({ort_size} images)", x >= TARGETS["x_faster_than_ort"],
                  f"{r['seconds']:.2f} s / {base['seconds']:.2f} s = {x:.1f}x{extra}")
    for m in METHODS:
        for n in sizes:
            r = get.get((f"int8batch/{m}", n))
            if r:
                check(checks, f"int8batch/{m} peak RSS < {TARGETS['rss_mb']:.0f} MB ({n} images)",
                      r["rss_mb"] < TARGETS["rss_mb"],
                      f"{r['rss_mb']:.0f} MB (at the end: anon {r['rss_anon_mb_end']:.0f}, "
                      f"file-backed {r['rss_file_mb_end']:.0f})")
        if len(sizes) > 1:
            a, b = get.get((f"int8batch/{m}", sizes[0])), get.get((f"int8batch/{m}", sizes[-1]))
            if a and b:
                g = b["rss_mb"] / a["rss_mb"] - 1.0
                check(checks, f"int8batch/{m} peak RSS {sizes[-1]} vs {sizes[0]} images within "
                      f"{100 * TARGETS['rss_growth']:.0f} %", abs(g) <= TARGETS["rss_growth"],
                      f"{b['rss_mb']:.0f} / {a['rss_mb']:.0f} MB = {100 * g:+.1f} %")
    for n in sizes:
        r = get.get((f"int8batch/{DEFAULT_METHOD}", n))
        if r:
            check(checks, f"default method ({DEFAULT_METHOD}) agreement >= {100 * TARGETS['agreement']:.0f} % and "
                  f"KL <= {TARGETS['kl']} ({n} images)",
                  r["agreement"] >= TARGETS["agreement"] and r["kl"] <= TARGETS["kl"],
                  f"{100 * r['agreement']:.2f} %, KL {r['kl']:.4f} on {r['eval_images']} eval images")


def summarize_mnist(rows, checks):
    print("\nratios and targets (LeNet / MNIST):")
    get = {r["name"]: r for r in rows if "error" not in r}
    fp = get.get("fp32")
    for m in METHODS:
        r = get.get(f"int8batch/{m}")
        if not r:
            continue
        d = 100 * (r["top1_int8"] - r["top1_fp32"])
        check(checks, f"MNIST int8batch/{m} INT8 top-1 within {TARGETS['mnist_points']} points of FP32",
              abs(d) <= TARGETS["mnist_points"],
              f"FP32 {100 * r['top1_fp32']:.2f} %, INT8 {100 * r['top1_int8']:.2f} % ({d:+.2f} points)")
        if fp:
            print(f"  (info) int8batch/{m} time / FP32 inference: {r['seconds']:.2f} / {fp['seconds']:.3f} s = "
                  f"{r['seconds'] / fp['seconds']:.0f}x (fixed costs dominate on this tiny model)")


# ----------------------------------------------------------------------------- zoo mode (parent side)
ZOO_DIR = os.path.join(ROOT, ".work", "zoo")
WORK_DIR = os.path.join(ROOT, ".work", "bench_calibrate")
PURE_METHODS = ("mse", "minmax", "percentile", "entropy")
ZOO_INT8BATCH = PURE_METHODS + ("auto",)
ZOO_ORT = ("minmax-sym", "entropy", "percentile")   # ORT_CONFIGS keys; entropy and percentile at their defaults
DEFAULT_RSS_CHECK = ("densenet121", "yolo_csp")
ZOO_TARGETS = {"pure_x_fp32": 3.0, "auto_x_fp32": 6.0, "x_faster_than_ort_hist": 10.0, "rss_mb": 2000.0,
               "rss_growth": 0.10}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_zoo_index(zoo_dir, names=None):
    """The entries of ``zoo_dir/zoo.json`` (``make_zoo.py``'s index), in its order, or those of ``names``.

    Each entry gets ``path`` (its .onnx file).  Raises SystemExit naming the
    models it holds when the index is missing or a name is not in it.
    """
    index = os.path.join(zoo_dir, "zoo.json")
    if not os.path.exists(index):
        raise SystemExit(f"{index} not found: export the zoo first (python tools/make_zoo.py -o {zoo_dir})")
    with open(index) as fh:
        entries = json.load(fh)["models"]
    for e in entries:
        e["path"] = os.path.join(zoo_dir, e["onnx"])
    if not names:
        return entries
    by_name = {e["name"]: e for e in entries}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"not in {index}: {', '.join(unknown)} (it holds: {', '.join(by_name)})")
    return [by_name[n] for n in dict.fromkeys(names)]


def ort_histogram_fit(bytes_per_image, images, limit_gb):
    """ORT Entropy/Percentile keep every activation of every batch: ``(fits, estimated GB)``."""
    est = bytes_per_image * images / 1e9
    return est <= limit_gb, est


def list_images(folder):
    """Image files under ``folder`` (recursive), as sorted relative paths."""
    out = []
    for d, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(d, f), folder) for f in files if f.lower().endswith(IMAGE_EXTS)]
    return sorted(out)


def pack_stamp(folder, files, images, pack_args, per_file):
    """What a packed folder was made from: the source's first ``images`` files (names and sizes), recipe, N."""
    h = hashlib.sha256()
    for f in files[:images]:
        h.update(f"{f}\0{os.path.getsize(os.path.join(folder, f))}\n".encode())
    return {"source": os.path.realpath(folder), "files_sha256": h.hexdigest(), "images": images,
            "pack_args": pack_args, "per_file": per_file}


def _valid_pack(folder, images, chw):
    from int8batch.reader import BatchSet
    try:
        with BatchSet(folder) as bs:
            return bs.num_images == images and tuple(bs.image_shape) == tuple(chw)
    except Exception:  # noqa: BLE001 - missing or unreadable: repack
        return False


def ensure_zoo_pack(entry, split, corpus, images, per_file, work):
    """``work/zoo_<name>_<images>`` (``..._eval<images>`` for ``split="eval"``): the corpus's first
    ``images`` photos packed with the model's own recipe.  Reuses a folder packed earlier from the
    same files with the same recipe and N, by any model; returns ``(folder, seconds spent packing)``."""
    tag = f"{images}" if split == "calib" else f"eval{images}"
    chw = tuple(entry["input_shape"][1:])
    stamp = pack_stamp(corpus, list_images(corpus), images, entry["pack_args"], per_file)
    own = os.path.join(work, f"zoo_{entry['name']}_{tag}")
    for candidate in [own] + sorted(glob.glob(os.path.join(work, f"zoo_*_{tag}"))):
        try:
            with open(candidate + ".stamp.json") as fh:
                if json.load(fh) == stamp and _valid_pack(candidate, images, chw):
                    return candidate, 0.0
        except (OSError, ValueError):
            continue
    t = time.perf_counter()
    print(f"  packing {images} {split} photos of {corpus} for {entry['name']} ({entry['pack_args']}) "
          f"into {own} ...", flush=True)
    cmd = [sys.executable, "-m", "int8batch.cli.main", "pack", corpus, own, *shlex.split(entry["pack_args"]),
           "-n", str(per_file), "--limit", str(images), "--labels", "none", "--force", "-q"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    if not _valid_pack(own, images, chw):
        raise SystemExit(f"{own}: the pack does not hold {images} images of {chw}")
    with open(own + ".stamp.json", "w") as fh:
        json.dump(stamp, fh, indent=1)
    return own, time.perf_counter() - t


def ensure_corpus(folder, need, split, seed, default, work):
    """A folder of at least ``need`` JPEGs: ``folder`` when given, else ``work/corpus_<split><count>``,
    made by tools/make_corpus.py (needs scikit-image and scikit-learn) when missing or short."""
    if folder:
        have = len(list_images(folder))
        if have < need:
            raise SystemExit(f"{folder} holds {have} images, {need} are needed (--zoo-images, --rss-images of "
                             "the --rss-check models, --eval-images; --rss-check with no name: no RSS check)")
        return folder
    count = max(default, need)
    folder = os.path.join(work, f"corpus_{split}{count}")
    if len(list_images(folder)) < count:
        print(f"making {count} {split} photos in {folder} (tools/make_corpus.py) ...", flush=True)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), folder, "--count",
                            str(count), "--split", split, "--seed", str(seed), "--force"])
        if r.returncode != 0:
            raise SystemExit("tools/make_corpus.py failed (it needs scikit-image and scikit-learn): pass "
                             "--corpus/--eval-corpus with folders of JPEGs instead")
    return folder


def modelopt_status(timeout=300):
    """``(available, reason)``: whether ``import modelopt.onnx.quantization`` works in a fresh interpreter."""
    try:
        p = subprocess.run([sys.executable, "-c", "import modelopt, modelopt.onnx.quantization; "
                            "print(modelopt.__version__)"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"import took over {timeout} s"
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        return False, tail[-1] if tail else f"exit status {p.returncode}"
    return True, p.stdout.strip()


def _row(rows, name, n):
    for r in rows:
        if r["name"] == name and r["images_requested"] == n and "error" not in r and "skipped" not in r:
            return r
    return None


def zoo_checks(rows, size, rss_size=None, targets=ZOO_TARGETS):
    """The targets of one zoo model from its rows: ``[(target, passed, detail)]``.

    ``rows`` hold ``name`` (``fp32``, ``int8batch/<method>``, ``ort/<config>``),
    ``images_requested``, ``seconds``, ``rss_mb``; rows with ``error`` or
    ``skipped`` are left out.  ``size`` is the main image count, ``rss_size``
    the larger one of the RSS check (None: no RSS check).  A target whose rows
    are missing is not listed.
    """
    out = []
    fp = _row(rows, "fp32", size)
    if fp:
        for m in ZOO_INT8BATCH:
            r = _row(rows, f"int8batch/{m}", size)
            if r:
                limit = targets["auto_x_fp32" if m == "auto" else "pure_x_fp32"]
                x = r["seconds"] / fp["seconds"]
                out.append((f"int8batch/{m} <= {limit:g}x FP32 ({size} images)", x <= limit,
                            f"{r['seconds']:.2f} s / {fp['seconds']:.2f} s = {x:.1f}x"))
    ours = [r for m in ZOO_INT8BATCH for r in [_row(rows, f"int8batch/{m}", size)] if r]
    ort_mm = _row(rows, "ort/minmax-sym", size)
    if ours and ort_mm:
        slow = max(ours, key=lambda r: r["seconds"])
        out.append((f"every int8batch row faster than ort/minmax-sym ({size} images)",
                    slow["seconds"] < ort_mm["seconds"],
                    f"slowest {slow['name']} {slow['seconds']:.2f} s vs {ort_mm['seconds']:.2f} s "
                    f"({ort_mm['seconds'] / slow['seconds']:.1f}x)"))
    auto = _row(rows, "int8batch/auto", size)
    for o in ("entropy", "percentile"):
        r = _row(rows, f"ort/{o}", size)
        if r and auto:
            x = r["seconds"] / auto["seconds"]
            same = _row(rows, f"int8batch/{o}", size)
            extra = f"; vs int8batch/{o}: {r['seconds'] / same['seconds']:.1f}x" if same else ""
            out.append((f"ort/{o} >= {targets['x_faster_than_ort_hist']:g}x int8batch/auto ({size} images)",
                        x >= targets["x_faster_than_ort_hist"],
                        f"{r['seconds']:.2f} s / {auto['seconds']:.2f} s = {x:.1f}x{extra}"))
    mine = [r for r in rows if r["name"].startswith("int8batch/") and "error" not in r and "skipped" not in r
            and r.get("rss_mb") is not None]
    if mine:
        top = max(mine, key=lambda r: r["rss_mb"])
        out.append((f"int8batch peak RSS < {targets['rss_mb']:.0f} MB", top["rss_mb"] < targets["rss_mb"],
                    f"largest {top['rss_mb']:.0f} MB ({top['name']} at {top['images_requested']} images)"))
    if rss_size:
        growth = []
        for m in ZOO_INT8BATCH:
            a, b = _row(rows, f"int8batch/{m}", size), _row(rows, f"int8batch/{m}", rss_size)
            if a and b and a.get("rss_mb") and b.get("rss_mb"):
                growth.append((m, b["rss_mb"] / a["rss_mb"] - 1.0))
        if growth:
            worst = max(growth, key=lambda g: abs(g[1]))
            out.append((f"int8batch peak RSS at {rss_size} within {100 * targets['rss_growth']:.0f} % of {size} "
                        f"images", abs(worst[1]) <= targets["rss_growth"],
                        ", ".join(f"{m} {100 * g:+.1f} %" for m, g in growth) + f" (worst {worst[0]})"))
    return out


def print_zoo_table(title, rows):
    print(f"\n== {title} ==")
    head = ["config", "images", "seconds", "x FP32", "in ORT s", "peak RSS MB", "agree %", "KL", "mean |d|"]
    table = [head]
    fp32 = {r["images_requested"]: r for r in rows if r["name"] == "fp32" and "seconds" in r}
    for r in rows:
        n = r["images_requested"]
        if "error" in r or "skipped" in r:
            table.append([r["name"], str(n), ("ERROR: " + r["error"][:110]) if "error" in r
                          else "skipped: " + r["skipped"]])
            continue
        fp = fp32.get(n, {}).get("seconds")
        x = r["seconds"] / fp if fp and r["name"] != "fp32" else None
        table.append([r["name"], str(n), _fmt(r["seconds"], "s"), _fmt(x, "x"), _fmt(r.get("inference_seconds"), "s"),
                      _fmt(r.get("rss_mb"), "mb"), _fmt(r.get("agreement"), "pct"), _fmt(r.get("kl"), "kl"),
                      "-" if r.get("mean_abs_diff") is None else f"{r['mean_abs_diff']:.3g}"])
        if r.get("sensitivity_seconds") is not None and r["name"] == "int8batch/auto":
            s = r["sensitivity_seconds"]
            table.append([f"{r['name']}:sensitivity", str(n), _fmt(s, "s"), _fmt(s / fp if fp else None, "x"),
                          "", "", "", "", f"kept float: {len(r.get('kept_float') or [])}"])
    widths = [max(len(t[i]) for t in table if i < len(t) and len(t) > 3) for i in range(len(head))]
    for t in table:
        print("  ".join(c.ljust(widths[i]) if i < len(widths) and len(t) > 3 else c
                        for i, c in enumerate(t)).rstrip())


def print_zoo_summary(zoo, size):
    """One line per model: each row's time as a multiple of FP32 inference at ``size`` images."""
    cols = [("mse", "int8batch/mse"), ("minmax", "int8batch/minmax"), ("pct", "int8batch/percentile"),
            ("entropy", "int8batch/entropy"), ("auto", "int8batch/auto"), ("ORT MinMax", "ort/minmax-sym"),
            ("ORT Entropy", "ort/entropy"), ("ORT Pct", "ort/percentile"), ("ModelOpt", "modelopt/max")]
    head = ["model", "act.", "MB/img", "FP32 s"] + [c for c, _ in cols] + ["sens. s", "max RSS MB", "targets"]
    table = [head]
    for name, z in zoo.items():
        rows = z["rows"]
        fp = _row(rows, "fp32", size)
        line = [name, str(z["info"].get("tensors") or z["info"].get("activations") or "-"),
                _fmt((z["info"].get("activation_bytes_per_image") or 0) / 1e6 or None, "mb"),
                _fmt(fp["seconds"] if fp else None, "s")]
        for _, key in cols:
            r = _row(rows, key, size)
            line.append(_fmt(r["seconds"] / fp["seconds"], "x") if r and fp else "-")
        auto = _row(rows, "int8batch/auto", size)
        line.append(_fmt(auto.get("sensitivity_seconds") if auto else None, "s"))
        rss = [r["rss_mb"] for r in rows if r["name"].startswith("int8batch/") and r.get("rss_mb") is not None]
        line.append(_fmt(max(rss) if rss else None, "mb"))
        line.append(f"{sum(c['pass'] for c in z['checks'])}/{len(z['checks'])}")
        table.append(line)
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    print(f"\n== zoo summary: time as a multiple of FP32 inference at {size} images ==")
    for t in table:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(t)).rstrip())


def run_zoo(args, ap):
    t_start = time.perf_counter()
    entries = load_zoo_index(args.zoo_dir, args.zoo)
    n = args.zoo_images
    n_rss = args.rss_images or (2 * n if args.quick else 1024)
    n_eval = args.eval_images if args.eval_images is not None else (16 if args.quick else 128)
    bsz = min(args.batch_size or 32, n)
    if n % bsz or n_rss % bsz:
        ap.error(f"--batch-size {bsz} must divide --zoo-images {n} and the RSS-check size {n_rss}")
    # images per held-out file: the largest divisor of the count up to the batch size (no image dropped)
    eval_n = next((d for d in range(min(bsz, n_eval), 0, -1) if n_eval % d == 0), 1) if n_eval else None
    selected = [e["name"] for e in entries]
    rss_models = [m for m in (DEFAULT_RSS_CHECK if args.rss_check is None else args.rss_check) if m in selected]
    if args.rss_check and set(args.rss_check) - set(selected):
        ap.error(f"--rss-check {' '.join(sorted(set(args.rss_check) - set(selected)))}: not among --zoo models")
    work = args.work
    os.makedirs(work, exist_ok=True)
    calib_dir, eval_dir = args.corpus, args.eval_corpus
    if calib_dir and not eval_dir and all(os.path.isdir(os.path.join(calib_dir, d)) for d in ("calib", "eval")):
        calib_dir, eval_dir = os.path.join(calib_dir, "calib"), os.path.join(calib_dir, "eval")
    calib_dir = ensure_corpus(calib_dir, max([n] + ([n_rss] if rss_models else [])), "calib", 1, 1024, work)
    eval_dir = ensure_corpus(eval_dir, n_eval, "eval", 2, 512, work) if n_eval else None
    mo_ok, mo_why = (False, None) if args.no_modelopt else modelopt_status()
    mo_note = "--no-modelopt" if args.no_modelopt else f"ModelOpt: not installable here ({mo_why})"
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    results = {"meta": {"argv": sys.argv[1:], "mode": "zoo", "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                        "images": n, "rss_images": n_rss, "rss_check": rss_models, "eval_images": n_eval,
                        "batch_size": bsz, "threads": args.threads, "ort_mem_gb": args.ort_mem_gb,
                        "corpus": os.path.realpath(calib_dir),
                        "eval_corpus": os.path.realpath(eval_dir) if eval_dir else None,
                        "modelopt": mo_why if mo_ok else mo_note, "targets": ZOO_TARGETS,
                        "load_average_start": os.getloadavg()[0]},
               "zoo": {}, "checks": []}
    try:
        import onnxruntime
        results["meta"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    print(f"bench_calibrate --zoo: {', '.join(selected)}; {n} calibration images (RSS check at {n_rss}: "
          f"{', '.join(rss_models) or 'none'}), {n_eval} held-out images, batch {bsz}, threads "
          f"{args.threads or 'ORT default'}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
          flush=True)
    print(f"  corpus {calib_dir}, held-out {eval_dir}")
    print("  ModelOpt: " + (f"{mo_why}" if mo_ok else mo_note), flush=True)
    for e in entries:
        name = e["name"]
        z = results["zoo"][name] = {"info": {k: e.get(k) for k in ("family", "input_shape", "activations", "params",
                                                                    "real_weights", "pack_args", "sha256")},
                                    "rows": [], "checks": []}
        print(f"\n{name} ({e.get('activations')} activations, input {'x'.join(map(str, e['input_shape'][1:]))}, "
              f"{'real' if e.get('real_weights') else 'random'} weights)", flush=True)
        if not os.path.exists(e["path"]):
            z["rows"].append({"name": "fp32", "images_requested": n, "kind": "fp32",
                              "error": f"{e['path']} missing: python tools/make_zoo.py --only {name}"})
            print("  " + z["rows"][-1]["error"])
            save()
            continue
        calib, t_pack = ensure_zoo_pack(e, "calib", calib_dir, n, bsz, work)
        ev = ensure_zoo_pack(e, "eval", eval_dir, n_eval, eval_n, work)[0] if n_eval else None
        z["info"].update(calib=calib, eval=ev, pack_seconds=t_pack)
        probe = spawn({"kind": "probe", "model": e["path"], "calib": calib, "threads": args.threads},
                      args.child_timeout, env)
        z["info"].update({k: v for k, v in probe.items() if k != "child_seconds"})
        per_image = probe.get("activation_bytes_per_image")
        if per_image:
            print(f"  {probe['tensors']} activations, {per_image / 1e6:.1f} MB per image", flush=True)
        common = {"model": e["path"], "eval": ev, "batch_size": bsz, "eval_batches": None, "threads": args.threads}

        def go(row, images, cfg):
            print(f"  {row} @ {images} images ...", end=" ", flush=True)
            rec = spawn(cfg, args.child_timeout, env)
            rec.update(name=row, kind=cfg["kind"], images_requested=images)
            z["rows"].append(rec)
            print("ERROR " + rec["error"] if "error" in rec else
                  f"{rec['seconds']:.2f} s, {rec.get('rss_mb', 0):.0f} MB ({rec['child_seconds']:.0f} s in all)",
                  flush=True)
            save()

        def skip(row, images, why):
            z["rows"].append({"name": row, "kind": row.split("/")[0], "images_requested": images, "skipped": why})
            print(f"  {row} @ {images} images: skipped ({why})", flush=True)
            save()

        sizes = [(n, calib, ev)]
        if name in rss_models:
            sizes.append((n_rss, None, None))
        for images, folder, evf in sizes:
            if folder is None:
                folder = ensure_zoo_pack(e, "calib", calib_dir, images, bsz, work)[0]
            nb = images // bsz
            base = dict(common, calib=folder, batches=nb, eval=evf)
            go("fp32", images, dict(base, kind="fp32"))
            for m in ZOO_INT8BATCH:
                pure = {} if m == "auto" else {"keep_float": 0, "bias_correction": False}
                go(f"int8batch/{m}", images, dict(base, kind="int8batch", method=m,
                                                  out=os.path.join(work, f"zoo_out_{name}_i8_{m}_{images}"), **pure))
            if images != n:
                continue
            for o in ZOO_ORT:
                if o in ORT_HISTOGRAM:
                    if args.skip_ort_entropy:
                        skip(f"ort/{o}", images, "--skip-ort-entropy")
                        continue
                    if not per_image:
                        skip(f"ort/{o}", images, "activation size unknown (the probe failed: "
                             f"{probe.get('error', '?')[:80]})")
                        continue
                    fits, est = ort_histogram_fit(per_image, images, args.ort_mem_gb)
                    if not fits:
                        skip(f"ort/{o}", images, f"it keeps every activation: ~{est:.1f} GB ({per_image / 1e6:.0f} "
                             f"MB/image x {images}) > --ort-mem-gb {args.ort_mem_gb:g}")
                        continue
                go(f"ort/{o}", images, dict(base, kind="ort", ort=o,
                                            out=os.path.join(work, f"zoo_out_{name}_ort_{o}_{images}")))
            if mo_ok:
                go("modelopt/max", images, dict(base, kind="modelopt",
                                                out=os.path.join(work, f"zoo_out_{name}_modelopt_{images}")))
            else:
                skip("modelopt/max", images, mo_note)
        print_zoo_table(f"{name}: calibration on {n} photos" + (f" (and {n_rss})" if name in rss_models else "")
                        + (f", INT8 vs FP32 on {n_eval} held-out photos" if n_eval else "")
                        + (f" (first output {e['outputs'][0]}, flattened)" if len(e.get("outputs") or []) > 1 else "")
                        + ("" if e.get("real_weights") else " (random weights: numerical fidelity only)"),
                        z["rows"])
        print(f"targets ({name}):")
        for label, ok, detail in zoo_checks(z["rows"], n, n_rss if name in rss_models else None):
            check(z["checks"], f"{name}: {label}", ok, detail)
        results["checks"] += z["checks"]
        save()

    print_zoo_summary(results["zoo"], n)
    total = time.perf_counter() - t_start
    results["meta"]["total_seconds"] = total
    results["meta"]["load_average_end"] = os.getloadavg()[0]
    passed = sum(c["pass"] for c in results["checks"])
    print(f"\n{passed}/{len(results['checks'])} targets met; total {total:.0f} s")
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 32/64 calibration, 64 eval images (--zoo: "
                                                          "16 held-out images, RSS check at 2x --zoo-images)")
    ap.add_argument("--skip-ort-entropy", action="store_true",
                    help="skip ORT Entropy (128 and 2048 bins) and Percentile on EfficientNet (16 GB, minutes each); "
                         "--zoo: ORT Entropy and Percentile on every model")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--model", default=os.path.join(ROOT, ".work", "models", "efficientnet_lite0.onnx"))
    ap.add_argument("--calib", default=os.path.join(ROOT, ".work", "b_calib"), help="1024 calib photos, packed")
    ap.add_argument("--eval", default=os.path.join(ROOT, ".work", "b_eval"), help="512 eval photos, packed")
    ap.add_argument("--work", default=WORK_DIR, help="outputs, packed photos, corpora")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per inference batch and per packed file, every tool (default 64; --zoo: 32)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads of every tool (int8batch, FP32, evaluation, and the "
                         "sessions quantize_static and ModelOpt open) and the children's OMP_NUM_THREADS "
                         "(default: ONNX Runtime's own choice)")
    ap.add_argument("--only", choices=("efficientnet", "mnist"), help="one model only")
    ap.add_argument("--child-timeout", type=int, default=1800)
    z = ap.add_argument_group("zoo mode")
    z.add_argument("--zoo", nargs="*", metavar="NAME",
                   help="run the model zoo instead (tools/make_zoo.py; no name: every model of zoo.json)")
    z.add_argument("--zoo-dir", default=ZOO_DIR, help="the zoo's folder, with zoo.json (default .work/zoo)")
    z.add_argument("--zoo-images", type=int, default=256, help="calibration photos per model (256)")
    z.add_argument("--rss-check", nargs="*", metavar="MODEL",
                   help="models also run on --rss-images photos for the RSS-flatness target (default: "
                        f"{' '.join(DEFAULT_RSS_CHECK)} when selected; no name: none)")
    z.add_argument("--rss-images", type=int, default=None,
                   help="photos of the RSS check (1024; --quick: 2x --zoo-images)")
    z.add_argument("--eval-images", type=int, default=None,
                   help="held-out photos of the agreement/KL columns (128; --quick: 16; 0: no evaluation)")
    z.add_argument("--corpus", help="folder of calibration JPEGs (or with calib/ and eval/ sub-folders); "
                                    "default: made by tools/make_corpus.py --split calib")
    z.add_argument("--eval-corpus", help="folder of held-out JPEGs (default: make_corpus.py --split eval)")
    z.add_argument("--ort-mem-gb", type=float, default=12.0,
                   help="skip ORT Entropy/Percentile when one image's activations x images exceed this (12)")
    z.add_argument("--no-modelopt", action="store_true", help="skip the ModelOpt rows")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        run_one(json.loads(args.one))
        return 0
    if args.zoo is not None:
        return run_zoo(args, ap)
    args.batch_size = args.batch_size or 64

    t_start = time.perf_counter()
    sizes = (32, 64) if args.quick else (256, 1024)
    ort_size = sizes[0]
    eval_batches = 1 if args.quick else None
    mnist_train, mnist_test = (100, 1000) if args.quick else (500, 10000)
    os.makedirs(args.work, exist_ok=True)
    bsz = min(args.batch_size, sizes[0])
    if any(n % bsz for n in sizes):
        ap.error(f"--batch-size {bsz} must divide the calibration sizes {sizes}")
    results = {"meta": {"argv": sys.argv[1:], "python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "sizes": sizes, "ort_histogram_size": ort_size,
                        "batch_size": bsz, "threads": args.threads, "targets": TARGETS},
               "efficientnet": [], "mnist": [], "checks": []}
    try:
        import onnxruntime
        results["meta"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    print(f"bench_calibrate: sizes {sizes}, batch {bsz}, ORT Entropy/Percentile at {ort_size} images only"
          f"{' (skipped on EfficientNet)' if args.skip_ort_entropy else ''}; {os.cpu_count()} CPUs", flush=True)

    def go(model_key, name, n, cfg):
        cfg.setdefault("threads", args.threads)
        print(f"  {model_key}: {name} @ {n} images ...", end=" ", flush=True)
        rec = spawn(cfg, args.child_timeout)
        rec.update(name=name, kind=cfg["kind"], images_requested=n)
        results[model_key].append(rec)
        print("ERROR " + rec["error"] if "error" in rec else
              f"{rec['seconds']:.2f} s, {rec.get('rss_mb', 0):.0f} MB ({rec['child_seconds']:.0f} s in all)",
              flush=True)

    if args.only in (None, "efficientnet"):
        ensure_efficientnet_data(args.calib, args.eval, sizes[-1], 512, args.work)
        common = {"model": args.model, "calib": args.calib, "eval": args.eval, "batch_size": bsz,
                  "eval_batches": eval_batches}
        for n in sizes:
            nb = n // bsz
            go("efficientnet", "fp32", n, dict(common, kind="fp32", batches=nb))
            for m in METHODS:
                go("efficientnet", f"int8batch/{m}", n, dict(common, kind="int8batch", method=m, batches=nb,
                                                             out=os.path.join(args.work, f"eff_i8_{m}_{n}")))
            # what the bias correction brings: the default without it
            go("efficientnet", "int8batch/auto-no-bias-corr", n,
               dict(common, kind="int8batch", method="auto", bias_correction=False, batches=nb,
                    out=os.path.join(args.work, f"eff_i8_auto_nobc_{n}")))
            for o in ORT_CONFIGS:
                if (o in ORT_HISTOGRAM and (args.skip_ort_entropy or n != ort_size)) or (args.quick and n != ort_size):
                    continue
                go("efficientnet", f"ort/{o}", n, dict(common, kind="ort", ort=o, batches=nb,
                                                       out=os.path.join(args.work, f"eff_ort_{o}_{n}")))
    if args.only in (None, "mnist"):
        lenet = os.path.join(ROOT, "int8batch", "data", "lenet.onnx")
        f = ensure_mnist_data(args.work, mnist_train, mnist_test)
        common = {"model": lenet, "calib": f["train"], "eval": f["test"], "batch_size": 50, "eval_batches": None}
        nb = mnist_train // 50
        go("mnist", "fp32", mnist_train, dict(common, kind="fp32", batches=nb))
        for m in METHODS:
            go("mnist", f"int8batch/{m}", mnist_train, dict(common, kind="int8batch", method=m, batches=nb,
                                                          out=os.path.join(args.work, f"mnist_i8_{m}")))
        for o in ORT_CONFIGS:
            go("mnist", f"ort/{o}", mnist_train, dict(common, kind="ort", ort=o, batches=nb,
                                                    out=os.path.join(args.work, f"mnist_ort_{o}")))

    if results["efficientnet"]:
        fp32 = {r["images_requested"]: r for r in results["efficientnet"] if r["name"] == "fp32" and "error" not in r}
        print_table(f"EfficientNet-Lite0: calibration on {'/'.join(map(str, sizes))} photos, INT8 vs FP32 on "
                    f"{64 if args.quick else 512} held-out photos (ORT Entropy/Percentile at {ort_size} only)",
                    results["efficientnet"], fp32, mnist=False)
        summarize_efficientnet(results["efficientnet"], sizes, ort_size, results["checks"])
    if results["mnist"]:
        fp32 = {r["images_requested"]: r for r in results["mnist"] if r["name"] == "fp32" and "error" not in r}
        print_table(f"LeNet / MNIST: calibration on {mnist_train} training images, top-1 on {mnist_test} test images",
                    results["mnist"], fp32, mnist=True)
        summarize_mnist(results["mnist"], results["checks"])
    total = time.perf_counter() - t_start
    results["meta"]["total_seconds"] = total
    passed = sum(c["pass"] for c in results["checks"])
    print(f"\n{passed}/{len(results['checks'])} targets met; total {total:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"wrote {args.json}")
    rows = results["efficientnet"] + results["mnist"]
    if rows and all("error" in r for r in rows):
        print(f"every configuration failed (first: {rows[0]['error']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
