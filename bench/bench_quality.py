"""INT8 quality that cannot be tuned to one corpus: every method on several independent photo sets.

The protocol (issue 16).  For each model and each calibration method:

1. calibrate on the FIRST ``--calib-images`` (256) images of a set A;
2. score INT8 vs FP32 (top-1 agreement, mean softmax KL(FP32 || INT8), the
   arithmetic of ``int8batch.calib.evaluate``) on images ``[256, 256 + 512)``
   of every set B: the same scoring images for every calibration, never used
   to calibrate anything;
3. report, per method, over the HELD-OUT pairs (A, B), A != B, both report
   sets: the mean and the worst top-1 agreement and the mean (and worst) KL;
   the same-set pairs (A, A) separately, and the CHOOSE pair separately.

Photo sets (``tools/make_corpus.py``; image ``i`` depends only on seed, split,
recipe and ``i``, so a set is the same files whatever its count).  The offline
pool is small: the 21 sample photos of scikit-image and scikit-learn (11
colour, 10 gray); the only other real photo found in the installed packages is
matplotlib's grace_hopper.jpg, too few to make a set of their own.  The sets
therefore differ by which photos, how they are cut and with which seed:

============  ======  =====================================================  ====================
set           role    recipe (make_corpus options)                           source photos
============  ======  =====================================================  ====================
choose-calib  choose  ``--split calib --seed 1`` (default augmentation)      calib half (11)
choose-eval   choose  ``--split eval --seed 2`` (default augmentation)       eval half (10)
strong-calib  report  ``--split calib --seed 3 --recipe strong``             calib half (11)
strong-eval   report  ``--split eval --seed 4 --recipe strong``              eval half (10)
plain         report  ``--split all --seed 5 --recipe plain``                all 21
============  ======  =====================================================  ====================

- ``choose-*``: the project's corpus, on which today's defaults (keep-float
  threshold, at most 3 kept tensors, the pixel-step input) were chosen
  (``bench/bench_calibrate.py`` calibrates on choose-calib and scores on
  choose-eval).  They are scored and printed, but never enter the reported
  means.
- ``strong-calib`` / ``strong-eval``: another augmentation (``--recipe strong``:
  RandomResizedCrop-like 8-100 % area crops with aspect changes, rotation
  +-20 deg, flips, brightness/contrast 0.6-1.4, saturation 0.4-1.6, hue
  +-0.06, gamma 0.7-1.4, blur, noise sigma 2-8, JPEG 50-95).  Their source
  photos are disjoint from each other: the pairs between them are the
  different-source-photos pairs.
- ``plain``: no augmentation (``--recipe plain``): centre crops of all 21 photos
  at several scales (35-100 %) and aspects (4:3, 3:4, 3:2, 1:1, 2:3), long side
  500, JPEG 90; no colour jitter, noise, rotation or flip.  The seed only
  orders the crops.

Every set has ``calib + eval`` (768) images, packed per model with the model's
recipe (``pack_args`` of ``.work/zoo/<model>.json``: EfficientNet-Lite0 224 from
256, Lite1 240 from 272, Lite2 260 from 292, all ``(pixel - 127) / 128``).

Methods: ``auto`` (the default, with its own keep-float rule), ``mse``,
``minmax``, ``percentile``, ``entropy`` (each with ``keep_float=0``: pure INT8;
bias correction on, as the defaults have it), variants of the default
(``auto-nearest``: nearest weight rounding; ``auto-uncentred``: no centring;
``auto-padded``: ``--centre-padded``; ``auto-fp32-bias``: the classic bias
correction from FP32 input means, the default before session 10), and baselines
on the same images:

- ``ort``: ONNX Runtime ``quantize_static``, QDQ, MinMax, symmetric QInt8
  activations (``ActivationSymmetric``), per-channel QInt8 weights: its
  TensorRT-deployable configuration (``CalibMaxIntermediateOutputs`` keeps the
  memory down; MinMax ranges merge exactly, so the scales are the same);
- ``modelopt`` / ``modelopt-max``: NVIDIA ModelOpt's ONNX PTQ
  (``modelopt.onnx.quantization.quantize``, int8, its default ``entropy``
  calibration / ``max``; CPU execution provider, FP32 high precision, batches
  of 64).  Needs ``pip install --no-deps nvidia-modelopt`` plus its ``[onnx]``
  extras (onnx-graphsurgeon, polygraphy, onnxslim, onnxconverter-common,
  cppimport, lief, nvidia-ml-py, onnxscript, onnx-ir: each ``--no-deps``);
  skipped with a note when it does not import.

and a reference that is not INT8 at all, to read the metric by:

- ``fp16-weights``: the FP32 model with every weight (float initializer of
  rank >= 2) rounded to float16 and back, activations untouched: a perturbation
  of about 2^-11 relative per weight, far below INT8's (the calibration set is
  not used).  Its agreement says how many of a set's images flip their top-1
  under almost no change of the network.
- ``int8-weights``: the default's Q/DQ model (``auto``, calibrated on set A)
  with every activation Q/DQ pair removed: INT8 weights (compensated rounding,
  bias correction, centring's biases) and float activations.  The ceiling of
  anything done to activations alone: a target above it needs better weights.

Models: EfficientNet-Lite0/1/2 (real ImageNet weights, ``.work/zoo``, made by
``tools/make_zoo.py``); ``--zoo`` adds the zoo's random-init models (seeded
init with BatchNorm statistics: agreement there measures numerical fidelity
only, not accuracy on anything; for ``yolo_csp`` the first output ``p3`` is
compared as ``evaluate`` does).  The issue's targets are checked for the
default method on the real-weight models: held-out mean agreement >= 96 %,
mean KL <= 0.005, worst pair >= 94 %, and better than ORT and ModelOpt.

Calibration seconds are recorded, but they come from whatever machine this
runs on (the development machine is a shared 2-core one): not benchmarks.

    python bench/bench_quality.py --json bench_quality.json                  # everything (long)
    python bench/bench_quality.py --models efficientnet_lite0 --methods auto mse ort
    python bench/bench_quality.py --quick                                    # smoke run (a few minutes)
    python bench/bench_quality.py --from-json a.json b.json --json all.json  # tables of several runs
"""
import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

