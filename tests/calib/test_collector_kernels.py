"""The collectors' kernel interface (what the GPU path plugs into), checked on the CPU.

A collector given ``kernels=`` must do every computation on the data through
them and never look at the data itself (device tensors cannot be read from
the host): a twin backend built on the NumPy reference, whose tensors are
opaque boxes, must give the same statistics as the default CPU kernels.
The host-side pieces of :mod:`int8batch.cuda.kernels` (the job layout shared
with kernels.cu, the min/max key decoding, the over-count threshold) are
checked here too.
"""
import math
import os
import re

import numpy as np
import pytest

import reference_calib as R
from int8batch import _kernels_calib as K
from int8batch.calib import thresholds as th
from int8batch.calib.collector import HistogramCollector, MaxCollector


class Box:
    """Opaque data: only ``size`` and ``shape`` are visible, like a DeviceTensor's."""

    def __init__(self, a):
        self._a = np.asarray(a, np.float32).reshape(-1)
        self.size, self.shape = self._a.size, np.shape(a)

    def __array__(self, *a, **k):
        raise AssertionError("the collector read the data itself instead of going through its kernels")


class TwinKernels:
    """The kernel interface on the NumPy twin of reference_calib."""

    calls = 0

    @staticmethod
    def prepare(name, x):
        assert isinstance(x, Box)
        return x

    def abs_histogram_many(self, xs, hist_max, out, num_threads=1):
        self.calls += 1
        res = R.abs_histogram_many([x._a for x in xs], hist_max, out.shape[1])
        for i, (h, _) in enumerate(res):
            out[i] = h
        cols = list(zip(*[r[1] for r in res]))
        return tuple(np.array(c, dtype=np.int64 if k >= 3 else np.float64) for k, c in enumerate(cols))

    def abs_histogram(self, x, hist_max, out, num_threads=1):
        res = self.abs_histogram_many([x], [hist_max], out.reshape(1, -1))
        return tuple(v[0].item() for v in res)

    def abs_max_many(self, xs, num_threads=1):
        res = [R.abs_histogram(x._a, 1.0, 2)[1] for x in xs]
        cols = list(zip(*res))
        out = [np.array(c, dtype=np.int64 if k >= 3 else np.float64) for k, c in enumerate(cols)]
        out[5] = np.zeros(len(xs), np.int64)
        return tuple(out)

    def abs_max(self, x, num_threads=1):
        return tuple(v[0].item() for v in self.abs_max_many([x]))


def _stream(seed=0):
    r = np.random.default_rng(seed)
    out = []
    for b in range(5):
        a = (r.standard_normal(4000) * (1 + 2 * b)).astype(np.float32)
        a[r.integers(0, 4000, 5)] = [np.nan, np.inf, -0.0, 0.0, -np.inf]
        z = np.zeros(300, np.float32) if b < 2 else np.abs(r.standard_normal(300)).astype(np.float32)
        out.append({"a": a, "z": z})
    return out


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("mode", ["grow", "trt", "fixed"])
def test_a_collector_with_other_kernels_gives_the_same_statistics(mode):
    batches = _stream()
    ranges = None
    if mode == "fixed":
        m = MaxCollector()
        for arrays in batches:
            m.collect_many(arrays)
        ranges = m.ranges()
    twin = TwinKernels()
    ref = HistogramCollector(256, mode=mode, ranges=ranges)
    got = HistogramCollector(256, mode=mode, ranges=ranges, kernels=twin)
    gmax = MaxCollector(kernels=twin)
    for i, arrays in enumerate(batches):
        ref.collect_many(arrays)
        boxed = {k: Box(v) for k, v in arrays.items()}
        if i % 2:
            for k, v in boxed.items():
                got.collect(k, v)
        else:
            got.collect_many(boxed)
        gmax.collect_many(boxed)
    assert twin.calls > 0
    if ranges is not None:
        assert gmax.ranges() == ranges
    for name in ref.names():
        a, b = ref.stats(name), got.stats(name)
        np.testing.assert_array_equal(b.hist, a.hist)
        assert (b.width, b.amax, b.count, b.nan_count, b.inf_count, b.over_count) == \
               (a.width, a.amax, a.count, a.nan_count, a.inf_count, a.over_count)
        for method in th.METHODS:
            assert th.compute_amax(method, b) == th.compute_amax(method, a)


def test_job_layout_matches_the_cuda_struct():
    from int8batch.cuda import kernels as dk
    src = open(os.path.join(os.path.dirname(dk.__file__), "kernels.cu")).read()
    body = re.search(r"struct i8b_job \{(.*?)\};", src, re.S).group(1)
    fields = re.findall(r"^\s*(const float \*|long long|double|float|int)\s*\*?(\w+);", body, re.M)
    sizes = {"const float *": 8, "long long": 8, "double": 8, "float": 4, "int": 4}
    offset, layout = 0, []
    for ctype, name in fields:
        size = sizes[ctype]
        offset = -(-offset // size) * size
        layout.append((name, offset, size))
        offset += size
    assert [n for n, _, _ in layout] == list(dk.JOB.names)
    for name, off, size in layout:
        assert dk.JOB.fields[name][1] == off and dk.JOB.fields[name][0].itemsize == size, name
    assert dk.JOB.itemsize == offset == 32


def _key(f):
    """NumPy twin of kernels.cu's i8b_key (order-preserving float -> uint32)."""
    u = np.asarray(f, np.float32).view(np.uint32)
    return np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.uint32)


def test_min_max_keys_order_like_floats_and_decode_back():
    from int8batch.cuda.kernels import _decode
    v = np.array([-np.inf, -3.4e38, -2.5, -1e-45, -0.0, 0.0, 1e-45, 1.0, 6.0015, 3.4e38, np.inf], np.float32)
    k = _key(v)
    assert (np.diff(k.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(_decode(k), v.astype(np.float64))
    assert np.signbit(_decode(_key(np.float32(-0.0))))


@pytest.mark.parametrize("h", [6.0, 6.0015, 1e-3, 0.1, 3.0e38, 2.0 ** -20, math.pi])
def test_over_threshold_is_the_cpu_kernels_over_count(h):
    from int8batch.cuda.kernels import float_below
    thr = float_below(h)
    assert float(thr) <= h and float(np.nextafter(thr, np.float32(np.inf))) > h
    r = np.random.default_rng(1)
    x = np.concatenate([r.uniform(0, min(2 * h, 3.4e38), 5000), [h, np.float32(h), float(thr)]]).astype(np.float32)
    over = K.abs_histogram(x, h, np.zeros(64, np.int64), 1)[5]
    assert over == int((np.abs(x) > thr).sum())


def test_device_tensor_views_are_pointer_arithmetic():
    from int8batch.cuda.kernels import DeviceTensor
    t = DeviceTensor(0x1000, (8, 3, 4, 4))
    assert (len(t), t.size, t.nbytes) == (8, 384, 1536)
    s = t[2:5]
    assert (s.ptr, s.shape) == (0x1000 + 4 * 48 * 2, (3, 3, 4, 4))
    assert t[6:100].shape == (2, 3, 4, 4) and t[5:2].shape == (0, 3, 4, 4)
    assert t.reshape(-1).shape == (384,) and t.reshape(8, -1).shape == (8, 48)
    with pytest.raises(ValueError):
        t.reshape(5, -1, 7)
    with pytest.raises(TypeError):
        t[3]
