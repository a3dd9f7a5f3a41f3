"""``output_dirs._renameat2`` finds libc's renameat2 on Linux wherever the C library has one: the
tests of test_io_replace skip where ``_exchange`` reports no exchange, so a lookup that
found none would leave every overwrite on two renames with nothing failing."""

import ctypes
import sys

import pytest

from restorelcc import output_dirs


def test_renameat2_is_found_where_the_c_library_has_it():
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    if not hasattr(ctypes.CDLL(None), "renameat2"):
        pytest.skip("this C library has no renameat2 (glibc before 2.28)")
    output_dirs._renameat2.cache_clear()
    found = output_dirs._renameat2()
    assert found is not None and found.restype is ctypes.c_int
    assert found.argtypes == [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
