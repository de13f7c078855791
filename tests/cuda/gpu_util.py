"""Helpers shared by the GPU tests: skip logic and test batch files."""
import numpy as np
import pytest

from int8batch import format as fmt


def gpu_available():
    try:
        from int8batch.cuda import runtime as cu
        return cu.device_count() > 0
    except Exception:  # noqa: BLE001 - cuda-python missing or no driver
        return False


GPU = gpu_available()
skip_no_gpu = pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU with cuda-python (cudaGetDeviceCount found none)")


def make_batches(folder, files, n, c, h, w, seed=0):
    """Write ``files`` batch files of random data with awkward float bit patterns; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((files * n, c, h, w)).astype(np.float32)
    flat = images.reshape(-1)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, -3.4e38], dtype=np.float32)
    flat[rng.integers(0, flat.size, 64)] = np.resize(special, 64)
    labels = rng.integers(0, 1000, files * n).astype(np.float32)
    for k in range(files):
        fmt.write_batch_file(folder / fmt.batch_name(k), images[k * n:(k + 1) * n], labels[k * n:(k + 1) * n])
    return images, labels


def device_bytes(ptr, nbytes):
    from int8batch.cuda import runtime as cu
    out = np.empty(nbytes, dtype=np.uint8)
    cu.memcpy_dtoh(out.ctypes.data, ptr, nbytes)
    return out
