"""The project's CUDA kernels (``kernels.cu``): compiled with NVRTC at first use, launched on device pointers.

:class:`DeviceKernels` offers the calibration statistics of
``int8batch._kernels_calib`` (``abs_max``, ``abs_max_many``, ``abs_histogram``,
``abs_histogram_many``, ``sum_rows``) with the same signatures and results, on
:class:`DeviceTensor` arguments (float32 data already on the GPU): the
collectors of :mod:`int8batch.calib.collector` take it as their ``kernels``
and run unchanged.  Only the small results (histogram rows, a few scalars per
tensor) come back to the host.  ``lattice_worst`` checks that a tensor lies on
a pixel-step lattice.

The kernels run on a private stream in the context current on the calling
thread (:func:`int8batch.cuda.runtime.ensure_context`: the primary context that
ONNX Runtime's CUDA provider also uses).  Data written by another stream must be
complete before a call (ONNX Runtime's ``run_with_iobinding`` synchronizes).
"""
import logging
import math
import os
import threading

import numpy as np

from . import runtime as cu
from .buffers import DeviceBuffer
from .._optional import require
from ..errors import ConfigError, CudaError

log = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cu")
#: the NumPy twin of ``struct i8b_job`` in kernels.cu
JOB = np.dtype({"names": ["x", "n", "inv", "thr", "pad"],
                "formats": [np.uint64, np.int64, np.float64, np.float32, np.int32],
                "offsets": [0, 8, 16, 24, 28], "itemsize": 32})
#: the NumPy twin of ``struct i8b_geo`` in kernels.cu (``patch_gram``'s layer geometry)
GEO = np.dtype([(f, np.int32) for f in ("c", "h", "w", "cg", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
                                        "oh", "ow", "d", "rows_per_block")])
#: patches one block of ``i8b_patch_gram`` sums in float before adding them to H in double
GRAM_ROWS = 1024
THREADS = 256
#: values one block takes at least (a job gets ceil(n / PER_BLOCK) blocks, at most MAX_BLOCKS)
PER_BLOCK = 1 << 16
MAX_BLOCKS = 2048

_LOCK = threading.Lock()
_MODULES = {}   # (context handle, defines) -> (module, {name: function})


class DeviceTensor:
    """A C-contiguous float32 tensor on the device (borrowed: its owner keeps it alive).

    Attributes
    ----------
    ptr : int
    shape : tuple
    size : int
        Number of values.
    nbytes : int
    """

    __slots__ = ("ptr", "shape", "size", "nbytes", "owner")

    def __init__(self, ptr, shape, owner=None):
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.size = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self.nbytes = 4 * self.size
        self.owner = owner

    def reshape(self, *shape):
        """The same data seen with another shape (``-1`` allowed once), as NumPy's reshape."""
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = list(shape)
        if shape.count(-1) == 1:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            shape[shape.index(-1)] = self.size // max(known, 1)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape a device tensor of {self.size} values to {tuple(shape)}")
        return DeviceTensor(self.ptr, shape, self.owner)

    def __len__(self):
        return self.shape[0] if self.shape else 1

    def __getitem__(self, key):
        """``t[a:b]``: images ``a:b`` along the first axis, a view (the only indexing a device tensor takes)."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a DeviceTensor takes only t[start:stop] along its first axis")
        start, stop, _ = key.indices(len(self))
        stop = max(start, stop)
        per = self.size // max(self.shape[0], 1)
        return DeviceTensor(self.ptr + 4 * per * start, (stop - start,) + self.shape[1:], self.owner)

    def to_host(self):
        """A NumPy copy (for tests and diagnostics)."""
        out = np.empty(self.shape, dtype=np.float32)
        if self.size:
            cu.memcpy_dtoh(out.ctypes.data, self.ptr, self.nbytes)
        return out

    def __repr__(self):
        return f"DeviceTensor(0x{self.ptr:x}, shape={self.shape})"


def _check(what, result):
    """Check an NVRTC or driver result tuple (error first)."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        raise CudaError(f"{what} failed with {err}", name=str(err), code=int(err))
    return rest[0] if len(rest) == 1 else (rest or None)


