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

from lcc_kernels.bench import check_against_oracle
from lcc_kernels.decode import INTERPRETED

# These tests launch the kernels on CPU tensors (the GPU ones are marked `gpu`).
needs_triton = pytest.mark.skipif(
    not INTERPRETED,
    reason="runs the kernels on CPU tensors: needs TRITON_INTERPRET=1 before lcc_kernels is "
    "imported (tests/conftest.py sets it when there is no GPU)",
)


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


def assert_matches_oracle(y, x, dense_weight, bias=None) -> None:
    """Max |y - fp64 reference| <= 2 x PyTorch's own error at x's precision + ORACLE_ATOL
    (lcc_kernels.bench.check_against_oracle, the GPU suite's check too)."""
    expected_shape = (*x.shape[:-1], dense_weight.shape[0])
    assert y.shape == expected_shape and y.dtype == x.dtype
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN outputs"
    check = check_against_oracle(y, x, dense_weight, bias)
    assert check["ok"], (
        f"max error {check['error']:.3g} > {check['limit']:.3g} "
        f"(PyTorch's: {check['torch_error']:.3g})"
    )
