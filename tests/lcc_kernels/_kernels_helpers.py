"""Shared helpers for the lcc_kernels tests: random pruned weights and the error rules.

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


def _assert_shaped_like_linear(y, x, dense_weight) -> None:
    expected_shape = (*x.shape[:-1], dense_weight.shape[0])
    assert y.shape == expected_shape and y.dtype == x.dtype
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN outputs"


def assert_matches_oracle(y, x, dense_weight, bias=None) -> None:
    """Max |y - fp64 reference| <= 2 x PyTorch's own error at x's precision + ORACLE_ATOL
    (lcc_kernels.bench.check_against_oracle, the GPU suite's check too)."""
    _assert_shaped_like_linear(y, x, dense_weight)
    check = check_against_oracle(y, x, dense_weight, bias)
    assert check["ok"], (
        f"max error {check['error']:.3g} > {check['limit']:.3g} "
        f"(PyTorch's: {check['torch_error']:.3g})"
    )


def round_toward_zero_to_bf16(values: torch.Tensor) -> torch.Tensor:
    """values [...] fp64 rounded toward zero to bf16, returned as fp64: to fp32 toward zero
    (to nearest, then one fp32 step back where that rounded away from zero), then the low
    16 bits dropped, as triton 3.9's interpreter converts fp32 to bf16."""
    fp32 = values.float()
    fp32 = torch.where(
        fp32.double().abs() > values.abs(), torch.nextafter(fp32, torch.zeros_like(fp32)), fp32
    )
    return (fp32.view(torch.int32) & ~0xFFFF).view(torch.float32).double()


def assert_kernel_matches_oracle(y, x, dense_weight, bias=None) -> None:
    """assert_matches_oracle for y [..., N] written by the Triton kernels from x [..., K],
    dense_weight [N, K] and bias [N], except bf16 y from interpreted kernels.

    The kernels sum in fp32 and round the sum once to y's dtype (`acc.to(...)` before the
    store). Triton 3.9's interpreter rounds fp32 to bf16 toward zero (it drops the low 16
    bits) where a GPU rounds to nearest, so its bf16 outputs lie up to one ulp from the
    nearest value: past 2 x PyTorch's error (PyTorch rounds to nearest) wherever
    PyTorch's outputs happen to round well. There y must be RZ(s), the truncation of an
    fp32 sum s within e of the fp64 result o, e being what the fp32 rule allows the
    kernels' fp32 sums (2 x PyTorch's fp32 error + ORACLE_ATOL[fp32]; bf16 products are
    exact in fp32). RZ is monotone, so: RZ(o - e) <= y <= RZ(o + e) elementwise. Where e
    is below o's bf16 ulp (all outputs but those within ~128 e of zero) that is y ==
    RZ(o), or y one ulp from it where a bf16 boundary lies within e of o: the fp32 sum
    may sit on the boundary's other side. So a y one ulp off away from a boundary, two
    ulps off anywhere, or missing the bias falls outside."""
    if not (INTERPRETED and y.dtype == torch.bfloat16):
        assert_matches_oracle(y, x, dense_weight, bias)
        return
    _assert_shaped_like_linear(y, x, dense_weight)
    e = check_against_oracle(y.float(), x.float(), dense_weight.float(), bias)["limit"]
    oracle = F.linear(x.double(), dense_weight.double(), None if bias is None else bias.double())
    low, high = round_toward_zero_to_bf16(oracle - e), round_toward_zero_to_bf16(oracle + e)
    outside = (y.double() < low) | (y.double() > high)
    assert not outside.any(), (
        f"{int(outside.sum())} of {y.numel()} bf16 outputs are no truncation of an fp32 sum "
        f"within {e:.3g} of the fp64 result; first at {outside.nonzero()[0].tolist()}: "
        f"{y[outside][0].item()} not in [{low[outside][0].item()}, {high[outside][0].item()}]"
    )