# name -> (role, make_corpus options)
SETS = {
    "choose-calib": ("choose", ["--split", "calib", "--seed", "1"]),
    "choose-eval": ("choose", ["--split", "eval", "--seed", "2"]),
    "strong-calib": ("report", ["--split", "calib", "--seed", "3", "--recipe", "strong"]),
    "strong-eval": ("report", ["--split", "eval", "--seed", "4", "--recipe", "strong"]),
    "plain": ("report", ["--split", "all", "--seed", "5", "--recipe", "plain"]),
}
CHOOSE_PAIR = ("choose-calib", "choose-eval")
INT8BATCH_METHODS = ("auto", "auto-nearest", "auto-uncentred", "auto-padded", "auto-fp32-bias", "mse", "minmax",
                     "percentile", "entropy")
BASELINES = ("ort", "modelopt", "modelopt-max")
REFERENCES = ("fp16-weights", "int8-weights")
METHODS = INT8BATCH_METHODS + BASELINES + REFERENCES
DEFAULT_METHOD = "auto"
REAL_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TARGETS = {"mean_agreement": 0.96, "mean_kl": 0.005, "worst_agreement": 0.94}
BATCH = 64                 # images per batch file and per inference call
CLOSE_TOP2 = 0.05          # "top two classes within 0.05" for the FP32 confidence stats
CACHE_LIMIT = 100_000      # cache FP32 outputs up to this many values per image, else re-run FP32
ORT_BATCH = 16             # images per ONNX Runtime call of the ort baseline's calibration


# ----------------------------------------------------------------------------- data
def zoo_models(zoo_dir):
    """{name: entry of zoo.json, with 'path'} of the exported zoo."""
    path = os.path.join(zoo_dir, "zoo.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} is absent: run tools/make_zoo.py (see tools/README.md)")
    with open(path) as fh:
        zoo = json.load(fh)
    out = {}
    for m in zoo["models"]:
        m = dict(m, path=os.path.join(zoo_dir, m["onnx"]))
        out[m["name"]] = m
    return out


