"""``int8batch.packing.decode``: truncation checks and the decoded-size cap (issue 12)."""
import struct
import zlib

import cv2
import numpy as np
import pytest

import int8batch
from int8batch.errors import ConfigError, ImageDecodeError
from int8batch.packing import decode
from int8batch.packing.decode import DEFAULT_MAX_PIXELS, decode_image, image_size
from int8batch.preprocess import preset

CFG = preset("imagenet-torch", size=32, resize_size=40)


def _photo(h, w, seed=0):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 120 * np.sin(xx / r.uniform(5, 40)) * np.cos(yy / r.uniform(5, 40)) for _ in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def _jpeg(h=120, w=160, *params):
    return cv2.imencode(".jpg", _photo(h, w), list(params))[1].tobytes()


def _u8(raw):
    return np.frombuffer(raw, np.uint8)


# --------------------------------------------------------------- truncation
@pytest.mark.parametrize("params", [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 1)])
def test_jpeg_with_trailing_data_decodes(params):
    jpg = _jpeg(120, 160, *params)
    # a "motion photo": the video follows the JPEG's end-of-image marker (more than the 4 kB looked at first)
    trailer = b"\x00\x00\x00\x18ftypmp42" + bytes(np.random.default_rng(1).integers(0, 256, 20000, np.uint8))
    trailer = trailer.replace(b"\xff\xd9", b"\xff\x00")
    img, _ = decode_image("motion.jpg", CFG, _u8(jpg + trailer))
    want, _ = decode_image("plain.jpg", CFG, _u8(jpg))
    np.testing.assert_array_equal(img, want)


@pytest.mark.parametrize("params", [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)])
def test_truncated_jpeg_is_still_refused(params):
    jpg = _jpeg(120, 160, *params)
    for cut in (len(jpg) // 3, len(jpg) - 3):
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image("cut.jpg", CFG, _u8(jpg[:cut]))
        with pytest.raises(ImageDecodeError, match="truncated"):    # padding after the cut does not help
            decode_image("cut.jpg", CFG, _u8(jpg[:cut] + b"\x00" * 5000))


def test_end_marker_inside_a_header_segment_does_not_count():
    jpg = _jpeg()
    # an APP1 segment (where EXIF keeps its thumbnail) holding an FFD9 of its own, before the image data
    thumb = b"Exif\x00\x00" + b"\xff\xd8" + b"x" * 100 + b"\xff\xd9"
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 2) + thumb
    whole = jpg[:2] + app1 + jpg[2:]
    assert decode._jpeg_end(whole) == len(whole)
    cut = whole[:len(whole) // 2] + b"\x00" * 5000
    assert decode._jpeg_end(cut) is None
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image("thumb.jpg", CFG, _u8(cut))


# ----------------------------------------------------------------- max size
def _png_header(w, h):
    """A PNG claiming w x h pixels (its pixel data is a stub: it must never be decoded)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) \
        + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header(monkeypatch):
    calls = []
    monkeypatch.setattr(decode.cv2(), "imdecode", lambda *a: calls.append(a))
    with pytest.raises(ImageDecodeError, match=r"20000x20000 = 400\.0 megapixels.*nothing decoded"):
        decode_image("bomb.png", CFG, _u8(_png_header(20000, 20000)))
    assert calls == []                       # refused before OpenCV saw it
    assert DEFAULT_MAX_PIXELS < 20000 * 20000


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm", ".sr"])
def test_header_sizes_and_configurable_limit(ext):
    img = _photo(45, 67)
    raw = cv2.imencode(ext, img[:, :, 0] if ext == ".pgm" else img)[1]
    assert image_size(raw) == (45, 67)
    decode_image("x" + ext, CFG, raw, max_pixels=45 * 67)            # exactly at the limit: fine
    with pytest.raises(ImageDecodeError, match="= 3015 pixels, more than the limit of 3014 pixels"):
        decode_image("x" + ext, CFG, raw, max_pixels=45 * 67 - 1)


def test_limit_checked_after_decoding_when_the_header_is_unknown(monkeypatch):
    raw = cv2.imencode(".png", _photo(45, 67))[1]
    monkeypatch.setattr(decode, "image_size", lambda buf: None)
    with pytest.raises(ImageDecodeError, match="after decoding"):
        decode_image("x.png", CFG, raw, max_pixels=100)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "many", True])
def test_bad_limit_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="max_pixels"):
        decode_image("x.png", CFG, cv2.imencode(".png", _photo(8, 8))[1], max_pixels=bad)


def test_pack_applies_the_default_limit(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bomb.png").write_bytes(_png_header(20000, 20000))
    cv2.imwrite(str(tmp_path / "imgs" / "ok.png"), _photo(50, 50))
    with pytest.raises(ImageDecodeError, match="bomb.png.*megapixels"):
        int8batch.pack(tmp_path / "imgs", tmp_path / "o", preset="imagenet-torch", batch_size=1)
    res = int8batch.pack(tmp_path / "imgs", tmp_path / "o", preset="imagenet-torch", batch_size=1, skip_bad=True)
    assert res.images == 1 and "megapixels" in res.manifest["skipped"][0]["reason"]


def test_pack_takes_max_pixels(tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "ok.png"), _photo(50, 50))
    with pytest.raises(ImageDecodeError, match="= 2500 pixels, more than the limit of 100 pixels"):
        int8batch.pack(tmp_path / "imgs", tmp_path / "o", preset="imagenet-torch", batch_size=1, max_pixels=100)


def test_an_extreme_aspect_ratio_is_refused_before_the_resize_makes_it_huge(tmp_path, monkeypatch):
    """Found by a new user: a 20 kB 60000x6 strip took 2 GB (its short side resized to 256); refused by name
    from the header now, and skipped with skip_bad; a lowered max_pixels still concerns the files only."""
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "strip.png"), np.zeros((6, 60000, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "imgs" / "ok.png"), _photo(50, 50))
    resized = []
    real = decode.cv2().resize
    monkeypatch.setattr(decode.cv2(), "resize", lambda img, size, **k: resized.append(size) or real(img, size, **k))
    with pytest.raises(ImageDecodeError, match=r"strip.png: image is 60000x6; the recipe's resize would make it "
                                               r"2560000x256 = 655\.4 megapixels"):
        int8batch.pack(tmp_path / "imgs", tmp_path / "o", preset="imagenet-torch", batch_size=1)
    assert (2560000, 256) not in resized
    res = int8batch.pack(tmp_path / "imgs", tmp_path / "o", preset="imagenet-torch", batch_size=1, skip_bad=True)
    assert res.images == 1 and res.skipped[0][0] == "strip.png"
    # a small --max-pixels limits files, not what the resize makes of them (50x50 -> 256x256)
    res = int8batch.pack(tmp_path / "imgs", tmp_path / "p", preset="imagenet-torch", batch_size=1, skip_bad=True,
                         max_pixels=2500)
    assert res.images == 1


def test_fifo_named_like_an_image_is_refused_not_read(tmp_path):
    import os
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    import threading
    import time

    def unblock():  # a watchdog, so that a regression fails instead of hanging: the write end, later
        time.sleep(5)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    threading.Thread(target=unblock, daemon=True).start()
    # before issue 12 np.fromfile blocked on it forever, and with it the whole pack
    with pytest.raises(ImageDecodeError, match="FIFO"):
        decode.read_file(str(fifo))
    with pytest.raises(ImageDecodeError, match="cannot open"):
        decode.read_file(str(tmp_path / "missing.jpg"))
