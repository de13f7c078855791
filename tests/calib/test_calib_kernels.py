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


def _check_against_twin(x, hist_max, nbins, threads=(1, 2, 3)):
    want_hist, want = ref.abs_histogram(x, hist_max, nbins)
    for min_chunk in (None, 1000):   # the default split, then chunks of >= 1000 values
        old = K._set_min_chunk(min_chunk) if min_chunk else None
        try:
            for nt in threads:
                out = np.full(nbins, -5, dtype=np.int64)
                got = K.abs_histogram(x, hist_max, out, nt)
                np.testing.assert_array_equal(out, want_hist, err_msg=f"{nt} threads, {min_chunk}")
                assert got == want, (nt, min_chunk)
                many = np.full((2, nbins), -5, dtype=np.int64)
                got = K.abs_histogram_many([x, x[::-1].copy()], [hist_max] * 2, many, nt)
                np.testing.assert_array_equal(many[0], want_hist, err_msg=f"many, {nt} threads")
                assert tuple(a[0] for a in got) == want, ("many", nt, min_chunk)
        finally:
            if old:
                K._set_min_chunk(old)


# Sizes around the kernel's internals: its blocks of 512 values, the 4 * nbins
# size from which 4 interleaved sub-histograms are used (and summed), the
# 16-block cadence at which bin-0 dropping is re-decided, and the 128 Ki-value
# minimum thread chunk.
_SIZES = [1023, 1024, 1025, 4 * 2048 - 1, 4 * 2048, 16 * 1024 + 5, 2 * 131072 + 17]


@pytest.mark.parametrize("n", _SIZES)
@pytest.mark.parametrize("hist_max", [8.0, 6.0, 0.37])  # power of two, then not
def test_abs_histogram_zero_spike_and_sub_histograms(n, hist_max):
    # ReLU-like data: half exact zeros (the hot bin), the rest spread, in runs so
    # some blocks are nearly all zeros and others have none.
    rng = np.random.default_rng(n)
    x = np.abs(rng.standard_normal(n)).astype(np.float32)
    x[rng.random(n) < 0.5] = 0.0
    x[: n // 3] = 0.0
    x[n // 3: n // 2] = np.float32(0.5)  # a second spike, not in bin 0
    _check_against_twin(x, hist_max, 2048)
    _check_against_twin(x, hist_max, 333, threads=(1, 2))


@pytest.mark.parametrize("hist_max, nbins", [(8.0, 2048), (1.0, 16), (6.0, 2048), (0.3, 333)])
def test_abs_histogram_bin_edges_exact(hist_max, nbins):
    # every bin edge j * hist_max / nbins as float32 and its two float neighbours,
    # plus values at and around hist_max itself (last bin / over count)
    edges = (np.arange(nbins + 3) * (hist_max / nbins)).astype(np.float32)
    x = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)),
                        np.nextafter(edges, np.float32(0)), -edges])
    x = np.random.default_rng(1).permutation(np.tile(x, 12)).astype(np.float32)
    _check_against_twin(x, hist_max, nbins)


def test_abs_histogram_nonfinite_and_over_in_some_blocks():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(70_001).astype(np.float32)
    x[5000] = np.nan          # block 4
    x[9000:9003] = np.inf     # block 8
    x[9100] = -np.inf
    x[20_000] = 1e30          # over, block 19
    x[-1] = np.nan            # in the scalar tail
    x[-2] = -3e38
    for hist_max in (2.0, 1.5, 2.0 ** -3):
        _check_against_twin(x, hist_max, 2048)
        _check_against_twin(x, hist_max, 7)
    m = K.abs_max(x, 2)
    assert m == ref.abs_histogram(x, 1.0, 2)[1][:5] + (0,)