def ensure_corpus(work, name, count):
    """The JPEG folder of set ``name`` with at least ``count`` images (made when missing or short)."""
    folder = os.path.join(work, "jpeg", name)
    info = os.path.join(folder, "corpus.json")
    want = SETS[name][1]
    if os.path.exists(info):
        with open(info) as fh:
            have = json.load(fh)
        opts = dict(zip(want[::2], want[1::2]))
        same = (str(have.get("seed")) == opts["--seed"] and have.get("split") == opts["--split"]
                and have.get("recipe", "default") == opts.get("--recipe", "default"))
        if same and have.get("count", 0) >= count:
            return folder
    print(f"making set {name}: tools/make_corpus.py {' '.join(want)} --count {count}", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), folder, "--count", str(count),
                    *want, "--force"], check=True)
    return folder


def ensure_packed(work, name, jpeg, pack_args, count):
    """The batch folder of set ``name`` packed with ``pack_args`` (at least ``count`` images)."""
    from int8batch.reader import BatchSet
    key = "".join(c if c.isalnum() else "_" for c in pack_args).strip("_") or "default"
    folder = os.path.join(work, "packed", key, name)
    stamp = os.path.join(folder, "bench_quality.json")
    try:
        with open(stamp) as fh:
            ok = json.load(fh) == {"pack_args": pack_args, "corpus": _corpus_stamp(jpeg)}
        with BatchSet(folder) as bs:
            ok = ok and bs.num_images >= count and bs.per_file == BATCH
    except Exception:  # noqa: BLE001 - missing or unreadable: pack again
        ok = False
    if not ok:
        print(f"packing {name} ({pack_args}) into {folder} ...", flush=True)
        subprocess.run(["int8batch", "pack", jpeg, folder, "-n", str(BATCH), "--labels", "none", "--force", "-q",
                        *shlex.split(pack_args)], check=True)
        with open(stamp, "w") as fh:
            json.dump({"pack_args": pack_args, "corpus": _corpus_stamp(jpeg)}, fh)
    return folder


def _corpus_stamp(jpeg):
    with open(os.path.join(jpeg, "corpus.json")) as fh:
        c = json.load(fh)
    return {k: c.get(k) for k in ("seed", "split", "recipe", "count")}


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """FP32 outputs of one model on the scoring window of each set, and INT8 scoring against them."""

    def __init__(self, model, folders, first, batches, threads):
        self.model, self.folders, self.first, self.batches, self.threads = model, folders, first, batches, threads
        self.fp32 = {}        # set -> list of FP32 output batches (None: too large to keep)
        self.stats = {}

    def _windows(self, folder):
        from int8batch.reader import BatchSet
        with BatchSet(folder) as bs:
            for b in bs.batches(BATCH, self.first, self.batches):
                yield b.data

    def prepare(self):
        from int8batch.calib.evaluate import softmax
        from int8batch.calib.ort_exec import ModelRunner
        runner = ModelRunner(self.model, None, self.threads)
        for name, folder in self.folders.items():
            t = time.perf_counter()
            outs, top1, close, n, keep = [], 0.0, 0, 0, True
            for data in self._windows(folder):
                y = np.asarray(runner.run(data))
                y2 = y.reshape(y.shape[0], -1)
                if y.ndim == 2:    # classifier: confidence of the FP32 model
                    p = softmax(y2)
                    top = np.sort(p, axis=1)[:, -2:]
                    top1 += float(top[:, 1].sum())
                    close += int((top[:, 1] - top[:, 0] < CLOSE_TOP2).sum())
                n += y.shape[0]
                keep = keep and y2.shape[1] <= CACHE_LIMIT
                outs.append(y if keep else None)
            self.fp32[name] = outs if keep else None
            self.stats[name] = {"images": n, "fp32_seconds": time.perf_counter() - t,
                                "mean_top1_prob": top1 / n if y.ndim == 2 else None,
                                "frac_top2_within_0.05": close / n if y.ndim == 2 else None}

    def score(self, int8_model, name):
        """EvalResult-like dict of ``int8_model`` vs FP32 on set ``name``'s scoring window."""
        from int8batch.calib.evaluate import Comparison, evaluate
        t = time.perf_counter()
        if self.fp32.get(name) is None:
            r = evaluate(self.model, int8_model, self.folders[name], BATCH, self.batches, first=self.first,
                         intra_op_threads=self.threads)
        else:
            from int8batch.calib.ort_exec import ModelRunner
            q = ModelRunner(int8_model, None, self.threads)
            acc = Comparison("auto", 5, 0)
            for y0, data in zip(self.fp32[name], self._windows(self.folders[name])):
                acc.add(y0, np.asarray(q.run(data)), np.full(data.shape[0], -1.0))
            r = acc.finish()
        return {"agreement": r.top1_agreement, "kl": r.mean_kl, "agreed": r.agreed, "images": r.images,
                "max_abs_diff": r.max_abs_diff, "score_seconds": time.perf_counter() - t}


