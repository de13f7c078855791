"""``int8batch.pack`` end to end, against independent references."""
import json
import os

import cv2
import numpy as np
import pytest

import int8batch
import re
from int8batch.errors import (ConfigError, ImageDecodeError, ManifestError, ModelError, OutputExistsError,
                              SourceError)
from int8batch.packing.sources import read_label_file
from int8batch.preprocess import preset
from reference import normalize_reference, read_batch_file, short_side_shape

RNG = np.random.default_rng(3)


def _photo(h, w, seed):
    """A smooth synthetic colour image (JPEG-friendly), BGR uint8."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 120 * np.sin(xx / r.uniform(5, 40) + r.uniform(0, 6)) * np.cos(yy / r.uniform(5, 40))
             for _ in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    specs = [("cat/a.jpg", 300, 400), ("cat/b.png", 257, 259), ("cat/c.bmp", 240, 320),
             ("dog/d.jpg", 500, 375), ("dog/e.webp", 260, 300), ("dog/sub/f.tif", 300, 260),
             ("dog/g.ppm", 256, 256)]
    for i, (name, h, w) in enumerate(specs):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(p), _photo(h, w, i))
    return root


def _expected(path, cfg):
    """Independent reference: full decode, the short-side rule, crop and float64 normalization."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if cfg.channels != "gray" else cv2.IMREAD_GRAYSCALE)
    h, w = img.shape[:2]
    rh, rw = short_side_shape(h, w, cfg.resize_size) if cfg.resize == "short" else cfg.resize_size
    img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (rh - cfg.size[0]) // 2, (rw - cfg.size[1]) // 2
    return normalize_reference(img, y0, x0, cfg.size, cfg.channels, cfg.scale, cfg.mean, cfg.std)


@pytest.mark.parametrize("name", ["imagenet-torch", "imagenet-caffe", "efficientnet-lite"])
def test_folder_pack_matches_reference(folder, tmp_path, name):
    out = tmp_path / "out"
    res = int8batch.pack(folder, out, preset=name, batch_size=3, reduced_decode=False, size=64, resize_size=(
        80 if name != "imagenet-caffe" else (80, 90)), workers=2)
    assert res.files == 2 and res.images == 6 and res.dropped == 1
    cfg = preset(name, size=64, resize_size=80 if name != "imagenet-caffe" else (80, 90), reduced_decode=False)
    man = json.loads((out / "manifest.json").read_text())
    names = [n for n, _ in man["images_list"]]
    assert names == ["cat/a.jpg", "cat/b.png", "cat/c.bmp", "dog/d.jpg", "dog/e.webp", "dog/g.ppm"]
    assert man["dropped"] == ["dog/sub/f.tif"]
    assert man["labels"]["classes"] == ["cat", "dog"]
    for k in range(2):
        dims, data, labels = read_batch_file(out / f"batch{k}")
        assert dims == (3, 3, 64, 64)
        for j in range(3):
            np.testing.assert_array_equal(data[j], _expected(folder / names[3 * k + j], cfg))
        np.testing.assert_array_equal(labels, [0 if names[3 * k + j].startswith("cat") else 1 for j in range(3)])
    # the manifest's checksums are those of the files
    from zlib import crc32
    assert man["checksums"]["files"] == [f"{crc32((out / f'batch{k}').read_bytes()):08x}" for k in range(2)]


