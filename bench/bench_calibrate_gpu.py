"""Calibration on the GPU (issue 14): ``calibrate --device cuda`` against GPU FP32 inference and the CPU path.

Run on a machine with a GPU, onnxruntime-gpu and cuda-python.  Per zoo model
(``tools/make_zoo.py``'s index, ``.work/zoo/zoo.json``; resnet50 by default)
at ``--images`` (1024) calibration photos packed with the model's recipe in
files of 64 (``tools/make_corpus.py --split calib``, made when missing):

- ``gpu-fp32``: plain inference with the CUDA provider and IOBinding (input
  and output on the device, the batch already on the GPU), best of batch 32,
  64 and 128 (one warm-up run each; session creation not counted): the
  baseline of the ratios; and ``fresh``: the session's first pass at batch 64
  with its first run (the CUDA provider's set-up for a shape: 0.15-0.5 s on
  an H200, which every calibration pass pays once too), a second ratio;
- ``gpu/<method>``: ``calibrate(..., device="cuda")``, the pure methods
  (minmax, entropy, mse, percentile with ``keep_float=0,
  bias_correction=False``) and ``auto`` (the defaults: bias correction and
  the sensitivity pass on the GPU too).  ``total`` is the whole call (session
  creation, statistics, thresholds, every artefact written); ``pass`` is the
  statistics pass alone (``CalibrationResult.pass_seconds``);
- ``gpu/entropy@256`` and ``gpu/entropy@1GB``: the same at 256 images, and
  with ``device_budget`` 1 GB (sub-batches): peak device memory does not
  grow with the images and follows the setting;
- ``cpu/<method>`` (``--cpu-methods``, default entropy and auto): the CPU
  path on this machine's cores;
- per GPU row, the peak device memory above the level before the row
  (``cudaMemGetInfo`` polled every 2 ms), and for the CPU rows the cache
  compared with the GPU row's: identical lines and the largest relative amax
  difference (ONNX Runtime's CUDA and CPU kernels do not compute the same
  float activations bit for bit; on the same activations the statistics are
  identical, which tests/cuda/test_gpu_calibration.py checks).

Prints a table per model and the targets with PASS/FAIL; ``--json`` writes it all.
``--breakdown`` instead splits the entropy pass into ONNX Runtime runs (the
first three and the median), statistics, feeder waits and the rest, under
variants that remove one suspect at a time (memory poller, feeder strategy,
batches resident on the device, statistics skipped after the first batch).

    python bench/bench_calibrate_gpu.py --json gpu.json                  # resnet50
    python bench/bench_calibrate_gpu.py --zoo resnet50 densenet121 --cpu-methods entropy
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

PURE = ("minmax", "entropy", "mse", "percentile")
TARGETS = {"pure_pass": 2.0, "auto_pass": 4.0, "speedup": 20.0}


class PeakMemory:
    """Peak device memory in use (total - free) while the block runs, above the level at entry."""

    def __init__(self, every=0.002):
        from int8batch.cuda import runtime as cu
        self.cu, self.every = cu, every

    def __enter__(self):
        cu = self.cu
        cu.ensure_context()
        cu.device_synchronize()
        free, total = cu.mem_get_info()
        self.total, self.base, self.peak = total, total - free, total - free
        self.ctx, self.stop = cu.current_context(), threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        self.cu.set_current_context(self.ctx)
        while not self.stop.is_set():
            free, _ = self.cu.mem_get_info()
            self.peak = max(self.peak, self.total - free)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        free, _ = self.cu.mem_get_info()
        self.peak = max(self.peak, self.total - free)
        self.gb = (self.peak - self.base) / 1e9
        self.after_gb = (self.total - free - self.base) / 1e9


def gpu_fp32(model, folder, images, batches=(32, 64, 128), cold_batch=64):
    """Plain inference over ``images``, IOBinding, data on the device: ``(best seconds, its batch, cold seconds)``.

    ``best``: the best of ``batches``, each after a warm-up run; ``cold``: the
    session's very first pass at ``cold_batch`` (the calibration files' batch),
    its first run included (the CUDA provider's per-shape set-up and lazy
    initialisation, which a calibration pass pays too).
    """
    import onnxruntime as ort
    from int8batch.calib.ort_exec import CUDA_PROVIDER, _preload_cuda_libraries, providers_for
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.buffers import DeviceBuffer
    from int8batch.reader import BatchSet

    _preload_cuda_libraries(ort)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model, so, providers=providers_for("cuda"))
    assert CUDA_PROVIDER in s.get_providers()
    name, out = s.get_inputs()[0].name, s.get_outputs()[0].name
    with BatchSet(folder) as bs:
        data = np.ascontiguousarray(bs.images(0, images)[0])
    best = None
    with DeviceBuffer(data.nbytes) as buf:
        buf.copy_from_host(data.reshape(-1).view(np.uint8))
        per = data[0].nbytes
        cold = None
        for b in (cold_batch,) + tuple(batches):
            io = s.io_binding()

            def run(start, n):
                io.clear_binding_inputs()
                io.clear_binding_outputs()
                io.bind_input(name, "cuda", 0, np.float32, [n, *data.shape[1:]], buf.ptr + start * per)
                io.bind_output(out, "cuda", 0)
                s.run_with_iobinding(io)

            if cold is not None:
                run(0, b)                                    # warm-up (cuDNN plans for this shape)
            cu.device_synchronize()
            t = time.perf_counter()
            for start in range(0, images - images % b, b):
                run(start, b)
            io.synchronize_outputs()
            sec = (time.perf_counter() - t) * images / (images - images % b)
            if cold is None:
                cold = sec
            elif best is None or sec < best[0]:
                best = (sec, b)
    s = None
    return best[0], best[1], cold


def calib_row(model, folder, out, method, device, **kw):
    from int8batch.calib.api import calibrate
    pure = {"keep_float": 0, "bias_correction": False} if method in PURE else {}
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    res = calibrate(model, folder, out, method=method, device=device, **pure, **kw)
    return res, time.perf_counter() - t


def compare_caches(a, b):
    from int8batch.calib.cache import read_trt_cache
    sa, sb = read_trt_cache(a).scales, read_trt_cache(b).scales
    same = sum(1 for k in sa if k in sb and sa[k] == sb[k])
    worst = max((abs(sb[k] - sa[k]) / max(abs(sa[k]), 1e-30) for k in sa if k in sb), default=0.0)
    return same, len(sa), worst


def ensure_pack(entry, images, work, corpus):
    folder = os.path.join(work, f"gpu_{entry['name']}_{images}")
    from int8batch.reader import BatchSet
    try:
        with BatchSet(folder) as bs:
            if bs.num_images == images:
                return folder
    except Exception:  # noqa: BLE001 - not packed yet
        pass
    cmd = [sys.executable, "-m", "int8batch.cli.main", "pack", corpus, folder, *entry["pack_args"].split(),
           "-n", "64", "--limit", str(images), "--labels", "none", "--force", "-q"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return folder


def ensure_corpus(work, count):
    folder = os.path.join(work, f"corpus_calib{count}")
    have = len(os.listdir(folder)) if os.path.isdir(folder) else 0
    if have < count:
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_corpus.py"), folder, "--count", str(count),
                        "--split", "calib", "--workers", str(os.cpu_count() or 2), "--force"], check=True)
    return folder


def bench_model(entry, args, corpus):
    from int8batch.cuda import runtime as cu
    name, model = entry["name"], entry["path"]
    work = os.path.join(args.work, name)
    os.makedirs(work, exist_ok=True)
    folder = ensure_pack(entry, args.images, args.work, corpus)
    rows = {}
    fp32, batch, cold = gpu_fp32(model, folder, args.images)
    rows["gpu-fp32"] = {"seconds": fp32, "batch": batch, "cold_seconds": cold}
    print(f"{name}: GPU FP32 {args.images} images in {fp32:.3f} s (batch {batch}, "
          f"{args.images / fp32:.0f} images/s); from a fresh session at batch 64, first run included: "
          f"{cold:.3f} s", flush=True)
    for method in PURE + ("auto",):
        with PeakMemory() as pm:
            res, sec = calib_row(model, folder, os.path.join(work, f"gpu_{method}"), method, "cuda",
                                 device_feeder=args.feeder)
        rows[f"gpu/{method}"] = {"seconds": sec, "pass": res.pass_seconds, "ort": res.inference_seconds,
                                 "peak_gb": pm.gb, "left_gb": pm.after_gb, "executed_by": res.executed_by,
                                 "cache": res.paths["cache"]}
        print(f"  gpu/{method}: {sec:.2f} s total, pass {res.pass_seconds:.3f} s, peak {pm.gb:.2f} GB", flush=True)
    small = ensure_pack(entry, 256, args.work, corpus)
    for label, folder_, kw in (("gpu/entropy@256", small, {}),
                               ("gpu/entropy@1GB", folder, {"device_budget": 1 << 30})):
        with PeakMemory() as pm:
            res, sec = calib_row(model, folder_, os.path.join(work, label.replace("/", "_")), "entropy", "cuda", **kw)
        rows[label] = {"seconds": sec, "pass": res.pass_seconds, "peak_gb": pm.gb, "left_gb": pm.after_gb}
        print(f"  {label}: {sec:.2f} s, peak {pm.gb:.2f} GB", flush=True)
    for method in args.cpu_methods:
        res, sec = calib_row(model, folder, os.path.join(work, f"cpu_{method}"), method, "cpu")
        same, total, worst = compare_caches(rows[f"gpu/{method}"]["cache"], res.paths["cache"])
        rows[f"cpu/{method}"] = {"seconds": sec, "pass": res.pass_seconds, "cache_lines_equal": same,
                                 "cache_lines": total, "worst_rel_amax": worst}
        print(f"  cpu/{method}: {sec:.2f} s total, pass {res.pass_seconds:.2f} s; cache lines equal to the GPU's "
              f"{same}/{total}, largest relative amax difference {worst:.2e}", flush=True)
    cu.device_synchronize()
    return rows


class _Timers:
    """Wraps the GPU pass's steps with timers (``--breakdown``): ONNX Runtime runs, statistics, feeder waits."""

    def __init__(self, resident=None, stats_batches=None):
        from int8batch.calib import passes
        from int8batch.calib.collector import HistogramCollector
        from int8batch.cuda.kernels import DeviceTensor
        self.runs, self.stats, self.waits = [], [], []
        self.saved = [(passes.DevicePass, "_run", passes.DevicePass._run),
                      (passes.DevicePass, "_batches", passes.DevicePass._batches),
                      (HistogramCollector, "collect_many", HistogramCollector.collect_many)]
        run0, batches0, collect0 = passes.DevicePass._run, passes.DevicePass._batches, HistogramCollector.collect_many
        me = self

        def run(self_, data):
            t = time.perf_counter()
            out = run0(self_, data)
            me.runs.append((len(data), time.perf_counter() - t))
            return out

        def batches(self_):
            if resident is not None:
                buf, shape, count = resident
                per = int(np.prod(shape[1:])) * 4
                gen = (DeviceTensor(buf.ptr + i * shape[0] * per, shape) for i in range(count))
            else:
                gen = batches0(self_)
            while True:
                t = time.perf_counter()
                b = next(gen, None)
                me.waits.append(time.perf_counter() - t)
                if b is None:
                    return
                yield b

        def collect(self_, arrays):
            t = time.perf_counter()
            if stats_batches is None or len(me.stats) < stats_batches:
                collect0(self_, arrays)
            me.stats.append(time.perf_counter() - t)

        passes.DevicePass._run, passes.DevicePass._batches, HistogramCollector.collect_many = run, batches, collect

    def restore(self):
        for owner, name, f in self.saved:
            setattr(owner, name, f)

    def summary(self, pass_s):
        ms = [1e3 * t for _, t in self.runs]
        steady = sorted(ms[2:] or ms)
        ort, st, wt = sum(ms) / 1e3, sum(self.stats), sum(self.waits)
        return {"pass": pass_s, "runs": len(ms), "run_images": [n for n, _ in self.runs[:3]],
                "first_runs_ms": [round(v, 1) for v in ms[:3]], "median_run_ms": steady[len(steady) // 2] if steady else 0,
                "ort_s": ort, "stats_s": st, "feeder_wait_s": wt, "other_s": pass_s - ort - st - wt}


def breakdown(entry, args, corpus):
    """Where the time of a GPU entropy pass goes, under variants that remove one suspect at a time."""
    from int8batch.calib.api import calibrate
    from int8batch.cuda.buffers import DeviceBuffer
    from int8batch.reader import BatchSet
    name, model = entry["name"], entry["path"]
    folder = ensure_pack(entry, args.images, args.work, corpus)
    fp32, batch, cold = gpu_fp32(model, folder, args.images)
    print(f"{name}: GPU FP32 {args.images} images in {fp32:.3f} s (batch {batch}); fresh session at batch 64, "
          f"first run included: {cold:.3f} s", flush=True)
    with BatchSet(folder) as bs:
        data = np.ascontiguousarray(bs.images(0, args.images)[0])
        per_file = bs.per_file
    out = os.path.join(args.work, name, "breakdown")
    rows = {"gpu-fp32": {"seconds": fp32, "batch": batch, "cold_seconds": cold}}
    with DeviceBuffer(data.nbytes) as buf:
        buf.copy_from_host(data.reshape(-1).view(np.uint8))
        resident = (buf, (per_file,) + data.shape[1:], args.images // per_file)
        variants = (("feeder auto", {}, {}), ("feeder auto, memory poller on", {}, {"poll": True}),
                    ("feeder pinned", {}, {"feeder": "pinned"}), ("resident batches", {"resident": resident}, {}),
                    ("resident, statistics of the first batch only", {"resident": resident, "stats_batches": 1}, {}))
        for label, tk, opt in variants:
            for rep in range(2):
                timers = _Timers(**tk)
                try:
                    shutil.rmtree(out, ignore_errors=True)
                    kw = {"device_feeder": opt.get("feeder", "auto")}
                    if opt.get("poll"):
                        with PeakMemory():
                            res = calibrate(model, folder, out, method="entropy", device="cuda", keep_float=0,
                                            bias_correction=False, write_qdq=False, **kw)
                    else:
                        res = calibrate(model, folder, out, method="entropy", device="cuda", keep_float=0,
                                        bias_correction=False, write_qdq=False, **kw)
                finally:
                    timers.restore()
                row = timers.summary(res.pass_seconds)
            rows[label] = row
            print(f"  {label:46s} pass {row['pass']:.3f} s = {row['pass'] / fp32:5.2f}x FP32 ({row['pass'] / cold:.2f}x "
                  f"fresh) | ORT {row['ort_s']:.3f} s "
                  f"in {row['runs']} runs (first {row['first_runs_ms']} ms at {row['run_images']} images, median "
                  f"{row['median_run_ms']:.1f} ms) | statistics {row['stats_s']:.3f} s | feeder waits "
                  f"{row['feeder_wait_s']:.3f} s | other {row['other_s']:.3f} s", flush=True)
    return rows


def checks(name, rows):
    out = []
    fp = rows["gpu-fp32"]["seconds"]
    for key, r in rows.items():
        if not key.startswith("gpu/") or "@" in key:
            continue
        method = key[4:]
        target = TARGETS["auto_pass" if method == "auto" else "pure_pass"]
        cold = rows["gpu-fp32"].get("cold_seconds")
        out.append((f"{name} {key} pass <= {target:g}x GPU FP32", r["pass"] / fp <= target,
                    f"{r['pass'] / fp:.2f}x (total {r['seconds'] / fp:.1f}x; "
                    f"{r['pass'] / cold:.2f}x FP32 from a fresh session, first run included)"))
        cpu = rows.get(f"cpu/{method}")
        if cpu:
            out.append((f"{name} {method} >= {TARGETS['speedup']:g}x faster than the CPU path",
                        cpu["seconds"] / r["seconds"] >= TARGETS["speedup"],
                        f"{cpu['seconds'] / r['seconds']:.1f}x total, {cpu['pass'] / r['pass']:.1f}x pass"))
    big, small, low = rows["gpu/entropy"]["peak_gb"], rows["gpu/entropy@256"]["peak_gb"], rows["gpu/entropy@1GB"]["peak_gb"]
    out.append((f"{name} peak device memory independent of the images (256 vs all)", big <= 1.1 * small + 0.1,
                f"{small:.2f} GB vs {big:.2f} GB"))
    out.append((f"{name} device_budget 1 GB bounds the activations", low < big or big < 1.5,
                f"{low:.2f} GB vs {big:.2f} GB at the default budget"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", nargs="*", default=["resnet50"], help="zoo models (default resnet50)")
    ap.add_argument("--zoo-dir", default=os.path.join(ROOT, ".work", "zoo"))
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--cpu-methods", nargs="*", default=["entropy", "auto"])
    ap.add_argument("--corpus", help="folder of JPEGs (default: tools/make_corpus.py --split calib)")
    ap.add_argument("--work", default=os.path.join(ROOT, ".work", "bench_gpu"))
    from int8batch.cuda.feeder import STRATEGIES
    ap.add_argument("--feeder", default="auto", choices=STRATEGIES,
                    help="DeviceFeeder strategy of the GPU rows (calibrate's device_feeder)")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the time split of the entropy pass (ONNX Runtime runs, statistics, feeder waits) "
                         "under variants that remove one suspect at a time (second repetition of each reported)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from bench_calibrate import load_zoo_index
    from int8batch.calib.ort_exec import cuda_status
    from int8batch.cuda import runtime as cu
    ok, why = cuda_status()
    if not ok:
        raise SystemExit(f"no GPU calibration here: {why}")
    os.makedirs(args.work, exist_ok=True)
    corpus = args.corpus or ensure_corpus(args.work, args.images)
    cu.ensure_context()
    print(f"device: {cu.device_name()}, {os.cpu_count()} CPU cores", flush=True)
    results, verdicts = {}, []
    for entry in load_zoo_index(args.zoo_dir, args.zoo):
        if args.breakdown:
            results[entry["name"]] = breakdown(entry, args, corpus)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({"device": cu.device_name(), "images": args.images, "breakdown": results}, fh, indent=1)
            continue
        results[entry["name"]] = rows = bench_model(entry, args, corpus)
        verdicts += checks(entry["name"], rows)
        if args.json:   # after every model: a run stopped later keeps what it measured
            with open(args.json, "w") as fh:
                json.dump({"device": cu.device_name(), "images": args.images, "results": results}, fh, indent=1)
    if args.breakdown:
        return
    print("\n| model | row | total s | pass s | pass / GPU FP32 | pass / fresh FP32 | peak device GB | CPU / GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        fp, cold = rows["gpu-fp32"]["seconds"], rows["gpu-fp32"]["cold_seconds"]
        print(f"| {name} | gpu-fp32 (batch {rows['gpu-fp32']['batch']}; fresh, batch 64: {cold:.3f} s) | {fp:.3f} | "
              f"| 1.00 | {fp / cold:.2f} | | |")
        for key, r in rows.items():
            if key == "gpu-fp32":
                continue
            cpu = rows.get(f"cpu/{key[4:]}") if key.startswith("gpu/") else None
            sp = f"{cpu['seconds'] / r['seconds']:.1f}x" if cpu else ""
            peak = f"{r['peak_gb']:.2f}" if "peak_gb" in r else ""
            print(f"| {name} | {key} | {r['seconds']:.2f} | {r['pass']:.3f} | {r['pass'] / fp:.2f} | "
                  f"{r['pass'] / cold:.2f} | {peak} | {sp} |")
    print()
    for label, good, detail in verdicts:
        print(f"{'PASS' if good else 'FAIL'}  {label}: {detail}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": cu.device_name(), "images": args.images, "results": results,
                       "checks": [{"check": c, "pass": bool(g), "detail": d} for c, g, d in verdicts]}, fh, indent=1)


if __name__ == "__main__":
    main()
