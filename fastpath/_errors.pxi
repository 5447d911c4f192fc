# -errno from the C core -> Python exception, in one place.
import os as _os
from libc.errno cimport EINVAL, E2BIG


cdef int _check(long rc, str what) except -1:
    """Raise for a negative C return code: ValueError for bad input, OSError(errno) otherwise."""
    if rc >= 0:
        return 0
    err = <int>-rc
    msg = f"{what}: {_os.strerror(err)}"
    if err == EINVAL or err == E2BIG:
        raise ValueError(msg)
    raise OSError(err, msg)
