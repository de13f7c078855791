"""Time the amax searches (entropy/KL, MSE, percentile) on a ResNet-50-sized set of histograms.

150 synthetic but realistic 2048-bin |x| histograms (ReLU outputs with a zero
spike, Laplace / Student-t tails, bounded ReLU6-like outputs, sparse inputs;
1e5 to 1e8 counts each, range chosen by the collector's power-of-two rule) are
searched by int8batch (Cython kernels, through the public threshold functions)
and by the NumPy twins in tests/calib/reference_calib.py, in the same run.
Prints total time, time per tensor, the twin/int8batch ratio and how many
tensors got the same answer.

A second section times the |x| histogram kernel itself (``abs_histogram``,
2048 bins, 1 and 2 threads; power-of-two "grow" range and an arbitrary "fixed"
range) and ``abs_max`` in ns per element, against ``np.histogram(np.abs(x))``
and ``np.abs(x).max()`` on the same arrays, best of ``--repeat``.

    python bench/bench_thresholds.py            # full: 150 tensors, 4 M-value arrays
    python bench/bench_thresholds.py --quick    # smoke run: 6 tensors, 64 K values
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "calib"))
import _paths  # noqa: E402,F401  (int8batch: installed, else this tree)

import reference_calib as ref  # noqa: E402
from int8batch.calib import thresholds as T  # noqa: E402
from int8batch import _kernels_calib as K  # noqa: E402
from int8batch.calib.collector import TensorStats  # noqa: E402


def make_histograms(count, nbins=2048, seed=0):
    rng = np.random.default_rng(seed)
    centres = (np.arange(nbins) + 0.5) / nbins     # in units of the range
    out = []
    for k in range(count):
        kind = k % 5
        # data max in the upper half of the range, as the power-of-two rule gives
        top = rng.uniform(0.5, 1.0)
        u = centres / top
        if kind == 0:      # ReLU output: zero spike + half-normal
            dens = np.exp(-0.5 * (u * rng.uniform(3, 8)) ** 2)
        elif kind == 1:    # Laplace-like
            dens = np.exp(-u * rng.uniform(6, 14))
        elif kind == 2:    # Student-t-like heavy tail
            df = rng.uniform(1.5, 5)
            dens = (1 + (u * rng.uniform(10, 40)) ** 2 / df) ** (-(df + 1) / 2)
        elif kind == 3:    # bounded (ReLU6 / sigmoid-like): mass piles at the bound
            dens = np.exp(-u * rng.uniform(1, 4))
            dens[int(top * nbins) - 1] += dens.sum() * rng.uniform(0.05, 0.3)
        else:              # normalised input image: broad, a few spikes
            dens = np.exp(-0.5 * (u * 2.5) ** 2)
            dens[rng.integers(0, int(top * nbins), 12)] += dens.sum() * 0.01
        dens[centres > top] = 0.0
        total = int(10 ** rng.uniform(5, 8))
        hist = rng.multinomial(total, dens / dens.sum()).astype(np.int64)
        if kind == 0:
            hist[0] += int(total * rng.uniform(0.2, 0.7))
        nz = np.flatnonzero(hist)
        width = 2.0 ** -rng.integers(0, 8) / nbins * 16
        out.append(TensorStats.from_histogram(hist, width, amax=(nz[-1] + 0.7) * width,
                                              name=f"t{k}"))
    return out


def make_activations(n, seed=0):
    """Float32 arrays like activations: conv output, ReLU output, ReLU6 output."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32)
    relu = np.maximum(g, 0)
    relu6 = np.minimum(np.maximum(g * 4, 0), 6).astype(np.float32)
    return {"normal": g, "relu (50% zeros)": relu, "relu6 (clipped)": relu6}


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_histogram(n, repeat, nbins=2048):
    """ns/element of the histogram and max kernels vs NumPy, printed as a table."""
    print(f"\n|x| histogram, {nbins} bins, {n} float32 values, best of {repeat} "
          "(ns/element; ratio = NumPy / int8batch)")
    print(f"{'data':18s} {'range':6s} {'np.histogram':>12s} {'ours 1t':>8s} {'ratio':>7s} "
          f"{'ours 2t':>8s} {'ratio':>7s} {'2t/1t':>6s}")
    out = np.zeros(nbins, dtype=np.int64)
    for name, x in make_activations(n).items():
        amax = float(np.abs(x).max())
        grow = 2.0 ** np.floor(np.log2(amax) + 1)  # the collector's power-of-two rule
        for label, hmax in (("grow", grow), ("fixed", amax)):
            t_np = best_of(lambda: np.histogram(np.abs(x), bins=nbins, range=(0.0, hmax)), repeat)
            t1 = best_of(lambda: K.abs_histogram(x, hmax, out, 1), repeat)
            t2 = best_of(lambda: K.abs_histogram(x, hmax, out, 2), repeat)
            ns = 1e9 / n
            print(f"{name:18s} {label:6s} {t_np * ns:12.3f} {t1 * ns:8.3f} {t_np / t1:6.1f}x "
                  f"{t2 * ns:8.3f} {t_np / t2:6.1f}x {t1 / t2:5.2f}x")
    x = make_activations(n)["normal"]
    t_np = best_of(lambda: np.abs(x).max(), repeat)
    t1 = best_of(lambda: K.abs_max(x, 1), repeat)
    t2 = best_of(lambda: K.abs_max(x, 2), repeat)
    ns = 1e9 / n
    print(f"{'abs_max (normal)':18s} {'':6s} {t_np * ns:12.3f} {t1 * ns:8.3f} {t_np / t1:6.1f}x "
          f"{t2 * ns:8.3f} {t_np / t2:6.1f}x {t1 / t2:5.2f}x   (NumPy: np.abs(x).max())")


