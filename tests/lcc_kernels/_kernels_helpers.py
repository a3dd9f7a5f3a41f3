"""Shared helpers for the lcc_kernels tests: random pruned weights and the error rule.

On a CPU the kernel tests run through the Triton interpreter: tests/conftest.py sets
TRITON_INTERPRET before any test module imports the kernels (it is read as each @triton.jit
decorates). Where the kernels are compiled (a GPU machine without it), the `needs_triton`
tests (CPU tensors) skip; the `gpu` tests run the compiled kernels.
(No conftest.py here: another test directory imports names from `conftest`, and a second
module of that name would shadow its own.)
"""

import pytest
import torch
import torch.nn.functional as F

from lcc_kernels.decode import INTERPRETED

# These tests launch the kernels on CPU tensors (the GPU ones are marked `gpu`).
needs_triton = pytest.mark.skipif(
    not INTERPRETED,
    reason="runs the kernels on CPU tensors: needs TRITON_INTERPRET=1 before lcc_kernels is "
    "imported (tests/conftest.py sets it when there is no GPU)",
)

# Added to twice PyTorch's own error: covers the rounding of an output that PyTorch's
# matmul happens to round the other way (these outputs reach |y| ~ 30: fp32 ulp 1.9e-6).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The streams kernel (stream_kernel.py) adds a lane's kept values one after another in
# fp32; interpreted, its fp32 error reaches ~3.7x PyTorch's blocked matmul at K = 136 (4
# accumulators per lane brought it to ~2.6x: not adopted before a GPU measures their
# cost), so its tests keep the 1e-5 fp32 slack every kernel test had. fp16 and bf16, whose
# output rounding dominates, hold the rule as the other kernels do.
STREAMS_ATOL = {**ATOL, torch.float32: 1e-5}


def random_24(n: int, k: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A dense [n, k] weight with exactly two nonzeros in every group of 4 along K."""
    keep = torch.rand(n, k // 4, 4, device=device).argsort(-1)[..., :2]
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(-1, keep, True)
    weight = torch.randn(n, k, device=device) * mask.reshape(n, k)
    return weight.to(dtype)


def random_unstructured(
    n: int, k: int, density: float, dtype=torch.float32, device="cpu"
) -> torch.Tensor:
    """A dense [n, k] weight keeping each entry with probability `density`."""
    weight = torch.randn(n, k, device=device) * (torch.rand(n, k, device=device) < density)
    return weight.to(dtype)


def assert_matches_oracle(y, x, dense_weight, bias=None, atol=ATOL) -> None:
    """Max |y - fp64 reference| <= 2 x PyTorch's own error at x's precision + atol[dtype]."""
    x2d = x.reshape(-1, x.shape[-1])
    expected_shape = (*x.shape[:-1], dense_weight.shape[0])
    assert y.shape == expected_shape and y.dtype == x.dtype
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN outputs"
    bias64 = None if bias is None else bias.double()
    oracle = F.linear(x2d.double(), dense_weight.double(), bias64)
    torch_bias = None if bias is None else bias.to(x.dtype)
    torch_y = F.linear(x2d, dense_weight.to(x.dtype), torch_bias)
    torch_error = (torch_y.double() - oracle).abs().max().item()
    error = (y.reshape(-1, y.shape[-1]).double() - oracle).abs().max().item()
    limit = 2 * torch_error + atol[x.dtype]
    assert error <= limit, f"max error {error:.3g} > {limit:.3g} (PyTorch's: {torch_error:.3g})"