# ----------------------------------------------------------------------------- quantizers
def quantize_int8batch(model, calib_folder, out, method, calib_batches, threads):
    from int8batch.calib.api import calibrate
    # auto-nearest: the default with nearest weight rounding instead of the error-compensating one;
    # auto-uncentred: the default without centring its bounded activations (session 8)
    rounding = "nearest" if method == "auto-nearest" else None
    # auto-padded: the default with --centre-padded (depthwise inputs centred too, explicit Pad nodes)
    centre = False if method == "auto-uncentred" else None
    padded = True if method == "auto-padded" else None
    # auto-fp32-bias: the default with the classic bias correction (FP32 input means; the default before session 10)
    bias_inputs = "fp32" if method == "auto-fp32-bias" else None
    method = "auto" if method in ("auto-nearest", "auto-uncentred", "auto-padded", "auto-fp32-bias") else method
    keep = None if method == "auto" else 0
    res = calibrate(model, calib_folder, out=out, method=method, batch_size=BATCH, max_batches=calib_batches,
                    keep_float=keep, intra_op_threads=threads, weight_rounding=rounding, device="cpu",
                    centre=centre, centre_padded=padded, bias_inputs=bias_inputs)
    return res.paths["qdq"], {"kept_float": list(getattr(res, "kept_float", None) or []),
                              "images": getattr(res, "images", None)}


def _input_name(model):
    import onnx
    m = onnx.load(model, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits][0]


def quantize_ort(model, calib_folder, out, calib_batches, threads):
    import onnxruntime.quantization as oq
    from int8batch.reader import BatchSet
    name = _input_name(model)

    class Reader(oq.CalibrationDataReader):
        def __init__(self, bs):
            # the same images in calls of ORT_BATCH: min/max merge exactly, and ONNX Runtime's
            # augmented model (every tensor an output) peaks at 7 GB on 64 EfficientNet images
            self._it = (b.data[i:i + ORT_BATCH] for b in bs.batches(BATCH, 0, calib_batches)
                        for i in range(0, b.data.shape[0], ORT_BATCH))

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {name: np.ascontiguousarray(b)}

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.qdq.onnx")
    with BatchSet(calib_folder) as bs:
        oq.quantize_static(model, path, Reader(bs), quant_format=oq.QuantFormat.QDQ, per_channel=True,
                           activation_type=oq.QuantType.QInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax,
                           extra_options={"ActivationSymmetric": True})
    return path, {}


def modelopt_available():
    try:
        import importlib
        importlib.import_module("modelopt.onnx.quantization")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"ModelOpt does not import: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def quantize_modelopt(model, calib_folder, out, calib_batches, how):
    import logging

    import modelopt.onnx.quantization as mq
    from int8batch.reader import BatchSet
    name = _input_name(model)
    with BatchSet(calib_folder) as bs:
        data = np.concatenate([b.data for b in bs.batches(BATCH, 0, calib_batches)])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.qdq.onnx")
    shape = "x".join(str(d) for d in (BATCH,) + tuple(data.shape[1:]))
    logging.getLogger("modelopt").setLevel(logging.ERROR)
    # ModelOpt and ONNX Runtime's calibrators print progress bars: into a log file
    with open(os.path.join(out, "modelopt.log"), "w") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        mq.quantize(model, quantize_mode="int8", calibration_data={name: data}, calibration_method=how,
                    calibration_shapes=f"{name}:{shape}", calibration_eps=["cpu"], output_path=path,
                    high_precision_dtype="fp32", log_level="ERROR")
    return path, {}


