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
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

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
    from int8batch.calib.evaluate import evaluate
    t = time.perf_counter()
    r = evaluate(cfg["model"], int8_model, cfg["eval"], max_batches=cfg.get("eval_batches"),
                 intra_op_threads=cfg.get("threads"))
    return {"agreement": r.top1_agreement, "kl": r.mean_kl, "top1_fp32": r.top1_fp32, "top1_int8": r.top1_int8,
            "eval_images": r.images, "eval_seconds": time.perf_counter() - t}


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

    from int8batch.calib.api import calibrate
    t = time.perf_counter()
    res = calibrate(cfg["model"], cfg["calib"], out=cfg["out"], method=cfg["method"],
                    batch_size=cfg["batch_size"], max_batches=cfg["batches"], intra_op_threads=cfg.get("threads"),
                    bias_correction=cfg.get("bias_correction", True))
    seconds = time.perf_counter() - t
    rec = {"seconds": seconds, "inference_seconds": res.inference_seconds, "images": res.images,
           "tensors": len(res.amax), **_peak_rss()}
    rec.update(_evaluate(cfg, res.paths["qdq"]))
    return rec


def _ort(cfg):
    import onnxruntime.quantization as oq
    oqq = sys.modules["onnxruntime.quantization.quantize"]   # the package's ``quantize`` name is a function
    from int8batch.onnx import graph as G
    from int8batch.reader import BatchSet
    method, act, extra, bins = ORT_CONFIGS[cfg["ort"]]
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


def run_one(cfg):
    """Child entry point: run one configuration, print one JSON line."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    fn = {"fp32": _fp32, "int8batch": _int8batch, "ort": _ort}[cfg["kind"]]
    rec = fn(cfg)
    print(MARK + json.dumps(rec), flush=True)


# ----------------------------------------------------------------------------- parent side
def spawn(cfg, timeout):
    """Run ``cfg`` in a fresh interpreter; return its record (with ``error`` on failure)."""
    t = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(cfg)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 32/64 calibration, 64 eval images")
    ap.add_argument("--skip-ort-entropy", action="store_true",
                    help="skip ORT Entropy (128 and 2048 bins) and Percentile on EfficientNet (16 GB, minutes each)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--model", default=os.path.join(ROOT, ".work", "models", "efficientnet_lite0.onnx"))
    ap.add_argument("--calib", default=os.path.join(ROOT, ".work", "b_calib"), help="1024 calib photos, packed")
    ap.add_argument("--eval", default=os.path.join(ROOT, ".work", "b_eval"), help="512 eval photos, packed")
    ap.add_argument("--work", default=os.path.join(ROOT, ".work", "bench_calibrate"), help="outputs, MNIST packs")
    ap.add_argument("--batch-size", type=int, default=64, help="images per inference batch (every tool)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ORT intra-op threads of int8batch, FP32 and evaluation sessions (quantize_static has "
                         "no such option: leave unset for a fair comparison)")
    ap.add_argument("--only", choices=("efficientnet", "mnist"), help="one model only")
    ap.add_argument("--child-timeout", type=int, default=1800)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        run_one(json.loads(args.one))
        return 0

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
