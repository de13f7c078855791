"""Calibration on the GPU (device "cuda"): the device kernels against the CPU kernels, the collectors on
device activations against the CPU collectors on the same activations, calibrate() end to end, memory.

Needs a GPU and cuda-python (the kernel tests), and ONNX Runtime's CUDA provider (onnxruntime-gpu) for
the end-to-end tests; each skips cleanly without.  ``INT8BATCH_LITE0`` (a path to
efficientnet_lite0.onnx, tools/export_efficientnet.py) and ``INT8BATCH_ZOO_MODEL`` (an ONNX model of the
zoo, tools/make_zoo.py) add those models to the end-to-end comparison.
"""
import os

import numpy as np
import pytest

from gpu_util import GPU, skip_no_gpu

import int8batch
from int8batch import _kernels_calib as K
from int8batch.calib import thresholds as th
from int8batch.calib.collector import HistogramCollector, MaxCollector

pytestmark = [pytest.mark.gpu, skip_no_gpu]


def _cuda_ort():
    if not GPU:
        return False
    from int8batch.calib.ort_exec import cuda_status
    return cuda_status()[0]


needs_ort_cuda = pytest.mark.skipif(not _cuda_ort(), reason="needs ONNX Runtime's CUDA provider (onnxruntime-gpu)")


@pytest.fixture(scope="module")
def kern():
    from int8batch.cuda.kernels import DeviceKernels
    with DeviceKernels() as k:
        yield k


class Dev:
    """Host arrays copied to device memory (freed at the end of the test)."""

    def __init__(self):
        self.bufs = []

    def put(self, a):
        from int8batch.cuda.buffers import DeviceBuffer
        from int8batch.cuda.kernels import DeviceTensor
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = DeviceBuffer(a.nbytes)
        b.copy_from_host(a.reshape(-1).view(np.uint8))
        self.bufs.append(b)
        return DeviceTensor(b.ptr, a.shape)

    def close(self):
        for b in self.bufs:
            b.close()


@pytest.fixture
def dev():
    d = Dev()
    yield d
    d.close()


def _awkward(rng, n, scale=3.0):
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    if n >= 64:
        special = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -2.0, 2.0],
                           dtype=np.float32)
        x[rng.integers(0, n, 40)] = np.resize(special, 40)
        x[rng.integers(0, n, n // 3)] = 0.0          # ReLU-like zeros
    return x


SIZES = [0, 1, 7, 1000, 65536 + 3, 3_000_001]
RANGES = [8.0, 6.0015, 1e-3, 3.4e38, 2.0 ** -20]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("nbins", [2048, 128, 6])
def test_histogram_kernel_equals_cpu_kernel(kern, dev, n, nbins):
    rng = np.random.default_rng(n + nbins)
    xs = [_awkward(rng, n), _awkward(rng, max(n // 2, 1), scale=0.01), np.abs(_awkward(rng, n))]
    for hm in RANGES:
        hist_max = [hm] * len(xs)
        want = np.zeros((len(xs), nbins), np.int64)
        cpu = K.abs_histogram_many(xs, np.array(hist_max), want, 1)
        got = np.full((len(xs), nbins), -1, np.int64)
        gpu = kern.abs_histogram_many([dev.put(x) for x in xs], hist_max, got)
        np.testing.assert_array_equal(got, want, err_msg=f"histograms differ at hist_max {hm}")
        for name, c, g in zip(("amax", "vmin", "vmax", "nan", "inf", "over"), cpu, gpu):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(c), err_msg=f"{name} differs at hist_max {hm}")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7, 9, 4099, 65536 + 5])
def test_histogram_kernel_on_views_at_every_alignment(kern, dev, n):
    # the kernel reads 16 bytes at a time after a head of values up to the first 16-byte
    # boundary and before a tail of n % 4: views starting 0-3 floats past a boundary
    rng = np.random.default_rng(n)
    whole = _awkward(rng, n + 3 + 64)
    big = dev.put(whole)
    from int8batch.cuda.kernels import DeviceTensor
    xs = [DeviceTensor(big.ptr + 4 * off, (n,)) for off in range(4)]
    hosts = [whole[off:off + n] for off in range(4)]
    want = np.zeros((4, 64), np.int64)
    cpu = K.abs_histogram_many(hosts, np.array([4.0] * 4), want, 1)
    got = np.full((4, 64), -1, np.int64)
    gpu = kern.abs_histogram_many(xs, [4.0] * 4, got)
    np.testing.assert_array_equal(got, want)
    for name, c, g in zip(("amax", "vmin", "vmax", "nan", "inf", "over"), cpu, gpu):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c), err_msg=name)
    assert want.sum() + np.asarray(cpu[3]).sum() + np.asarray(cpu[4]).sum() == 4 * n