def fp16_weights(model, out):
    """The model with its weights (float32 initializers of rank >= 2) rounded to float16 and back."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(model)
    for k, t in enumerate(m.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2:
            w = numpy_helper.to_array(t)
            m.graph.initializer[k].CopyFrom(numpy_helper.from_array(w.astype(np.float16).astype(np.float32), t.name))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.fp16w.onnx")
    onnx.save(m, path)
    return path, {}


def int8_weights_only(qdq_path, out):
    """``qdq_path`` with every activation Q/DQ pair removed (its readers take the float tensor): weights stay int8."""
    import onnx
    m = onnx.load(qdq_path)
    inits = {t.name for t in m.graph.initializer}
    quant = {n.output[0]: n for n in m.graph.node if n.op_type == "QuantizeLinear"}
    source, drop = {}, set()
    for n in m.graph.node:
        q = quant.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.input[0] not in inits:
            source[n.output[0]] = q.input[0]
            drop.update((n.output[0], q.output[0]))
    keep = [n for n in m.graph.node if n.output[0] not in drop]
    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = source.get(x, x)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    path = os.path.join(out, "model.int8w.onnx")
    onnx.save(m, path)
    return path, {"activation_pairs_removed": len(source)}


def quantize(method, model, calib_folder, out, calib_batches, threads):
    if method == "fp16-weights":
        return fp16_weights(model, out)
    if method == "int8-weights":
        path, info = quantize_int8batch(model, calib_folder, out, "auto", calib_batches, threads)
        return int8_weights_only(path, out)[0], info
    if method in INT8BATCH_METHODS:
        return quantize_int8batch(model, calib_folder, out, method, calib_batches, threads)
    if method == "ort":
        if "modelopt" in sys.modules:
            # importing ModelOpt patches ONNX Runtime's calibrators in this process (its ort_patching):
            # after a ModelOpt row, quantize_static runs in a fresh process
            import multiprocessing
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                return pool.apply(quantize_ort, (model, calib_folder, out, calib_batches, threads))
        return quantize_ort(model, calib_folder, out, calib_batches, threads)
    return quantize_modelopt(model, calib_folder, out, calib_batches,
                             "max" if method == "modelopt-max" else "entropy")


# ----------------------------------------------------------------------------- summary
def wanted_pairs(calib_on, sets, mode):
    """(calib set, [scored sets]) in run order.

    ``protocol``: a report set is scored on every report set (held-out and same-set pairs),
    choose-calib on choose-eval only (the choose pair), choose-eval calibrates nothing;
    ``all``: every calibration set on every set.
    """
    if mode == "all":
        return [(a, list(sets)) for a in calib_on]
    report = [s for s in sets if SETS[s][0] == "report"]
    out = []
    for a in calib_on:
        if SETS[a][0] == "report":
            out.append((a, report))
        elif a == CHOOSE_PAIR[0] and CHOOSE_PAIR[1] in sets:
            out.append((a, [CHOOSE_PAIR[1]]))
    return [(a, b) for a, b in out if b]


def summarize(pairs, sets):
    """Held-out / same-set / choose-pair figures of one (model, method) from its pair records."""
    report = [s for s in sets if SETS[s][0] == "report"]
    ok = [p for p in pairs if "error" not in p]
    held = [p for p in ok if p["calib"] in report and p["score"] in report and p["calib"] != p["score"]]
    same = [p for p in ok if p["calib"] == p["score"] and p["calib"] in report]
    choose = [p for p in ok if (p["calib"], p["score"]) == CHOOSE_PAIR]
    out = {"held_out_pairs": len(held)}
    if held:
        worst = min(held, key=lambda p: p["agreement"])
        out.update(mean_agreement=float(np.mean([p["agreement"] for p in held])),
                   worst_agreement=worst["agreement"], worst_pair=[worst["calib"], worst["score"]],
                   mean_kl=float(np.mean([p["kl"] for p in held])), worst_kl=max(p["kl"] for p in held))
    if same:
        out.update(same_set_mean_agreement=float(np.mean([p["agreement"] for p in same])),
                   same_set_mean_kl=float(np.mean([p["kl"] for p in same])))
    if choose:
        out.update(choose_agreement=choose[0]["agreement"], choose_kl=choose[0]["kl"])
    secs = list({p["calib"]: p["calib_seconds"] for p in pairs if "calib_seconds" in p}.values())
    if secs:
        out["calib_seconds_mean"] = float(np.mean(secs))
    return out


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def _kl(v):
    return "-" if v is None else f"{v:.4f}"


def print_model(name, rec):
    print(f"\n== {name} ({'real ImageNet weights' if rec['real_weights'] else 'random init: fidelity only'}) ==")
    print("FP32 confidence on each set's scoring images: mean top-1 prob / fraction with top two within 0.05")
    for s, st in rec["fp32"].items():
        if st.get("mean_top1_prob") is not None:
            print(f"  {s:13s} ({SETS[s][0]}): {st['mean_top1_prob']:.3f} / {100 * st['frac_top2_within_0.05']:.1f} %")
    head = ["method", "held-out mean %", "worst % (calib->score)", "mean KL", "worst KL", "same-set %",
            "same KL", "choose pair % / KL", "calib s*"]
    rows = [head]
    for m, mr in rec["methods"].items():
        if "skipped" in mr:
            rows.append([m, "skipped: " + mr["skipped"]])
            continue
        s = mr["summary"]
        worst = (f"{_pct(s.get('worst_agreement'))} ({s['worst_pair'][0]}->{s['worst_pair'][1]})"
                 if "worst_pair" in s else "-")
        rows.append([m, _pct(s.get("mean_agreement")), worst, _kl(s.get("mean_kl")), _kl(s.get("worst_kl")),
                     _pct(s.get("same_set_mean_agreement")), _kl(s.get("same_set_mean_kl")),
                     f"{_pct(s.get('choose_agreement'))} / {_kl(s.get('choose_kl'))}",
                     "-" if "calib_seconds_mean" not in s else f"{s['calib_seconds_mean']:.1f}"])
        errs = [p for p in mr["pairs"] if "error" in p]
        if errs:
            rows.append(["", f"{len(errs)} error(s): {errs[0]['error'][:100]}"])
    widths = [max(len(r[i]) for r in rows if i < len(r) and len(r) == len(head)) for i in range(len(head))]
    for r in rows:
        if len(r) != len(head):
            print("  " + "  ".join(r))
        else:
            print("  " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    print("  (* calibration seconds on this machine, shared: not a benchmark)")
    # the pair matrix
    for m, mr in rec["methods"].items():
        if "pairs" not in mr:
            continue
        cells = {(p["calib"], p["score"]): p for p in mr["pairs"] if "error" not in p}
        calibs = sorted({p["calib"] for p in mr["pairs"]}, key=list(SETS).index)
        scores = sorted({p["score"] for p in mr["pairs"]}, key=list(SETS).index)
        print(f"  {m}: agreement % (KL) calibrated on row, scored on column")
        print("    " + " " * 13 + "".join(f"{s:>22s}" for s in scores))
        for c in calibs:
            line = "".join(f"{_pct(cells[(c, s)]['agreement']) + ' (' + _kl(cells[(c, s)]['kl']) + ')':>22s}"
                           if (c, s) in cells else f"{'-':>22s}" for s in scores)
            print(f"    {c:13s}" + line)


def check_targets(results):
    checks = []
    for name, rec in results.items():
        if not rec["real_weights"] or DEFAULT_METHOD not in rec["methods"]:
            continue
        s = rec["methods"][DEFAULT_METHOD].get("summary", {})
        if "mean_agreement" not in s:
            continue
        checks += [
            (f"{name}: {DEFAULT_METHOD} held-out mean agreement >= 96 %", s["mean_agreement"] >= TARGETS["mean_agreement"],
             f"{100 * s['mean_agreement']:.2f} %"),
            (f"{name}: {DEFAULT_METHOD} held-out mean KL <= 0.005", s["mean_kl"] <= TARGETS["mean_kl"],
             f"{s['mean_kl']:.4f}"),
            (f"{name}: {DEFAULT_METHOD} worst held-out pair >= 94 %", s["worst_agreement"] >= TARGETS["worst_agreement"],
             f"{100 * s['worst_agreement']:.2f} % ({s['worst_pair'][0]} -> {s['worst_pair'][1]})"),
        ]
        for base in BASELINES:
            b = rec["methods"].get(base, {}).get("summary", {})
            if "mean_agreement" in b:
                better = s["mean_agreement"] > b["mean_agreement"] and s["mean_kl"] < b["mean_kl"]
                checks.append((f"{name}: {DEFAULT_METHOD} better than {base} (mean agreement and KL)", better,
                               f"{100 * s['mean_agreement']:.2f} % / {s['mean_kl']:.4f} vs "
                               f"{100 * b['mean_agreement']:.2f} % / {b['mean_kl']:.4f}"))
    if checks:
        print("\ntargets of issue 16 (held-out pairs only):")
    for label, ok, detail in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}")
    return [{"target": label, "pass": bool(ok), "detail": detail} for label, ok, detail in checks]


# ----------------------------------------------------------------------------- main
def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(REAL_MODELS), help="zoo names (default: the real-weight ones)")
    ap.add_argument("--zoo", action="store_true", help="also every random-init model of the zoo (fidelity only)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                    help=f"of {', '.join(METHODS)} (default all)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), metavar="SET",
                    help=f"of {', '.join(SETS)} (default all); each is calibrated on and scored on")
    ap.add_argument("--calib-on", nargs="+", choices=list(SETS), metavar="SET",
                    help="calibrate on these sets only (default: every set of --sets)")
    ap.add_argument("--pairs", choices=("protocol", "all"), default="protocol",
                    help="protocol (default): report sets on report sets, plus the choose pair; "
                         "all: every calibration set scored on every set")
    ap.add_argument("--from-json", nargs="+", metavar="JSON",
                    help="measure nothing: merge these --json files (later ones win per model and method), "
                         "print the tables and the targets")
    ap.add_argument("--calib-images", type=int, default=256, help="first N images of a set (multiple of 64)")
    ap.add_argument("--eval-images", type=int, default=512, help="scored images per set (multiple of 64)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 + 64 images, EfficientNet-Lite0, auto and ort unless given")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--work", default=os.path.join(ROOT, ".work", "bench_quality"), help="corpora, packs, artefacts")
    ap.add_argument("--zoo-dir", default=os.path.join(ROOT, ".work", "zoo"))
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    args = ap.parse_args(argv)
    if args.from_json:
        return merge(args.from_json, args.json)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        if "--calib-images" not in given:
            args.calib_images = 64
        if "--eval-images" not in given:
            args.eval_images = 64
        if "--models" not in given:
            args.models = ["efficientnet_lite0"]
        if "--methods" not in given:
            args.methods = ["auto", "ort"]
    for opt in ("calib_images", "eval_images"):
        v = getattr(args, opt)
        if v < BATCH or v % BATCH:
            ap.error(f"--{opt.replace('_', '-')} must be a positive multiple of {BATCH}")
    calib_on = args.calib_on or args.sets
    if not set(calib_on) <= set(args.sets):
        ap.error("--calib-on must name sets of --sets")

    zoo = zoo_models(args.zoo_dir)
    names = list(args.models)
    if args.zoo:
        names += [n for n, m in zoo.items() if not m["real_weights"] and n not in names]
    for n in names:
        if n not in zoo:
            ap.error(f"no model {n!r} in {args.zoo_dir}/zoo.json ({', '.join(zoo)})")
    count = args.calib_images + args.eval_images
    calib_batches, eval_batches = args.calib_images // BATCH, args.eval_images // BATCH
    mo_note = modelopt_available() if any(m.startswith("modelopt") for m in args.methods) else None
    if mo_note:
        print(f"note: {mo_note}; the modelopt rows are skipped", flush=True)

    t_all = time.perf_counter()
    jpeg = {s: ensure_corpus(args.work, s, count) for s in args.sets}
    results = {}
    for name in names:
        entry = zoo[name]
        model = entry["path"]
        folders = {s: ensure_packed(args.work, s, jpeg[s], entry["pack_args"], count) for s in args.sets}
        print(f"\n{name}: FP32 on {len(folders)} sets x {args.eval_images} images ...", flush=True)
        scorer = Scorer(model, folders, calib_batches, eval_batches, args.threads)
        scorer.prepare()
        rec = {"real_weights": bool(entry["real_weights"]), "pack_args": entry["pack_args"], "fp32": scorer.stats,
               "methods": {}}
        results[name] = rec
        for method in args.methods:
            if method.startswith("modelopt") and mo_note:
                rec["methods"][method] = {"skipped": mo_note}
                continue
            pairs = []
            for a, scored in wanted_pairs(calib_on, args.sets, args.pairs):
                out = os.path.join(args.work, "runs", f"calib{args.calib_images}", name, method, a)
                t = time.perf_counter()
                try:
                    qdq, extra = quantize(method, model, folders[a], out, calib_batches, args.threads)
                except Exception as exc:  # noqa: BLE001 - record and go on
                    traceback.print_exc()
                    pairs += [{"calib": a, "score": b, "error": f"{type(exc).__name__}: {exc}"} for b in scored]
                    continue
                secs = time.perf_counter() - t
                for b in scored:
                    try:
                        r = scorer.score(qdq, b)
                    except Exception as exc:  # noqa: BLE001
                        traceback.print_exc()
                        r = {"error": f"{type(exc).__name__}: {exc}"}
                    pairs.append({"calib": a, "score": b, "calib_seconds": secs, **extra, **r})
                    if "error" not in r:
                        print(f"  {name} {method:12s} {a:>13s} -> {b:13s} agreement {100 * r['agreement']:6.2f} %"
                              f"  KL {r['kl']:.4f}  (calib {secs:.1f} s, shared machine)", flush=True)
            rec["methods"][method] = {"pairs": pairs, "summary": summarize(pairs, args.sets)}
        print_model(name, rec)
        if args.json:     # write as we go: a long run that stops keeps what it measured
            _write(args, names, results, time.perf_counter() - t_all, None)
    checks = check_targets(results)
    total = time.perf_counter() - t_all
    print(f"\ntotal {total / 60:.1f} min (shared machine)")
    if args.json:
        _write(args, names, results, total, checks)
        print(f"wrote {args.json}")
    return 0


def merge(paths, out_json):
    """Print the tables and targets of several runs' JSON files (later files win per model and method)."""
    results, runs = {}, []
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        runs.append({"file": path, "date": run.get("date"), "protocol": run.get("protocol"),
                     "seconds": run.get("seconds"), "environment": run.get("environment")})
        for name, rec in run["results"].items():
            have = results.setdefault(name, {k: v for k, v in rec.items() if k != "methods"} | {"methods": {}})
            have["fp32"].update(rec["fp32"])
            have["methods"].update(rec["methods"])
    for name, rec in results.items():
        print_model(name, rec)
    checks = check_targets(results)
    if out_json:
        tmp = out_json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"made_by": "bench/bench_quality.py --from-json", "runs": runs,
                       "sets": {s: {"role": r, "make_corpus": o} for s, (r, o) in SETS.items()},
                       "results": results, "targets": checks}, fh, indent=1)
        os.replace(tmp, out_json)
        print(f"wrote {out_json}")
    return 0


