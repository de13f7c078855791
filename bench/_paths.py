"""Which int8batch a benchmark measures: the installed one when it has its kernels, else this source tree.

After `pip install .` the source tree's package has no compiled kernels: putting the tree first on
sys.path would shadow the installed package (and fail).  The tree goes last then, for `tools/` and
`tests/` helpers; without an installed package it goes first (an in-place or editable build).
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    importlib.import_module("int8batch._kernels_calib")
    importlib.import_module("int8batch._kernels_preprocess")
    sys.path.append(ROOT)
except ImportError:
    for name in [m for m in sys.modules if m == "int8batch" or m.startswith("int8batch.")]:
        del sys.modules[name]
    sys.path.insert(0, ROOT)
