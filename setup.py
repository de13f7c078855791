"""Build the Cython kernels in csrc/ into private ``int8batch._kernels_*`` modules.

Metadata lives in pyproject.toml; this file only declares the extensions.
Set ``INT8BATCH_NO_OPENMP=1`` to build the kernels without OpenMP (they then run
serially inside one call, still releasing the GIL).
"""
import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# (module name, source) -- one row per kernel module.  A source may include files named
# after it (csrc/_calib.pyx includes csrc/_calib_*.pxi, which use csrc/_calib_*.h).
KERNELS = [
    ("int8batch._kernels_preprocess", "csrc/_preprocess.pyx"),
    ("int8batch._kernels_calib", "csrc/_calib.pyx"),
]


def _openmp_flags():
    if os.environ.get("INT8BATCH_NO_OPENMP") == "1" or sys.platform == "darwin":
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def _depends(src):
    """The files ``src`` includes (``<stem>_*.pxi``, ``<stem>_*.h``): rebuilt on change, shipped in the sdist."""
    stem = os.path.splitext(src)[0]
    return sorted(glob.glob(stem + "_*.pxi") + glob.glob(stem + "_*.h"))


def extensions():
    # INT8BATCH_ONLY=_calib builds just the kernels whose source path contains it
    # (handy while one kernel is being edited); the default builds all.
    only = os.environ.get("INT8BATCH_ONLY", "")
    if only and not any(only in src for _, src in KERNELS):
        sys.exit(f"INT8BATCH_ONLY={only!r} names none of the kernels ({', '.join(src for _, src in KERNELS)})")
    cflags, lflags = _openmp_flags()
    if sys.platform != "win32":
        cflags = cflags + ["-O3"]
    return [
        Extension(
            name,
            [src],
            depends=_depends(src),
            include_dirs=[np.get_include(), "csrc"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION")],
            extra_compile_args=cflags,
            extra_link_args=lflags,
        )
        for name, src in KERNELS
        if os.path.exists(src) and only in src
    ]


setup(
    ext_modules=cythonize(
        extensions(),
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
