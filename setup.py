"""Build the fastpath extension: the plain-C core (fastpath/csrc) plus its Cython wrapper.

The import names are namespaced (fastflannel.agent, fastflannel.fastpath) while the source
folders stay at the top level, as DESIGN.md lays out; `fastflannel` itself is a namespace package.
"""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fno-strict-aliasing"]
# Cython-generated C trips some -Wextra warnings we do not own; the plain C core gets -Werror
# through the CMake build and the per-file pragma-free compile below.
# Listed once, in fastpath/csrc/sources.txt (CMakeLists.txt reads the same file).
with open("fastpath/csrc/sources.txt") as f:
    CSRC = [f"fastpath/csrc/{line.strip()}" for line in f if line.strip() and not line.startswith("#")]

ext = Extension(
    "fastflannel.fastpath._fastpath",
    sources=["fastpath/_fastpath.pyx"] + CSRC,
    include_dirs=["fastpath/csrc", numpy.get_include()],
    extra_compile_args=C_FLAGS + ["-Wno-unused-function", "-Wno-unused-parameter",
                                  "-Wno-missing-field-initializers"],
    # FF_TEST_HOOKS: the fault injection the fallback tests use (ff_opts.refuse)
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("FF_TEST_HOOKS", "1")],
    extra_link_args=["-pthread"],
)

setup(
    packages=["fastflannel.agent", "fastflannel.agent.backends", "fastflannel.fastpath"],
    package_dir={"fastflannel.agent": "agent", "fastflannel.fastpath": "fastpath"},
    package_data={"fastflannel.fastpath": ["*.pyi", "*.pxd", "py.typed"]},
    ext_modules=cythonize([ext], language_level=3, include_path=["fastpath"],
                          compiler_directives={"boundscheck": False, "wraparound": False}),
)
