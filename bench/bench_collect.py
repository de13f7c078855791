"""Per-call cost of the histogram collector between ONNX Runtime runs (issue 10).

Reproduces what ``calibrate()`` does on a deep model without a zoo file: a
DenseNet-121-shaped graph (blocks 6/12/24/16, growth 32, BatchNorm folded into
the 1x1 convs as an exported model has it, seeded random weights) is built with
``onnx.helper``; every activation (``graph.quantizable_tensors``, about 370) is
made a graph output, and the images run through ONNX Runtime in sub-batches
sized as ``calibrate`` sizes them (``ACTIVATION_BUDGET`` bytes of activations
per run, the first run one image), each run followed by the collector.

Configurations, all in one run, each pass repeated ``--repeat`` times in
round-robin order (medians reported, so that load from other processes on a
shared machine spreads over all of them):

- ``plain``: plain inference (one graph output), the baseline of the ratios;
- ``outputs``: inference returning every activation, no collector;
- ``collect`` / ``many``: the same plus ``HistogramCollector`` (grow mode,
  2048 bins) fed tensor by tensor (``collect(name, a)``, the old hot path) or
  one sub-batch at a time (``collect_many(outs)``);

each with the collector's ``num_threads`` 1 and 2 and ONNX Runtime's
intra-op thread pool spinning as it does by default (``spin=on``: its idle
threads also spin on after a run returns, while the collector works),
stopped when a run returns (``spin=stop``:
``session.force_spinning_stop=1``) or never spinning (``spin=off``:
``session.intra_op.allow_spinning=0``).  Per-call figures are the time spent
in the collector divided by its calls (one call per tensor per sub-batch for
``collect``, one per sub-batch for ``many``).  libgomp's own spinning after a
parallel region is set by the environment (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``), read once at start-up: run the script under both to
compare; the values in effect are printed.

A second section feeds the activations of one sub-batch to the collector
again and again without ONNX Runtime (the collector alone).  With
``--profile`` the script also profiles a real ``calibrate(..., method="mse",
keep_float=0, bias_correction=False)`` on ``--profile-images`` images with
cProfile and prints the top of the profile; the model is
``.work/zoo/densenet121.onnx`` when it exists, else the synthetic one, and the
images come from ``.work/b_calib`` when it exists, else random ones.

    python bench/bench_collect.py                   # 224x224, 16 images, 3 repeats
    python bench/bench_collect.py --quick           # 112x112, 4 images, smoke run
    python bench/bench_collect.py --profile         # + cProfile of calibrate()
    OMP_WAIT_POLICY=passive python bench/bench_collect.py
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

from int8batch.calib.api import ACTIVATION_BUDGET  # noqa: E402
from int8batch.calib.collector import HistogramCollector  # noqa: E402

ZOO_MODEL = os.path.join(ROOT, ".work", "zoo", "densenet121.onnx")
CALIB_BATCHES = os.path.join(ROOT, ".work", "b_calib")


# -- the model ---------------------------------------------------------------

def densenet_like(size=224, blocks=(6, 12, 24, 16), growth=32, bn_size=4, stem=64, seed=0):
    """A DenseNet-121-shaped ModelProto (opset 17, dynamic batch, random weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def name(kind):
        count[0] += 1
        return f"{kind}_{count[0]}"

    def const(arr):
        n = name("w")
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(x, cin, cout, k, stride=1):
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        b = rng.standard_normal(cout) * 0.05
        return node("Conv", [x, const(w), const(b)], kernel_shape=[k, k], strides=[stride, stride],
                    pads=[k // 2] * 4)

    def bn(x, c):
        return node("BatchNormalization", [x, const(1 + 0.1 * rng.standard_normal(c)),
                                           const(0.1 * rng.standard_normal(c)),
                                           const(0.1 * rng.standard_normal(c)),
                                           const(1 + 0.1 * rng.random(c))])

    x = node("Relu", [conv("input", 3, stem, 7, 2)])
    x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = stem
    for bi, layers in enumerate(blocks):
        feats = [x]
        for _ in range(layers):
            cat = node("Concat", feats, axis=1) if len(feats) > 1 else feats[0]
            cin = c + growth * (len(feats) - 1)
            y = node("Relu", [bn(cat, cin)])
            y = node("Relu", [conv(y, cin, bn_size * growth, 1)])  # BN2 folded into conv1
            feats.append(conv(y, bn_size * growth, growth, 3))
        x = node("Concat", feats, axis=1)
        c = c + growth * layers
        if bi < len(blocks) - 1:
            x = conv(node("Relu", [bn(x, c)]), c, c // 2, 1)
            c //= 2
            x = node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = node("GlobalAveragePool", [node("Relu", [bn(x, c)])])
    x = node("Flatten", [x], axis=1)
    out = node("Gemm", [x, const(rng.standard_normal((1000, c)) * np.sqrt(1.0 / c)),
                        const(np.zeros(1000))], transB=1)
    graph = helper.make_graph(
        nodes, "densenet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def with_outputs(model, names):
    import onnx
    from int8batch.onnx import graph as G
    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = G.tensor_types(m)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have and t != m.graph.input[0].name:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
    return m


SPIN = ("on", "stop", "off")


def session(model, spin, ort_threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if ort_threads:
        so.intra_op_num_threads = ort_threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "off" else "1")
    if spin == "stop":
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# -- one pass ----------------------------------------------------------------

def one_pass(sess, fetch, images, subs, collector=None, many=False):
    """Run ``images`` in sub-batches ``subs``; returns (total s, ORT s, collector s, collector calls)."""
    inp = sess.get_inputs()[0].name
    t_ort = t_col = 0.0
    calls = 0
    t_all = time.perf_counter()
    s = 0
    for n in subs:
        t0 = time.perf_counter()
        outs = sess.run(fetch, {inp: images[s:s + n]})
        t1 = time.perf_counter()
        t_ort += t1 - t0
        if collector is not None:
            if many:
                collector.collect_many(dict(zip(fetch, outs)))
                calls += 1
            else:
                for name, a in zip(fetch, outs):
                    collector.collect(name, a)
                calls += len(fetch)
            t_col += time.perf_counter() - t1
        del outs
        s += n
    return time.perf_counter() - t_all, t_ort, t_col, calls


def sub_batches(total, per_image_bytes):
    chunk = int(max(1, min(total, ACTIVATION_BUDGET // max(per_image_bytes, 1))))
    subs = [1]
    while sum(subs) < total:
        subs.append(min(chunk, total - sum(subs)))
    return subs


def med(xs):
    return statistics.median(xs)


def bench_pipeline(model, names, images, repeat, ort_threads, threads):
    plain_fetch = [o.name for o in model.graph.output]
    act = with_outputs(model, names)
    fetch = [t for t in names if t != model.graph.input[0].name]
    sessions = {}
    for spin in SPIN:
        sessions[("plain", spin)] = session(model, spin, ort_threads)
        sessions[("act", spin)] = session(act, spin, ort_threads)
    one = sessions[("act", "on")].run(fetch, {"input": images[:1]})
    per_image = sum(a.nbytes for a in one)
    sizes = np.array([a.size for a in one])
    subs = sub_batches(len(images), per_image)
    print(f"{len(fetch)} activations, {per_image / 2**20:.0f} MiB per image "
          f"(tensor sizes per image: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}); "
          f"{len(images)} images in {len(subs)} sub-batches {subs[:3]}{'...' if len(subs) > 3 else ''}")
    del one

    configs = []
    for spin in SPIN:
        configs.append(("plain", spin, None, False))
        configs.append(("outputs", spin, None, False))
        for nt in threads:
            configs.append(("collect", spin, nt, False))
            configs.append(("many", spin, nt, True))
    results = {c: [] for c in configs}
    for _ in range(repeat):
        for cfg in configs:
            kind, spin, nt, many = cfg
            if kind == "plain":
                r = one_pass(sessions[("plain", spin)], plain_fetch, images, subs)
            else:
                col = HistogramCollector(2048, num_threads=nt) if nt else None
                r = one_pass(sessions[("act", spin)], fetch, images, subs, col, many)
            results[cfg].append(r)
    base = med([r[0] for r in results[configs[0]]])
    print(f"\nmedians of {repeat}; ratio = total / plain inference with ORT spinning on "
          f"({base:.3f} s); 'per call' = collector time / collector calls")
    print(f"{'config':34s} {'total s':>8s} {'ratio':>6s} {'ORT s':>7s} {'collect s':>9s} "
          f"{'calls':>6s} {'per call':>10s}")
    for cfg in configs:
        kind, spin, nt, many = cfg
        tot, ort_s, col_s, calls = (med([r[i] for r in results[cfg]]) for i in range(4))
        label = f"{kind}{'' if nt is None else f' nt={nt}'} spin={spin}"
        per = f"{1e3 * col_s / calls:8.3f}ms" if calls else ""
        print(f"{label:34s} {tot:8.3f} {tot / base:5.2f}x {ort_s:7.3f} {col_s:9.3f} "
              f"{int(calls):6d} {per:>10s}")
    return sessions[("act", "stop")], fetch, subs


def bench_collector_only(sess, fetch, images, sub, repeat, threads):
    outs = dict(zip(fetch, sess.run(fetch, {"input": images[:sub]})))
    elems = sum(a.size for a in outs.values())
    print(f"\ncollector alone on one sub-batch of {sub} image(s): {len(outs)} tensors, "
          f"{elems / 1e6:.1f} M values; median of {max(5, repeat)}")
    print(f"{'path':20s} {'ms / sub-batch':>15s} {'us / tensor':>12s} {'ns / value':>11s}")
    for nt in threads:
        for many in (False, True):
            col = HistogramCollector(2048, num_threads=nt)
            col.collect_many(outs)  # sets the ranges: later calls are the steady state
            ts = []
            for _ in range(max(5, repeat)):
                t0 = time.perf_counter()
                if many:
                    col.collect_many(outs)
                else:
                    for name, a in outs.items():
                        col.collect(name, a)
                ts.append(time.perf_counter() - t0)
            t = med(ts)
            label = f"{'collect_many' if many else 'collect'} nt={nt}"
            print(f"{label:20s} {1e3 * t:15.2f} {1e6 * t / len(outs):12.1f} {1e9 * t / elems:11.3f}")


def profile_calibrate(model, path, batches_dir, images, top):
    from int8batch import BatchSet
    from int8batch.calib.api import calibrate
    tmp = tempfile.mkdtemp(prefix="bench-collect-")
    label = path
    if path is None:
        import onnx
        path, label = os.path.join(tmp, "densenet_like.onnx"), "synthetic densenet-like model"
        onnx.save(model, path)
    if not os.path.isdir(batches_dir):
        raise SystemExit(f"--profile needs packed 224x224 images in {batches_dir} (--batches)")
    batches, src = BatchSet(batches_dir), batches_dir
    print(f"\ncProfile of calibrate({label}, {images} images of {src}, method='mse', keep_float=0, "
          "bias_correction=False)")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = calibrate(path, batches, os.path.join(tmp, "out"), method="mse", batch_size=images,
                    max_batches=1, keep_float=0, bias_correction=False)
    prof.disable()
    wall = time.perf_counter() - t0
    print(f"wall {wall:.2f} s, {len(res.amax)} tensors, {res.inference_seconds:.2f} s in ONNX Runtime")
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in s.getvalue().splitlines()[4:] if line.strip()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="112x112, 4 images, 1 repeat")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="collector num_threads")
    ap.add_argument("--ort-threads", type=int, default=0, help="ORT intra-op threads (0: its default)")
    ap.add_argument("--profile", action="store_true", help="also cProfile a real calibrate()")
    ap.add_argument("--profile-images", type=int, default=32)
    ap.add_argument("--profile-model", default=ZOO_MODEL if os.path.exists(ZOO_MODEL) else None,
                    help="model of the profile (default: .work/zoo/densenet121.onnx if it exists, "
                         "else the synthetic one)")
    ap.add_argument("--batches", default=CALIB_BATCHES, help="packed images of the profile")
    ap.add_argument("--profile-only", action="store_true", help="skip the timing sections")
    ap.add_argument("--top", type=int, default=15, help="profile lines to print")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.images, args.repeat = 112, 4, 1
    from int8batch.onnx import graph as G
    model = densenet_like(args.size)
    names = G.quantizable_tensors(model)
    print(f"synthetic DenseNet-121-shaped model, {args.size}x{args.size}; "
          f"cores available: {len(os.sched_getaffinity(0))}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')} GOMP_SPINCOUNT="
          f"{os.environ.get('GOMP_SPINCOUNT', '(unset)')}; load average {os.getloadavg()[0]:.2f}")
    images = np.random.default_rng(0).standard_normal(
        (args.images, 3, args.size, args.size)).astype(np.float32)
    if not args.profile_only:
        sess, fetch, subs = bench_pipeline(model, names, images, args.repeat, args.ort_threads,
                                           args.threads)
        bench_collector_only(sess, fetch, images, max(subs), args.repeat, args.threads)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.profile or args.profile_only:
        profile_calibrate(model, args.profile_model, args.batches, args.profile_images, args.top)


if __name__ == "__main__":
    main()