def test_max_kernel_equals_cpu_kernel(kern, dev):
    rng = np.random.default_rng(5)
    xs = [_awkward(rng, n) for n in SIZES] + [np.full(100, np.nan, np.float32), np.zeros(10, np.float32)]
    cpu = K.abs_max_many(xs, 1)
    gpu = kern.abs_max_many([dev.put(x) for x in xs])
    for name, c, g in zip(("amax", "vmin", "vmax", "nan", "inf"), cpu, gpu):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c), err_msg=name)


def test_bad_ranges_raise_as_on_the_cpu(kern, dev):
    x = dev.put(np.ones(10))
    for hm in (0.0, -1.0, float("inf"), 1e-320):
        with pytest.raises(ValueError):
            K.abs_histogram(np.ones(10, np.float32), hm, np.zeros(2048, np.int64), 1)
        with pytest.raises(ValueError):
            kern.abs_histogram(x, hm, np.zeros(2048, np.int64))


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 1000), (64, 50_000), (5, 0)])
def test_sum_rows_kernel_equals_cpu_kernel(kern, dev, rows, cols):
    from int8batch.cuda.buffers import DeviceBuffer
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    start = rng.standard_normal(cols)
    want = start.copy()
    K.sum_rows(x, want, 1)
    with DeviceBuffer(max(8 * cols, 8)) as acc:
        if cols:
            acc.copy_from_host(start)
        kern.sum_rows(dev.put(x), acc.ptr, rows, cols)
        kern.synchronize()
        got = acc.copy_to_host(np.empty(cols)) if cols else np.empty(0)
    np.testing.assert_array_equal(got, want)


def test_lattice_kernel(kern, dev):
    step = 1 / 128
    on = (np.arange(-300, 300) * step).astype(np.float32)
    assert kern.lattice_worst(dev.put(on), step) == 0.0
    off = on.copy()
    off[17] += step / 4
    assert abs(kern.lattice_worst(dev.put(off), step) - 0.25) < 1e-6
    off[3] = np.nan
    assert kern.lattice_worst(dev.put(off), step) == 1.0


@pytest.mark.parametrize("mode", ["grow", "trt", "fixed"])
def test_collectors_on_device_equal_cpu_collectors(kern, dev, mode):
    """Several batches, ranges that grow, tensors that start all-zero: the same TensorStats."""
    rng = np.random.default_rng(11)
    batches = []
    for b in range(5):
        a = _awkward(rng, 20_000, scale=1.0 + 3 * b)                 # the range grows batch after batch
        z = np.zeros(500, np.float32) if b < 2 else _awkward(rng, 500)  # zero until batch 2
        batches.append({"a": a, "z": z, "c": np.abs(_awkward(rng, 3000, scale=0.5))})
    ranges = None
    if mode == "fixed":
        m = MaxCollector()
        for arrays in batches:
            m.collect_many(arrays)
        ranges = m.ranges()
    cpu = HistogramCollector(2048, mode=mode, ranges=ranges)
    gpu = HistogramCollector(2048, mode=mode, ranges=ranges, kernels=kern)
    gmax = MaxCollector(kernels=kern)
    for arrays in batches:
        cpu.collect_many(arrays)
        on_dev = {k: dev.put(v) for k, v in arrays.items()}
        gpu.collect_many(on_dev)
        gmax.collect_many(on_dev)
    if ranges is not None:
        assert gmax.ranges() == ranges
    for name in cpu.names():
        c, g = cpu.stats(name), gpu.stats(name)
        np.testing.assert_array_equal(g.hist, c.hist, err_msg=name)
        assert (g.width, g.amax, g.count, g.nan_count, g.inf_count, g.over_count) == \
               (c.width, c.amax, c.count, c.nan_count, c.inf_count, c.over_count), name
        for method in th.METHODS:
            assert th.compute_amax(method, g) == th.compute_amax(method, c), (name, method)


