"""int8batch: from a folder of images to a calibrated INT8 model for NVIDIA TensorRT.

Public API (heavy dependencies load lazily, inside the functions that need them):

- :func:`pack` -- decode, preprocess and pack images or MNIST IDX files into
  sampleINT8 batch files with a manifest.
- :class:`BatchSet` -- validated, memory-mapped reader of a batch folder;
  :meth:`BatchSet.window` plans the :class:`Window` of batches a stream serves.
- :class:`PreprocessConfig` and :data:`PRESETS` -- the preprocessing recipe.
"""
from ._version import __version__  # noqa: E402,F401

from .errors import Int8BatchError  # noqa: E402
from .reader import Batch, BatchSet  # noqa: E402
from .window import Window  # noqa: E402


def __getattr__(name):
    # Keep ``import int8batch`` light: the packer pulls in OpenCV.
    if name in ("pack", "PackResult"):
        from .packing import packer
        return getattr(packer, name)
    if name in ("PreprocessConfig", "PRESETS", "preset"):
        from . import preprocess
        return getattr(preprocess, name)
    raise AttributeError(f"module 'int8batch' has no attribute {name!r}")


__all__ = ["pack", "PackResult", "BatchSet", "Batch", "Window", "PreprocessConfig", "PRESETS", "preset",
           "Int8BatchError", "__version__"]
