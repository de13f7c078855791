"""csrc/_calib.pyx kernels against their NumPy twins and hand-computed values."""
import math

import numpy as np
import pytest

import reference_calib as ref
from int8batch import _kernels_calib as K


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0], n)).astype(np.float32)
    return x


# -- histogram ---------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 1001, 200_003])
@pytest.mark.parametrize("hist_max, nbins", [(1.0, 2048), (0.3, 333), (2.0 ** -7, 16), (64.0, 2)])
def test_abs_histogram_matches_twin(n, hist_max, nbins):
    x = _data(n, seed=n)
    out = np.full(nbins, 99, dtype=np.int64)  # overwritten, not accumulated
    got = K.abs_histogram(x, hist_max, out, 1)
    want_hist, want = ref.abs_histogram(x, hist_max, nbins)
    np.testing.assert_array_equal(out, want_hist)
    assert got == want
    assert out.sum() == n


def test_abs_histogram_edge_values():
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 0.999999, 3.0e38,
                  1e-45, -2.5, np.nan, 0.5], dtype=np.float32)
    out = np.zeros(4, dtype=np.int64)
    amax, vmin, vmax, nan, inf, over = K.abs_histogram(x, 1.0, out, 1)
    want_hist, want = ref.abs_histogram(x, 1.0, 4)
    np.testing.assert_array_equal(out, want_hist)
    assert (amax, vmin, vmax, nan, inf, over) == want
    # by hand: bin 0 [0,.25): -0, 0, 1e-45; bin 2: 0.5; bin 3: 0.999999, 1, -1, 3e38, -2.5
    np.testing.assert_array_equal(out, [3, 0, 1, 5])
    assert (nan, inf, over) == (2, 2, 2)  # over: |x| > 1.0 strictly (3e38, 2.5)
    assert amax == pytest.approx(3.0e38, rel=1e-6) and vmin == -2.5


def test_abs_histogram_all_nan_and_empty():
    out = np.zeros(8, dtype=np.int64)
    r = K.abs_histogram(np.full(5, np.nan, np.float32), 1.0, out, 2)
    assert r == (0.0, math.inf, -math.inf, 5, 0, 0) and out.sum() == 0
    r = K.abs_histogram(np.zeros(0, np.float32), 1.0, out, 2)
    assert r == (0.0, math.inf, -math.inf, 0, 0, 0)


def test_abs_histogram_thread_counts_identical():
    x = _data(300_001, seed=3)
    x[::977] = np.nan
    outs, rets = [], []
    for nt in (1, 2, 3, 4, 8):
        out = np.zeros(2048, dtype=np.int64)
        rets.append(K.abs_histogram(x, 128.0, out, nt))
        outs.append(out)
    for o, r in zip(outs[1:], rets[1:]):
        np.testing.assert_array_equal(o, outs[0])
        assert r == rets[0]
    assert rets[0] == K.abs_max(x, 4)[:5] + (rets[0][5],)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_abs_histogram_rejects_bad_range(bad):
    with pytest.raises(ValueError):
        K.abs_histogram(np.ones(3, np.float32), bad, np.zeros(4, np.int64), 1)


def test_abs_histogram_rejects_bad_threads_and_dtype():
    with pytest.raises(ValueError):
        K.abs_histogram(np.ones(3, np.float32), 1.0, np.zeros(4, np.int64), 0)
    with pytest.raises(ValueError):  # float64 is refused by the typed memoryview
        K.abs_histogram(np.ones(3, np.float64), 1.0, np.zeros(4, np.int64), 1)


