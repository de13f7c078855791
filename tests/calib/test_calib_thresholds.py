"""Threshold algorithms: hand-computed cases and the NumPy twins."""
import types

import numpy as np
import pytest

import reference_calib as ref
from int8batch.calib import thresholds as T
from int8batch.calib.collector import HistogramCollector, TensorStats
from int8batch.errors import ConfigError


def _stats_from_values(values, **kw):
    c = HistogramCollector(**kw)
    c.collect("t", np.asarray(values, np.float32))
    return c.stats("t")


def _random_stats(seed, n=6):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        v = [np.abs(rng.standard_normal(50_000)) * (rng.random(50_000) > 0.4),
             rng.laplace(size=50_000) * 3.0,
             rng.standard_t(3, size=50_000)][k % 3]
        out.append(_stats_from_values(v))
    return out


def test_255s_with_one_256_outlier_entropy_nearer_255():
    # pytorch-quantization's check.  The grow rule picks the smallest power of two
    # strictly above 256, so the range is 512 and the width 0.25: 255 sits in bin 1020,
    # 256 in bin 1024.
    st = _stats_from_values(np.r_[np.full(999, 255.0), 256.0])
    assert st.hist_max == 512.0
    amax = T.amax_entropy(st)
    # by hand: candidate i = 1021 keeps only the 255 spike (KL 0, the first zero)
    assert amax == pytest.approx((1021 + 0.5) * 0.25)
    assert abs(amax - 255.0) < abs(amax - 256.0)
    assert T.amax_entropy(st, clip=False) == amax      # below the observed max anyway


def test_all_mass_in_one_bin():
    h = np.zeros(2048, np.int64)
    h[1000] = 12345
    st = TensorStats.from_histogram(h, width=1.0, amax=1000.7)
    # KL: candidates i <= 1000 have no in-range mass (inf); from 1001 on KL = 0 -> 1001
    assert T.amax_entropy(st, clip=False) == 1001.5
    assert T.amax_entropy(st) == 1001.5                 # TensorRT does not cap it at the max
    assert T.amax_entropy(st, clip=True) == 1000.7
    assert T.amax_percentile(st, 50.0, clip=False) == 1001.0
    assert T.amax_minmax(st) == 1000.7
    assert T.saturation(st, 1000.7) == 0.0
    assert T.saturation(st, 1000.25) == pytest.approx(0.75)


def test_uniform_data_minmax_and_percentile():
    x = np.linspace(-3.0, 3.0, 100_001, dtype=np.float32)
    st = _stats_from_values(x, num_bins=2048)
    assert T.amax_minmax(st) == 3.0
    # 50 % of |x| is below 1.5; the bin edge found is within one bin width above
    p50 = T.amax_percentile(st, 50.0)
    assert 1.5 <= p50 <= 1.5 + st.width
    assert T.amax_percentile(st, 100.0) == 3.0


def test_percentile_known_counts():
    st = TensorStats.from_histogram(np.ones(10_000, np.int64), width=1.0, amax=10_000.0)
    assert T.amax_percentile(st, 99.99) == 9999.0   # 9999 of 10000 values are below 9999
    assert T.amax_percentile(st, 1.0) == 100.0


def test_percentile_matches_twin():
    for st in _random_stats(1):
        for p in (50.0, 99.0, 99.99, 99.999, 100.0):
            j = ref.percentile_bin(st.hist, p)
            assert T.amax_percentile(st, p, clip=False) == (j + 1) * st.width


def test_entropy_and_mse_match_twins():
    for st in _random_stats(2):
        before = np.array(st.hist)
        h = before.copy()
        h[0] = h[1]                      # TensorRT's zero-bin discount, applied by amax_entropy
        i, _ = ref.kl_search(h, 128, 128)
        assert T.amax_entropy(st) == (i + 0.5) * st.width
        np.testing.assert_array_equal(st.hist, before)   # the caller's histogram is untouched
        k = ref.mse_search(st.hist, 128, 8)
        assert T.amax_mse(st, clip=False) == k * st.width


