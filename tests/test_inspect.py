"""inspect() and save_grid() against NumPy over the whole data and hand-built packs.

Packs are written by hand here (batch files with ``write_batch_file``, the
manifest as a dict, checksums with ``zlib.crc32`` over the file bytes), so the
packer is not involved.
"""
import json
import os
import zlib

import cv2
import numpy as np
import pytest

import int8batch.inspect as insp
from int8batch.cli.main import main as cli_main
from int8batch.errors import ConfigError, ManifestError, OutputExistsError
from int8batch.format import write_batch_file
from int8batch.inspect import inspect, save_grid
from int8batch.manifest import recipe
from int8batch.preprocess import PreprocessConfig, denormalize

TORCH = {"channels": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CAFFE = {"channels": "bgr", "scale": 1.0, "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0]}
MNIST_CAFFE = {"channels": "gray", "scale": 1 / 256, "mean": [0.0], "std": [1.0]}


def crc(path):
    with open(path, "rb") as f:
        return f"{zlib.crc32(f.read()) & 0xFFFFFFFF:08x}"


def write_pack(folder, data, labels, n, preprocess=None, manifest=True, classes=None, **overrides):
    """Split ``data`` (K, C, H, W) into files of ``n`` and write a manifest by hand."""
    os.makedirs(folder, exist_ok=True)
    files = len(data) // n
    for k in range(files):
        write_batch_file(os.path.join(folder, f"batch{k}"), data[k * n:(k + 1) * n], labels[k * n:(k + 1) * n])
    if manifest:
        man = {"format": "sampleINT8-batch", "manifest_version": 1, "dims": [n, *data.shape[1:]],
               "files": files, "images": files * n, "prefix": "batch", "suffix": "", "dtype": "float32",
               "byte_order": "little", "layout": "NCHW",
               "labels": {"source": "folders", "classes": classes, "unlabelled_value": None},
               "preprocess": preprocess or {"channels": "gray" if data.shape[1] == 1 else "rgb",
                                            "scale": 1.0, "mean": [0.0] * data.shape[1],
                                            "std": [1.0] * data.shape[1]},
               "images_list": [[f"img{i}.png", int(labels[i])] for i in range(files * n)],
               "checksums": {"algorithm": "crc32",
                             "files": [crc(os.path.join(folder, f"batch{k}")) for k in range(files)]}}
        man.update(overrides)
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(man, f)
    return folder


def random_pack(folder, nfiles=3, n=5, shape=(3, 4, 6), seed=0, **kw):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((nfiles * n, *shape)).astype(np.float32)
    data += np.array([10.0, -3.0, 1000.0][:shape[0]], np.float32)[:, None, None]  # offsets test the merging
    labels = rng.integers(0, 4, nfiles * n).astype(np.float32)
    write_pack(folder, data, labels, n, **kw)
    return data, labels


def pixels_to_out(pixels, pre):
    """The packer's formula, computed here independently: out = (p * scale - mean) / std, float32."""
    c = pixels.shape[1]
    mean = np.broadcast_to(np.asarray(pre["mean"], np.float64), (c,))[:, None, None]
    std = np.broadcast_to(np.asarray(pre["std"], np.float64), (c,))[:, None, None]
    return ((pixels.astype(np.float64) * pre["scale"] - mean) / std).astype(np.float32)


# ------------------------------------------------------------------ summary
@pytest.mark.parametrize("chunk", [insp._CHUNK_VALUES, 50, 1])
def test_stats_match_numpy(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(insp, "_CHUNK_VALUES", chunk)  # 50 and 1: chunks inside files, merged
    data, labels = random_pack(str(tmp_path / "p"))
    r = inspect(str(tmp_path / "p"))
    x = data.astype(np.float64)
    np.testing.assert_allclose(r.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(r.std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_array_equal(r.min, x.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(r.max, x.max(axis=(0, 2, 3)))
    values, counts = np.unique(labels, return_counts=True)
    assert r.label_histogram == dict(zip(values.tolist(), counts.tolist()))
    assert (r.dims, r.files, r.images) == ((5, 3, 4, 6), 3, 15)
    assert r.ok and r.problems == [] and r.checksums == "ok" and r.nonfinite == 0


def test_format_and_json(tmp_path):
    random_pack(str(tmp_path / "p"), classes=["cat", "dog", "eel", "fox"])
    r = inspect(str(tmp_path / "p"))
    text = r.format()
    for needle in ("N=5 C=3 H=4 W=6", "15 images", "checksums     ok", "problems      none", "dog", "R", "B"):
        assert needle in text
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ok"] and d["has_manifest"] and sum(d["label_histogram"].values()) == 15


def test_nonfinite_is_a_problem(tmp_path):
    data = np.zeros((4, 1, 2, 2), np.float32)
    data[2, 0, 1, 1] = np.nan
    data[3, 0, 0, 0] = np.inf
    write_pack(str(tmp_path / "p"), data, np.zeros(4, np.float32), 2)
    r = inspect(str(tmp_path / "p"))
    assert r.nonfinite == 2 and not r.ok and "NaN" in r.problems[0]


def test_checksum_mismatch_after_flipping_a_byte(tmp_path):
    folder = str(tmp_path / "p")
    random_pack(folder)
    path = os.path.join(folder, "batch1")
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x01]))
    r = inspect(folder)
    assert r.checksums == "mismatch" and len(r.problems) == 1
    assert "batch1" in r.problems[0] and "batch0" not in r.problems[0]
    r = inspect(folder, verify=False)
    assert r.checksums == "not verified" and r.ok


@pytest.mark.parametrize("fields,needle", [
    ({"files": 4}, "4 files"),
    ({"dims": [5, 3, 6, 4]}, "dims"),
    ({"images": 20}, "20 images"),
    ({"images_list": [["a", 0]] * 3}, "images_list has 3"),
    ({"checksums": {"algorithm": "md5", "files": []}}, "md5"),
    ({"checksums": {"algorithm": "crc32", "files": ["ABCDEF01"] * 3}}, "8 lowercase hex"),
    ({"checksums": {"algorithm": "crc32", "files": ["00000000"] * 2}}, "2 checksums for 3 files"),
    ({"layout": "NHWC"}, "layout"),
    ({"preprocess": {"channels": "gray", "scale": 1.0, "mean": [0.0], "std": [1.0]}}, "C=3"),
])
def test_manifest_disagreements_are_problems(tmp_path, fields, needle):
    folder = str(tmp_path / "p")
    random_pack(folder, **fields)
    r = inspect(folder)
    assert not r.ok
    assert any(needle in p for p in r.problems), r.problems


def test_label_disagreement_names_the_image(tmp_path):
    folder = str(tmp_path / "p")
    _, labels = random_pack(folder)
    listing = [[f"img{i}.png", int(labels[i])] for i in range(15)]
    listing[7][1] += 1
    with open(os.path.join(folder, "manifest.json")) as f:
        man = json.load(f)
    man["images_list"] = listing
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(man, f)
    r = inspect(folder)
    assert len(r.problems) == 1 and "img7.png" in r.problems[0] and "batch1" in r.problems[0]


def test_no_manifest_and_bad_manifest(tmp_path):
    folder = str(tmp_path / "p")
    random_pack(folder, manifest=False)
    r = inspect(folder)
    assert r.ok and r.manifest is None and r.checksums == "absent" and "no manifest.json" in r.notes[0]
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        f.write("[1, 2")
    with pytest.raises(ManifestError, match="unreadable"):
        inspect(folder)


# --------------------------------------------------------------------- grid
def tile(img, info, i, h, w):
    """Image ``i`` back out of the grid, (h, w, 3) BGR, checking the zoomed block is uniform."""
    y, x = info.origins[i]
    z = info.zoom
    block = img[y:y + h * z, x:x + w * z]
    small = block[::z, ::z]
    np.testing.assert_array_equal(block, np.repeat(np.repeat(small, z, 0), z, 1))
    return small


@pytest.mark.parametrize("pre", [TORCH, CAFFE], ids=["torch-rgb", "caffe-bgr"])
def test_grid_recovers_exact_pixels_color(tmp_path, pre):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (7, 3, 5, 9), dtype=np.uint8)
    pixels[0] = 0
    pixels[1] = 255  # the extremes survive the round trip too
    folder = write_pack(str(tmp_path / "p"), pixels_to_out(pixels, pre), np.arange(7, dtype=np.float32), 7,
                        preprocess=pre)
    info = save_grid(folder, str(tmp_path / "g.png"), count=7, columns=3, zoom=3)
    assert (info.count, info.columns, info.rows, info.mode, info.labels) == (7, 3, 3, "manifest", True)
    img = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape[2] == 3
    for i in range(7):
        want = pixels[i].transpose(1, 2, 0)  # HWC in the pack's channel order
        if pre["channels"] == "rgb":
            want = want[..., ::-1]  # the PNG is read back as BGR
        np.testing.assert_array_equal(tile(img, info, i, 5, 9), want)


def test_grid_spreads_evenly_over_a_class_sorted_pack(tmp_path, capsys):
    # 12 images sorted by class (4 per class, files of 4), as an unshuffled class-folder pack
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (12, 3, 4, 5), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 4).astype(np.float32)
    folder = write_pack(str(tmp_path / "p"), pixels_to_out(pixels, CAFFE), labels, 4, preprocess=CAFFE)
    even = save_grid(folder, str(tmp_path / "even.png"), count=3, zoom=1)
    first = save_grid(folder, str(tmp_path / "first.png"), count=3, zoom=1, first=True)
    assert even.indices == [0, 5, 11] and first.indices == [0, 1, 2]
    assert sorted({int(labels[i]) for i in even.indices}) == [0, 1, 2]   # every class, not only the first
    for info, png in ((even, "even.png"), (first, "first.png")):
        img = cv2.imread(str(tmp_path / png))
        for pos, i in enumerate(info.indices):
            np.testing.assert_array_equal(tile(img, info, pos, 4, 5), pixels[i].transpose(1, 2, 0))
    assert insp.spread(12, 5) == [0, 2, 5, 8, 11] and insp.spread(3, 3) == [0, 1, 2] and insp.spread(9, 1) == [0]
    assert all(len(set(insp.spread(n, k))) == k for n in range(1, 40) for k in range(1, n + 1))
    # the command line: --show spreads, --first keeps the old behaviour, and the output says which
    assert cli_main(["inspect", folder, "--show", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"]["indices"] == [0, 3, 7, 11]
    assert cli_main(["inspect", folder, "--show", "4"]) == 0
    assert "spread evenly over the 12, images 0, 3, 7, 11" in capsys.readouterr().out
    assert cli_main(["inspect", folder, "--show", "4", "--first", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"]["indices"] == [0, 1, 2, 3]
    # the pack's own preview.png is replaced run after run; a --grid file that exists needs --force
    assert cli_main(["inspect", folder, "--show", "4"]) == 0
    capsys.readouterr()
    mine = tmp_path / "mine.png"
    mine.write_text("someone's picture\n")
    assert cli_main(["inspect", folder, "--grid", str(mine)]) == 1
    assert "already exists; choose another --grid or pass --force" in capsys.readouterr().err
    assert mine.read_text() == "someone's picture\n"
    assert cli_main(["inspect", folder, "--grid", str(mine), "--force"]) == 0
    assert cv2.imread(str(mine)) is not None


def test_grid_recovers_exact_pixels_gray_auto_zoom(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    folder = write_pack(str(tmp_path / "p"), pixels_to_out(pixels, MNIST_CAFFE),
                        rng.integers(0, 10, 6).astype(np.float32), 3, preprocess=MNIST_CAFFE)
    info = save_grid(folder, str(tmp_path / "g.png"), count=100)  # more than there are
    assert info.count == 6 and info.columns == 3 and info.zoom == 4 and info.channels == "gray"
    img = cv2.imread(str(tmp_path / "g.png"))
    for i in range(6):
        t = tile(img, info, i, 28, 28)
        for ch in range(3):
            np.testing.assert_array_equal(t[..., ch], pixels[i, 0])


def test_grid_without_manifest_is_min_max_stretched(tmp_path):
    data = np.linspace(-2.0, 6.0, 2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    folder = write_pack(str(tmp_path / "p"), data, np.zeros(2, np.float32), 2, manifest=False)
    info = save_grid(folder, str(tmp_path / "g.png"), count=2, zoom=1)
    assert info.mode == "min-max stretch"
    # found as a new user: --grid g.jpg wrote PNG bytes under a .jpg name
    with pytest.raises(ConfigError, match="ending in .png"):
        save_grid(folder, str(tmp_path / "g.jpg"), count=2)
    assert not (tmp_path / "g.jpg").exists()
    img = cv2.imread(str(tmp_path / "g.png"))
    np.testing.assert_array_equal(tile(img, info, 0, 3, 4)[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(tile(img, info, 1, 3, 4)[2, 3], [255, 255, 255])


def test_denormalize_and_errors(tmp_path):
    out = np.array([[[[0.5]], [[-1.0]], [[2.0]]]], np.float32)
    got = denormalize(out, PreprocessConfig(scale=0.5, mean=1.0, std=2.0))  # one value for all channels
    np.testing.assert_array_equal(got.ravel(), [4, 0, 10])  # (0.5*2+1)/.5, clipped, (2*2+1)/.5
    gray = denormalize(out, PreprocessConfig(channels="gray", resize="direct", scale=0.5, mean=1.0, std=2.0))
    np.testing.assert_array_equal(gray, got)                # a one-channel recipe applies to every channel
    with pytest.raises(ConfigError, match="3 channels but the data has 2"):
        denormalize(out[:, :2], PreprocessConfig(scale=0.5, mean=1.0, std=2.0))
    # the manifest's recipe: typed, and refused (naming the manifest) when it cannot be undone
    assert recipe({"preprocess": TORCH}).mean == tuple(TORCH["mean"])
    assert recipe(None) is None and recipe({"preprocess": 3}) is None
    with pytest.raises(ManifestError, match="std"):
        recipe({"preprocess": {"scale": 1.0, "mean": [0.0], "std": [0.0]}})
    with pytest.raises(ManifestError, match="lacks scale, std"):
        recipe({"preprocess": {"mean": [0.0]}})
    assert recipe({"preprocess": {"scale": 0.0, "mean": [0.0], "std": [1.0]}}, strict=False) is None
    folder = str(tmp_path / "p")
    random_pack(folder)
    with pytest.raises(ConfigError):
        save_grid(folder, str(tmp_path / "g.png"), count=0)
    # its folder is created, as pack's is (found as a new user: a missing folder failed); a place that cannot be
    # written is a typed error naming it
    assert save_grid(folder, str(tmp_path / "no" / "such" / "g.png")).path.endswith("no/such/g.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputExistsError, match="file: exists and is not a folder"):
        save_grid(folder, str(tmp_path / "file" / "g.png"))


# ---------------------------------------------------------------------- CLI
def test_cli(tmp_path, capsys):
    folder = str(tmp_path / "p")
    random_pack(folder)
    assert cli_main(["inspect", folder]) == 0
    assert "problems      none" in capsys.readouterr().out
    assert cli_main(["inspect", folder, "--show", "4"]) == 0
    assert cv2.imread(os.path.join(folder, "preview.png")) is not None
    capsys.readouterr()
    assert cli_main(["inspect", folder, "--json", "--grid", str(tmp_path / "g.png")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 15 and doc["grid"]["count"] == 16 - 1  # 15 images exist
    with open(os.path.join(folder, "batch2"), "r+b") as f:
        f.seek(40)
        f.write(b"\xff")
    assert cli_main(["inspect", folder]) == 1
    assert "PROBLEMS" in capsys.readouterr().out
    assert cli_main(["inspect", folder, "--no-verify"]) == 0
    assert cli_main(["inspect", str(tmp_path / "nowhere")]) == 1


def test_real_pack_round_trip(tmp_path, capsys):
    """End to end through the packer's command line: the grid shows the source pixels exactly."""
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    originals = {}
    for i in range(6):
        rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        originals[f"im{i}.png"] = rgb
        assert cv2.imwrite(str(src / f"im{i}.png"), rgb[..., ::-1])
    out = str(tmp_path / "out")
    rc = cli_main(["pack", str(src), out, "-n", "3", "--labels", "none", "-q", "--size", "6x8",
                   "--resize", "none", "--crop", "none", "--channels", "rgb", "--scale", str(1 / 255),
                   "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"])
    assert rc == 0, capsys.readouterr().err
    r = inspect(out)
    assert r.ok, r.problems
    assert r.checksums == "ok" and r.images == 6 and r.label_histogram == {-1.0: 6}
    info = save_grid(out, str(tmp_path / "g.png"), count=6, zoom=2)
    assert info.mode == "manifest" and not info.labels
    img = cv2.imread(str(tmp_path / "g.png"))
    for i, (name, _) in enumerate(r.manifest["images_list"]):
        np.testing.assert_array_equal(tile(img, info, i, 6, 8), originals[os.path.basename(name)][..., ::-1])


def test_labels_that_are_no_whole_numbers_are_a_problem(tmp_path):
    """Found by a new user: foreign files with labels 3.5 and NaN passed inspect with 'problems none'."""
    data = np.zeros((4, 1, 2, 2), np.float32)
    write_pack(str(tmp_path / "p"), data, np.array([0, 3.5, np.nan, 2], np.float32), 2, manifest=False)
    r = inspect(str(tmp_path / "p"))
    assert not r.ok and any("2 label(s) are no whole number (e.g. 3.5)" in p for p in r.problems), r.problems
    write_pack(str(tmp_path / "q"), data, np.array([0, 1, -1, 2], np.float32), 2, manifest=False)
    assert inspect(str(tmp_path / "q")).ok     # -1 (unlabelled) is a whole number
