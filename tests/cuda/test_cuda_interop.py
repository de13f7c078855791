"""The CUDA layer works in whatever context is current: primary (CuPy, torch) or a pushed one (pycuda-style)."""
import numpy as np
import pytest

from gpu_util import make_batches, skip_no_gpu

pytestmark = [pytest.mark.gpu, skip_no_gpu]

N, C, H, W = 8, 3, 16, 16


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interop")
    images, _ = make_batches(folder, 3, N, C, H, W, seed=11)
    return folder, images


def _pointer_context(ptr):
    from cuda.bindings import driver as drv
    err, ctx = drv.cuPointerGetAttribute(drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_CONTEXT, ptr)
    assert int(err) == 0, err
    return int(ctx)


def test_pushed_non_primary_context_is_used(batch_dir):
    """A pycuda-style context pushed on the thread: the feeder allocates and copies in it."""
    from cuda.bindings import driver as drv
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, images = batch_dir
    assert int(drv.cuInit(0)[0]) == 0
    err, dev = drv.cuDeviceGet(0)
    try:
        err, ctx = drv.cuCtxCreate(None, 0, dev)          # cuda-bindings 13
    except TypeError:
        err, ctx = drv.cuCtxCreate(0, dev)                # cuda-bindings 12
    assert int(err) == 0, err
    try:
        assert cu.current_context() == int(ctx)
        with BatchSet(folder) as bs, DeviceFeeder(bs, N) as feeder:
            assert cu.current_context() == int(ctx)       # nothing switched it
            b = feeder.next_batch()
            assert _pointer_context(b.ptr) == int(ctx)
            got = np.empty(b.shape, np.float32)
            cu.memcpy_dtoh(got.ctypes.data, b.ptr, b.nbytes)
            assert np.array_equal(got.view(np.uint8), images[:N].view(np.uint8))
    finally:
        drv.cuCtxPopCurrent()
        drv.cuCtxDestroy(ctx)


def test_pycuda_context_if_available(batch_dir):
    pycuda_driver = pytest.importorskip("pycuda.driver")
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, images = batch_dir
    pycuda_driver.init()
    ctx = pycuda_driver.Device(0).make_context()
    try:
        with BatchSet(folder) as bs, DeviceFeeder(bs, N) as feeder:
            b = feeder.next_batch()
            host = np.empty(b.shape, np.float32)
            pycuda_driver.memcpy_dtoh(host, b.ptr)
            assert np.array_equal(host.view(np.uint8), images[:N].view(np.uint8))
            assert cu.current_context() == int(ctx.handle)
    finally:
        ctx.pop()
        ctx.detach()


def test_cupy_stream_and_arrays(batch_dir):
    cp = pytest.importorskip("cupy")
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, images = batch_dir
    finite = np.where(np.isfinite(images), images, 0).astype(np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    ctx_before = cu.current_context()
    with BatchSet(folder) as bs, DeviceFeeder(bs, N, stream=stream) as feeder:
        if ctx_before:
            assert cu.current_context() == ctx_before
        for i, b in enumerate(feeder):
            mem = cp.cuda.UnownedMemory(b.ptr, b.nbytes, feeder)
            arr = cp.ndarray(b.shape, cp.float32, cp.cuda.MemoryPointer(mem, 0))
            with stream:
                clean = cp.where(cp.isfinite(arr), arr, 0)
                got = cp.asnumpy(clean, stream=stream)
            stream.synchronize()
            np.testing.assert_array_equal(got, finite[i * N:(i + 1) * N])


class _CudaArray:
    def __init__(self, ptr, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (ptr, False),
                                         "version": 3, "strides": None}


def test_torch_primary_context(batch_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    from int8batch.cuda import runtime as cu
    from int8batch.cuda.feeder import DeviceFeeder
    from int8batch.reader import BatchSet

    folder, images = batch_dir
    torch.zeros(1, device="cuda")                       # torch makes the primary context current
    ctx = cu.current_context()
    assert ctx != 0
    with BatchSet(folder) as bs, DeviceFeeder(bs, N, strategy="pinned") as feeder:
        b = feeder.next_batch()
        assert _pointer_context(b.ptr) == ctx
        t = torch.as_tensor(_CudaArray(b.ptr, b.shape), device="cuda")
        got = t.cpu().numpy()
        assert np.array_equal(got.view(np.uint8), images[:N].view(np.uint8))
    assert cu.current_context() == ctx