def test_mse_laplace_optimum_and_uniform():
    # The MSE-optimal 8-bit clip of a Laplace(b) distribution is about 9.89 b (Banner et
    # al., "ACIQ"); the max of 400k samples is about 13 b.
    lap = _stats_from_values(np.random.default_rng(0).laplace(size=400_000))
    assert 9.0 < T.amax_mse(lap) < 10.8 < lap.amax
    uni = _stats_from_values(np.random.default_rng(0).uniform(-1, 1, size=200_000))
    assert T.amax_mse(uni) > 0.97 * uni.amax


def test_all_zero_and_empty_give_zero():
    zero = _stats_from_values(np.zeros(10))
    empty = HistogramCollector(num_bins=8)
    empty.collect("e", np.zeros(0, np.float32))
    for st in (zero, empty.stats("e")):
        for m in T.METHODS:
            assert T.compute_amax(m, st) == 0.0
        assert T.saturation(st, 0.0) == 0.0


def test_small_histograms_fall_back_to_minmax():
    st = _stats_from_values(np.arange(50, dtype=np.float32), num_bins=64)
    assert T.amax_entropy(st) == 49.0


def test_inputs_not_mutated():
    h = np.zeros(2048, np.int64)
    h[0] = 1000                       # a ReLU spike that a "bins[0] = bins[1]" would overwrite
    h[1:900] = np.arange(1, 900)
    st = types.SimpleNamespace(hist=h, width=0.01, amax=9.0, count=int(h.sum()), over_count=0)
    before = h.copy()
    for m in T.METHODS:
        T.compute_amax(m, st)
        T.compute_amax(m, st)
    T.saturation(st, 3.0)
    np.testing.assert_array_equal(h, before)
    assert h.flags.writeable


def test_saturation_by_hand():
    st = TensorStats.from_histogram([10, 10, 10, 10], width=1.0, amax=4.0)
    assert T.saturation(st, 2.5) == pytest.approx((5 + 10) / 40)
    assert T.saturation(st, 4.0) == 0.0
    assert T.saturation(st, 0.0) == 1.0
    over = TensorStats.from_histogram([10, 10, 10, 10], width=1.0, amax=9.0, over_count=4)
    assert T.saturation(over, 3.5) == pytest.approx((6 * 0.5 + 4) / 40)


def test_compute_amax_dispatch_and_errors():
    st = _random_stats(3, n=1)[0]
    assert T.compute_amax("percentile", st, percentile=99.0) == T.amax_percentile(st, 99.0)
    assert T.compute_amax("entropy", st) == T.amax_entropy(st)
    cfg = T.ThresholdConfig(percentile=90.0, mse_stride=1)
    assert T.compute_amax("percentile", st, cfg) == T.amax_percentile(st, 90.0)
    assert T.compute_amax("mse", st, cfg) == T.amax_mse(st, stride=1)
    assert T.compute_amaxes("minmax", {"a": st, "b": st}) == {"a": st.amax, "b": st.amax}
    with pytest.raises(ValueError, match="entropy, mse") as e:
        T.compute_amax("kl", st)
    assert isinstance(e.value, ConfigError) and "minmax" in str(e.value)
    with pytest.raises(ConfigError, match="percentile"):
        T.compute_amax("entropy", st, percentile=99.0)
    with pytest.raises(ConfigError):
        T.amax_percentile(st, 0.0)


def test_threshold_config():
    d = T.ThresholdConfig()
    assert (d.percentile, d.num_levels, d.entropy_start_bin, d.clip_to_observed) == \
        (99.99, 128, 128, True)
    assert d.replace(percentile=None).percentile == 99.99
    assert d.replace(percentile=99.9).percentile == 99.9
    with pytest.raises(ConfigError):
        d.replace(bins=3)
    with pytest.raises(ConfigError):
        T.ThresholdConfig(entropy_start_bin=64)
    with pytest.raises(ConfigError):
        T.ThresholdConfig(percentile=120)
