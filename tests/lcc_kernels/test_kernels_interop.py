"""Conversions from torch's semi-structured tensors, on the CPU: stand-ins of the two kinds
of tensor (cuSPARSELt's kernels and CUTLASS's need CUDA; test_kernels_gpu.py converts
real ones both ways)."""

import warnings

import pytest
import torch
from _kernels_helpers import random_24

from lcc_kernels import (
    Plan,
    from_torch_semi_structured,
    linear,
    pack,
    to_torch_semi_structured,
    unpack,
)
from lcc_kernels.interop import check_semi_structured_fits


class _MatmulDense(torch.sparse.SparseSemiStructuredTensorCUSPARSELT):
    """A cuSPARSELt tensor whose `packed` holds the dense weight W [N, K]: to_dense() is
    torch's for cuSPARSELt, the matmul W @ I, done densely."""

    def to_dense(self):
        return torch.mm(self.packed, torch.eye(self.shape[-1], dtype=self.dtype))


class _ExactDense(torch.sparse.SparseSemiStructuredTensorCUTLASS):
    """A CUTLASS tensor (2-D metadata) whose `packed` holds the dense weight: to_dense()
    decompresses exactly, as torch's CUTLASS one does."""

    def to_dense(self):
        return self.packed.clone()


def stand_in(cls, dense: torch.Tensor):
    n, k = dense.shape
    meta = torch.zeros(n, k // 16, dtype=torch.int16) if cls is _ExactDense else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "prototype" warning
        return cls(dense.shape, dense, meta, None, None, None)


def weight_with(value: float) -> torch.Tensor:
    """A 2:4 fp16 weight [16, 64] holding `value` at row 3, column 5; its zeros are +0.0
    (they come back as +0.0 whatever their sign)."""
    weight = random_24(16, 64, torch.float16)
    weight[weight == 0] = 0.0
    weight[3, 4:8] = torch.tensor([0.0, value, 0.0, 0.0])
    return weight


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_matmul_decompression_refuses_non_finite_weights(value):
    # W @ I gives inf * 0 = NaN across the row: the weight cannot be recovered.
    assert not bool(stand_in(_MatmulDense, weight_with(value)).to_dense()[3].isfinite().any())
    with pytest.raises(ValueError, match="holds inf or NaN weights: its to_dense\\(\\) is the"):
        from_torch_semi_structured(stand_in(_MatmulDense, weight_with(value)))


def test_matmul_decompression_of_finite_weights_is_exact_with_split_sizes():
    weight = weight_with(-2.5)
    packed = from_torch_semi_structured(stand_in(_MatmulDense, weight), split_sizes=(8, 4, 4))
    assert packed.split_sizes == (8, 4, 4)
    assert torch.equal(unpack(packed).view(torch.int16), weight.view(torch.int16))
    assert from_torch_semi_structured(stand_in(_MatmulDense, weight)).split_sizes == (16,)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_exact_decompression_keeps_non_finite_weights(value):
    weight = weight_with(value)
    packed = from_torch_semi_structured(stand_in(_ExactDense, weight))
    assert torch.equal(unpack(packed).view(torch.int16), weight.view(torch.int16))


def test_conversions_refuse_other_inputs():
    with pytest.raises(ValueError, match="expected a Sparse24Weight, got BitmapWeight"):
        to_torch_semi_structured(pack(random_24(16, 64), "bitmap"))
    with pytest.raises(ValueError, match="backend must be one of"):
        to_torch_semi_structured(pack(random_24(16, 64)), "cusparse")
    with pytest.raises(ValueError, match="expected a SparseSemiStructuredTensor, got Tensor"):
        from_torch_semi_structured(random_24(16, 64))
    with pytest.raises(ValueError, match="split_sizes"):
        from_torch_semi_structured(stand_in(_MatmulDense, weight_with(1.0)), split_sizes=(3,))


@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_semi_structured_takes_fp16_and_bf16_only(backend):
    """torch's fp32 semi-structured tensor (CUTLASS) is 1:2 sparse: a 2:4 weight would lose
    values; cuSPARSELt has none. Both refused by name, before any conversion."""
    check_semi_structured_fits(backend, torch.bfloat16, 64, 128)
    message = (
        rf"semi_structured backend \({backend}\) runs float16 or bfloat16 .* got torch.float32"
    )
    with pytest.raises(ValueError, match=message):
        check_semi_structured_fits(backend, torch.float32, 64, 128)


@pytest.mark.parametrize(
    "backend, rows, cols", [("cusparselt", 16, 16), ("cutlass", 32, 64)]
)  # torch's _DTYPE_SHAPE_CONSTRAINTS (sparse_min_rows, sparse_min_cols) for fp16 / bf16
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_shapes_are_torchs(backend, rows, cols, dtype):
    for n, k in ((rows, cols), (3 * rows, 5 * cols)):
        check_semi_structured_fits(backend, dtype, n, k)
    for n, k in ((rows + 8, cols), (rows, cols + 8), (rows // 2, cols), (rows, cols // 2)):
        message = (
            rf"semi_structured backend \({backend}\) needs a {dtype} weight \[N, K\] with N "
            rf"a positive multiple of {rows} and K of {cols} .* got \[{n}, {k}\]"
        )
        with pytest.raises(ValueError, match=message):
            check_semi_structured_fits(backend, dtype, n, k)
    with pytest.raises(ValueError, match="backend must be one of"):
        check_semi_structured_fits("cusparse", dtype, rows, cols)


def test_a_forced_semi_structured_backend_is_checked_before_converting():
    """sparse_linear's own check of a forced backend (CUDA only: given the device here,
    nothing runs on it) refuses what torch would, naming the backend chosen."""
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match=r"\(cusparselt\) runs float16 or bfloat16"):
        linear._check_backend_fits("semi_structured", pack(random_24(16, 64)), cuda)
    weight = pack(random_24(16, 96, torch.float16))
    linear._check_backend_fits("semi_structured", weight, cuda)  # cuSPARSELt takes 16 x 96
    cutlass = Plan("semi_structured", semi_structured="cutlass")
    with pytest.raises(ValueError, match=r"\(cutlass\) needs .* multiple of 32 and K of 64"):
        linear._check_backend_fits(cutlass, weight, cuda)
