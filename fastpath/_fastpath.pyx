# cython: language_level=3, boundscheck=False, wraparound=False
"""The fastflannel data plane: a Cython wrapper over the C core in csrc/.

One compiled module made of small parts (as uvloop does): errors, conversions, the Forwarder.
C is entered without the GIL; C errors become Python exceptions in _check(). The test and
benchmark hooks are a module of their own (_testing.pyx), built only in a development build.
"""
include "_errors.pxi"
include "_convert.pxi"
include "_forwarder.pxi"
include "_text.pxi"
