"""The fused HWC->CHW normalization kernel and the recipe, against NumPy twins."""
import numpy as np
import pytest

from int8batch._kernels_preprocess import hwc_to_chw, lut_map_u8
from int8batch.errors import ConfigError
from int8batch.preprocess import PRESETS, PreprocessConfig, preset
from reference import normalize_reference

RNG = np.random.default_rng(7)


def _run_kernel(img, cfg, y0, x0):
    out = np.full(cfg.chw, np.nan, dtype=np.float32)  # poison: every element must be written
    depth = 16 if img.dtype == np.uint16 else 8
    hwc_to_chw(img, y0, x0, cfg.channel_map(img.shape[2]), cfg.lut(depth), out)
    return out


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (31, 17), (480, 641)])
@pytest.mark.parametrize("src_channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_kernel_matches_twin(name, shape, src_channels, dtype):
    h, w = shape
    cfg = preset(name, size=(min(h, 7), min(w, 9)), resize="direct", resize_size=(h, w), crop="center")
    top = np.iinfo(dtype).max
    img = RNG.integers(0, top + 1, size=(h, w, src_channels), dtype=dtype)
    y0, x0 = cfg.crop_origin(h, w)
    got = _run_kernel(img, cfg, y0, x0)
    want = normalize_reference(img, y0, x0, cfg.size, cfg.channels, cfg.scale, cfg.mean, cfg.std)
    np.testing.assert_array_equal(got, want)


def test_kernel_extreme_values_and_offsets():
    img = np.zeros((10, 12, 3), np.uint8)
    img[..., 0], img[..., 2] = 255, 7
    cfg = PreprocessConfig(size=(4, 5), channels="rgb", resize="none", crop="center", scale=1.0,
                           mean=(1, 2, 3), std=(2, 4, 8))
    for y0, x0 in [(0, 0), (6, 7), (3, 2)]:
        got = _run_kernel(img, cfg, y0, x0)
        # hand-computed: R comes from channel 2 (7), B from channel 0 (255)
        assert np.all(got[0] == (7 - 1) / 2) and np.all(got[1] == (0 - 2) / 4) and np.all(got[2] == (255 - 3) / 8)


def test_kernel_rejects_bad_windows_and_tables():
    cfg = PreprocessConfig(size=(4, 4), channels="bgr", resize="none", crop="center")
    img = np.zeros((5, 5, 3), np.uint8)
    out = np.empty(cfg.chw, np.float32)
    with pytest.raises(ValueError, match="crop window"):
        hwc_to_chw(img, 2, 0, cfg.channel_map(3), cfg.lut(8), out)
    with pytest.raises(ValueError, match="channel index"):
        hwc_to_chw(img[:, :, :1].copy(), 0, 0, cfg.channel_map(3), cfg.lut(8), out)
    with pytest.raises(ValueError, match="65536"):
        hwc_to_chw(img.astype(np.uint16), 0, 0, cfg.channel_map(3), cfg.lut(8), out)


def test_mnist_tables_are_the_classic_ones():
    v = np.arange(256)
    # TensorRT 6-8 MNISTBatchStream / Python sample: float(pixel) / 255
    np.testing.assert_array_equal(preset("mnist").lut()[0], (v / 255.0).astype(np.float32))
    np.testing.assert_array_equal(preset("mnist").lut()[0], v.astype(np.float32) / np.float32(255))
    # Caffe LeNet batches: pixel * 0.00390625
    np.testing.assert_array_equal(preset("mnist-caffe").lut()[0], v.astype(np.float32) * np.float32(1 / 256))


def test_presets_formulas_by_hand():
    x = np.array([0, 127, 255])
    np.testing.assert_allclose(preset("inception").lut()[0][x], 2 * x / 255 - 1, atol=1e-7)
    np.testing.assert_allclose(preset("efficientnet-lite").lut()[0][x], (x - 127) / 128, atol=1e-7)
    np.testing.assert_allclose(preset("imagenet-caffe").lut()[:, 0], [-104, -117, -123])
    t = preset("imagenet-torch").lut()
    np.testing.assert_allclose(t[:, 255], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_lut_map_matches_take(threads):
    src = RNG.integers(0, 256, size=100_003, dtype=np.uint8)
    lut = preset("mnist").lut()[0]
    out = np.empty(src.shape, np.float32)
    lut_map_u8(src, lut, out, threads)
    np.testing.assert_array_equal(out, lut[src])


def test_shapes_and_crop_plans():
    c = preset("imagenet-torch")
    assert c.resized_shape(375, 500) == (256, 341)     # int(256 * 500 / 375) = 341
    assert c.resized_shape(500, 375) == (341, 256)
    assert c.crop_origin(256, 341) == (16, 58)          # (256-224)//2, (341-224)//2
    assert c.reduction_factor(1500, 2000) == 4           # 1500 // 4 = 375 >= 256, 1500 // 8 = 187 < 256
    assert c.reduction_factor(300, 400) == 1
    assert c.replace(reduced_decode=False).reduction_factor(4000, 4000) == 1
    caffe = preset("imagenet-caffe")
    assert caffe.resized_shape(123, 456) == (256, 256) and caffe.crop_origin(256, 256) == (16, 16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels="rgb", mean=(1, 2)), r"mean \(--mean\) has 2 values"),
    (dict(channels="gray", std=(1, 2, 3)), r"std \(--std\) has 3 values"),
    (dict(std=(0,)), "non-zero"),
    (dict(scale=0), "scale"),
    (dict(resize="short", crop="none"), "crop 'center'"),
    (dict(resize="direct", resize_size=(100, 100), size=(224, 224)), "smaller"),
    # found as a new user: crop none with the preset's resize size failed per image as "unreadable"
    (dict(resize="direct", crop="none", resize_size=(256, 256), size=(640, 640)), "give --resize-size 640x640"),
    (dict(resize="direct", crop="none", resize_size=(700, 700), size=(640, 640)), "must be the output size"),
    (dict(channels="cmyk"), "channels must be one of"),
    (dict(size=(0, 3)), "positive"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig(**kwargs)


def test_preset_overrides_and_round_trip():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("resnet")
    c = preset("imagenet-torch", size=192, mean=None)
    assert c.size == (192, 192) and c.mean == PreprocessConfig(**PRESETS["imagenet-torch"]).mean
    assert PreprocessConfig.from_dict(c.to_dict()) == c


# ------------------------------------------------- issue 12: finite output only
@pytest.mark.parametrize("kwargs, option", [
    (dict(mean=float("nan")), "mean"),
    (dict(mean=float("inf")), "mean"),
    (dict(mean=(0.0, float("-inf"), 0.0), channels="rgb"), "mean"),
    (dict(std=1e-45), "std"),
    (dict(std=float("nan")), "std"),
    (dict(mean=1e300), "mean"),
    (dict(mean=-3.5e38), "mean"),                 # pixel 255 stays finite, pixel 0 overflows float32
    (dict(scale=1e308), "scale"),
    (dict(scale=float("inf")), "scale"),
    (dict(scale=1e37, std=0.01), "std"),
])
def test_non_finite_or_overflowing_normalization_is_refused(kwargs, option):
    # before issue 12 these packed all-NaN/inf files (and a manifest holding bare NaN)
    with pytest.raises(ConfigError, match=rf"{option} \(--{option}\)"):
        PreprocessConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(mean=3.3e38, std=1.0), dict(std=1e-36, scale=1e-3),
                                    dict(scale=1e36, std=1.0), dict(mean=(-1e38,), std=(0.5,))])
