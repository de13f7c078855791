"""A folder of fewer than 100 images: every readable image in one file, bad ones skipped on request."""
import json
import os

import cv2
import numpy as np
import pytest

import int8batch
from int8batch.errors import ImageDecodeError, SourceError


def _folder(tmp_path, good=7):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for k in range(good):
        cv2.imwrite(str(d / f"img{k}.jpg"), rng.integers(0, 255, (40 + k, 50, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def test_skip_bad_keeps_every_readable_image_in_one_file(tmp_path):
    d = _folder(tmp_path)
    with pytest.raises(ImageDecodeError, match="broken.jpg.*; pass --skip-bad to skip unreadable images"):
        int8batch.pack(d, tmp_path / "a", preset="imagenet-torch")
    res = int8batch.pack(d, tmp_path / "b", preset="imagenet-torch", skip_bad=True)
    assert res.dims[0] == 7 and res.images == 7
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [s["file"] for s in man["skipped"]] == ["broken.jpg"]
    assert [p for p, _ in man["images_list"]] == [f"img{k}.jpg" for k in range(7)]
    with int8batch.BatchSet(tmp_path / "b") as bs:
        assert bs.num_images == 7


def test_all_bad_small_folder_is_refused(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    (d / "b.png").write_bytes(b"y")
    with pytest.raises(SourceError, match="nothing to pack"):
        int8batch.pack(d, tmp_path / "o", preset="imagenet-torch", skip_bad=True)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_an_output_folder_in_the_images_folder_is_refused(tmp_path):
    """Found as a new user: `pack photos photos/batches` was accepted, and the next `pack --force` (or
    `--labels none`) took the batch folder's files (inspect's preview.png) as images of the set."""
    from int8batch.errors import ConfigError
    d = _folder(tmp_path)
    (tmp_path / "link").symlink_to(d)
    for out in (d / "batches", d, tmp_path / "link" / "b"):
        with pytest.raises(ConfigError, match="(lies in|is) the images folder"):
            int8batch.pack(d, out, preset="imagenet-torch", skip_bad=True)
        assert not os.path.exists(out) or out == d
    assert sorted(os.listdir(d)) == sorted([f"img{k}.jpg" for k in range(7)] + ["broken.jpg"])
    res = int8batch.pack(d, tmp_path / "beside", preset="imagenet-torch", skip_bad=True)   # beside it: fine
    assert res.images == 7


def test_a_pack_lying_in_the_images_folder_is_named(tmp_path):
    """Found as a new user: a pack written into the images folder before pack refused that ('out', from
    another source) was reported as a class folder, and with --labels none its preview.png became an image."""
    import shutil
    d = _folder(tmp_path)
    int8batch.pack("mnist", tmp_path / "out", batch_size=10, limit=10)
    (tmp_path / "out" / "preview.png").write_bytes((d / "img0.jpg").read_bytes())
    shutil.move(str(tmp_path / "out"), str(d / "out"))
    for labels in (None, "none"):
        with pytest.raises(SourceError, match=r"imgs/out holds an int8batch pack \(manifest.json\)"):
            int8batch.pack(d, tmp_path / "o", preset="imagenet-torch", skip_bad=True, labels=labels)
    with pytest.raises(SourceError, match="holds an int8batch pack"):      # a pack folder given as the images
        int8batch.pack(d / "out", tmp_path / "o2", preset="imagenet-torch")