@pytest.mark.parametrize("nt", [1, 2, 3])
def test_abs_histogram_zero_min_max_sign_is_first_zero(nt):
    # min (or max) 0: -0.0 and 0.0 compare equal, the result carries the sign of
    # the first zero in x, whatever the split into blocks and chunks.
    n = 400_000
    if nt > 1:
        assert n // 131072 >= nt   # really split into nt chunks (default minimum chunk)
    for first in (-0.0, 0.0):
        x = np.abs(np.random.default_rng(2).standard_normal(n)).astype(np.float32) + 1
        x[300_001] = first               # in the last thread chunk, after a block start
        x[300_002:] = np.float32(-first)  # the other zero, many times
        out = np.zeros(64, dtype=np.int64)
        amax, vmin, vmax, *_ = K.abs_histogram(x, 8.0, out, nt)
        assert vmin == 0.0 and math.copysign(1.0, vmin) == math.copysign(1.0, first)
        assert math.copysign(1.0, amax) == 1.0
        _, vmin2, _, *_ = K.abs_max(x, nt)
        assert math.copysign(1.0, vmin2) == math.copysign(1.0, first)
        y = -x
        _, _, vmax, *_ = K.abs_histogram(y, 8.0, out, nt)
        assert vmax == 0.0 and math.copysign(1.0, vmax) == -math.copysign(1.0, first)
    # all zeros: amax is +0.0
    amax, vmin, vmax, *_ = K.abs_histogram(np.full(5000, -0.0, np.float32), 1.0, out, nt)
    assert math.copysign(1.0, amax) == 1.0 and math.copysign(1.0, vmin) == -1.0


def test_abs_histogram_extreme_ranges():
    x = np.array([0.0, 1e-45, 1e-38, 1.0, 3e38, -2e-40], dtype=np.float32)
    for hist_max in (1e-30, 1e-44, 3.4e38, 1e300, 2.0 ** 100, 2.0 ** -100):
        for nbins in (1, 2, 2048):
            _check_against_twin(x, hist_max, nbins, threads=(1,))
    with pytest.raises(ValueError):  # nbins / hist_max overflows
        K.abs_histogram(x, 5e-324, np.zeros(4, np.int64), 1)


# -- many tensors in one call -------------------------------------------------
@pytest.fixture
def small_chunks():
    """Threads get pieces of 1000 values: the many-piece split on small arrays."""
    old = K._set_min_chunk(1000)
    yield
    K._set_min_chunk(old)


def _same_stats(a, b):
    """Equal tuples of stats, the sign of a zero included."""
    return len(a) == len(b) and all(
        x == y and math.copysign(1.0, x) == math.copysign(1.0, y) for x, y in zip(a, b))