# ----------------------------------------------------------------------------- end to end
def _models():
    from int8batch.runner.mnist import MODEL
    out = [("lenet", MODEL, None)]
    for env, name in (("INT8BATCH_LITE0", "efficientnet_lite0"), ("INT8BATCH_ZOO_MODEL", "zoo")):
        path = os.environ.get(env)
        if path and os.path.exists(path):
            out.append((name, path, None))
    return out


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """300 bundled MNIST training images packed in files of 50."""
    out = tmp_path_factory.mktemp("mnist") / "b"
    int8batch.pack("mnist", out, batch_size=50, limit=300)
    return out


@pytest.fixture(scope="module")
def photo_batches(tmp_path_factory):
    """64 real photos (scikit-image's, flipped and cropped) packed at 224 for the ImageNet models."""
    pytest.importorskip("skimage")
    import cv2
    from skimage import data as skd
    root = tmp_path_factory.mktemp("photos")
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
             "motorcycle_left", "retina"]
    k = 0
    for name in names:
        try:
            img = getattr(skd, name)()
        except Exception:  # noqa: BLE001 - a sample not bundled with this scikit-image
            continue
        if img.ndim != 3:
            continue
        for flip in (False, True):
            for crop in range(4):
                h, w = img.shape[:2]
                c = img[crop * h // 16:h - crop * h // 20, crop * w // 20:w - crop * w // 16]
                c = c[:, ::-1] if flip else c
                cv2.imwrite(str(root / f"img{k:03d}.png"), np.ascontiguousarray(c[..., ::-1]))
                k += 1
    out = tmp_path_factory.mktemp("photo_batches") / "b"      # beside the photos: pack refuses a folder in them
    int8batch.pack(root, out, batch_size=16, preset="efficientnet-lite")
    return out


def _batches_for(name, mnist, photo_batches):
    return mnist if name == "lenet" else photo_batches


def _mirror_kernels():
    """DeviceKernels that also run the CPU kernels on host copies of the same device activations and
    require every result to be identical (a call-by-call check of the real calibrate() path)."""
    from int8batch.cuda.kernels import DeviceKernels

    class Mirror(DeviceKernels):
        values = 0

        def abs_histogram_many(self, xs, hist_max, out, num_threads=1):
            got = super().abs_histogram_many(xs, hist_max, out)
            host = [x.to_host().reshape(-1) for x in xs]
            want = np.zeros_like(out)
            ref = K.abs_histogram_many(host, np.asarray(hist_max, np.float64), want, os.cpu_count() or 1)
            np.testing.assert_array_equal(out, want)
            for g, r in zip(got, ref):
                np.testing.assert_array_equal(g, r)
            Mirror.values += sum(h.size for h in host)
            return got

        def abs_max_many(self, xs, num_threads=1):
            got = super().abs_max_many(xs)
            ref = K.abs_max_many([x.to_host().reshape(-1) for x in xs], os.cpu_count() or 1)
            for g, r in zip(got[:5], ref[:5]):
                np.testing.assert_array_equal(g, r)
            return got

    return Mirror


@needs_ort_cuda
@pytest.mark.parametrize("name,path,_", _models())
@pytest.mark.parametrize("method", ["entropy", "minmax", "mse", "percentile"])
def test_device_statistics_equal_cpu_statistics_on_the_same_activations(name, path, _, method, mnist,
                                                                        photo_batches, tmp_path, monkeypatch):
    """calibrate(device='cuda') with every device kernel call checked against the CPU kernel on a host copy
    of the same activations; and two runs give the same cache bytes.

    ONNX Runtime's CUDA kernels do not compute the CPU provider's activations bit for bit, so equality
    is checked on the activations the GPU run computed.  Equal statistics give equal thresholds and so
    an equal cache.
    """
    from int8batch.calib import api, passes
    batches = _batches_for(name, mnist, photo_batches)
    a = api.calibrate(path, batches, tmp_path / "a", method=method, device="cuda", keep_float=0,
                      bias_correction=False)
    assert a.device == "cuda" and a.executed_by.startswith("ONNX Runtime CUDA provider")
    mirror = _mirror_kernels()
    monkeypatch.setattr(api, "DeviceKernels", mirror)
    monkeypatch.setattr(passes, "DeviceKernels", mirror)      # the pass makes them
    b = api.calibrate(path, batches, tmp_path / "b", method=method, device="cuda", keep_float=0,
                      bias_correction=False)
    assert mirror.values > 0
    print(f"{name} {method}: {mirror.values} activation values binned identically on GPU and CPU")
    assert open(a.paths["cache"], "rb").read() == open(b.paths["cache"], "rb").read(), "not reproducible"


@needs_ort_cuda
@pytest.mark.parametrize("name,path,_", _models())
def test_cpu_and_gpu_calibrations_agree(name, path, _, mnist, photo_batches, tmp_path):
    """Across providers (different float kernels): every minmax amax within 1e-4; the entropy figures printed."""
    from int8batch.calib import api
    batches = _batches_for(name, mnist, photo_batches)
    for method in ("minmax", "entropy"):
        c = api.calibrate(path, batches, None, method=method, device="cpu")
        g = api.calibrate(path, batches, None, method=method, device="cuda")
        assert c.amax.keys() == g.amax.keys()
        worst = max(abs(g.amax[k] - c.amax[k]) / max(c.amax[k], 1e-12) for k in c.amax)
        print(f"{name} {method}: largest relative amax difference cpu/cuda {worst:.2e}")
        if method == "minmax":    # entropy's KL argmin may move a bin on last-bit differences: reported only
            assert worst < 1e-4


def _gram_cases():
    from gram_twin import DEVICE_LAYERS
    from int8batch.onnx.layers import Layer
    big = [  # several row blocks and tiles: a depthwise layer at its row cap, a 1x1 conv of 200 channels
        (Layer(key="dw56", op="Conv", input="x", weight="w", bias="", group=32, kernel=(3, 3), strides=(1, 1),
               dilations=(1, 1), pads=(1, 1, 1, 1)), (32, 1, 3, 3), (4, 32, 56, 56)),
        (Layer(key="pw200", op="Conv", input="x", weight="w", bias="", group=1, kernel=(1, 1), strides=(1, 1),
               dilations=(1, 1), pads=(0, 0, 0, 0)), (64, 200, 1, 1), (2, 200, 30, 30)),
    ]
    return DEVICE_LAYERS + big


@pytest.mark.parametrize("ly,w_shape,x_shape", _gram_cases(), ids=[c[0].key for c in _gram_cases()])
def test_device_moments_kernel_matches_the_host_moments(kern, dev, ly, w_shape, x_shape):
    """i8b_patch_gram through DeviceMomentCollector against the host's im2col moments, same images and rows."""
    from int8batch.calib import rounding as R
    rng = np.random.default_rng(9)
    batches = [rng.standard_normal(x_shape).astype(np.float32) for _ in range(3)]
    host = R.MomentCollector([ly], {"w": w_shape}, max_images=7)
    gpu = R.DeviceMomentCollector([ly], {"w": w_shape}, kern, max_images=7)
    try:
        for b in batches:
            host.collect_many({"x": b})
            gpu.collect_many({"x": dev.put(b)})
        gpu.wait()
    finally:
        gpu.close()
    assert gpu.rows[ly.key] == host.rows[ly.key] > 0
    want = host.h[ly.key]
    np.testing.assert_allclose(gpu.h[ly.key], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    print(f"{ly.key}: {gpu.rows[ly.key]} patches of {want.shape[1]} values, largest difference "
          f"{np.abs(gpu.h[ly.key] - want).max() / np.abs(want).max():.1e} of max |H|")


@needs_ort_cuda
def test_auto_with_bias_correction_and_sensitivity_on_the_gpu(mnist, tmp_path):
    from int8batch.calib import api
    from int8batch.runner.mnist import MODEL
    # nearest weight rounding: the error-compensating one may pick other integers on last-bit input differences
    g = api.calibrate(MODEL, mnist, tmp_path / "g", device="cuda", weight_rounding="nearest")
    c = api.calibrate(MODEL, mnist, tmp_path / "c", device="cpu", weight_rounding="nearest")
    assert set(g.paths) == set(c.paths)
    import onnx
    from onnx import numpy_helper
    gb = {t.name: numpy_helper.to_array(t) for t in onnx.load(g.paths["qdq"]).graph.initializer}
    cb = {t.name: numpy_helper.to_array(t) for t in onnx.load(c.paths["qdq"]).graph.initializer}
    assert gb.keys() == cb.keys()
    for k in gb:
        np.testing.assert_allclose(gb[k].astype(np.float64), cb[k].astype(np.float64), rtol=1e-3, atol=1e-6,
                                   err_msg=k)


def _relu6_block(path):
    """input (3x224x224) -> Conv 3x3 -> Clip(0, 6) -> Conv 1x1 -> GlobalAveragePool: one centrable ReLU6."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(4)
    inits = [numpy_helper.from_array(r.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(r.normal(size=8).astype(np.float32) + 1, "b1"),
             numpy_helper.from_array(r.normal(size=(4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["p"]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8      # ONNX Runtime 1.31 reads IR <= 13; a newer onnx writes 14 by default
    onnx.save(m, str(path))
    return str(path)


@needs_ort_cuda
@pytest.mark.parametrize("padded", [False, True])
def test_centring_is_the_same_on_the_gpu(photo_batches, tmp_path, padded):
    """auto centres the same tensors on both devices; their scales are the half bound on both
    (``padded``: --centre-padded, the depthwise inputs too, through explicit Pad nodes)."""
    from int8batch.calib import api
    from int8batch.calib.cache import read_trt_cache
    path = os.environ.get("INT8BATCH_LITE0")
    path = path if path and os.path.exists(path) else _relu6_block(tmp_path / "m.onnx")
    kw = dict(weight_rounding="nearest", centre_padded=padded)
    g = api.calibrate(path, photo_batches, tmp_path / "g", device="cuda", **kw)
    c = api.calibrate(path, photo_batches, tmp_path / "c", device="cpu", **kw)
    assert g.device == "cuda" and g.centred and [t.as_dict() for t in g.centred] == [t.as_dict() for t in c.centred]
    cg, cc = read_trt_cache(g.paths["cache"]).scales, read_trt_cache(c.paths["cache"]).scales
    assert cg.keys() == cc.keys()
    for t in g.centred:
        assert g.amax[t.name] == c.amax[t.name] == t.half
        assert cg[t.original] == cc[t.original] == np.float32(t.original_amax / 127)
    worst = max(abs(g.amax[k] - c.amax[k]) / max(c.amax[k], 1e-12) for k in c.amax)
    print(f"{os.path.basename(path)}{' --centre-padded' if padded else ''}: {len(g.centred)} tensors centred on "
          f"both devices; largest relative amax difference cpu/cuda {worst:.2e}")


@needs_ort_cuda
def test_device_memory_comes_back(mnist, tmp_path):
    from int8batch.calib import api
    from int8batch.cuda import runtime as cu
    from int8batch.runner.mnist import MODEL

    api.calibrate(MODEL, mnist, None, method="entropy", device="cuda")   # one-time: context, cuDNN, kernels
    cu.device_synchronize()
    free0 = cu.mem_get_info()[0]
    api.calibrate(MODEL, mnist, tmp_path / "a", device="cuda", device_budget=1 << 20)
    cu.device_synchronize()
    free1 = cu.mem_get_info()[0]

    class Stop(Exception):
        pass

    def boom(done, total, phase=None, unit=None):
        if done >= 2:
            raise Stop()

    with pytest.raises(Stop):
        api.calibrate(MODEL, mnist, tmp_path / "b", method="minmax", device="cuda", progress=boom)
    cu.device_synchronize()
    free2 = cu.mem_get_info()[0]
    print(f"free device memory: {free0 / 2**20:.1f} MiB, after a calibration {free1 / 2**20:.1f} MiB, "
          f"after an interrupted one {free2 / 2**20:.1f} MiB")
    assert free1 >= free0 - (8 << 20) and free2 >= free0 - (8 << 20)


@needs_ort_cuda
def test_eval_and_run_report_the_cuda_provider(mnist, tmp_path):
    from int8batch.calib import api
    from int8batch.calib.evaluate import evaluate
    from int8batch.runner.mnist import MODEL
    res = api.calibrate(MODEL, mnist, tmp_path / "c", device="cuda")
    with int8batch.BatchSet(mnist) as bs:
        g = evaluate(MODEL, res.paths["qdq"], bs, 50, device="cuda")
        c = evaluate(MODEL, res.paths["qdq"], bs, 50, device="cpu")
    print("executed by:", g.executed_by)
    assert g.executed_by["fp32"].startswith("ONNX Runtime CUDA provider")
    assert "CUDA" in g.executed_by["int8"]
    assert c.executed_by["fp32"] == "ONNX Runtime CPU provider"
    assert abs(g.top1_agreement - c.top1_agreement) <= 0.01
