# cython: language_level=3, boundscheck=False, wraparound=False
"""The fastflannel data plane: a Cython wrapper over the C core in csrc/.

One compiled module made of small parts (as uvloop does): errors, the Forwarder, test and
benchmark hooks. C is entered without the GIL; C errors become Python exceptions in _check().
"""
include "_errors.pxi"
include "_convert.pxi"
include "_forwarder.pxi"
include "_hooks.pxi"
