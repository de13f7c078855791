"""int8batch.cuda.runtime without a GPU: a missing driver is a CudaError, never a third-party exception."""
import pytest

from int8batch.cuda import runtime
from int8batch.errors import CudaError, Int8BatchError


class _NoDriver:
    """What cuda-python's driver module does on a machine without the NVIDIA driver."""

    class DynamicLibNotFoundError(RuntimeError):
        pass

    def cuCtxGetCurrent(self):
        raise self.DynamicLibNotFoundError('"cuda" is an NVIDIA driver library and can only be found via system '
                                           "search")


def test_a_missing_driver_is_a_cuda_error(monkeypatch):
    """Found by a new user: DeviceFeeder and DeviceKernels raised cuda.pathfinder's DynamicLibNotFoundError
    when cuda-python was installed on a machine without a driver (gpu_available() said False)."""
    monkeypatch.setattr(runtime, "_driver", lambda: _NoDriver())
    monkeypatch.setattr(runtime, "rt", lambda: object())
    with pytest.raises(CudaError, match="the NVIDIA driver cannot be loaded .*DynamicLibNotFoundError") as info:
        runtime.ensure_context()
    assert isinstance(info.value, Int8BatchError) and info.value.name == "cudaErrorNoDevice"
