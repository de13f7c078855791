"""The first run of a new ONNX Runtime CUDA session: what it costs, and whether a provider option changes it.

Run on a machine with a GPU and ``onnxruntime-gpu``.  Every calibration pass
on the GPU opens a session that returns every activation, and its first run
pays the CUDA provider's set-up (cuDNN for each convolution) before any
image counts.  For each model and each variant of the provider's options
(int8batch's own ``CUDA_OPTIONS`` as "current", then one change each), two
sessions are opened in turn: "all outputs" (the calibration session) and
"plain" (FP32 inference, the model's first output only).  Each runs one
batch of ``--batch`` random images already on the device 8 times: the
session creation, the first run and the median of the other 7 are printed.
The process runs one session first so that CUDA's own start-up is not in any
row.  ``--profile`` prints ONNX Runtime's profile of the first two runs of
the calibration session, by operator type.

    python bench/bench_gpu_first_run.py .work/zoo/mobilenet_v3_large.onnx .work/zoo/resnet50.onnx
    python bench/bench_gpu_first_run.py --profile .work/zoo/mobilenet_v3_large.onnx
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

import numpy as np  # noqa: E402

VARIANTS = {
    "current": {},
    "pow2-arena": {"arena_extend_strategy": "kNextPowerOfTwo"},
    "algo-DEFAULT": {"cudnn_conv_algo_search": "DEFAULT"},
    "no-max-workspace": {"cudnn_conv_use_max_workspace": "0"},
    "EXHAUSTIVE": {"cudnn_conv_algo_search": "EXHAUSTIVE"},
}


def _runner(path, all_outputs, batch, options):
    from int8batch.calib import ort_exec as E
    from int8batch.onnx.facts import ModelFacts
    facts = ModelFacts.of(path)
    names = list(facts.quantizable) if all_outputs else [facts.model.graph.output[0].name]
    dims = (batch,) + tuple(facts.input.shape[1:])
    saved, E.CUDA_OPTIONS = E.CUDA_OPTIONS, options
    try:
        t = time.perf_counter()
        r = E.DeviceActivationRunner(facts.model, names, batch_dims=dims, types=facts.types)
        return r, time.perf_counter() - t, dims
    finally:
        E.CUDA_OPTIONS = saved


def one(path, options, all_outputs, batch, runs=8):
    from int8batch.cuda.buffers import DeviceBuffer
    from int8batch.cuda.kernels import DeviceTensor
    r, created, dims = _runner(path, all_outputs, batch, options)
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    buf = DeviceBuffer(x.nbytes)
    try:
        buf.copy_from_host(x.reshape(-1).view(np.uint8))
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            r.run_device(DeviceTensor(buf.ptr, x.shape))
            times.append(time.perf_counter() - t)
    finally:
        r.close()
        buf.close()
    return created, times[0], float(np.median(times[1:]))


def profile(path, batch):
    """ONNX Runtime's profile of the calibration session's first runs, node time by operator type."""
    import onnxruntime as ort
    from int8batch.calib import ort_exec as E
    from int8batch.cuda.buffers import DeviceBuffer
    from int8batch.cuda.kernels import DeviceTensor
    base = ort.SessionOptions

    class Profiled(base):
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = os.path.join(tempfile.gettempdir(), "int8batch_first_run")

    ort.SessionOptions = Profiled
    try:
        from int8batch.onnx.facts import ModelFacts
        facts = ModelFacts.of(path)
        dims = (batch,) + tuple(facts.input.shape[1:])
        r = E.DeviceActivationRunner(facts.model, list(facts.quantizable), batch_dims=dims, types=facts.types)
    finally:
        ort.SessionOptions = base
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    buf = DeviceBuffer(x.nbytes)
    try:
        buf.copy_from_host(x.reshape(-1).view(np.uint8))
        for _ in range(3):
            r.run_device(DeviceTensor(buf.ptr, x.shape))
        prof = r._session.end_profiling()
    finally:
        r.close()
        buf.close()
    with open(prof) as f:
        events = json.load(f)
    os.unlink(prof)
    runs = [e for e in events if e.get("name") == "model_run"]
    print(f"{os.path.basename(path)}: model_run ms {[round(e['dur'] / 1e3, 1) for e in runs]}")
    for k, run in enumerate(runs[:2]):
        lo, hi = run["ts"], run["ts"] + run["dur"]
        by = {}
        for e in events:
            if e.get("cat") == "Node" and lo <= e["ts"] <= hi and e["name"].endswith("_kernel_time"):
                op = e.get("args", {}).get("op_name", "?")
                by[op] = by.get(op, 0) + e["dur"]
        top = sorted(by.items(), key=lambda kv: -kv[1])[:6]
        print(f"  run {k}: node time {sum(by.values()) / 1e3:.1f} of {run['dur'] / 1e3:.1f} ms: "
              + ", ".join(f"{op} {d / 1e3:.1f}" for op, d in top))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", action="store_true", help="ONNX Runtime's profile of the first runs instead")
    args = ap.parse_args()
    from int8batch.calib import ort_exec as E
    ok, why = E.cuda_status()
    if not ok:
        raise SystemExit(f"no CUDA provider here: {why}")
    if args.profile:
        for path in args.models:
            profile(path, args.batch)
        return
    base = dict(E.CUDA_OPTIONS)
    one(args.models[0], base, False, args.batch, runs=2)       # CUDA, cuDNN and cuBLAS start-up, not reported
    for path in args.models:
        name = os.path.basename(path)
        for variant, change in VARIANTS.items():
            for all_outputs in (True, False):
                created, first, median = one(path, base | change, all_outputs, args.batch)
                print(f"{name:28s} {variant:17s} {'all outputs' if all_outputs else 'plain      '}  "
                      f"session {created:6.3f} s  first run {1e3 * first:7.1f} ms  median {1e3 * median:6.2f} ms",
                      flush=True)


if __name__ == "__main__":
    main()
