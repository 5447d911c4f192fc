"""Build properties the binary wheel relies on (scripts/wheel.sh builds, repairs and smoke-tests
the wheel itself; CI runs it after the tests).

A wheel is built wherever its builder runs, manylinux images included, whose C library headers
are older than the kernel features the fast path uses: the C core must compile there too.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "fastpath", "csrc")


def _sources():
    with open(os.path.join(CSRC, "sources.txt")) as f:
        return [os.path.join(CSRC, line.strip()) for line in f if line.strip() and not line.startswith("#")]


@pytest.fixture
def cc():
    path = shutil.which("gcc") or shutil.which("cc")
    if not path:
        pytest.skip("needs a C compiler (gcc) to compile the C core")
    return path


def test_c_core_compiles_with_libc_headers_lacking_udp_gso(cc, tmp_path):
    """<netinet/udp.h> before UDP_SEGMENT/UDP_GRO existed (glibc 2.17): a shadow header that
    includes the real one and takes the two names away."""
    shadow = tmp_path / "netinet"
    shadow.mkdir()
    (shadow / "udp.h").write_text("#include_next <netinet/udp.h>\n#undef UDP_SEGMENT\n#undef UDP_GRO\n")
    probe = tmp_path / "probe.c"
    probe.write_text("#include <netinet/udp.h>\n#ifdef UDP_SEGMENT\n#error shadow not used\n#endif\n")
    for src in [str(probe)] + _sources():
        p = subprocess.run([cc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                            "-I", str(tmp_path), "-I", CSRC, src], capture_output=True, text=True)
        assert p.returncode == 0, f"{os.path.basename(src)}:\n{p.stderr}"
