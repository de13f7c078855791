"""``int8batch.packing.sources``: which images a folder holds and which label each gets (issue 12)."""
import os

import cv2
import numpy as np
import pytest

import int8batch
from int8batch.errors import SourceError
from int8batch.packing.sources import (nothing_packed_error, open_source, read_label_file, scan_folder,
                                       walk_images)
from reference import read_batch_file


def _img(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


@pytest.fixture
def classes(tmp_path):
    """Class folders a, b (a symbolic link to a folder elsewhere) and c, two images each."""
    root = tmp_path / "set"
    for k, name in enumerate("ac"):
        for i in range(2):
            _img(root / name / f"{i}.png", 10 * k + i)
    for i in range(2):
        _img(tmp_path / "elsewhere" / "b" / f"{i}.png", 50 + i)
    os.symlink(tmp_path / "elsewhere" / "b", root / "b")
    return root


def test_symlinked_class_folder_is_followed_and_numbered(classes, tmp_path):
    # before issue 12 "b" was skipped without a word and "c" became class 1
    src = scan_folder(classes)
    assert src.classes == ["a", "b", "c"]
    assert src.files == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "c/0.png", "c/1.png"]
    assert src.labels.tolist() == [0, 0, 1, 1, 2, 2]
    res = int8batch.pack(classes, tmp_path / "o", batch_size=6, size=8, resize="none", crop="none",
                         channels="bgr", mean=0)
    _, data, labels = read_batch_file(tmp_path / "o" / "batch0")
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] and res.manifest["labels"]["classes"] == ["a", "b", "c"]
    assert data[2, 0, 0, 0] == 50


def test_symlink_loop_broken_link_and_unreadable_folder_are_refused(classes, tmp_path):
    os.symlink(classes, classes / "a" / "back")            # leads into a folder it lies in
    with pytest.raises(SourceError, match="would loop"):
        scan_folder(classes)
    os.remove(classes / "a" / "back")
    os.symlink(tmp_path / "gone", classes / "d")           # a class folder that is not there
    with pytest.raises(SourceError, match=r"d: symbolic link .* does not exist"):
        scan_folder(classes)
    os.remove(classes / "d")
    os.symlink("self", classes / "self")                   # ELOOP
    with pytest.raises(SourceError, match="cannot follow"):
        scan_folder(classes)
    os.remove(classes / "self")
    if os.geteuid() != 0:                                  # root reads every folder
        os.chmod(classes / "c", 0)
        try:
            with pytest.raises(SourceError, match="cannot list"):
                scan_folder(classes)
        finally:
            os.chmod(classes / "c", 0o755)


def test_loose_image_among_class_folders_is_refused_not_unlabelled(classes):
    _img(classes / "stray.jpg")
    # before issue 12 this silently made every label -1
    with pytest.raises(SourceError, match=r"stray\.jpg.*--labels none"):
        scan_folder(classes)
    with pytest.raises(SourceError, match="stray.jpg"):
        scan_folder(classes, "folders")
    src = scan_folder(classes, "none")
    assert src.labels is None and len(src) == 7
    # a loose non-image file changes nothing
    os.remove(classes / "stray.jpg")
    (classes / "README.txt").write_text("cats and dogs")
    assert scan_folder(classes).labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_empty_class_folder_keeps_the_numbering(classes, caplog):
    (classes / "aa").mkdir()        # sorts between a and b
    src = scan_folder(classes)
    assert src.classes == ["a", "aa", "b", "c"] and src.labels.tolist() == [0, 0, 2, 2, 3, 3]
    assert "aa" in caplog.text and "no image" in caplog.text
    assert walk_images(classes)[1] == ["a", "aa", "b", "c"]


def test_a_label_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    # Windows Notepad's UTF-8 starts with EF BB BF: it was read into the first name (found as a new user)
    lf = tmp_path / "val.txt"
    lf.write_bytes(b"\xef\xbb\xbfx.png 1\r\ny.png 2\r\n")
    assert read_label_file(lf) == {"x.png": 1, "y.png": 2}


def test_labels_beyond_float32_exactness_are_refused(tmp_path):
    lf = tmp_path / "val.txt"
    lf.write_text(f"x.png {2 ** 24}\ny.png 3\n")
    assert read_label_file(lf) == {"x.png": 2 ** 24, "y.png": 3}     # 16777216 is exact
    lf.write_text(f"x.png 3\ny.png {2 ** 24 + 1}\n")
    # before issue 12 16777217 was stored as 16777216
    with pytest.raises(SourceError, match=r"val\.txt:2: label 16777217 of y\.png .*16777216"):
        read_label_file(lf)
    lf.write_bytes(b"x.png 3\n\xff\xfe 4\n")
    with pytest.raises(SourceError, match="not UTF-8"):
        read_label_file(lf)


def test_special_files_as_source_or_label_file_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        read_label_file(fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        open_source(fifo)
    (tmp_path / "imgs").mkdir()
    _img(tmp_path / "imgs" / "x.png")
    with pytest.raises(SourceError, match="not a regular file"):
        open_source(tmp_path / "imgs", str(fifo))


def test_nothing_packed_error_lists_the_reasons():
    err = nothing_packed_error("/imgs", [("a.png", "/imgs/a.png: not an image OpenCV can decode"),
                                         ("b.png", "/imgs/b.png: not an image OpenCV can decode"),
                                         ("c.jpg", "/imgs/c.jpg: JPEG is truncated (no end-of-image marker)")], 0, 10)
    assert isinstance(err, SourceError) and err.path == "/imgs"
    assert "every one of the 3" in str(err) and "2 x not an image OpenCV can decode (e.g. a.png)" in str(err)
    assert "1 x JPEG is truncated" in str(err)
    assert "--pad" in str(nothing_packed_error("/imgs", [("a.png", "/imgs/a.png: bad")], 3, 10))


def test_skip_bad_with_every_image_bad_is_refused(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"junk")
    (tmp_path / "bad" / "b.jpg").write_bytes(b"\xff\xd8junk")
    # before issue 12: exit 0 with an empty pack that every reader refuses
    with pytest.raises(SourceError, match=r"nothing to pack.*a\.png"):
        int8batch.pack(tmp_path / "bad", tmp_path / "o", preset="imagenet-torch", batch_size=1, skip_bad=True)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_hidden_files_named_like_images_are_left_out_with_a_note(tmp_path, caplog):
    import cv2
    import numpy as np
    root = tmp_path / "imgs"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (root / "._a.png").write_bytes(b"AppleDouble")            # what macOS leaves on other file systems
    (root / ".notes.txt").write_text("x")
    with caplog.at_level("INFO", logger="int8batch"):
        files, _ = walk_images(root)
    assert files == ["a.png"]
    assert "1 hidden file(s) named like images left out" in caplog.text and "._a.png" in caplog.text


def test_gif_is_packed_and_undecodable_photo_formats_are_named(tmp_path, caplog):
    """Found by a new user: .gif (which OpenCV decodes) and .heic were both left out without a word."""
    import numpy as np
    from PIL import Image
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / "a.gif")
    (root / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with caplog.at_level("WARNING", logger="int8batch"):
        files, _ = walk_images(root)
    assert files == ["a.gif"]
    assert "1 file(s) in formats OpenCV does not decode left out (.heic, e.g. b.heic)" in caplog.text
