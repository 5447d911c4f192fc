"""Build the fastpath extension: the plain-C core (fastpath/csrc) plus its Cython wrapper.

The import names are namespaced (fastflannel.agent, fastflannel.fastpath) while the source
folders stay at the top level (docs/architecture.md §"Modules"); `fastflannel` itself is a namespace package.

Two flavours, chosen by the environment:
  default              the production extension only (what wheels ship), no -Werror
  FASTFLANNEL_DEV=1    a development/test build: also fastflannel.fastpath._testing (the test
                       and benchmark hooks), -DFF_TEST_HOOKS (fault injection, Forwarder.open's
                       _refuse) and -Werror
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEV = os.environ.get("FASTFLANNEL_DEV") == "1"

C_FLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-fno-strict-aliasing",
           # Cython-generated C trips these; the plain C core is built with all of -Wextra by CMake
           "-Wno-unused-function", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEV:
    C_FLAGS.append("-Werror")
    MACROS.append(("FF_TEST_HOOKS", "1"))

# Listed once, in fastpath/csrc/sources.txt (CMakeLists.txt reads the same file).
with open("fastpath/csrc/sources.txt") as f:
    CSRC = [f"fastpath/csrc/{line.strip()}" for line in f if line.strip() and not line.startswith("#")]

# The flavour is part of what the objects depend on: a stamp that changes with it makes
# build_ext rebuild when FASTFLANNEL_DEV flips, not only when a source changes.
FLAVOUR_STAMP = os.path.join("build", "fastpath-flavour")
os.makedirs("build", exist_ok=True)
_flavour = "dev\n" if DEV else "production\n"
if not os.path.exists(FLAVOUR_STAMP) or open(FLAVOUR_STAMP).read() != _flavour:
    with open(FLAVOUR_STAMP, "w") as f:
        f.write(_flavour)
DEPENDS = glob.glob("fastpath/csrc/*.h") + glob.glob("fastpath/*.pxd") + glob.glob("fastpath/*.pxi") \
    + [FLAVOUR_STAMP]


def extension(name: str, pyx: str) -> Extension:
    return Extension(f"fastflannel.fastpath.{name}", sources=[pyx] + CSRC, depends=DEPENDS,
                     include_dirs=["fastpath/csrc", numpy.get_include()],
                     extra_compile_args=C_FLAGS, define_macros=MACROS, extra_link_args=["-pthread"])


class BuildExt(build_ext):
    """An in-place production build also removes a _testing module left by a development build,
    so the tree holds exactly what the flavour builds."""

    def run(self) -> None:
        super().run()
        if self.inplace and not DEV:
            for stale in glob.glob("fastpath/_testing.*.so"):
                os.remove(stale)


EXTENSIONS = [extension("_fastpath", "fastpath/_fastpath.pyx")]
if DEV:
    EXTENSIONS.append(extension("_testing", "fastpath/_testing.pyx"))

setup(
    packages=["fastflannel.agent", "fastflannel.agent.backends", "fastflannel.fastpath", "fastflannel.lab",
              "fastflannel.lab.programs"],
    package_dir={"fastflannel.agent": "agent", "fastflannel.fastpath": "fastpath", "fastflannel.lab": "lab"},
    package_data={"fastflannel.fastpath": ["_fastpath.pyi", "*.pxd", "py.typed"]},
    # the extension's sources (csrc/*.c, .pyx/.pxi, the generated .c) and the dev-only _testing stubs
    # are in the sdist, not the wheel
    exclude_package_data={"fastflannel.fastpath": ["*.c", "csrc/*", "*.pyx", "*.pxi", "_testing.*"]},
    ext_modules=cythonize(EXTENSIONS, language_level=3, include_path=["fastpath"],
                          compiler_directives={"boundscheck": False, "wraparound": False}),
    cmdclass={"build_ext": BuildExt},
)