def _many_inputs(seed=0):
    """Arrays of odd sizes (around blocks, sub-histograms and pieces) and edge values, with ranges."""
    rng = np.random.default_rng(seed)
    xs, ranges = [], []
    for k, n in enumerate([0, 1, 7, 511, 512, 513, 1001, 4 * 333 + 1, 8191, 8192, 70_001, 0, 3,
                           200_003, 2 * 65536 + 9]):
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        if n > 5 and k % 3 == 0:
            x[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
        if n > 5 and k % 4 == 1:
            x[rng.random(n) < 0.6] = 0.0          # ReLU-like zero spike
            x[n // 2] = -0.0
        m = float(np.nanmax(np.abs(x[np.isfinite(x)]), initial=0.0)) or 1.0
        # power-of-two ranges (float32 index path), arbitrary ones, and some below the max
        ranges.append([2.0 ** math.ceil(math.log2(m) + 1e-9), m, 0.37 * m, 3.0][k % 4])
        xs.append(x)
    xs[4] = xs[4].reshape(7, 73) if xs[4].size == 511 else xs[4]   # any shape
    return xs, np.array(ranges)


@pytest.mark.parametrize("nbins", [2048, 333, 2, 1])
def test_abs_histogram_many_matches_single_and_twin(nbins):
    xs, ranges = _many_inputs(nbins)
    out = np.full((len(xs), nbins), 99, dtype=np.int64)   # overwritten, not accumulated
    got = K.abs_histogram_many(xs, ranges, out, 1)
    assert all(a.shape == (len(xs),) for a in got)
    assert got[0].dtype == np.float64 and got[3].dtype == np.int64
    twins = ref.abs_histogram_many(xs, ranges, nbins)
    for i, (x, h) in enumerate(zip(xs, ranges)):
        one = np.zeros(nbins, dtype=np.int64)
        single = K.abs_histogram(x.reshape(-1), h, one, 1)
        row = tuple(a[i].item() for a in got)
        np.testing.assert_array_equal(out[i], one, err_msg=f"array {i}")
        np.testing.assert_array_equal(out[i], twins[i][0], err_msg=f"array {i}")
        assert _same_stats(row, single), i
        assert row == twins[i][1], i


@pytest.mark.parametrize("chunks", ["default", "small"])
def test_abs_histogram_many_thread_counts_identical(chunks, request):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    xs, ranges = _many_inputs(5)
    results = []
    for nt in (1, 2, 3, 4):
        out = np.zeros((len(xs), 2048), dtype=np.int64)
        results.append((out, K.abs_histogram_many(xs, ranges, out, nt)))
    for out, stats in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        for a, b in zip(stats, results[0][1]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("nt", [1, 2, 3])
def test_abs_histogram_many_zero_sign_across_pieces(nt, small_chunks):
    # the first zero of a tensor lies in its last piece, the other zero many times after it
    for first in (-0.0, 0.0):
        x = np.abs(np.random.default_rng(2).standard_normal(20_000)).astype(np.float32) + 1
        x[15_001] = first
        x[15_002:] = np.float32(-first)
        xs = [np.ones(3000, np.float32), x, -x, np.full(10, -0.0, np.float32)]
        out = np.zeros((4, 64), dtype=np.int64)
        amax, vmin, vmax, *_ = K.abs_histogram_many(xs, [8.0] * 4, out, nt)
        assert math.copysign(1.0, vmin[1]) == math.copysign(1.0, first)
        assert math.copysign(1.0, vmax[2]) == -math.copysign(1.0, first)
        assert np.signbit(vmin[3]) and not np.signbit(amax).any()
        for i, y in enumerate(xs):
            single = K.abs_histogram(y, 8.0, np.zeros(64, np.int64), nt)
            assert _same_stats((amax[i], vmin[i], vmax[i]), single[:3])


@pytest.mark.parametrize("nt", [1, 3])
def test_abs_max_many_matches_abs_max(nt, small_chunks):
    xs, _ = _many_inputs(9)
    got = K.abs_max_many(xs, nt)
    for i, x in enumerate(xs):
        row = tuple(a[i].item() for a in got)
        assert _same_stats(row, K.abs_max(x.reshape(-1), 1)), i
        assert row == ref.abs_histogram(x, 1.0, 2)[1][:5] + (0,)


def test_abs_histogram_many_empty_and_checks():
    out = np.zeros((0, 8), dtype=np.int64)
    assert all(a.size == 0 for a in K.abs_histogram_many([], [], out, 2))
    assert all(a.size == 0 for a in K.abs_max_many([], 2))
    x = np.ones(4, np.float32)
    good = np.zeros((1, 8), np.int64)
    with pytest.raises(ValueError, match="float32"):
        K.abs_histogram_many([np.ones(4)], [1.0], good, 1)            # float64
    with pytest.raises(ValueError):
        K.abs_histogram_many([np.ones((4, 4), np.float32)[:, 1]], [1.0], good, 1)   # strided
    with pytest.raises(TypeError):
        K.abs_max_many([[1.0, 2.0]], 1)                              # not a buffer
    with pytest.raises(ValueError, match="hist_max"):
        K.abs_histogram_many([x], [1.0, 2.0], good, 1)
    with pytest.raises(ValueError, match="rows"):
        K.abs_histogram_many([x, x], [1.0, 2.0], good, 1)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            K.abs_histogram_many([x], [bad], good, 1)
    with pytest.raises(ValueError):
        K.abs_histogram_many([x], [1.0], np.zeros((1, 0), np.int64), 1)
    with pytest.raises(ValueError):
        K.abs_histogram_many([x], [1.0], good, 0)
    with pytest.raises(ValueError):
        K._set_min_chunk(0)


# -- KL search ---------------------------------------------------------------
def test_kl_gtc_worked_example():
    # The GTC slides' example: P = [1 0 2 3 5 3 1 7] merged into 2 levels gives
    # Q = [2 0 2 2 4 4 4 4] (candidate i = 8 of 9 bins, no outliers; i = 9, the
    # full range, is the second candidate and scores worse).
    hist = np.array([1, 0, 2, 3, 5, 3, 1, 7, 0], dtype=np.int64)
    p, q = ref.kl_candidate(hist, 8, num_levels=2)
    np.testing.assert_array_equal(q, [2, 0, 2, 2, 4, 4, 4, 4])
    out = np.empty(2)
    assert K.kl_search(hist, 2, 8, out) == 8
    assert out[1] > out[0]
    P = np.array([1, 2, 3, 5, 3, 1, 7]) / 22.0
    Q = np.array([2, 2, 2, 4, 4, 4, 4]) / 22.0
    assert out[0] == pytest.approx(float(np.sum(P * np.log(P / Q))), rel=1e-12)


def test_kl_outlier_fold_by_hand():
    # 4 bins, 2 levels, candidates i = 2, 3, 4.  hist = [2, 2, 0, 4]
    hist = np.array([2, 2, 0, 4], dtype=np.int64)
    out = np.empty(3)
    assert K.kl_search(hist, 2, 2, out) == 4
    # i=2: P=[2, 2+4], Q=[2, 2] -> p=[.25,.75], q=[.5,.5]
    assert out[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    # i=3: groups floor(j*2/3) = {0,1},{2}; P[2] = 0+4 > 0 but group {2} holds no
    # in-range count, so Q[2] = 0 and the divergence is infinite.
    assert out[1] == math.inf
    # i=4 (the full range, no outliers): groups {0,1},{2,3}; Q = [2, 2, 0, 4] = P -> KL 0
    assert out[2] == 0.0
    # 5 bins, i=4: groups {0,1},{2,3}; P=[2,2,1,0+4]; group 1's single count is spread
    # over its two non-zero P bins (bin 3 only through the outliers) -> Q=[2,2,.5,.5]
    hist = np.array([2, 2, 1, 0, 4], dtype=np.int64)
    out = np.empty(2)
    assert K.kl_search(hist, 2, 4, out) == 5
    p = np.array([2, 2, 1, 4]) / 9.0
    q = np.array([2, 2, 0.5, 0.5]) / 5.0
    assert out[0] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)
    # i=5: groups {0,1,2},{3,4}; Q = [5/3, 5/3, 5/3, 0, 4] over the same total
    q5 = np.array([5 / 3, 5 / 3, 5 / 3, 4]) / 9.0
    assert out[1] == pytest.approx(float(np.sum(p * np.log(p / q5))), rel=1e-12)


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
        out = np.empty(nbins - start + 1)
        got = K.kl_search(h, levels, start, out)
        want, divs = ref.kl_search(h, levels, start)
        assert got == want
        np.testing.assert_array_equal(np.isinf(out), np.isinf(divs))
        fin = np.isfinite(divs)
        np.testing.assert_allclose(out[fin], divs[fin], rtol=1e-9, atol=1e-12)


def test_kl_search_degenerate():
    assert K.kl_search(np.zeros(256, np.int64)) == -1            # empty: every KL is inf
    h = np.zeros(256, np.int64)
    h[255] = 10                                                   # all mass in the last bin:
    assert K.kl_search(h) == 256                                  # only the full range is finite
    assert K.kl_search(np.ones(100, np.int64)) == -1              # no candidate (nbins < 128)
    assert K.kl_search(np.ones(128, np.int64)) == 128             # one candidate: the full range
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
