"""CUDA through cuda-python: checked runtime calls, buffers and the device feeder.

Importing this package does not import cuda-python; the functions do.
"""
from .feeder import STRATEGIES, DeviceBatch, DeviceFeeder
from .runtime import device_count, gpu_available

__all__ = ["DeviceFeeder", "DeviceBatch", "STRATEGIES", "device_count", "gpu_available"]
