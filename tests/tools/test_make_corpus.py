"""tools/make_corpus.py: the recipes (default unchanged, strong, plain), determinism and prefixes."""
import json
import os

import numpy as np
import pytest
from script_loader import load

pytest.importorskip("cv2")
pytest.importorskip("skimage")     # the source photos
pytest.importorskip("sklearn")     # china and flower


def _tool():
    return load("make_corpus")


def _make(tool, out, *args):
    assert tool.main([str(out), *args]) == 0
    with open(os.path.join(out, "corpus.json")) as fh:
        return json.load(fh)


def _bytes(folder, rec):
    with open(os.path.join(folder, rec["file"]), "rb") as fh:
        return fh.read()


def test_default_recipe_draws_what_it_always_drew(tmp_path):
    # the parameters of the first images of seed 0 / eval, as the script wrote them before
    # --recipe existed (the random stream's key is still (seed, split, index))
    info = _make(_tool(), tmp_path / "d", "--count", "3", "--split", "eval", "--seed", "0")
    assert info["recipe"] == "default"
    got = [{k: r[k] for k in ("source", "size", "quality", "crop", "flip")} for r in info["images"]]
    assert got == [
        {"source": "chelsea", "size": [500, 375], "quality": 81, "crop": [11, 36, 277, 225], "flip": True},
        {"source": "grass", "size": [624, 576], "quality": 89, "crop": [21, 69, 487, 424], "flip": True},
        {"source": "chelsea", "size": [500, 375], "quality": 89, "crop": [118, 23, 276, 195], "flip": True},
    ]


@pytest.mark.parametrize("recipe", ["default", "strong", "plain"])
def test_each_recipe_is_deterministic_and_a_prefix(tmp_path, recipe):
    tool = _tool()
    a = _make(tool, tmp_path / "a", "--count", "4", "--split", "eval", "--seed", "7", "--recipe", recipe)
    b = _make(tool, tmp_path / "b", "--count", "9", "--split", "eval", "--seed", "7", "--recipe", recipe,
              "--workers", "1")
    assert a["recipe"] == b["recipe"] == recipe
    assert a["images"] == b["images"][:4]
    for ra, rb in zip(a["images"], b["images"]):
        assert _bytes(tmp_path / "a", ra) == _bytes(tmp_path / "b", rb)


def test_strong_draws_other_images_than_default_with_the_same_seed(tmp_path):
    tool = _tool()
    d = _make(tool, tmp_path / "d", "--count", "6", "--split", "calib", "--seed", "3")
    s = _make(tool, tmp_path / "s", "--count", "6", "--split", "calib", "--seed", "3", "--recipe", "strong")
    assert [r["crop"] for r in d["images"]] != [r["crop"] for r in s["images"]]
    for r in s["images"]:
        assert {"hue", "gamma", "blur", "noise"} <= set(r)
        assert 50 <= r["quality"] <= 95
        x0, y0, cw, ch = r["crop"]
        assert cw >= 8 and ch >= 8
        assert r["source"] in tool.sources_for("calib")


def test_plain_is_centre_crops_without_augmentation(tmp_path):
    tool = _tool()
    names = tool.sources_for("all")
    per_round = sum(3 if n in tool.COLOUR else 1 for n in names)
    info = _make(tool, tmp_path / "p", "--count", str(per_round + 2), "--recipe", "plain", "--seed", "5")
    recs = info["images"]
    # one round: every colour photo three times, every gray one once
    first = [r["source"] for r in recs[:per_round]]
    assert sorted(first) == sorted(n for n in names for _ in range(3 if n in tool.COLOUR else 1))
    photos = {n: tool.load_source(n) for n in names}
    seen = {}
    for r in recs[:per_round]:
        seen.setdefault(r["source"], set()).add(r["crop_number"])
    assert seen == {n: set(range(3 if n in tool.COLOUR else 1)) for n in names}   # the round's crops
    for r in recs:
        assert tool.PLAIN_MIN_SCALE - 1e-9 <= r["scale"] <= 1.0
        assert r["quality"] == tool.PLAIN_QUALITY and r["progressive"] is False
        assert max(r["size"]) == tool.PLAIN_LONG_SIDE
        h, w = photos[r["source"]].shape[:2]
        x0, y0, cw, ch = r["crop"]
        assert x0 == (w - cw) // 2 and y0 == (h - ch) // 2          # centred
        assert "flip" not in r and "brightness" not in r and "noise" not in r
    # crop 0 of a photo is the whole centred crop; the image is the photo resized, nothing else
    r0 = next(r for r in recs if r["crop_number"] == 0 and r["source"] == "chelsea")
    assert r0["scale"] == 1.0
    img, size, params = tool.plain_crop(photos["chelsea"], 0)
    assert list(size) == r0["size"] and params["crop"] == r0["crop"]
    x0, y0, cw, ch = r0["crop"]
    src = photos["chelsea"][y0:y0 + ch, x0:x0 + cw].astype(np.float64)
    assert abs(img.astype(np.float64).mean() - src.mean()) < 2.0     # no colour change


def test_plain_scales_do_not_repeat():
    tool = _tool()
    scales = [tool.plain_crop(np.zeros((300, 400, 3), np.uint8), k)[2]["scale"] for k in range(40)]
    assert len(set(scales)) == 40 and scales[0] == 1.0
    assert min(scales) >= tool.PLAIN_MIN_SCALE


def _sof_sampling(data):
    """The JPEG's (height, width, [(h, v) sampling per component]) from its SOF0 marker."""
    i = 2
    while data[i] == 0xFF and data[i + 1] != 0xC0:
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    assert data[i + 1] == 0xC0  # baseline
    h, w, n = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
    return h, w, [(data[i + 11 + 3 * c] >> 4, data[i + 11 + 3 * c] & 15) for c in range(n)]


def test_mix_is_the_photo_folder_shape_of_issue_11(tmp_path):
    out = tmp_path / "m"
    info = _make(_tool(), out, "--count", "10", "--mix", "--seed", "0")
    assert info["mix"] is True and len(info["images"]) == 10
    for k, rec in enumerate(info["images"]):
        assert rec["quality"] == 90 and rec["progressive"] is False and rec["kind"] == "jpeg"
        h, w, sampling = _sof_sampling(_bytes(out, rec))
        assert [w, h] == rec["size"]
        assert sampling == [(2, 2), (1, 1), (1, 1)]  # 4:2:0
        if k % 5 == 4:   # 1 in 5 large
            assert 1000 <= max(w, h) <= 2000 and 1.15 <= max(w, h) / min(w, h) <= 1.55
        else:            # about 500x375
            assert max(w, h) == 500 and min(w, h) in (333, 375)
    # deterministic, and its own stream: not the default recipe's files
    again = _make(_tool(), tmp_path / "m2", "--count", "10", "--mix", "--seed", "0")
    assert [_bytes(out, r) for r in info["images"]] == [_bytes(tmp_path / "m2", r) for r in again["images"]]
