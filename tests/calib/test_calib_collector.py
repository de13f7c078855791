"""HistogramCollector / MaxCollector against the NumPy twin of the growth rule."""
import math

import numpy as np
import pytest

import reference_calib as ref
from int8batch.calib.collector import HistogramCollector, MaxCollector, TensorStats
from int8batch.errors import CalibrationError, ConfigError


def _batches(seed=0, n=6):
    rng = np.random.default_rng(seed)
    out = [np.zeros((2, 3), np.float32)]                       # all zeros first
    for k in range(n):
        scale = 10.0 ** rng.uniform(-2, 2)
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 50)))
        out.append((rng.standard_normal(shape) * scale).astype(np.float32))
    out[2].flat[0] = np.nan
    out[3].flat[-1] = -np.inf
    out.append(np.array([4.0, -4.0, 2.0], np.float32))          # values on power-of-two edges
    return out


def _collect(batches, **kw):
    c = HistogramCollector(**kw)
    for b in batches:
        c.collect("t", b)
    return c


@pytest.mark.parametrize("nbins", [2048, 64, 2])
def test_grow_matches_twin(nbins):
    batches = _batches(seed=nbins)
    st = _collect(batches, num_bins=nbins).stats("t")
    want_hist, want_range = ref.grow_collect(batches, nbins)
    np.testing.assert_array_equal(st.hist, want_hist)
    assert st.hist_max == want_range
    allv = np.concatenate([b.ravel() for b in batches])
    fin = allv[np.isfinite(allv)]
    assert st.count == fin.size == st.hist.sum()
    assert (st.nan_count, st.inf_count, st.over_count) == (1, 1, 0)
    assert st.amax == float(np.abs(fin).max())
    assert (st.min, st.max) == (float(fin.min()), float(fin.max()))


@pytest.mark.parametrize("nbins", [2048, 64, 2])
def test_trt_rule_matches_twin(nbins):
    batches = _batches(seed=nbins + 1)
    st = _collect(batches, num_bins=nbins, mode="trt").stats("t")
    want_hist, want_range = ref.grow_collect(batches, nbins, rule="trt")
    np.testing.assert_array_equal(st.hist, want_hist)
    assert st.hist_max == want_range
    assert st.count == st.hist.sum()


def test_trt_rule_by_hand():
    # TensorRT's range: the first batch's max itself, then doubled when a later max exceeds it
    c = HistogramCollector(num_bins=4, mode="trt")
    c.collect("t", np.array([0.0, 0.0], np.float32))
    assert c.stats("t").width == 0.0
    c.collect("t", np.array([3.0, 1.4], np.float32))   # range 3, width 0.75; 3.0 in the last bin
    st = c.stats("t")
    assert st.hist_max == 3.0 and list(st.hist) == [2, 1, 0, 1]
    c.collect("t", np.array([3.0], np.float32))        # equal to the range: no growth
    assert c.stats("t").hist_max == 3.0 and list(c.stats("t").hist) == [2, 1, 0, 2]
    c.collect("t", np.array([5.0], np.float32))        # 5 > 3: range 6 (pairs merge), 5 in bin 3
    st = c.stats("t")
    assert st.hist_max == 6.0 and list(st.hist) == [3, 2, 0, 1]
    # first-batch maxima given up front (a model run in sub-batches)
    c = HistogramCollector(num_bins=4, mode="trt", ranges={"t": 8.0})
    c.collect("t", np.array([1.0], np.float32))
    c.collect("u", np.array([2.0], np.float32))        # no range given: its first data sets it
    assert c.stats("t").hist_max == 8.0 and c.stats("u").hist_max == 2.0


def test_trt_rule_merge():
    a = _collect([np.array([3.0], np.float32)], num_bins=4, mode="trt")
    b = _collect([np.array([12.0], np.float32)], num_bins=4, mode="trt")
    st = a.merge(b).stats("t")                          # 3 * 4 = 12: a power of two apart
    assert st.hist_max == 12.0 and list(st.hist) == [1, 0, 0, 1]
    c = _collect([np.array([5.0], np.float32)], num_bins=4, mode="trt")
    with pytest.raises(CalibrationError, match="power of two"):
        a.merge(c)


def test_grow_rule_by_hand():
    c = HistogramCollector(num_bins=4)
    c.collect("t", np.array([0.0, 0.0], np.float32))
    assert c.stats("t").width == 0.0 and list(c.stats("t").hist) == [2, 0, 0, 0]
    c.collect("t", np.array([3.0], np.float32))      # range: smallest 2^k > 3 -> 4, width 1
    assert c.stats("t").hist_max == 4.0 and list(c.stats("t").hist) == [2, 0, 0, 1]
    c.collect("t", np.array([4.0], np.float32))      # 4 >= 4: double to 8 (pairs merge)
    st = c.stats("t")
    assert st.hist_max == 8.0 and list(st.hist) == [2, 1, 1, 0]
    c.collect("t", np.array([0.5, 100.0], np.float32))  # -> 128, width 32
    st = c.stats("t")
    assert st.hist_max == 128.0 and list(st.hist) == [5, 0, 0, 1]


def test_grow_is_order_and_split_independent():
    batches = _batches(seed=7)
    base = _collect(batches).stats("t")
    for perm_seed in range(3):
        perm = np.random.default_rng(perm_seed).permutation(len(batches))
        st = _collect([batches[i] for i in perm]).stats("t")
        np.testing.assert_array_equal(st.hist, base.hist)
        assert st.hist_max == base.hist_max
    # one-shot histogram of everything at the final range is the same
    allv = np.concatenate([b.ravel() for b in batches])
    oneshot, _ = ref.abs_histogram(allv, base.hist_max, 2048)
    np.testing.assert_array_equal(base.hist, oneshot)