def _compile(device, defines=()):
    """Compile kernels.cu for ``device``: cubin for its architecture (PTX for the newest NVRTC knows).

    ``defines``: extra ``NAME=VALUE`` macros (bench/bench_gpu_kernels.py compares variants with them).
    """
    nvrtc = require("cuda.bindings.nvrtc")
    major = cu.device_attribute("cudaDevAttrComputeCapabilityMajor", device)
    minor = cu.device_attribute("cudaDevAttrComputeCapabilityMinor", device)
    with open(_SOURCE, "rb") as f:
        src = f.read()
    archs = []
    try:
        archs = list(_check("nvrtcGetSupportedArchs", nvrtc.nvrtcGetSupportedArchs()))
    except (CudaError, AttributeError):
        pass
    cc = 10 * major + minor
    cubin = not archs or cc in archs
    arch = f"sm_{cc}" if cubin else f"compute_{max(a for a in archs if a <= cc)}"
    prog = _check("nvrtcCreateProgram", nvrtc.nvrtcCreateProgram(src, b"kernels.cu", 0, [], []))
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--fmad=false", b"--std=c++14"]
        opts += [f"-D{d}".encode() for d in defines]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if int(err) != 0:
            size = _check("nvrtcGetProgramLogSize", nvrtc.nvrtcGetProgramLogSize(prog))
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            raise CudaError(f"NVRTC could not compile {_SOURCE} for {arch}: {buf.decode(errors='replace')}",
                            name=str(err), code=int(err))
        if cubin:
            size = _check("nvrtcGetCUBINSize", nvrtc.nvrtcGetCUBINSize(prog))
            image = b" " * size
            _check("nvrtcGetCUBIN", nvrtc.nvrtcGetCUBIN(prog, image))
        else:
            size = _check("nvrtcGetPTXSize", nvrtc.nvrtcGetPTXSize(prog))
            image = b" " * size
            _check("nvrtcGetPTX", nvrtc.nvrtcGetPTX(prog, image))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    log.debug("compiled %s for %s (%d bytes)", _SOURCE, arch, len(image))
    return image


def _functions(defines=()):
    """The kernels of the current context (compiled and loaded once per context and ``defines``)."""
    dev = cu.ensure_context()
    ctx = cu.current_context()
    with _LOCK:
        key = (ctx, tuple(defines))
        hit = _MODULES.get(key)
        if hit is None:
            drv = require("cuda.bindings.driver")
            image = _compile(dev, defines)
            module = _check("cuModuleLoadData", drv.cuModuleLoadData(image))
            funcs = {name: _check(f"cuModuleGetFunction({name})", drv.cuModuleGetFunction(module, name.encode()))
                     for name in ("i8b_abs_hist", "i8b_sum_rows", "i8b_lattice", "i8b_patch_gram")}
            hit = _MODULES[key] = (module, funcs)
    return hit[1]


def _launch(func, grid, block, shared, stream, *args):
    """cuLaunchKernel with ``args`` given as NumPy scalars of the kernel's parameter types."""
    drv = require("cuda.bindings.driver")
    boxes = [np.array([a]) if isinstance(a, np.generic) else np.array([a], dtype=np.uint64) for a in args]
    ptrs = np.array([b.ctypes.data for b in boxes], dtype=np.uint64)
    # the driver copies the parameter values when the launch is issued, so the boxes may go after it
    _check("cuLaunchKernel", drv.cuLaunchKernel(func, *grid, *block, shared, drv.CUstream(int(stream)),
                                                ptrs.ctypes.data, 0))


def float_below(h):
    """Largest float32 <= ``h`` (the over-count threshold of the CPU kernel)."""
    if h >= float(np.finfo(np.float32).max):
        return np.finfo(np.float32).max
    f = np.float32(h)
    if float(f) > h:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def _inv(hist_max, nbins, where):
    h = float(hist_max)
    if not (h > 0.0) or math.isinf(h):
        raise ValueError(f"{where}hist_max must be finite and > 0, got {hist_max!r}")
    inv = nbins / h
    if math.isinf(inv):
        raise ValueError(f"{where}hist_max {hist_max!r} is too small for {nbins} bins")
    return inv


def _decode(keys):
    """uint32 order keys (kernels.cu ``i8b_key``) back to float32."""
    keys = np.asarray(keys, dtype=np.uint32)
    bits = np.where(keys & 0x80000000, keys & 0x7FFFFFFF, ~keys).astype(np.uint32)
    return bits.view(np.float32).astype(np.float64)


