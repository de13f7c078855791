"""The one place where optional heavy dependencies are imported.

Call these inside the functions that need the module, never at import time, so
``import int8batch`` stays cheap and works without them.
"""
import importlib

from .errors import MissingDependencyError

# module -> (pip requirement, int8batch extra that installs it)
_HINTS = {
    "onnx": ("onnx", None),
    "onnxruntime": ("onnxruntime", None),
    "tensorrt": ("tensorrt (8.6 to 10.x for calibrators)", "tensorrt"),
    "cuda.bindings.runtime": ("cuda-python", "cuda"),
    "matplotlib": ("matplotlib", "report"),
    "cv2": ("opencv-python-headless", None),
}


def require(module):
    """Import ``module`` or raise ``MissingDependencyError`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        req, extra = _HINTS.get(module, (module, None))
        how = f"pip install 'int8batch[{extra}]'" if extra else f"pip install {req.split()[0]}"
        raise MissingDependencyError(
            f"this feature needs {req}, which could not be imported ({exc}); install it with: {how}"
        ) from exc


def available(module):
    """True when ``module`` can be imported (imports it as a side effect)."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
