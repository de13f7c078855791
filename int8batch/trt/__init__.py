"""TensorRT 8.6-10.x: INT8 calibrators fed from batch files, the INT8 engine build, and engines run.

Importing this package imports neither tensorrt nor the engine code: the names
below load their module on first use, so :mod:`int8batch.trt.vocab` (TensorRT's
version numbers, calibrator names, cache headers and scale rule) stays a
light, bottom-layer module that the cache code can import.
"""
import importlib

_EXPORTS = {
    "make_calibrator": "calibrator", "check_implicit_int8": "calibrator",
    "parse_cache_header": "calibrator", "ALGORITHMS": "calibrator",
    "build_int8_engine": "build", "BuildResult": "build",
    "build_fp32_engine": "engine", "EngineRunner": "engine", "evaluate_engines": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
