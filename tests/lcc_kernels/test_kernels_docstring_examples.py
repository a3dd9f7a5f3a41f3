"""The examples in lcc_kernels' docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import lcc_kernels

MODULES = sorted(info.name for info in pkgutil.iter_modules(lcc_kernels.__path__, "lcc_kernels."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert failed == 0, f"{failed} docstring example(s) of {name} fail (run with -s to see them)"


def test_the_public_entry_points_have_examples():
    finder = doctest.DocTestFinder()
    documented = {
        test.name
        for name in MODULES
        for test in finder.find(importlib.import_module(name))
        if test.examples
    }
    assert {
        "lcc_kernels.linear.sparse_linear",
        "lcc_kernels.formats.pack",
        "lcc_kernels.formats.packed_nbytes",
    } <= documented
