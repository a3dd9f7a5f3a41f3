"""dense_linear_triton checks its x [M, K] itself: on the meta device the op runs only its
fake, which would take an x [B, M, K] and return a [B, N] shell as if computed."""

import pytest
import torch

from lcc_kernels import Plan, dense_linear_triton


@pytest.mark.parametrize("shape", [(2, 3, 64), (64,)], ids=["3-D", "1-D"])
def test_an_x_that_is_not_2d_is_refused_on_the_meta_device_too(shape):
    x = torch.randn(shape, device="meta")
    weight = torch.randn(40, 64, device="meta")
    message = r"x must be \[M, K\] with the weight's K = 64 \(weight shape \(40, 64\)\)"
    with pytest.raises(ValueError, match=message):
        dense_linear_triton(x, weight, None, Plan("tiled", 16, 16, 16))
