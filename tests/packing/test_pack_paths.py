"""Issue 11's packer paths write the same bytes as the ones they replace.

- image packs: files assembled in reused buffers and written in one call
  (``BUFFERED_MAX_BYTES`` > 0) are byte-identical to the memory-mapped path
  (the default), with skipped images, padding (also when the last image is
  skipped) and any thread count;
- MNIST IDX: one-thread lookups for small files and two committers give the
  same files and checksums as OpenMP lookups with one committer.
"""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

import int8batch
import int8batch.packing.packer as packer


def _folder(root, count=23, seed=5):
    root.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(count):
        h, w = int(rng.integers(230, 700)), int(rng.integers(230, 700))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([127 + 120 * np.sin(xx / (9 + c + k % 7) + c) * np.cos(yy / (13 + c)) for c in range(3)], -1)
        cv2.imwrite(str(root / f"img{k:02d}.jpg"), np.clip(img, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "img99_broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    return root


def _digest(out):
    man = json.loads((out / "manifest.json").read_text())
    files = sorted(n for n in os.listdir(out) if n.startswith("batch"))
    return man["checksums"]["files"], {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in files}, \
        man["images_list"], man["skipped"], man["padded"]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("pad", [False, True])
def test_buffered_files_equal_mapped_files(tmp_path, monkeypatch, workers, pad):
    src = _folder(tmp_path / "imgs")
    kw = dict(preset="imagenet-torch", batch_size=5, workers=workers, skip_bad=True, pad=pad, labels="none")
    monkeypatch.setattr(packer, "BUFFERED_MAX_BYTES", 64 << 20)  # every file through a buffer
    buffered = int8batch.pack(src, tmp_path / "buffered", **kw)
    monkeypatch.setattr(packer, "BUFFERED_MAX_BYTES", 0)  # every file through a memory map
    mapped = int8batch.pack(src, tmp_path / "mapped", **kw)
    assert buffered.files == mapped.files == (5 if pad else 4)
    assert _digest(tmp_path / "buffered") == _digest(tmp_path / "mapped")
    assert len(buffered.skipped) == 1


@pytest.mark.parametrize("cap", [0, 64 << 20])
def test_pack_failure_leaves_nothing(tmp_path, monkeypatch, cap):
    monkeypatch.setattr(packer, "BUFFERED_MAX_BYTES", cap)
    src = _folder(tmp_path / "imgs", count=12)
    with pytest.raises(int8batch.errors.ImageDecodeError):
        int8batch.pack(src, tmp_path / "out", preset="imagenet-torch", batch_size=4, workers=2, labels="none")
    assert not (tmp_path / "out").exists()     # nothing written, and the folder the pack made is gone


def _idx(path, imgs):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in imgs.shape))
        f.write(imgs.tobytes())


@pytest.mark.parametrize("shuffle", [False, True])
def test_mnist_files_identical_before_and_after(tmp_path, monkeypatch, shuffle):
    imgs = np.random.default_rng(1).integers(0, 256, size=(1234, 28, 28), dtype=np.uint8)
    _idx(tmp_path / "t-images-idx3-ubyte", imgs)
    kw = dict(batch_size=100, labels="none", workers=2, shuffle=shuffle, seed=3, pad=True)
    new = int8batch.pack(tmp_path / "t-images-idx3-ubyte", tmp_path / "new", **kw)
    # the code before issue 11: OpenMP lookups for every file, one committer
    monkeypatch.setattr(packer, "LUT_THREADS_MIN", 0)
    real_pool = packer.ThreadPoolExecutor
    monkeypatch.setattr(packer, "ThreadPoolExecutor", lambda n: real_pool(1))
    old = int8batch.pack(tmp_path / "t-images-idx3-ubyte", tmp_path / "old", **kw)
    assert new.files == old.files == 13
    assert _digest(tmp_path / "new") == _digest(tmp_path / "old")
    data = np.fromfile(tmp_path / "new" / "batch0", np.float32, offset=16, count=100 * 784)
    order = [int(n.rsplit("#", 1)[1]) for n, _ in new.manifest["images_list"][:100]]
    np.testing.assert_array_equal(data.reshape(100, 28, 28), (imgs[order] / 255.0).astype(np.float32))