def test_reduced_jpeg_decode_used_when_it_covers(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    cv2.imwrite(str(root / "x.jpg"), _photo(1200, 1700, 9), [cv2.IMWRITE_JPEG_QUALITY, 90])
    res = int8batch.pack(root, tmp_path / "o", preset="imagenet-torch", batch_size=1)
    cfg = preset("imagenet-torch")
    full = _expected(root / "x.jpg", cfg)
    red = cv2.imdecode(np.fromfile(str(root / "x.jpg"), np.uint8), cv2.IMREAD_REDUCED_COLOR_4)  # 300x425
    assert red.shape[:2] == (300, 425)
    rh, rw = short_side_shape(300, 425, 256)
    red = cv2.resize(red, (rw, rh), interpolation=cv2.INTER_LINEAR)
    want = normalize_reference(red, (rh - 224) // 2, (rw - 224) // 2, (224, 224), "rgb", cfg.scale, cfg.mean, cfg.std)
    _, data, _ = read_batch_file(tmp_path / "o" / "batch0")
    np.testing.assert_array_equal(data[0], want)
    assert np.abs(data[0] - full).mean() < 0.05  # close to the full decode, not equal
    assert res.images == 1


def test_gray_rgba_and_16bit(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    g = _photo(40, 50, 1)[:, :, 0]
    rgba = np.dstack([_photo(40, 50, 2), np.full((40, 50), 9, np.uint8)])
    deep = (_photo(40, 50, 3).astype(np.uint16) * 257 + 100)
    cv2.imwrite(str(root / "a_gray.png"), g)
    cv2.imwrite(str(root / "b_rgba.png"), rgba)
    cv2.imwrite(str(root / "c_16.png"), deep)
    cfg = dict(size=32, resize="direct", resize_size=(40, 50), crop="center", channels="rgb", scale=1 / 255,
               mean=(0.5,), std=(0.25,))
    int8batch.pack(root, tmp_path / "o", batch_size=3, **cfg)
    _, data, labels = read_batch_file(tmp_path / "o" / "batch0")
    assert np.all(labels == -1.0)
    y0, x0 = 4, 9
    np.testing.assert_array_equal(data[0], normalize_reference(np.dstack([g] * 3), y0, x0, (32, 32), "rgb",
                                                               1 / 255, (0.5,), (0.25,)))
    np.testing.assert_array_equal(data[1], normalize_reference(rgba[:, :, :3], y0, x0, (32, 32), "rgb",
                                                               1 / 255, (0.5,), (0.25,)))
    # 16-bit: brought to the 8-bit range (/257) before the formula
    np.testing.assert_array_equal(data[2], normalize_reference(deep, y0, x0, (32, 32), "rgb",
                                                               1 / 255, (0.5,), (0.25,)))


def test_exif_orientation_respected_or_ignored(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    root = tmp_path / "exif"
    root.mkdir()
    img = _photo(60, 80, 5)[:, :, ::-1]  # RGB for PIL
    exif = PIL.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    PIL.fromarray(img).save(root / "r.jpg", exif=exif.tobytes(), quality=95)
    common = dict(size=(80, 60), resize="none", crop="center", channels="rgb", batch_size=1)
    int8batch.pack(root, tmp_path / "a", **common)
    _, data, _ = read_batch_file(tmp_path / "a" / "batch0")
    assert data.shape[2:] == (80, 60)  # displayed upright: height 80, width 60
    with pytest.raises(ImageDecodeError, match="too small"):
        int8batch.pack(root, tmp_path / "b", exif="ignore", **common)
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["preprocess"]["exif"] == "respect"


def test_label_file_and_errors(folder, tmp_path):
    lf = tmp_path / "val.txt"
    files = sorted(str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*.*"))
    lf.write_text("".join(f"{f if i % 2 else f.rsplit('/', 1)[-1]} {i * 3}\n" for i, f in enumerate(files)))
    res = int8batch.pack(folder, tmp_path / "o", preset="imagenet-torch", size=32, resize_size=40, batch_size=7,
                         labels=str(lf))
    _, _, labels = read_batch_file(tmp_path / "o" / "batch0")
    np.testing.assert_array_equal(labels, [3.0 * i for i in range(7)])
    assert res.manifest["labels"]["source"] == "file"
    # a file listing more images than the folder holds (the full val.txt for part of val): packed, with a warning
    lf.write_text(lf.read_text() + "nothere.jpg 3\n")
    res = int8batch.pack(folder, tmp_path / "q", preset="imagenet-torch", size=32, resize_size=40, batch_size=7,
                         labels=str(lf))
    assert res.images == 7
    # entries that do not meet the images and images without an entry: not this folder's file
    lf.write_text("nothere.jpg 3\ncat/a.jpg 1\n")
    with pytest.raises(SourceError, match="1 listed image.* not found .* and 6 image.* have no label"):
        int8batch.pack(folder, tmp_path / "p", preset="imagenet-torch", labels=str(lf))
    lf.write_text("cat/a.jpg 1\n")
    with pytest.raises(SourceError, match="have no label"):
        int8batch.pack(folder, tmp_path / "p", preset="imagenet-torch", labels=str(lf))
    lf.write_text("cat/a.jpg one\n")
    with pytest.raises(SourceError, match=r"val.txt:1: label 'one'"):
        read_label_file(lf)
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_bad_image_stops_or_is_skipped(folder, tmp_path):
    (folder / "cat" / "zz_trunc.jpg").write_bytes((folder / "cat" / "a.jpg").read_bytes()[:3000])
    (folder / "cat" / "zz_text.png").write_bytes(b"this is not a png")
    kw = dict(preset="imagenet-torch", size=32, resize_size=40, batch_size=2)
    with pytest.raises(ImageDecodeError, match="zz_t"):
        int8batch.pack(folder, tmp_path / "o", **kw)
    assert not (tmp_path / "o" / "batch0").exists() and not list((tmp_path / "o").glob(".*tmp*"))
    res = int8batch.pack(folder, tmp_path / "o", skip_bad=True, **kw)
    skipped = {s["file"] for s in res.manifest["skipped"]}
    assert skipped == {"cat/zz_trunc.jpg", "cat/zz_text.png"}
    assert res.images == 6
    got = [n for n, _ in res.manifest["images_list"]]
    assert "cat/zz_text.png" not in got and got[:3] == ["cat/a.jpg", "cat/b.png", "cat/c.bmp"]


def test_output_protection(folder, tmp_path):
    out = tmp_path / "o"
    kw = dict(preset="imagenet-torch", size=32, resize_size=40, batch_size=2)
    int8batch.pack(folder, out, **kw)
    before = (out / "batch0").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        int8batch.pack(folder, out, **kw)
    # a failing --force pack leaves the previous pack exactly as it was
    (folder / "cat" / "bad.jpg").write_bytes(b"\xff\xd8junk")
    with pytest.raises(ImageDecodeError):
        int8batch.pack(folder, out, force=True, **kw)
    assert (out / "batch0").read_bytes() == before and (out / "manifest.json").exists()
    with int8batch.BatchSet(out, manifest="require") as bs:
        assert bs.num_files == 3
    # --force replaces, and removes the old pack's files beyond the new count
    (folder / "cat" / "bad.jpg").unlink()
    int8batch.pack(folder, out, force=True, limit=2, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["batch0", "manifest.json"]
    # batch files no manifest describes are never overwritten
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "batch0").write_bytes(b"x" * 20)
    with pytest.raises(OutputExistsError, match="did not"):
        int8batch.pack(folder, foreign, force=True, **kw)
    assert (foreign / "batch0").read_bytes() == b"x" * 20


def test_pad_shuffle_limit_and_thread_independence(folder, tmp_path):
    kw = dict(preset="imagenet-caffe", size=16, resize_size=(20, 20), batch_size=3)
    a = int8batch.pack(folder, tmp_path / "a", pad=True, workers=1, **kw)
    b = int8batch.pack(folder, tmp_path / "b", pad=True, workers=4, **kw)
    assert a.files == 3 and a.padded == 2 and a.manifest["padded"] == [7, 8]
    for k in range(3):
        assert (tmp_path / "a" / f"batch{k}").read_bytes() == (tmp_path / "b" / f"batch{k}").read_bytes()
    _, d2, _ = read_batch_file(tmp_path / "a" / "batch2")
    _, d0, _ = read_batch_file(tmp_path / "a" / "batch0")
    np.testing.assert_array_equal(d2[1:], d0[:2])  # the repeated images are the first ones
    s1 = int8batch.pack(folder, tmp_path / "s1", shuffle=True, seed=5, limit=6, **kw).manifest["images_list"]
    s2 = int8batch.pack(folder, tmp_path / "s2", shuffle=True, seed=5, limit=6, **kw).manifest["images_list"]
    s3 = int8batch.pack(folder, tmp_path / "s3", shuffle=True, seed=6, limit=6, **kw).manifest["images_list"]
    assert s1 == s2 and s1 != s3 and len(s1) == 6


def test_small_sources_and_bad_options(folder, tmp_path):
    with pytest.raises(ConfigError, match="fewer than the 100 images per file; use --batch-size 7 or --pad"):
        int8batch.pack(folder, tmp_path / "o", preset="imagenet-torch", batch_size=100)
    with pytest.raises(ConfigError, match=r"mean \(--mean\) has 2 values"):
        int8batch.pack(folder, tmp_path / "o", preset="imagenet-torch", mean=(1, 2), batch_size=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(SourceError, match="no image files"):
        int8batch.pack(empty, tmp_path / "o", preset="imagenet-torch")


def _write_idx(path, arr, magic_dims):
    import gzip
    head = bytes([0, 0, 8, magic_dims]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pack_matches_reference(tmp_path, gz):
    ext = ".gz" if gz else ""
    imgs = RNG.integers(0, 256, size=(250, 28, 28), dtype=np.uint8)
    labs = RNG.integers(0, 10, size=250, dtype=np.uint8)
    _write_idx(tmp_path / f"t-images-idx3-ubyte{ext}", imgs, 3)
    _write_idx(tmp_path / f"t-labels-idx1-ubyte{ext}", labs, 1)
    res = int8batch.pack(tmp_path / f"t-images-idx3-ubyte{ext}", tmp_path / "o", batch_size=100)
    assert res.files == 2 and res.dropped == 50 and res.manifest["preprocess"]["preset"] == "mnist"
    for k in range(2):
        dims, data, labels = read_batch_file(tmp_path / "o" / f"batch{k}")
        assert dims == (100, 1, 28, 28)
        np.testing.assert_array_equal(data[:, 0], (imgs[k * 100:(k + 1) * 100] / 255.0).astype(np.float32))
        np.testing.assert_array_equal(labels, labs[k * 100:(k + 1) * 100].astype(np.float32))
    # Caffe scale and a shuffled, padded pack through the generic path agree with NumPy too
    res = int8batch.pack(tmp_path / f"t-images-idx3-ubyte{ext}", tmp_path / "c", preset="mnist-caffe",
                         batch_size=100, shuffle=True, seed=1, pad=True)
    order = [int(n.rsplit("#", 1)[1]) for n, _ in res.manifest["images_list"]]
    assert res.files == 3 and sorted(order[:250]) == list(range(250))
    dims, data, labels = read_batch_file(tmp_path / "c" / "batch2")
    np.testing.assert_array_equal(data[:, 0], imgs[order[200:300]].astype(np.float32) * np.float32(1 / 256))


def test_idx_errors(tmp_path):
    p = tmp_path / "x-images-idx3-ubyte"
    _write_idx(p, np.zeros((3, 4, 4)), 3)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(SourceError, match="truncated"):
        int8batch.pack(p, tmp_path / "o", batch_size=1)
    with pytest.raises(SourceError, match="no such file"):
        int8batch.pack(tmp_path / "missing", tmp_path / "o", batch_size=1)


def test_bundled_mnist_packs(tmp_path):
    res = int8batch.pack("mnist-test", tmp_path / "m", batch_size=100, limit=300)
    assert res.files == 3
    _, _, labels = read_batch_file(tmp_path / "m" / "batch0")
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_unfinished_marker_refused(tmp_path, folder):
    out = tmp_path / "o"
    int8batch.pack(folder, out, preset="imagenet-torch", size=16, resize_size=20, batch_size=2)
    (out / ".int8batch-incomplete").write_text("")
    with pytest.raises(ManifestError, match="unfinished"):
        int8batch.BatchSet(out)


def test_output_that_does_not_fit_is_refused_before_writing(folder, tmp_path, monkeypatch):
    from collections import namedtuple

    from int8batch.errors import DiskSpaceError
    from int8batch.packing import writer
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskSpaceError, match="only 0.0 MB are free"):
        int8batch.pack(folder, tmp_path / "o", preset="imagenet-torch", size=32, resize_size=40, batch_size=2)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- first contact (issue 15)
def test_no_options_packs_with_imagenet_caffe_and_says_so(folder, tmp_path, caplog):
    out = tmp_path / "new" / "deeper" / "batches"          # missing parents are created
    with caplog.at_level("INFO", logger="int8batch"):
        res = int8batch.pack(folder, out)
    said = [r.getMessage() for r in caplog.records if "preset" in r.getMessage()]
    assert len(said) == 1 and "using preset imagenet-caffe" in said[0] and "--preset NAME" in said[0]
    assert "imagenet-torch" in said[0] and "\n" not in said[0]
    # fewer images than the default 100 per file: one file holding all 7, said too
    assert res.files == 1 and res.dims == (7, 3, 224, 224) and res.dropped == 0
    assert any("one file of 7" in r.getMessage() for r in caplog.records)
    pre = res.manifest["preprocess"]
    assert pre["preset"] == "imagenet-caffe" and pre["preset_defaulted"] is True
    assert json.loads((out / "manifest.json").read_text())["preprocess"]["preset_defaulted"] is True
    # every image equals an independent OpenCV/NumPy run of the Caffe recipe: BGR, 256x256 warp,
    # centre 224 crop at (16, 16), minus 104/117/123 (no image is large enough for a reduced decode)
    dims, data, labels = read_batch_file(out / "batch0")
    caffe = preset("imagenet-caffe")
    assert (caffe.channels, caffe.resize_size, caffe.mean) == ("bgr", (256, 256), (104.0, 117.0, 123.0))
    for j, (name, label) in enumerate(res.manifest["images_list"]):
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        img = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
        want = (img[16:240, 16:240].astype(np.float64) - [104.0, 117.0, 123.0]).transpose(2, 0, 1)
        np.testing.assert_array_equal(data[j], want.astype(np.float32))
        assert labels[j] == label


def test_a_chosen_recipe_is_not_marked_defaulted(folder, tmp_path, caplog):
    with caplog.at_level("INFO", logger="int8batch"):
        res = int8batch.pack(folder, tmp_path / "a", preset="imagenet-caffe", batch_size=7)
        over = int8batch.pack(folder, tmp_path / "b", size=32, resize_size=40, batch_size=7)
    assert res.manifest["preprocess"]["preset_defaulted"] is False
    # options without a preset change fields of the default preset (and say so), never a blank recipe
    pre = over.manifest["preprocess"]
    assert pre["preset_defaulted"] is True and pre["preset"] == "imagenet-caffe"
    assert pre["size"] == [32, 32] and pre["resize_size"] == [40, 40]
    assert pre["channels"] == "bgr" and pre["mean"] == [104.0, 117.0, 123.0]
    lines = [r.getMessage() for r in caplog.records if "no --preset given" in r.getMessage()]
    assert len(lines) == 1 and "preset imagenet-caffe with --resize-size, --size from your options" in lines[0]
    # an explicit imagenet-caffe pack is the defaulted one, byte for byte apart from the manifest
    int8batch.pack(folder, tmp_path / "d", batch_size=7)
    assert (tmp_path / "a" / "batch0").read_bytes() == (tmp_path / "d" / "batch0").read_bytes()


def test_bundled_mnist_keeps_its_own_preset_silently(tmp_path, caplog):
    with caplog.at_level("INFO", logger="int8batch"):
        res = int8batch.pack("mnist-test", tmp_path / "m", limit=200)
    pre = res.manifest["preprocess"]
    assert pre["preset"] == "mnist" and pre["preset_defaulted"] is True and res.dims == (100, 1, 28, 28)
    assert not any("using preset" in r.getMessage() or "bundled data;" in r.getMessage() for r in caplog.records)


def test_a_local_folder_shadowing_bundled_data_is_named(folder, tmp_path, monkeypatch, caplog):
    import shutil

    from int8batch.packing.sources import BUNDLED, DATA_DIR
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, tmp_path / "mnist-test")
    with caplog.at_level("WARNING", logger="int8batch"):
        res = int8batch.pack("mnist-test", tmp_path / "o", batch_size=7)
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    bundled = os.path.join(DATA_DIR, BUNDLED["mnist-test"][0])
    assert len(notes) == 1 and "local folder" in notes[0] and "./mnist-test" in notes[0] and bundled in notes[0]
    assert res.manifest["source"]["kind"] == "folder" and res.dims == (7, 3, 224, 224)   # the path won
    # the file the note names packs the bundled set (its labels file is found beside it)
    res = int8batch.pack(bundled, tmp_path / "b", limit=100)
    assert res.manifest["source"]["kind"] == "idx"
    assert read_batch_file(tmp_path / "b" / "batch0")[2][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    caplog.clear()
    int8batch.pack("./mnist-test", tmp_path / "c", batch_size=7)     # an explicit path: no note
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def relu_model(shape, path):
    """A one-node model whose image input has ``shape`` (ints fixed, strings dynamic)."""
    from onnx import TensorProto, helper, save
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return str(path)


def test_model_input_is_checked_before_packing(folder, tmp_path, caplog):
    fixed = relu_model([1, 3, 299, 299], tmp_path / "incep.onnx")
    with pytest.raises(ModelError) as ei:
        int8batch.pack(folder, tmp_path / "refused", model=fixed)
    msg = str(ei.value)
    assert fixed in msg and "[1, 3, 299, 299]" in msg and "preset imagenet-caffe makes ['N', 3, 224, 224]" in msg
    assert "--preset inception" in msg
    assert not (tmp_path / "refused").exists()                       # refused before anything was written
    res = int8batch.pack(folder, tmp_path / "ok", model=fixed, preset="inception", batch_size=7)
    assert res.dims == (7, 3, 299, 299)
    with caplog.at_level("INFO", logger="int8batch"):
        res = int8batch.pack(folder, tmp_path / "dyn", model=relu_model(["N", 3, "H", "W"], tmp_path / "d.onnx"))
    assert res.dims == (7, 3, 224, 224)
    assert any("height and width dynamic, so preset imagenet-caffe decides" in r.getMessage()
               for r in caplog.records)


def test_a_decode_option_alone_keeps_the_default_recipe(folder, tmp_path):
    """--exact-decode (or --exif) alone is the default preset decoded differently, not a blank recipe."""
    alone = int8batch.pack(folder, tmp_path / "a", reduced_decode=False, batch_size=7)
    named = int8batch.pack(folder, tmp_path / "b", preset="imagenet-caffe", reduced_decode=False, batch_size=7)
    a, b = alone.manifest["preprocess"], named.manifest["preprocess"]
    assert a["reduced_decode"] is False and a["channels"] == "bgr" and a["mean"] == [104.0, 117.0, 123.0]
    assert {k: v for k, v in a.items() if k != "preset_defaulted"} == \
        {k: v for k, v in b.items() if k != "preset_defaulted"}
    assert (tmp_path / "a" / "batch0").read_bytes() == (tmp_path / "b" / "batch0").read_bytes()


def test_a_replaced_pack_takes_its_preview_with_it(tmp_path):
    """inspect --show writes OUT/preview.png of the pack's images; pack --force must not leave the old one
    beside the new pack (found as a new user). A preview in a folder holding no int8batch pack stays."""
    from int8batch.inspect import save_grid
    out = tmp_path / "o"
    int8batch.pack("mnist-test", out, limit=20)
    save_grid(out, out / "preview.png", count=4)
    int8batch.pack("mnist-test", out, limit=30, force=True)
    assert not (out / "preview.png").exists() and (out / "manifest.json").exists()
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "preview.png").write_bytes(b"mine")
    int8batch.pack("mnist-test", lone, limit=20)
    assert (lone / "preview.png").read_bytes() == b"mine"


def test_limit_with_skip_bad_counts_packed_images(tmp_path):
    """--limit 6 --skip-bad over a folder with unreadable files packs 6 readable images, the next ones taking
    the skipped ones' places (found as a new user: --limit 50 gave 46 images); the advice for a batch size
    larger than the readable images counts only those."""
    src = tmp_path / "imgs"
    src.mkdir()
    for k in range(10):
        if k in (1, 4):
            (src / f"{k}.png").write_bytes(b"broken")
        else:
            cv2.imwrite(str(src / f"{k}.png"), np.full((8, 8, 3), 10 * k, np.uint8))
    res = int8batch.pack(src, tmp_path / "a", preset="mnist", limit=6, batch_size=3, skip_bad=True)
    names = [n for n, _ in res.manifest["images_list"]]
    assert res.images == 6 and names == ["0.png", "2.png", "3.png", "5.png", "6.png", "7.png"]
    assert sorted(n for n, _ in res.skipped) == ["1.png", "4.png"]
    # fewer than one file: the single file holds `limit` readable images
    res = int8batch.pack(src, tmp_path / "b", preset="mnist", limit=4, skip_bad=True)
    assert res.images == 4 and [n for n, _ in res.manifest["images_list"]] == ["0.png", "2.png", "3.png", "5.png"]
    with pytest.raises(ConfigError, match=r"only 8 readable \(2 skipped\) images, fewer than the 11 .*--batch-size 8"):
        int8batch.pack(src, tmp_path / "c", preset="mnist", batch_size=11, skip_bad=True)
    # without a limit nothing changes: every readable image, in source order
    res = int8batch.pack(src, tmp_path / "d", preset="mnist", batch_size=4, skip_bad=True)
    assert res.images == 8


@pytest.mark.parametrize("kw, needle", [({"batch_size": 2.5}, "batch size (--batch-size) must be a whole number"),
                                        ({"batch_size": 0}, "batch size (--batch-size) must be a whole number >= 1"),
                                        ({"limit": 2.5}, "limit (--limit) must be a whole number"),
                                        ({"limit": True}, "limit (--limit)")])
def test_sizes_that_are_no_whole_numbers_are_refused(tmp_path, kw, needle):
    """Found by a new user: batch_size=2.5 packed files of 2, limit=2.5 packed 2."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        int8batch.pack("mnist-test", tmp_path / "o", **{"limit": 20, **kw})


def test_misspelled_options_and_a_preset_with_a_config_are_refused(tmp_path):
    """Found by a new user: pack(..., meen=0) raised a bare TypeError; preset= beside config= was ignored."""
    from int8batch.preprocess import PreprocessConfig
    with pytest.raises(ConfigError, match="unknown preprocessing option.*meen.*the recipe's fields are .*mean"):
        int8batch.pack("mnist-test", tmp_path / "o", limit=10, meen=0)
    with pytest.raises(ConfigError, match="a preset or a config"):
        int8batch.pack("mnist-test", tmp_path / "o", limit=10, preset="mnist", config=PreprocessConfig())
    assert not (tmp_path / "o").exists()
