"""A container's shape and a bitmap tile are a tuple or list of two integers: another
sequence of two (a tensor, an array, a range) is refused by name, not read entry by entry.
pack's packed weight holds detached tensors, whatever the weight it packed."""

import re

import numpy as np
import pytest
import torch
from _kernels_helpers import random_24

from lcc_kernels import Sparse24Weight, pack

PAIRS = [torch.tensor([24, 72]), np.array([24, 72]), range(24, 26)]


@pytest.mark.parametrize("shape", PAIRS, ids=lambda pair: type(pair).__name__)
def test_a_shape_that_is_no_tuple_or_list_is_refused(shape):
    packed = pack(random_24(24, 72), "2:4")
    message = re.escape(f"2:4 shape must be a pair of ints (N, K), got {shape!r}")
    with pytest.raises(ValueError, match=message):
        Sparse24Weight(packed.values, packed.meta, shape, (24,))


@pytest.mark.parametrize(
    "tile", [torch.tensor([16, 32]), np.array([16, 32])], ids=["tensor", "array"]
)
def test_a_tile_that_is_no_tuple_or_list_is_refused(tile):
    with pytest.raises(ValueError, match="bitmap tile must be a pair of ints"):
        pack(torch.ones(16, 64), "bitmap", tile=tile)


@pytest.mark.parametrize("format", ["2:4", "bitmap"])
def test_pack_of_a_weight_that_requires_grad_holds_detached_tensors(format):
    """pack's packed weight has no autograd history: no graph is kept alive by it, and
    no gradient flows back to the dense weight it was packed from."""
    weight = random_24(16, 64).requires_grad_()
    packed = pack(weight, format)
    tensors = [getattr(packed, name) for name in packed.TENSOR_FIELDS]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