def timed(fn, items):
    t0 = time.perf_counter()
    res = [fn(s) for s in items]
    return time.perf_counter() - t0, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 tensors, for a smoke run")
    ap.add_argument("--tensors", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the int8batch timings")
    ap.add_argument("--hist-size", type=int, default=4_000_000,
                    help="values per array in the histogram section")
    args = ap.parse_args(argv)
    n = 6 if args.quick else args.tensors
    stats = make_histograms(n)
    print(f"{n} tensors x 2048 bins; total counts {sum(s.count for s in stats):.3g}")

    def ours_entropy(s):
        return T.amax_entropy(s, clip=False)

    def twin_entropy(s):
        h = np.array(s.hist)
        h[0] = h[1]                      # TensorRT's zero-bin discount, as amax_entropy applies it
        i, _ = ref.kl_search(h, 128, 128)
        return (i + 0.5) * s.width

    def ours_mse(s):
        return T.amax_mse(s, clip=False)

    def twin_mse(s):
        return ref.mse_search(s.hist, 128, 8) * s.width

    def ours_pct(s):
        return T.amax_percentile(s, 99.99, clip=False)

    def twin_pct(s):
        return (ref.percentile_bin(s.hist, 99.99) + 1) * s.width

    rows = []
    for name, ours, twin in [("entropy (KL)", ours_entropy, twin_entropy),
                             ("mse", ours_mse, twin_mse),
                             ("percentile 99.99", ours_pct, twin_pct)]:
        t_ours = min(timed(ours, stats)[0] for _ in range(max(1, args.repeat)))
        _, r_ours = timed(ours, stats)
        t_twin, r_twin = timed(twin, stats)
        same = sum(a == b for a, b in zip(r_ours, r_twin))
        rows.append((name, t_ours, t_twin, same))

    print(f"{'method':18s} {'int8batch s':>12s} {'ms/tensor':>10s} {'twin s':>9s} "
          f"{'twin/ours':>10s} {'same':>8s}")
    for name, t_ours, t_twin, same in rows:
        print(f"{name:18s} {t_ours:12.4f} {1e3 * t_ours / n:10.3f} {t_twin:9.3f} "
              f"{t_twin / t_ours:9.1f}x {same:4d}/{n}")
    total = sum(r[1] for r in rows)
    print(f"all three methods, {n} tensors: {total:.3f} s with int8batch")
    bench_histogram(65_536 if args.quick else args.hist_size, max(3, args.repeat))


if __name__ == "__main__":
    main()
