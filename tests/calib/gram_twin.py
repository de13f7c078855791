"""A NumPy twin of kernels.cu's ``i8b_patch_gram``, and host stand-ins for the kernels object that launches it.

The twin follows the kernel's index arithmetic (patch row r -> image, output
position; patch value v -> channel, tap; the input coordinates from the
``GEO`` record) independently of calib/rounding.py's im2col, so a wrong
geometry record or a wrong index formula shows up against ``patch_moments``.
"""
import numpy as np

from int8batch.onnx.layers import Layer

#: (layer, weight shape, input shape): the geometries the device collector's record must cover
DEVICE_LAYERS = [
    (Layer(key="dw", op="Conv", input="x", weight="w", bias="", group=6, kernel=(3, 3), strides=(2, 2),
           dilations=(1, 1), pads=(1, 1, 1, 1)), (6, 1, 3, 3), (3, 6, 11, 9)),
    (Layer(key="grp", op="Conv", input="x", weight="w", bias="", group=2, kernel=(3, 2), strides=(1, 2),
           dilations=(2, 1), pads=(2, 0, 1, 1)), (4, 3, 3, 2), (3, 6, 10, 8)),
    (Layer(key="same", op="Conv", input="x", weight="w", bias="", group=1, kernel=(5, 5), strides=(2, 2),
           dilations=(1, 1), pads=(), auto_pad="SAME_LOWER"), (8, 2, 5, 5), (3, 2, 9, 12)),
    (Layer(key="pw", op="Conv", input="x", weight="w", bias="", group=1, kernel=(1, 1), strides=(1, 1),
           dilations=(1, 1), pads=(0, 0, 0, 0)), (7, 20, 1, 1), (3, 20, 5, 5)),
    (Layer(key="c1d", op="Conv", input="x", weight="w", bias="", group=1, kernel=(3,), strides=(2,),
           dilations=(1,), pads=(1, 0)), (5, 4, 3), (3, 4, 17)),
    (Layer(key="fc", op="Gemm", input="x", weight="w", bias="", trans_b=1), (10, 37), (3, 37)),
    (Layer(key="c3d", op="Conv", input="x", weight="w", bias="", group=1, kernel=(2, 2, 2), strides=(1, 1, 1),
           dilations=(1, 1, 1), pads=(0, 0, 0, 0, 0, 0)), (3, 2, 2, 2, 2), (3, 2, 4, 4, 4)),
]


def patch_gram_twin(x, geo, rows, groups):
    """``(groups, d, d)`` float64: the sum of p p^T over the first ``rows`` patches, as the kernel defines them."""
    g = {f: int(geo[f]) for f in geo.dtype.names}
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    r = np.arange(rows)
    v = np.arange(g["d"])
    ohw = g["oh"] * g["ow"]
    n, p = r // ohw, r % ohw
    oy, ox = p // g["ow"], p % g["ow"]
    khw = g["kh"] * g["kw"]
    cl, t = v // khw, v % khw
    ky, kx = t // g["kw"], t % g["kw"]
    iy = oy[:, None] * g["sh"] - g["ph"] + ky[None, :] * g["dh"]
    ix = ox[:, None] * g["sw"] - g["pw"] + kx[None, :] * g["dw"]
    inside = (iy >= 0) & (iy < g["h"]) & (ix >= 0) & (ix < g["w"])
    out = np.zeros((groups, g["d"], g["d"]))
    for grp in range(groups):
        c = grp * g["cg"] + cl
        idx = ((n[:, None] * g["c"] + c[None, :]) * g["h"] + iy) * g["w"] + ix
        a = np.where(inside, flat[np.where(inside, idx, 0)], np.float32(0))
        out[grp] = (a.T.astype(np.float64) @ a.astype(np.float64))
    return out


class HostBuffer:
    """A DeviceBuffer's interface over host memory."""

    def __init__(self, nbytes):
        self.arr = np.zeros(int(nbytes), dtype=np.uint8)
        self.nbytes = int(nbytes)
        self.ptr = self.arr.ctypes.data
        self.closed = False

    def copy_to_host(self, out=None, nbytes=None):
        n = self.nbytes if nbytes is None else int(nbytes)
        out.reshape(-1).view(np.uint8)[:n] = self.arr[:n]
        return out

    def close(self):
        self.closed = True


class GramKernels:
    """The ``zeros`` / ``patch_gram`` / ``synchronize`` of DeviceKernels on host arrays, through the twin."""

    def __init__(self):
        self.buffers = {}
        self.launches = []

    def zeros(self, nbytes):
        b = HostBuffer(nbytes)
        self.buffers[b.ptr] = b
        return b

    def patch_gram(self, x, geo, rows, groups, h_ptr):
        x = x.to_host() if hasattr(x, "to_host") else x
        h = self.buffers[h_ptr].arr.view(np.float64).reshape(groups, int(geo["d"]), int(geo["d"]))
        full = patch_gram_twin(x, geo, rows, groups)
        h += np.tril(full)                     # the kernel computes the tiles on and below the diagonal only
        # (whole 16 x 16 tiles: the upper half of a diagonal tile is filled as well)
        d = int(geo["d"])
        for t in range(0, d, 16):
            blk = np.s_[:, t:t + 16, t:t + 16]
            h[blk] += np.triu(full[blk], 1)
        self.launches.append(rows)

    def synchronize(self):
        pass