def _write(args, names, results, seconds, checks):
    import onnxruntime
    info = {
        "made_by": "bench/bench_quality.py", "date": time.strftime("%Y-%m-%d %H:%M"),
        "protocol": {"calib_images": args.calib_images, "eval_images": args.eval_images,
                     "scoring_window": [args.calib_images, args.calib_images + args.eval_images],
                     "batch": BATCH, "held_out": "pairs (A, B), A != B, both of role report",
                     "choose_pair": list(CHOOSE_PAIR)},
        "sets": {s: {"role": SETS[s][0], "make_corpus": SETS[s][1]} for s in args.sets},
        "calib_on": args.calib_on or args.sets, "pairs": args.pairs, "methods": args.methods, "models": names,
        "environment": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "cpus": os.cpu_count(), "machine": "shared: timings are not benchmarks",
                        "git_head": _git("rev-parse", "HEAD"), "int8batch_changes": _git("status", "--short", "int8batch")},
        "seconds": seconds, "results": results, "targets": checks,
    }
    try:
        import modelopt
        info["environment"]["modelopt"] = modelopt.__version__
    except Exception:  # noqa: BLE001
        pass
    tmp = args.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh, indent=1)
    os.replace(tmp, args.json)


if __name__ == "__main__":
    sys.exit(main())