def test_extreme_but_finite_normalization_is_accepted_and_every_table_value_finite(kwargs):
    cfg = PreprocessConfig(**kwargs)
    for depth in (8, 16):
        assert np.all(np.isfinite(cfg.lut(depth)))


def test_crc32_kernel_equals_zlib():
    """The folded CRC-32 (csrc/_crc32_simd.h) gives zlib's values: every length 0-300 and around the
    64-byte blocks, odd offsets, a running value, mmap / bytes / NumPy buffers; checksum() uses it."""
    import mmap
    import zlib

    from int8batch import format as fmt
    from int8batch._kernels_preprocess import crc32

    rng = np.random.default_rng(11)
    big = rng.integers(0, 256, 20000, dtype=np.uint8)
    for n in list(range(0, 300)) + [1023, 1024, 1025, 4096 + 17, 19000]:
        for off in (0, 1, 7):
            b = big[off:off + n]
            for v in (0, 0xDEADBEEF):
                assert crc32(b, v) == zlib.crc32(b, v), (n, off, v)
    data = rng.random(3 * 224 * 224).astype(np.float32)
    mm = mmap.mmap(-1, data.nbytes)
    mm[:] = data.tobytes()
    assert crc32(mm) == zlib.crc32(mm) == fmt.checksum(data) == crc32(data.tobytes())
    # running over pieces equals the whole
    assert crc32(big[5000:], crc32(big[:5000])) == zlib.crc32(big)
    with pytest.raises(ValueError):  # non-contiguous: refused, as zlib.crc32 refuses it
        fmt.checksum(data[::2])
    mm.close()


def test_resize_for_keeps_each_presets_own_rule():
    """The resize a preset's own convention gives another output size (hand values): EfficientNet-Lite's
    TensorFlow evaluation crops 32 pixels inside the short side (Lite1 240 from 272, Lite2 260 from 292),
    torchvision keeps 224/256, Caffe's warp scales each side, a preset without a crop resizes to the size."""
    from int8batch.preprocess import resize_for
    assert resize_for("efficientnet-lite", 240) == 272 and resize_for("efficientnet-lite", (260, 300)) == 292
    assert resize_for("imagenet-torch", 299) == 342 and resize_for("imagenet-torch", 224) == 256
    assert resize_for("imagenet-caffe", (227, 454)) == (259, 519)
    assert resize_for("mnist", 32) == (32, 32)
    with pytest.raises(ConfigError, match="unknown preset"):
        resize_for("yolo", 640)
    with pytest.raises(ConfigError, match=r"own rule gives --resize-size 292\)"):
        preset("efficientnet-lite", size=260)