class DeviceKernels:
    """The calibration kernels on the GPU, with the CPU kernels' signatures (``num_threads`` is ignored).

    Parameters
    ----------
    device : int or None
        Device whose primary context is used when no context is current.

    Use :meth:`close` (or ``with``) to free its few device buffers and its stream.
    """

    def __init__(self, device=None, defines=()):
        cu.ensure_context(device)
        self._f = _functions(defines)
        self.per_block = PER_BLOCK
        self._stream = cu.Stream()
        self._bufs = {}
        self.launches = 0

    # -- buffers ---------------------------------------------------------
    def _buf(self, key, nbytes):
        b = self._bufs.get(key)
        if b is None or b.nbytes < nbytes:
            if b is not None:
                b.close()
            b = self._bufs[key] = DeviceBuffer(max(int(nbytes), 256))
        return b.ptr

    def close(self):
        for b in self._bufs.values():
            b.close()
        self._bufs.clear()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the collector's interface ----------------------------------------
    @staticmethod
    def prepare(name, x):
        """``x`` as the kernels take it (a :class:`DeviceTensor` of float32 values)."""
        if not isinstance(x, DeviceTensor):
            raise ConfigError(f"tensor {name!r}: the device kernels take DeviceTensor data on the GPU, "
                              f"not {type(x).__name__}")
        return x

    def abs_histogram_many(self, xs, hist_max, out, num_threads=1):
        """Per tensor: ``out[i]`` = histogram of ``|xs[i]|`` over ``[0, hist_max[i])``; the stats arrays."""
        out = np.asarray(out)
        k, nbins = out.shape
        if len(xs) != k or len(hist_max) != k:
            raise ValueError(f"{len(xs)} tensors need {len(xs)} hist_max values and rows of out, "
                             f"got {len(hist_max)} and {k}")
        invs = [_inv(h, nbins, f"xs[{i}]: ") for i, h in enumerate(hist_max)]
        thrs = [float_below(h) for h in hist_max]
        return self._run(xs, invs, thrs, out)

    def abs_max_many(self, xs, num_threads=1):
        """Per tensor: (amax, vmin, vmax, nan, inf, over=0) arrays."""
        return self._run(xs, [0.0] * len(xs), [np.float32(np.inf)] * len(xs), None)

    def abs_histogram(self, x, hist_max, out, num_threads=1):
        out = np.asarray(out)
        res = self.abs_histogram_many([x], [hist_max], out.reshape(1, -1))
        return tuple(float(v[0]) if v.dtype.kind == "f" else int(v[0]) for v in res)

    def abs_max(self, x, num_threads=1):
        res = self.abs_max_many([x])
        return tuple(float(v[0]) if v.dtype.kind == "f" else int(v[0]) for v in res)

    def _run(self, xs, invs, thrs, out):
        k = len(xs)
        if k == 0:
            z = np.zeros(0)
            zi = np.zeros(0, dtype=np.int64)
            return z, z.copy(), z.copy(), zi, zi.copy(), zi.copy()
        nbins = out.shape[1] if out is not None else 1
        if out is not None and (out.dtype != np.int64 or not out.flags.c_contiguous):
            raise ValueError("out must be a C-contiguous int64 array")
        jobs = np.zeros(k, dtype=JOB)
        jobs["x"] = [x.ptr for x in xs]
        jobs["n"] = [x.size for x in xs]
        jobs["inv"] = invs
        jobs["thr"] = thrs
        s = self._stream.handle
        hist_b = k * nbins * 8
        pj = self._buf("jobs", jobs.nbytes)
        ph = self._buf("hist", hist_b)
        pk = self._buf("keys", 8 * k)
        pc = self._buf("counts", 24 * k)
        drv = require("cuda.bindings.driver")
        cu.memcpy_htod_async(pj, jobs.ctypes.data, jobs.nbytes, s)
        st = drv.CUstream(int(s))
        _check("cuMemsetD32Async", drv.cuMemsetD32Async(pk, 0xFFFFFFFF, k, st))        # min keys
        _check("cuMemsetD32Async", drv.cuMemsetD32Async(pk + 4 * k, 0, k, st))         # max keys
        _check("cuMemsetD32Async", drv.cuMemsetD32Async(pc, 0, 6 * k, st))
        if out is not None:
            _check("cuMemsetD32Async", drv.cuMemsetD32Async(ph, 0, 2 * k * nbins, st))
        biggest = max(x.size for x in xs)
        gx = int(min(MAX_BLOCKS, max(1, -(-biggest // self.per_block))))
        # grid.y is at most 65535 jobs per launch
        for lo in range(0, k, 65535):
            hi = min(k, lo + 65535)
            _launch(self._f["i8b_abs_hist"], (gx, hi - lo, 1), (THREADS, 1, 1),
                    4 * nbins if out is not None else 0, s,
                    np.uint64(pj + lo * JOB.itemsize), np.int32(nbins), np.int64(self.per_block),
                    np.uint64(ph + lo * nbins * 8), np.uint64(pk + 4 * lo), np.uint64(pk + 4 * k + 4 * lo),
                    np.uint64(pc + 24 * lo))
            self.launches += 1
        keys = np.empty(2 * k, dtype=np.uint32)
        counts = np.empty(3 * k, dtype=np.int64)
        _dtoh_async(keys.ctypes.data, pk, keys.nbytes, s)
        _dtoh_async(counts.ctypes.data, pc, counts.nbytes, s)
        if out is not None:
            _dtoh_async(out.ctypes.data, ph, hist_b, s)
        self._stream.synchronize()
        nan, inf, over = counts[0::3].copy(), counts[1::3].copy(), counts[2::3].copy()
        finite = np.array([x.size for x in xs], dtype=np.int64) - nan - inf
        vmin, vmax = _decode(keys[:k]), _decode(keys[k:])
        none = finite == 0
        vmin[none], vmax[none] = np.inf, -np.inf
        amax = np.where(none, 0.0, np.maximum(np.abs(vmin), np.abs(vmax)))
        return amax, vmin, vmax, nan, inf, over

    def sum_rows(self, x, acc_ptr, rows, cols):
        """``acc[j] += sum_i x[i, j]`` in double on the device (``acc_ptr``: ``cols`` float64)."""
        if rows * cols != x.size:
            raise ValueError(f"{rows} x {cols} does not match a tensor of {x.size} values")
        if cols == 0:
            return
        _launch(self._f["i8b_sum_rows"], (-(-cols // THREADS), 1, 1), (THREADS, 1, 1), 0, self._stream.handle,
                np.uint64(x.ptr), np.int64(rows), np.int64(cols), np.uint64(acc_ptr))
        self.launches += 1

    def zeros(self, nbytes):
        """A new zero-filled :class:`DeviceBuffer` (the caller closes it)."""
        buf = DeviceBuffer(max(int(nbytes), 8))
        buf.copy_from_host(np.zeros(buf.nbytes, dtype=np.uint8))
        return buf

    def patch_gram(self, x, geo, rows, groups, h_ptr):
        """``H[g] += sum of p p^T`` over the first ``rows`` patches of ``x`` (float64 ``groups x d x d`` at
        ``h_ptr``; only the tiles on or below the diagonal).  ``geo``: a :data:`GEO` record."""
        geo = np.array(geo, dtype=GEO)
        geo["rows_per_block"] = GRAM_ROWS
        d = int(geo["d"])
        tiles = -(-d // 16)
        if rows <= 0 or d <= 0:
            return
        _launch(self._f["i8b_patch_gram"], (-(-int(rows) // GRAM_ROWS), tiles * tiles, int(groups)), (16, 16, 1),
                0, self._stream.handle, np.uint64(x.ptr), geo[()], np.int64(rows), np.uint64(h_ptr))
        self.launches += 1

    def lattice_worst(self, x, step):
        """Largest ``|x/step - rint(x/step)|`` over the tensor (1.0 when it holds NaN or inf)."""
        p = self._buf("lattice", 4)
        s = self._stream.handle
        drv = require("cuda.bindings.driver")
        _check("cuMemsetD32Async", drv.cuMemsetD32Async(p, 0, 1, drv.CUstream(int(s))))
        blocks = int(min(4096, max(1, -(-x.size // (THREADS * 16)))))
        _launch(self._f["i8b_lattice"], (blocks, 1, 1), (THREADS, 1, 1), 0, s,
                np.uint64(x.ptr), np.int64(x.size), np.float64(step), np.uint64(p))
        w = np.empty(1, dtype=np.uint32)
        _dtoh_async(w.ctypes.data, p, 4, s)
        self._stream.synchronize()
        return float(w.view(np.float32)[0])

    def synchronize(self):
        self._stream.synchronize()


def _dtoh_async(dst, src, nbytes, stream):
    r = cu.rt()
    cu.call("cudaMemcpyAsync(DeviceToHost)",
            r.cudaMemcpyAsync(int(dst), int(src), int(nbytes), r.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
