"""Slow, obvious NumPy twins of the calibration kernels (``csrc/_calib.pyx``).

Written from the docstrings, not from the Cython code: each twin builds the
distributions explicitly and computes the quantities directly.  Tests compare
the kernels with these on odd sizes and edge cases; ``bench/bench_thresholds.py``
times them against the kernels.
"""
import math

import numpy as np

TIE_RTOL = 1e-10
TIE_ATOL = 1e-12


def pick_first_min(values):
    """Index of the first value within the tie tolerance of the minimum (-1 if all inf)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).any():
        return -1
    m = values[np.isfinite(values)].min()
    return int(np.flatnonzero(values <= m + (TIE_RTOL * abs(m) + TIE_ATOL))[0])


def abs_histogram(x, hist_max, nbins):
    """Twin of ``abs_histogram``: returns (hist, (amax, vmin, vmax, nan, inf, over))."""
    x = np.asarray(x, dtype=np.float32).ravel()
    nan = int(np.isnan(x).sum())
    inf = int(np.isinf(x).sum())
    f = x[np.isfinite(x)]
    a = np.abs(f).astype(np.float64)
    t = a * (nbins / hist_max)
    idx = np.where(t >= nbins, nbins - 1, np.floor(np.minimum(t, nbins - 1)).astype(np.int64))
    hist = np.bincount(idx, minlength=nbins).astype(np.int64)
    amax = float(a.max()) if a.size else 0.0
    vmin = float(f.min()) if f.size else math.inf
    vmax = float(f.max()) if f.size else -math.inf
    over = int((a > hist_max).sum())
    return hist, (amax, vmin, vmax, nan, inf, over)


def abs_histogram_many(xs, hist_max, nbins):
    """Twin of ``abs_histogram_many``: one :func:`abs_histogram` per array."""
    return [abs_histogram(x, h, nbins) for x, h in zip(xs, hist_max)]


def kl_divergence(p, q):
    """KL(p || q) of two count vectors, normalised; +inf if q is 0 where p is not."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if q.sum() == 0:
        return math.inf
    p = p / p.sum()
    q = q / q.sum()
    m = p > 0
    if (q[m] == 0).any():
        return math.inf
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def kl_candidate(hist, i, num_levels=128):
    """The (P, Q) pair of the GTC entropy method for candidate ``i``."""
    hist = np.asarray(hist, dtype=np.int64)
    p = hist[:i].astype(np.float64).copy()
    p[i - 1] += hist[i:].sum()
    group = (np.arange(i) * num_levels) // i          # bin j -> level floor(j*L/i)
    totals = np.bincount(group, weights=hist[:i].astype(np.float64), minlength=num_levels)
    nonzero = p != 0
    nz_per_group = np.bincount(group, weights=nonzero.astype(np.float64), minlength=num_levels)
    q = np.zeros(i, dtype=np.float64)
    q[nonzero] = totals[group[nonzero]] / nz_per_group[group[nonzero]]
    return p, q


def kl_search(hist, num_levels=128, start_bin=128):
    """Twin of ``kl_search``: (best i or -1, divergences per candidate ``start_bin .. nbins``)."""
    hist = np.asarray(hist, dtype=np.int64)
    nbins = hist.size
    divs = np.array([kl_divergence(*kl_candidate(hist, i, num_levels))
                     for i in range(start_bin, nbins + 1)], dtype=np.float64)
    best = pick_first_min(divs)
    return (-1 if best < 0 else start_bin + best), divs


def mse_score(hist, k):
    """Mean squared error of the int8 fake-quant of the bin centres for amax = k bins."""
    hist = np.asarray(hist, dtype=np.float64)
    c = np.arange(hist.size) + 0.5
    s = k / 127.0
    q = np.minimum(np.rint(c / s), 127.0) * s
    return float(np.sum(hist * (c - q) ** 2) / hist.sum())


def mse_search(hist, start_bin=128, stride=8):
    """Twin of ``mse_search``: coarse grid plus the kmax candidate, then a fine pass."""
    hist = np.asarray(hist, dtype=np.int64)
    nz = np.flatnonzero(hist)
    if nz.size == 0:
        return 0
    kmax = int(nz[-1]) + 1
    trimmed = hist[:kmax]
    lo = min(start_bin, kmax)
    scores = np.full(hist.size + 1, np.inf)
    for k in list(range(lo, kmax, stride)) + [kmax]:
        scores[k] = mse_score(trimmed, k)
    best = pick_first_min(scores)
    for k in range(max(lo, best - stride + 1), min(kmax, best + stride - 1) + 1):
        if not np.isfinite(scores[k]):
            scores[k] = mse_score(trimmed, k)
    return pick_first_min(scores)


def percentile_bin(hist, percentile):
    """Index of the first bin where the cumulative count reaches ``percentile`` %."""
    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    target = percentile / 100.0 * total
    run = 0
    for j, h in enumerate(hist):
        run += int(h)
        if run >= target:
            return j
    return hist.size - 1


def grow_collect(batches, nbins=2048, rule="grow"):
    """Twin of the collector's "grow" and "trt" rules, applied batch by batch.

    Returns (hist, hist_max): hist_max is 0.0 until a non-zero value is seen,
    then ("grow") the smallest power of two strictly above the first non-zero
    batch max, doubled (pairs of bins merged) while a later batch max is >= it;
    or ("trt") that batch max itself, doubled while a later max is > it.
    """
    hist = np.zeros(nbins, dtype=np.int64)
    rng = 0.0
    for b in batches:
        x = np.asarray(b, dtype=np.float32).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            continue
        m = float(np.abs(x).max())
        if m == 0.0:
            hist[0] += x.size
            continue
        if rng == 0.0 and rule == "trt":
            rng = m
        if rng == 0.0:
            rng = 2.0 ** (math.floor(math.log2(m)) + 1)
            while rng <= m:           # guard against log2 rounding
                rng *= 2.0
            while rng / 2.0 > m:
                rng /= 2.0
        while m >= rng if rule == "grow" else m > rng:
            hist = np.concatenate([hist.reshape(-1, 2).sum(axis=1), np.zeros(nbins // 2, np.int64)])
            rng *= 2.0
        h, _ = abs_histogram(x, rng, nbins)
        hist += h
    return hist, rng


def sum_rows(x, acc):
    """Twin of ``_kernels_calib.sum_rows``: ``acc += x.sum(axis=0)`` in float64."""
    acc += np.asarray(x, np.float64).sum(axis=0)
    return acc