@pytest.mark.parametrize("n", [0, 3, 70_001, 200_000])
def test_abs_max_matches_twin(n):
    x = _data(n, seed=n + 1)
    if n:
        x[n // 2] = np.inf
    _, want = ref.abs_histogram(x, 1.0, 2)
    for nt in (1, 4):
        assert K.abs_max(x, nt) == want[:5] + (0,)


# -- KL search ---------------------------------------------------------------
def test_kl_gtc_worked_example():
    # The GTC slides' example: P = [1 0 2 3 5 3 1 7] merged into 2 levels gives
    # Q = [2 0 2 2 4 4 4 4] (8 bins, one candidate i = 8, no outliers).
    hist = np.array([1, 0, 2, 3, 5, 3, 1, 7, 0], dtype=np.int64)
    p, q = ref.kl_candidate(hist, 8, num_levels=2)
    np.testing.assert_array_equal(q, [2, 0, 2, 2, 4, 4, 4, 4])
    out = np.empty(1)
    assert K.kl_search(hist, 2, 8, out) == 8
    P = np.array([1, 2, 3, 5, 3, 1, 7]) / 22.0
    Q = np.array([2, 2, 2, 4, 4, 4, 4]) / 22.0
    assert out[0] == pytest.approx(float(np.sum(P * np.log(P / Q))), rel=1e-12)


def test_kl_outlier_fold_by_hand():
    # 4 bins, 2 levels, candidates i = 2, 3.  hist = [2, 2, 0, 4]
    hist = np.array([2, 2, 0, 4], dtype=np.int64)
    out = np.empty(2)
    K.kl_search(hist, 2, 2, out)
    # i=2: P=[2, 2+4], Q=[2, 2] -> p=[.25,.75], q=[.5,.5]
    assert out[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    # i=3: groups floor(j*2/3) = {0,1},{2}; P[2] = 0+4 > 0 but group {2} holds no
    # in-range count, so Q[2] = 0 and the divergence is infinite.
    assert out[1] == math.inf
    # 5 bins, i=4: groups {0,1},{2,3}; P=[2,2,1,0+4]; group 1's single count is spread
    # over its two non-zero P bins (bin 3 only through the outliers) -> Q=[2,2,.5,.5]
    hist = np.array([2, 2, 1, 0, 4], dtype=np.int64)
    out = np.empty(1)
    assert K.kl_search(hist, 2, 4, out) == 4
    p = np.array([2, 2, 1, 4]) / 9.0
    q = np.array([2, 2, 0.5, 0.5]) / 5.0
    assert out[0] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)


def _random_hists(count, nbins, seed):
    rng = np.random.default_rng(seed)
    for k in range(count):
        kind = k % 4
        if kind == 0:   # ReLU-like: zero spike plus half-normal
            v = np.abs(rng.standard_normal(20000)) * (rng.random(20000) > 0.5)
        elif kind == 1:  # Laplace tails
            v = np.abs(rng.laplace(size=20000))
        elif kind == 2:  # sparse, few distinct values
            v = rng.choice([0.1, 0.5, 2.0, 7.0], size=300)
        else:           # heavy tail
            v = np.abs(rng.standard_t(2, size=20000))
        top = float(v.max()) * rng.uniform(0.6, 1.3) + 1e-3
        h, _ = ref.abs_histogram(v.astype(np.float32), top, nbins)
        yield h


@pytest.mark.parametrize("nbins, levels, start", [(2048, 128, 128), (301, 16, 16), (97, 8, 40),
                                                  (130, 128, 128)])
def test_kl_search_matches_twin(nbins, levels, start):
    for h in _random_hists(6 if nbins == 2048 else 12, nbins, seed=nbins):
        out = np.empty(nbins - start)
        got = K.kl_search(h, levels, start, out)
        want, divs = ref.kl_search(h, levels, start)
        assert got == want
        np.testing.assert_array_equal(np.isinf(out), np.isinf(divs))
        fin = np.isfinite(divs)
        np.testing.assert_allclose(out[fin], divs[fin], rtol=1e-9, atol=1e-12)


def test_kl_search_degenerate():
    assert K.kl_search(np.zeros(256, np.int64)) == -1            # empty: every KL is inf
    h = np.zeros(256, np.int64)
    h[255] = 10                                                   # all mass above candidates
    assert K.kl_search(h) == -1
    assert K.kl_search(np.ones(100, np.int64)) == -1              # no candidate (nbins <= 128)
    h = np.zeros(2048, np.int64)
    h[3] = 5                                                      # one bin: KL 0 everywhere
    assert K.kl_search(h) == 128
    with pytest.raises(ValueError):
        K.kl_search(h, 128, 64)
    with pytest.raises(ValueError):
        K.kl_search(h, 128, 128, np.empty(5))
    with pytest.raises(ValueError):
        K.kl_search(-h)


def test_kl_search_does_not_mutate():
    h = next(_random_hists(1, 2048, seed=9))
    before = h.copy()
    K.kl_search(h)
    np.testing.assert_array_equal(h, before)


# -- MSE search --------------------------------------------------------------
def test_mse_by_hand():
    hist = np.array([0, 0, 0, 10], dtype=np.int64)   # 10 values at centre 3.5
    out = np.empty(5)
    k = K.mse_search(hist, 1, 1, out)
    s4 = 4 / 127
    e4 = (3.5 - round(3.5 / s4) * s4) ** 2           # 3.5/s4 = 111.125 -> 111
    assert out[4] == pytest.approx(e4, rel=1e-12)
    assert out[3] == pytest.approx(0.25, rel=1e-12)  # clipped to 3: (3.5 - 3)^2
    assert out[1] == pytest.approx(2.5 ** 2, rel=1e-12)
    assert k == 4 and out[0] == math.inf


@pytest.mark.parametrize("nbins, start, stride", [(2048, 128, 8), (2048, 1, 1), (311, 5, 3),
                                                  (64, 128, 8)])
def test_mse_search_matches_twin(nbins, start, stride):
    for h in _random_hists(8, nbins, seed=nbins + stride):
        assert K.mse_search(h, start, stride) == ref.mse_search(h, start, stride)


def test_mse_exhaustive_is_global_min():
    for h in _random_hists(4, 300, seed=5):
        out = np.empty(301)
        k = K.mse_search(h, 1, 1, out)
        kmax = np.flatnonzero(h)[-1] + 1
        scores = [ref.mse_score(h, j) for j in range(1, kmax + 1)]
        assert k == 1 + ref.pick_first_min(scores)


def test_mse_degenerate():
    assert K.mse_search(np.zeros(16, np.int64)) == 0
    h = np.zeros(16, np.int64)
    h[0] = 7
    assert K.mse_search(h) == 1
    with pytest.raises(ValueError):
        K.mse_search(h, 0)
    with pytest.raises(ValueError):
        K.mse_search(h, 1, 0)
