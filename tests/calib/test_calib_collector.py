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


# -- collect_many: one kernel call per batch of tensors ----------------------
def _stream(seed=0, steps=7):
    """Batches of {name: array} as a model's runs give them, with the collector's hard cases.

    'zero' stays all zeros, 'late' is zeros then data (its range is set late),
    'grow' and 'big' grow their range in later batches, 'nan' holds NaN/inf, 'odd'
    comes in float64 and strided, 'some' is missing from some batches and the
    order of the names changes (other row layouts); sizes cross the kernels'
    pieces when the chunk is small.
    """
    rng = np.random.default_rng(seed)
    out = []
    for s in range(steps):
        b = {"zero": np.zeros((2, 3, 5), np.float32),
             "late": (np.zeros(40, np.float32) if s < 2 else rng.standard_normal(40).astype(np.float32)),
             "grow": (rng.standard_normal((3, 700)) * 1.7 ** s).astype(np.float32),
             "big": np.maximum(rng.standard_normal(30_001) * (1 + 4 * (s == 3)), 0).astype(np.float32),
             "nan": rng.standard_normal(513).astype(np.float32),
             "odd": rng.standard_normal((64, 9))[:, ::2],
             "empty": np.zeros((0, 4), np.float32)}
        b["nan"][s % 5] = [np.nan, np.inf, -np.inf, np.nan, 0.0][s % 5]
        b["big"][7] = -0.0
        if s % 3 == 1:
            b["some"] = (rng.standard_normal(9) * 3).astype(np.float32)
        if s % 2:
            b = dict(reversed(list(b.items())))
        out.append(b)
    return out


def _assert_same_collectors(a, b):
    assert a.names() == b.names()
    for name in a.names():
        x, y = a.stats(name), b.stats(name)
        np.testing.assert_array_equal(x.hist, y.hist, err_msg=name)
        for f in ("width", "amax", "count", "nan_count", "inf_count", "over_count", "min", "max"):
            u, v = getattr(x, f), getattr(y, f)
            assert u == v and type(u) is type(v), (name, f, u, v)
            if isinstance(u, float):
                assert math.copysign(1.0, u) == math.copysign(1.0, v), (name, f)


def _modes(stream):
    maxima = MaxCollector()
    for b in stream:
        maxima.collect_many(b)
    first = {k: float(np.abs(np.nan_to_num(np.asarray(v, np.float32), posinf=0, neginf=0)).max(initial=0))
             for k, v in stream[0].items()}
    return [dict(mode="grow"), dict(mode="trt"), dict(mode="trt", ranges=first),
            dict(mode="fixed", ranges=maxima.ranges())]


@pytest.mark.parametrize("num_bins", [2048, 6])
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_collect_many_equals_sequential_collect(num_bins, num_threads, caplog):
    from int8batch import _kernels_calib as K
    stream = _stream(num_bins + num_threads)
    old = K._set_min_chunk(1000)   # many pieces per tensor, so the threads really split them
    try:
        for kw in _modes(stream):
            one = HistogramCollector(num_bins, num_threads=1, **kw)
            many = HistogramCollector(num_bins, num_threads=num_threads, **kw)
            caplog.clear()
            with caplog.at_level("WARNING"):
                for b in stream:
                    for name, x in b.items():
                        one.collect(name, x)
                seq_log = [r.getMessage() for r in caplog.records]
                caplog.clear()
                for b in stream:
                    many.collect_many(b)
                many_log = [r.getMessage() for r in caplog.records]
            _assert_same_collectors(one, many)
            assert sorted(seq_log) == sorted(many_log) and len(seq_log) == 1, kw   # once, for 'nan'
    finally:
        K._set_min_chunk(old)


def test_collect_many_growth_and_first_range_by_hand():
    c = HistogramCollector(num_bins=4)
    c.collect_many({"a": np.zeros(3, np.float32), "b": np.array([3.0], np.float32)})
    assert c.stats("a").width == 0.0 and list(c.stats("a").hist) == [3, 0, 0, 0]
    assert c.stats("b").hist_max == 4.0 and list(c.stats("b").hist) == [0, 0, 0, 1]
    c.collect_many({"a": np.array([1.0], np.float32), "b": np.array([0.5, 100.0], np.float32)})
    assert c.stats("a").hist_max == 2.0 and list(c.stats("a").hist) == [3, 0, 1, 0]
    assert c.stats("b").hist_max == 128.0 and list(c.stats("b").hist) == [2, 0, 0, 1]
    t = HistogramCollector(num_bins=4, mode="trt", ranges={"b": 3.0})
    t.collect_many({"b": np.array([3.0, 5.0], np.float32)})     # 5 > 3: range 6
    assert t.stats("b").hist_max == 6.0 and list(t.stats("b").hist) == [0, 0, 1, 1]


def test_collect_many_then_merge_and_collect():
    stream = _stream(4)
    a, b, whole = HistogramCollector(), HistogramCollector(), HistogramCollector()
    for i, batch in enumerate(stream):
        (a if i < 3 else b).collect_many(batch)
        for name, x in batch.items():
            whole.collect(name, x)
    _assert_same_collectors(a.merge(b), whole)
    a.reset()
    assert a.names() == [] and len(a) == 0
    a.collect_many(stream[0])           # plans are rebuilt after reset
    a.collect("grow", stream[1]["grow"])
    assert a.stats("grow").count == stream[0]["grow"].size + stream[1]["grow"].size


def test_collect_many_fixed_range_missing_leaves_no_state():
    hc = HistogramCollector(num_bins=4, mode="fixed", ranges={"a": 2.0})
    with pytest.raises(CalibrationError, match="'b'"):
        hc.collect_many({"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    assert hc.names() == []
    hc.collect_many({"a": np.array([1.0, 3.0], np.float32)})
    assert hc.stats("a").over_count == 1
    with pytest.raises(CalibrationError, match="dtype"):
        hc.collect_many({"a": np.array(["x"])})
    hc.collect_many({})
    assert hc.names() == ["a"]


@pytest.mark.parametrize("num_threads", [1, 3])
def test_max_collector_collect_many_equals_collect(num_threads):
    stream = _stream(8)
    one, many = MaxCollector(num_threads=1), MaxCollector(num_threads=num_threads)
    for b in stream:
        many.collect_many(b)
        for name, x in b.items():
            one.collect(name, x)
    assert one.names() == many.names() and one.ranges() == many.ranges()
    for name in one.names():
        x, y = one.stats(name), many.stats(name)
        assert (x.amax, x.count, x.nan_count, x.inf_count, x.min, x.max) == \
            (y.amax, y.count, y.nan_count, y.inf_count, y.min, y.max)
        assert math.copysign(1.0, x.max) == math.copysign(1.0, y.max)


@pytest.mark.parametrize("many", [False, True])
def test_zero_min_max_keeps_the_first_sign(many):
    # a later batch's zero of the other sign does not replace the min/max (strictly passed only)
    c = HistogramCollector(num_bins=4)
    for x in ([0.0, 1.0], [-0.0, 2.0], [-0.0], [3.0, 0.0]):
        a = np.array(x, np.float32)
        c.collect_many({"t": a, "n": -a}) if many else (c.collect("t", a), c.collect("n", -a))
    assert c.stats("t").min == 0.0 and math.copysign(1.0, c.stats("t").min) == 1.0
    assert c.stats("n").max == 0.0 and math.copysign(1.0, c.stats("n").max) == -1.0
