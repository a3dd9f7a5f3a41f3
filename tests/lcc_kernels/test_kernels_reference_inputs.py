"""An x that is no tensor is named as such (a ValueError) by every entry point that
takes one, not an AttributeError from inside the checks."""

import numpy as np
import pytest
import torch
from _kernels_helpers import random_24

from lcc_kernels import pack, reference_linear, sparse_linear


@pytest.mark.parametrize(
    "x", [[[1.0] * 64], np.ones((1, 64), dtype=np.float32)], ids=["list", "array"]
)
def test_an_x_that_is_no_tensor_is_refused_by_name(x):
    packed = pack(random_24(8, 64), "2:4")
    message = f"x must be a torch.Tensor, got {type(x).__name__}"
    with pytest.raises(ValueError, match=message):
        sparse_linear(x, packed)
    with pytest.raises(ValueError, match=message):
        reference_linear(x, packed)
    with pytest.raises(ValueError, match=message):
        reference_linear(x, torch.ones(8, 64))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_dense_weight_that_is_sparse_is_refused_by_name(layout):
    """A torch sparse [N, K] weight is 2-D, but not the strided weight the reference and
    the dense baseline read."""
    from lcc_kernels import Plan, dense_linear_triton

    weight = torch.ones(8, 64)
    weight = weight.to_sparse() if layout == "coo" else weight.to_sparse_csr()
    message = f"weight must be a dense \\(strided\\) tensor, got layout {weight.layout}"
    with pytest.raises(ValueError, match=message):
        reference_linear(torch.ones(1, 64), weight)
    with pytest.raises(ValueError, match=message):
        dense_linear_triton(torch.ones(1, 64), weight, None, Plan("tiled", 16, 16, 16))
