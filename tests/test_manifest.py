"""manifest.py: building and text (byte for byte against a golden file), reading, checks, typed views."""
import json
import os

import numpy as np
import pytest

from int8batch.errors import ManifestError
from int8batch.manifest import (FORMAT, INCOMPLETE_MARKER, MANIFEST_NAME, Labels, audit_manifest, build_manifest,
                                expected_labels, labels, manifest_text, read_manifest, read_pack_manifest, recipe,
                                replaceable_manifest)
from int8batch.preprocess import PreprocessConfig, preset

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "manifest", "manifest.json")


def golden_manifest():
    """The pack of tests/fixtures/manifest/README.md, built with build_manifest."""
    m = build_manifest(
        (2, 3, 4, 6), "batch", "", ["0a1b2c3d", "ffffffff"], recipe=preset("imagenet-torch", size=(4, 6),
                                                                              resize_size=8),
        preset_defaulted=False, label_source="folders", classes=["a", "b", "c"], unlabelled_value=None,
        source={"kind": "folder", "root": "/data/photos", "shuffle": True, "seed": 7, "limit": 4},
        images_list=[('a/we"ird\u00e9.jpg', 0), ("a/y.png", 0), ("b/x 2.png", 1), ('a/we"ird\u00e9.jpg', 0)],
        padded=[3], dropped=["c/z.png"], skipped=[("c/bad.png", "not an image")])
    m["created"], m["int8batch_version"] = "2026-11-30T12:00:00+0000", "0.1.0"
    return m


def test_text_of_a_built_manifest_is_the_golden_file():
    with open(GOLDEN, encoding="utf-8") as f:
        want = f.read()
    text = manifest_text(golden_manifest())
    assert text == want
    assert json.loads(text) == golden_manifest()
    assert list(json.loads(text))[:12] == ["format", "manifest_version", "int8batch_version", "created", "dims",
                                          "files", "images", "prefix", "suffix", "dtype", "byte_order", "layout"]


def test_manifest_text_round_trips_awkward_names():
    m = {"dims": [1, 1, 1, 1], "images_list": [['we],[ird\n"na\\me"é.jpg', 3], ["plain.png", None]],
         "padded": [], "dropped": ["d],[.jpg"], "skipped": [{"file": "f},{g", "reason": "bad\tbytes"}]}
    assert json.loads(manifest_text(m)) == m
    with pytest.raises(ManifestError, match="JSON cannot express"):
        manifest_text({"x": float("nan")})


def test_recipe_labels_and_expected_labels_of_the_golden_manifest():
    m = golden_manifest()
    assert recipe(m) == preset("imagenet-torch", size=(4, 6), resize_size=8)
    assert labels(m) == Labels("folders", ["a", "b", "c"], None) and labels(m).class_name(2.0) == "c"
    assert labels(None) == Labels() and labels(None).labelled and not Labels("none").labelled
    np.testing.assert_array_equal(expected_labels(m), [0, 0, 1, 0])
    m["images_list"][1][1] = None
    assert np.isnan(expected_labels(m)[1])
    m["labels"]["unlabelled_value"] = -1.0
    assert expected_labels(m)[1] == -1.0 and expected_labels({}) is None


def test_recipe_refuses_what_cannot_be_a_recipe():
    assert recipe(None) is None and recipe({}) is None and recipe({"preprocess": [1]}) is None
    for pre, needle in (({"mean": [0.0]}, "lacks scale, std"), ({"scale": 1.0, "mean": [0.0], "std": [0.0]}, "std"),
                        ({"scale": 1.0, "mean": [1, 2], "std": [1.0]}, r"mean \(--mean\) has 2 values"),
                        ({"scale": 1.0, "mean": [0.0], "std": [1.0], "channels": "cmyk"}, "channels")):
        with pytest.raises(ManifestError, match=needle) as info:
            recipe({"preprocess": pre}, "/p/manifest.json")
        assert str(info.value).startswith("/p/manifest.json: manifest preprocess")
        assert recipe({"preprocess": pre}, strict=False) is None
    # fields a manifest leaves out take PreprocessConfig's defaults
    assert recipe({"preprocess": {"scale": 0.5, "mean": [1.0], "std": [2.0]}}) == PreprocessConfig(
        scale=0.5, mean=1.0, std=2.0)


