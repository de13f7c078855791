"""int8batch: from a folder of images to a calibrated INT8 model for NVIDIA TensorRT.

Public API (heavy dependencies load lazily, inside the functions that need them):

- :func:`pack` -- decode, preprocess and pack images or MNIST IDX files into
  sampleINT8 batch files with a manifest.
- :class:`BatchSet` -- validated, memory-mapped reader of a batch folder;
  :meth:`BatchSet.window` plans the :class:`Window` of batches a stream serves.
- :class:`PreprocessConfig` and :data:`PRESETS` -- the preprocessing recipe.
- :func:`calibrate` -- batch files + an ONNX model -> TensorRT cache, dynamic
  ranges, Q/DQ model (:func:`int8batch.calib.api.calibrate`).
- :func:`evaluate` -- FP32 vs INT8 model on batch files
  (:func:`int8batch.calib.evaluate.evaluate`).
- :func:`export_numpy` -- batch files as one ``.npy``/``.npz`` array.
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
    if name == "calibrate":
        from .calib.api import calibrate
        return calibrate
    if name == "evaluate":
        from .calib.evaluate import evaluate
        return evaluate
    if name == "export_numpy":
        from .interop import export_numpy
        return export_numpy
    raise AttributeError(f"module 'int8batch' has no attribute {name!r}")


__all__ = ["pack", "PackResult", "BatchSet", "Batch", "Window", "PreprocessConfig", "PRESETS", "preset",
           "calibrate", "evaluate", "export_numpy", "Int8BatchError", "__version__"]
