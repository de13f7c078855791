"""Error-compensating weight rounding (int8batch.calib.rounding): patches, the GPTQ update, the artefacts."""
import itertools

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import int8batch
from int8batch.calib import api
from int8batch.errors import CalibrationError
from int8batch.calib import rounding as R
from int8batch.onnx.layers import Layer
from gram_twin import DEVICE_LAYERS


def _naive_patches(x, w_shape, group, strides, pads, dil):
    """Loop-by-loop im2col: (groups, d, rows) with d in (channel, kernel) order, rows in (image, position)."""
    n, c = x.shape[:2]
    kernel = w_shape[2:]
    nd = len(kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    out = [(xp.shape[2 + i] - (kernel[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    cg = c // group
    cols = []
    for img in range(n):
        for pos in itertools.product(*(range(o) for o in out)):
            col = np.empty((group, cg * int(np.prod(kernel))), np.float32)
            for gi in range(group):
                k = 0
                for ch in range(cg):
                    for tap in itertools.product(*(range(kk) for kk in kernel)):
                        idx = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dil))
                        col[gi, k] = xp[(img, gi * cg + ch) + idx]
                        k += 1
            cols.append(col)
    return np.stack(cols, axis=2)


GEOMETRIES = [  # (input shape, weight shape, group, strides, pads, dilations)
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 4, 9, 9), (4, 1, 3, 3), 4, (2, 2), (1, 0, 1, 0), (1, 1)),          # depthwise, stride 2, uneven pads
    ((2, 6, 8, 8), (6, 3, 2, 2), 2, (1, 2), (0, 0, 0, 0), (2, 1)),          # grouped, dilated
    ((3, 5, 4, 4), (7, 5, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1)),          # pointwise
    ((2, 3, 11), (2, 3, 3), 1, (2,), (1, 1), (1,)),                         # 1-D
]


@pytest.mark.parametrize("xs,ws,group,strides,pads,dil", GEOMETRIES)
def test_patches_equal_a_loop_by_loop_im2col(xs, ws, group, strides, pads, dil):
    x = np.random.default_rng(0).standard_normal(xs).astype(np.float32)
    ly = Layer(key="y", op="Conv", input="x", weight="w", bias="", group=group, kernel=tuple(ws[2:]),
               strides=strides, dilations=dil, pads=pads)
    got = R._patches(x, ly, ws)
    want = _naive_patches(x, ws, group, strides, pads, dil)
    np.testing.assert_array_equal(got, want)
    h, rows = R.patch_moments(x, ly, ws)
    np.testing.assert_allclose(h, np.einsum("gdr,ger->gde", want.astype(np.float64), want), rtol=1e-5, atol=1e-4)
    assert rows == want.shape[2]


def test_gemm_patches_are_the_input_rows():
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    ly = Layer(key="y", op="Gemm", input="x", weight="w", bias="", trans_b=1)
    h, rows = R.patch_moments(x, ly, (3, 8))
    np.testing.assert_allclose(h[0], x.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    assert rows == 5


def _problem(rng, g=2, rows=6, d=12, corr=0.9):
    w = rng.uniform(-127, 127, (g, rows, d))
    w[:, :, 0] = 127.0 * np.sign(w[:, :, 0])          # each row's max, exactly 127
    a = rng.standard_normal((g, d, 4 * d))
    mix = np.eye(d) * (1 - corr) + corr / d            # correlated inputs
    x = np.einsum("de,ger->gdr", mix, a) + 0.3
    return w, np.einsum("gdr,ger->gde", x, x)


def _err(w, q, h):
    e = w - q
    return np.einsum("grd,gde,gre->", e, h, e)


def test_uncorrelated_inputs_give_nearest_rounding():
    rng = np.random.default_rng(2)
    w, _ = _problem(rng)
    h = np.stack([np.diag(rng.uniform(0.5, 2, w.shape[2])) for _ in range(w.shape[0])])
    np.testing.assert_array_equal(R.gptq_round(w, h, damp=0.0), np.clip(np.rint(w), -127, 127))


def test_compensation_lowers_the_output_error_and_keeps_each_rows_max():
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(40):
        w, h = _problem(rng)
        q = R.gptq_round(w, h)
        near = np.clip(np.rint(w), -127, 127)
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
        assert (np.abs(q[:, :, 0]) == 127).all() and (np.sign(q[:, :, 0]) == np.sign(w[:, :, 0])).all()
        assert np.abs(q - w).max() < 4, "compensation moved a weight far from its value"
        ratios.append(_err(w, q, h) / _err(w, near, h))
    ratios = np.array(ratios)
    print(f"output error, compensated / nearest: median {np.median(ratios):.3f}, worst {ratios.max():.3f}")
    assert np.median(ratios) < 0.7 and (ratios < 1.0).mean() >= 0.9


def test_dead_inputs_keep_nearest_rounding():
    rng = np.random.default_rng(4)
    w, h = _problem(rng, g=1, d=6)
    h[:, 3, :] = h[:, :, 3] = 0.0                      # input 3 is never non-zero
    q = R.gptq_round(w, h)
    np.testing.assert_array_equal(q[:, :, 3], np.clip(np.rint(w[:, :, 3]), -127, 127))


@pytest.fixture(scope="module")
def lenet_runs(tmp_path_factory):
    from int8batch.runner.mnist import MODEL
    root = tmp_path_factory.mktemp("rounding")
    b = root / "b"
    int8batch.pack("mnist", b, batch_size=50, limit=300)
    # LeNet's conv2 and Gemms have 500-800 values per patch: above the default limit, raised here so that
    # the method itself is tested on more than one layer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "MAX_PATCH", 1024)
        runs = {wr: api.calibrate(MODEL, b, root / wr, weight_rounding=wr, device="cpu")
                for wr in ("nearest", "gptq")}
    data = None
    return MODEL, runs, data, b


def _weights(path):
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return {k[: -len("_quantized")]: (v, inits[k[: -len("_quantized")] + "_scale"])
            for k, v in inits.items() if k.endswith("_quantized")}


def test_auto_rounds_with_compensation_and_keeps_trt_scales(lenet_runs):
    model, runs, _, _ = lenet_runs
    near, comp = _weights(runs["nearest"].paths["qdq"]), _weights(runs["gptq"].paths["qdq"])
    assert near.keys() == comp.keys() and near
    changed = 0
    for name, (q, s) in comp.items():
        np.testing.assert_array_equal(s, near[name][1])          # same scales: max|W| / 127
        per_row = np.abs(q.reshape(q.shape[0], -1).astype(int)).max(axis=1) if q.ndim > 1 else None
        if per_row is not None and q.ndim == 4:
            assert (per_row == 127).all(), name                  # TensorRT's max/127 finds the same scale
        changed += int((q != near[name][0]).sum())
    assert changed > 0
    corrected = {t.name: numpy_helper.to_array(t) for t in onnx.load(runs["gptq"].paths["corrected"]).graph.initializer}
    for name, (q, s) in comp.items():
        if name in corrected and q.ndim == 4:
            w = corrected[name]
            np.testing.assert_allclose(np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127, s, rtol=1e-6)
            np.testing.assert_allclose(w, q * s.reshape(-1, 1, 1, 1), rtol=1e-6, atol=1e-12)


def test_each_layer_tracks_fp32_better_on_images_it_did_not_see(lenet_runs):
    """The promise of the method: lower output error of each compensated layer (FP32 inputs), measured
    with the second moments of other images than the ones the rounding was computed from."""
    from int8batch.calib.ort_exec import ActivationRunner
    from int8batch.onnx import graph as G
    from int8batch.onnx.facts import ModelFacts
    from int8batch.onnx.layers import layers_of
    model, runs, _, folder = lenet_runs
    facts = ModelFacts.of(model)
    layers = layers_of(facts.model, facts.plan().weights, act=set(facts.quantizable))
    values = G.constant_values(facts.model)
    with int8batch.BatchSet(folder) as bs:
        held_out = np.ascontiguousarray(bs.images(R.ROUNDING_IMAGES, 300 - R.ROUNDING_IMAGES)[0])
    acts = ActivationRunner(facts.model, [ly.input for ly in layers]).run(held_out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "MAX_PATCH", 1024)
        mc = R.MomentCollector(layers, {ly.weight: values[ly.weight].shape for ly in layers}, max_images=10 ** 6)
    mc._cap = {k: 10 ** 12 for k in mc._cap}
    mc.collect_many(acts)
    near, comp = _weights(runs["nearest"].paths["qdq"]), _weights(runs["gptq"].paths["qdq"])
    compared = 0
    for ly in mc.layers:
        (qn, s), (qg, _) = near[ly.weight], comp[ly.weight]
        if (qn == qg).all():
            continue                   # kept nearest (too few patches for its H)
        w = values[ly.weight]
        rows = w.reshape(w.shape[0], -1) if ly.op == "Conv" else (w if ly.trans_b else w.T)
        h = mc.h[ly.key]

        def err(q):
            qr = q.reshape(q.shape[0], -1) if ly.op == "Conv" else (q if ly.trans_b else q.T)
            e = (rows - qr * s[:, None]).astype(np.float64).reshape(h.shape[0], -1, h.shape[1])
            return float(np.einsum("grd,gde,gre->", e, h, e))

        print(f"{ly.key}: held-out output error nearest {err(qn):.4g}, compensated {err(qg):.4g}")
        assert err(qg) < 0.7 * err(qn), ly.key
        compared += 1
    assert compared >= 2


def test_device_tensors_are_read_through_their_host_copies():
    """The GPU path hands DeviceTensor-like objects (``to_host()``): the same moments as from the arrays."""
    copied = []

    class OnDevice:          # a DeviceTensor's interface: shape, len, t[a:b], to_host()
        def __init__(self, a):
            self._a, self.shape = a, a.shape

        def __len__(self):
            return self.shape[0]

        def __getitem__(self, key):
            return OnDevice(self._a[key])

        def to_host(self):
            copied.append(len(self._a))
            return self._a.copy()

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, 9, 9)).astype(np.float32)
    ly = Layer(key="y", op="Conv", input="x", weight="w", bias="", group=4, kernel=(3, 3), strides=(1, 1),
               dilations=(1, 1), pads=(1, 1, 1, 1))
    a, b = (R.MomentCollector([ly], {"w": (4, 1, 3, 3)}, max_images=5) for _ in range(2))
    for k in range(0, 6, 2):       # three batches of 2; the fifth image is the last one used
        a.collect_many({"x": x[k:k + 2]})
        b.collect_many({"x": OnDevice(x[k:k + 2])})
    np.testing.assert_array_equal(a.h["y"], b.h["y"])
    want, rows = R.patch_moments(x[:5], ly, (4, 1, 3, 3))
    # float32 sums in other chunks (batches of 2 against all 5 images): agree to float32's precision of max |H|
    np.testing.assert_allclose(a.h["y"], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert a.rows["y"] == rows == 5 * 81
    assert sum(copied) == 5              # the sixth image never left the device

    # a layer whose row cap is met by the first images: only those images are copied
    copied.clear()
    big = rng.standard_normal((8, 4, 40, 40)).astype(np.float32)     # 1600 patches per image
    c, d = (R.MomentCollector([ly], {"w": (4, 1, 3, 3)}, max_images=8) for _ in range(2))
    c.collect_many({"x": big})
    d.collect_many({"x": OnDevice(big)})
    np.testing.assert_array_equal(c.h["y"], d.h["y"])
    assert c.rows["y"] == d.rows["y"] >= R.MIN_ROWS
    assert sum(copied) == -(-R.MIN_ROWS // 1600) < 8


@pytest.mark.parametrize("ly,w_shape,x_shape", DEVICE_LAYERS, ids=[ly.key for ly, _, _ in DEVICE_LAYERS])
def test_device_moments_match_the_host_ones(ly, w_shape, x_shape):
    """DeviceMomentCollector (geometry records, row caps, mirrored tiles) through the kernel's NumPy twin."""
    from gram_twin import GramKernels
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal(x_shape).astype(np.float32) for _ in range(4)]
    host = R.MomentCollector([ly], {"w": w_shape}, max_images=10)
    kern = GramKernels()
    dev = R.DeviceMomentCollector([ly], {"w": w_shape}, kern, max_images=10)
    for b in batches:
        host.collect_many({"x": b})
        dev.collect_many({"x": b})
    dev.wait()
    dev.close()
    assert host.rows[ly.key] == dev.rows[ly.key] > 0
    want = host.h[ly.key]
    np.testing.assert_allclose(dev.h[ly.key], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_array_equal(dev.h[ly.key], np.swapaxes(dev.h[ly.key], 1, 2))    # mirrored exactly
    assert len(kern.launches) == (0 if ly.key == "c3d" else 4)      # a 3-D Conv is summed on the host
    assert all(b.closed for b in kern.buffers.values())
    if ly.key != "c3d":     # the twin against the loop-by-loop im2col, on the first batch
        geo = R._geometry(ly, w_shape, x_shape)
        rows = R.rows_per_image(ly, w_shape, x_shape) * x_shape[0]
        a = R._patches(batches[0], ly, w_shape).astype(np.float64)
        from gram_twin import patch_gram_twin
        np.testing.assert_allclose(patch_gram_twin(batches[0], geo, rows, a.shape[0]),
                                   a @ np.swapaxes(a, 1, 2), rtol=1e-10, atol=1e-9)


def test_device_moments_stop_at_the_row_cap():
    from gram_twin import GramKernels
    ly = Layer(key="y", op="Conv", input="x", weight="w", bias="", group=4, kernel=(3, 3), strides=(1, 1),
               dilations=(1, 1), pads=(1, 1, 1, 1))
    big = np.random.default_rng(8).standard_normal((8, 4, 40, 40)).astype(np.float32)   # 1600 patches per image
    host = R.MomentCollector([ly], {"w": (4, 1, 3, 3)}, max_images=8)
    kern = GramKernels()
    dev = R.DeviceMomentCollector([ly], {"w": (4, 1, 3, 3)}, kern, max_images=8)
    for c in (host, dev):
        c.collect_many({"x": big[:4]})
        c.collect_many({"x": big[4:]})
    dev.wait()
    assert host.rows["y"] == dev.rows["y"] == 1600 * -(-R.MIN_ROWS // 1600)
    assert kern.launches == [dev.rows["y"]]             # the second batch launched nothing
    np.testing.assert_allclose(dev.h["y"], host.h["y"], rtol=1e-5, atol=1e-6 * np.abs(host.h["y"]).max())

    gemm = Layer(key="g", op="Gemm", input="x", weight="w", bias="", trans_b=1)
    bad = R.DeviceMomentCollector([gemm], {"w": (4, 8)}, GramKernels())
    with pytest.raises(CalibrationError, match="expected 2-D"):
        bad.collect_many({"x": np.zeros((2, 2, 2, 2), np.float32)})   # a Gemm fed a 4-D tensor
