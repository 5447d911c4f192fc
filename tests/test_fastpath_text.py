"""series_columns(): the fast path's text-format writer for /metrics (fastpath/_text.pxi)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastflannel.fastpath import series_columns

U64 = st.integers(min_value=0, max_value=2**64 - 1)


def reference(heads, starts, values, decimals, skip_zero) -> bytes:
    out = []
    for c, head in enumerate(heads):
        out.append(head)
        for i, row in enumerate(starts):
            v = int(values[i, c])
            if skip_zero[c] and v == 0:
                continue
            d = decimals[c]
            text = str(v) if d == 0 else f"{v // 10**d}.{v % 10**d:0{d}d}"
            out.append(row[c] + text.encode() + b"\n")
    return b"".join(out)


@st.composite
def tables(draw):
    ncol = draw(st.integers(1, 4))
    n = draw(st.integers(0, 6))
    label = st.binary(max_size=12)
    return ([draw(label) for _ in range(ncol)],
            [tuple(draw(label) for _ in range(ncol)) for _ in range(n)],
            np.array([[draw(U64) for _ in range(ncol)] for _ in range(n)], np.uint64).reshape(n, ncol),
            [draw(st.integers(0, 9)) for _ in range(ncol)],
            [draw(st.booleans()) for _ in range(ncol)])


@given(tables())
def test_writes_what_python_formatting_would(t):
    assert series_columns(*t) == reference(*t)


def test_extremes_and_fixed_point():
    v = np.array([[0, 0], [2**64 - 1, 1764604800123], [7, 5]], np.uint64)
    out = series_columns([b"# a\n", b""], [(b"x ", b"y "), (b"x ", b"y "), (b"x ", b"y ")], v, [0, 3], [False, True])
    assert out == b"# a\nx 0\nx 18446744073709551615\nx 7\ny 1764604800.123\ny 0.005\n"


@pytest.mark.parametrize("args, error", [
    (([b""], [(b"a",)], np.zeros((2, 1), np.uint64), [0], [False]), ValueError),        # rows
    (([b"", b""], [(b"a",)], np.zeros((1, 1), np.uint64), [0, 0], [False, False]), ValueError),  # columns
    (([b""], [(b"a",)], np.zeros((1, 1), np.uint64), [10], [False]), ValueError),        # decimals
    (([b""], [(b"a",)], np.zeros((1, 1), np.uint64), [0], []), ValueError),              # skip_zero
    (([b""], [("a",)], np.zeros((1, 1), np.uint64), [0], [False]), TypeError),          # str start
    (([b""], [[b"a"]], np.zeros((1, 1), np.uint64), [0], [False]), TypeError),          # not a tuple
    (([b"", b""], [(b"a",)], np.zeros((1, 2), np.uint64), [0, 0], [False, False]), TypeError),  # short row
    ((["h"], [(b"a",)], np.zeros((1, 1), np.uint64), [0], [False]), TypeError),          # str head
    (([b""], [(b"a",)], np.zeros((1, 1), np.int64), [0], [False]), ValueError),          # dtype
])
def test_bad_arguments_are_errors_not_crashes(args, error):
    with pytest.raises(error):
        series_columns(*args)
