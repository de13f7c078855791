"""TensorRT 8.6-10.x: INT8 calibrators fed from batch files and the INT8 engine build.

Importing this package does not import tensorrt; the functions do.
"""
from .build import BuildResult, build_int8_engine
from .calibrator import ALGORITHMS, check_implicit_int8, make_calibrator, parse_cache_header

__all__ = ["make_calibrator", "build_int8_engine", "BuildResult", "ALGORITHMS", "check_implicit_int8",
           "parse_cache_header"]
