"""Build script for flinknet's compiled core.

Environment switches (read at build time):

* ``FLINKNET_DEBUG=1``: bounds checks and assertions in Cython, ``-Og -g3``, line tracing, and the
  ``FLINKNET_DEBUG`` C macro that turns on segment accounting and internal consistency checks.
* ``FLINKNET_ANNOTATE=1``: write Cython's HTML annotation next to each ``.pyx``.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FLINKNET_DEBUG", "0") not in ("", "0")
ANNOTATE = os.environ.get("FLINKNET_ANNOTATE", "0") not in ("", "0")

CORE_MODULES = ["memory", "buffer", "builder", "pool", "serialization", "elements", "keygroups", "protocol",
                "engine", "cursor"]

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "linetrace": DEBUG,
}

if DEBUG:
    # -Og: gcc's level for debugging (every variable and line kept) without -O0's slowness.
    extra_compile_args = ["-Og", "-g3", "-Wall", "-Wno-unused-function"]
    define_macros = [("FLINKNET_DEBUG", "1"), ("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
else:
    extra_compile_args = ["-O3", "-Wall", "-Wno-unused-function"]
    define_macros = [("FLINKNET_DEBUG", "0")]

extensions = [
    Extension(
        f"flinknet._core.{name}",
        [f"flinknet/_core/{name}.pyx"],
        include_dirs=["flinknet/_core"],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
    for name in CORE_MODULES
]
# Not part of the core: the C baselines of ``flinknet bench`` (flinknet/tools). It cimports the
# core's BufferBuilder, hence the core's headers on its include path.
extensions.append(
    Extension(
        "flinknet.tools.bench._benchkit",
        ["flinknet/tools/bench/_benchkit.pyx"],
        include_dirs=["flinknet/_core"],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
)
# The native floor of ``python -m flinknet.tools.bench.floor``: the I/O-thread relay in C.
extensions.append(
    Extension(
        "flinknet.tools.bench._floorkit",
        ["flinknet/tools/bench/_floorkit.pyx"],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
    )
)

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=ANNOTATE,
        # A debug build must never reuse release C files (and vice versa).
        force=True,
    ),
)