def test_read_and_pack_manifest(tmp_path):
    assert read_pack_manifest(tmp_path) is None
    (tmp_path / MANIFEST_NAME).write_text(manifest_text(golden_manifest()))
    assert read_pack_manifest(tmp_path) == golden_manifest() == read_manifest(tmp_path / MANIFEST_NAME)
    (tmp_path / MANIFEST_NAME).write_text("[1]")
    with pytest.raises(ManifestError, match="JSON array, not an object") as info:
        read_pack_manifest(tmp_path)
    assert info.value.reason == "the manifest is a JSON array, not an object"
    assert INCOMPLETE_MARKER == ".int8batch-incomplete"


@pytest.mark.parametrize("content, reason", [
    (None, None), ("{", "unreadable manifest"), ('{"format": "x"}', f'no "format": "{FORMAT}"'),
    ('{"format": "sampleINT8-batch", "files": -1}', '"files" is -1, not a count of files'),
    ('{"format": "sampleINT8-batch", "files": 2, "prefix": "a/b"}', "the file name prefix 'a/b' contains '/'"),
    ('{"format": "sampleINT8-batch", "files": NaN}', "NaN"),
    ('{"format": "sampleINT8-batch", "files": 2, "dims": [2, 3, 4]}', '"dims" is [2, 3, 4], not N, C, H, W'),
])
def test_replaceable_manifest(tmp_path, content, reason):
    path = tmp_path / MANIFEST_NAME
    if content is not None:
        path.write_text(content)
    fields, why = replaceable_manifest(path)
    assert fields is None and (why is None if reason is None else reason in why)
    path.write_text(manifest_text(golden_manifest()))
    assert replaceable_manifest(path) == ({"files": 2, "prefix": "batch", "suffix": "", "dims": [2, 3, 4, 6]}, None)
    path.unlink()
    os.symlink(GOLDEN, path)
    assert replaceable_manifest(path) == (None, "not a regular file")    # never followed


def test_audit_lists_every_finding():
    m = golden_manifest()
    crc = [int(x, 16) for x in m["checksums"]["files"]]
    good = audit_manifest(m, (2, 3, 4, 6), 2, labels=[0, 0, 1, 0], checksum=crc.__getitem__)
    assert good.problems == [] and good.checksums == "ok" and good.recipe == recipe(m)
    assert good.notes == ["1 image(s) padded (listed in the manifest)", "1 image(s) dropped (listed in the manifest)",
                          "1 image(s) skipped (listed in the manifest)"]
    assert audit_manifest(m, (2, 3, 4, 6), 2).checksums == "not verified"
    m["layout"] = "NHWC"
    m["preprocess"]["channels"] = "gray"
    bad = audit_manifest(m, (2, 3, 4, 6), 3, labels=[0, 0, 1, 0, 5, 5], file_names=["b0", "b1", "b2"],
                         checksum=lambda k: 0)
    assert bad.problems[0] == "manifest layout is 'NHWC', expected 'NCHW'"
    assert "manifest says 2 files but the folder holds 3" in bad.problems
    assert "manifest images_list has 4 entries for 6 images" in bad.problems
    assert any("not a valid recipe (manifest preprocess: mean (--mean) has 3 values" in p for p in bad.problems)
    assert bad.checksums == "mismatch" and "manifest has 2 checksums for 3 files" in bad.problems
    assert bad.problems[-1].startswith("checksum mismatch in 2 file(s): b0 (crc32 00000000, manifest 0a1b2c3d)")