def test_merge_equals_single_stream():
    batches = _batches(seed=11, n=8)
    whole = _collect(batches).stats("t")
    for cut in (1, 3, 6):
        a = _collect(batches[:cut])
        b = _collect(batches[cut:])
        b_before = b.stats("t").hist.copy()
        a.merge(b)
        st = a.stats("t")
        np.testing.assert_array_equal(st.hist, whole.hist)
        assert (st.hist_max, st.count, st.amax, st.nan_count) == \
            (whole.hist_max, whole.count, whole.amax, whole.nan_count)
        np.testing.assert_array_equal(b.stats("t").hist, b_before)   # other unchanged
    # merging the other way round (small range into large and large into small)
    a, b = _collect(batches[6:]), _collect(batches[:6])
    np.testing.assert_array_equal(a.merge(b).stats("t").hist, whole.hist)


def test_merge_checks_settings():
    with pytest.raises(CalibrationError):
        HistogramCollector(num_bins=64).merge(HistogramCollector(num_bins=128))
    with pytest.raises(TypeError):
        HistogramCollector().merge(MaxCollector())


def test_thread_counts_identical():
    rng = np.random.default_rng(2)
    big = [(rng.standard_normal(150_001) * s).astype(np.float32) for s in (1.0, 50.0, 0.1)]
    hists = [_collect(big, num_threads=nt).stats("t").hist for nt in (1, 2, 4)]
    for h in hists[1:]:
        np.testing.assert_array_equal(h, hists[0])


def test_two_pass_fixed_mode():
    batches = _batches(seed=5)
    mc = MaxCollector()
    for b in batches:
        mc.collect("t", b)
    rng_ = mc.ranges()
    hc = HistogramCollector(num_bins=512, mode="fixed", ranges=rng_)
    for b in batches:
        hc.collect("t", b)
    st = hc.stats("t")
    allv = np.concatenate([b.ravel() for b in batches])
    want, (amax, *_rest) = ref.abs_histogram(allv, rng_["t"], 512)
    np.testing.assert_array_equal(st.hist, want)
    assert st.hist_max == pytest.approx(amax) and st.over_count == 0
    assert st.hist[-1] >= 1           # the max itself lands in the last bin


def test_fixed_mode_overflow_and_errors():
    hc = HistogramCollector(num_bins=4, mode="fixed", ranges={"a": 2.0, "z": 0.0})
    hc.collect("a", np.array([0.1, 1.9, 2.0, 5.0, -7.0], np.float32))
    st = hc.stats("a")
    assert list(st.hist) == [1, 0, 0, 4] and st.over_count == 2
    with pytest.raises(CalibrationError, match="'b'"):
        hc.collect("b", np.ones(2, np.float32))
    hc.collect("z", np.zeros(3, np.float32))
    assert list(hc.stats("z").hist) == [3, 0, 0, 0]
    with pytest.raises(CalibrationError):
        hc.collect("z", np.ones(1, np.float32))
    with pytest.raises(ConfigError):
        HistogramCollector(mode="fixed")
    with pytest.raises(ConfigError):
        HistogramCollector(mode="fixed", ranges={"a": -1.0})
    with pytest.raises(ConfigError):
        HistogramCollector(mode="sometimes")
    with pytest.raises(ConfigError):
        HistogramCollector(num_bins=2047)


def test_stats_is_a_snapshot_and_read_only():
    c = HistogramCollector(num_bins=8)
    c.collect("t", np.array([1.0, 2.0], np.float32))
    st = c.stats("t")
    c.collect("t", np.array([1.0, 2.0], np.float32))
    assert st.count == 2 and st.hist.sum() == 2
    with pytest.raises(ValueError):
        st.hist[0] = 5
    with pytest.raises(AttributeError):
        st.amax = 3.0
    assert isinstance(st, TensorStats) and st.num_bins == 8
    np.testing.assert_allclose(st.edges, np.arange(9) * st.width)


def test_names_reset_dtypes_and_empty():
    c = HistogramCollector(num_bins=8)
    c.collect("b", np.zeros(0, np.float32))
    c.collect("a", np.arange(6, dtype=np.int32).reshape(2, 3))    # ints are accepted
    c.collect("c", np.ones((2, 2), np.float64))
    assert c.names() == ["b", "a", "c"] and len(c) == 3 and "a" in c
    assert c.stats("b").count == 0 and c.stats("b").width == 0.0
    assert c.stats("a").amax == 5.0
    with pytest.raises(CalibrationError):
        c.collect("s", np.array(["x"]))
    with pytest.raises(KeyError):
        c.stats("nope")
    c.reset()
    assert c.names() == []


def test_nan_warning_logged_once(caplog):
    c = HistogramCollector(num_bins=8)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            c.collect("t", np.array([1.0, np.nan], np.float32))
    assert sum("NaN" in r.message for r in caplog.records) == 1
    assert c.stats("t").nan_count == 3


def test_max_collector():
    batches = _batches(seed=3)
    a, b = MaxCollector(), MaxCollector()
    for i, x in enumerate(batches):
        (a if i % 2 else b).collect("t", x)
    a.merge(b)
    allv = np.concatenate([x.ravel() for x in batches])
    fin = allv[np.isfinite(allv)]
    assert a.amax("t") == float(np.abs(fin).max())
    st = a.stats("t")
    assert st.count == fin.size and st.nan_count == 1 and st.inf_count == 1
    assert st.min == float(fin.min()) and not math.isnan(st.max)
