"""Plain NumPy twins of the packer's kernels: slow, obvious, independent."""
import numpy as np


def normalize_reference(img, y0, x0, size, channels, scale, mean, std):
    """Crop + channel order + (pixel * scale - mean) / std, in float64, cast to float32.

    ``img`` is HWC (or HW) BGR/gray uint8 or uint16 as OpenCV decodes it.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    h, w = size
    win = img[y0:y0 + h, x0:x0 + w].astype(np.float64)
    if img.dtype == np.uint16:
        win = win / 257.0
    if channels == "gray" or img.shape[2] == 1:
        chans = [win[:, :, 0]] * (1 if channels == "gray" else 3)
    elif channels == "rgb":
        chans = [win[:, :, 2], win[:, :, 1], win[:, :, 0]]
    else:
        chans = [win[:, :, 0], win[:, :, 1], win[:, :, 2]]
    c = len(chans)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (c,))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (c,))
    out = np.stack([(ch * scale - m) / s for ch, m, s in zip(chans, mean, std)])
    return out.astype(np.float32)


def short_side_shape(h, w, s):
    """torchvision's Resize(s) output shape: short side s, long side int(s * long / short)."""
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def read_batch_file(path):
    """Parse a batch file with the standard library only: (dims, data, labels)."""
    import struct
    with open(path, "rb") as f:
        raw = f.read()
    n, c, h, w = struct.unpack("<4i", raw[:16])
    count = n * c * h * w
    data = np.array(struct.unpack(f"<{count}f", raw[16:16 + 4 * count]), dtype=np.float32).reshape(n, c, h, w)
    labels = np.array(struct.unpack(f"<{n}f", raw[16 + 4 * count:16 + 4 * count + 4 * n]), dtype=np.float32)
    assert len(raw) == 16 + 4 * count + 4 * n, "file size does not match its header"
    return (n, c, h, w), data, labels
