"""Converters between Sparse24Weight and torch's semi-structured (2:4) tensors.

torch keeps its own compressed layouts (cuSPARSELt: one opaque buffer; CUTLASS: values and
interleaved metadata), so the conversion goes through the dense weight. These serve
cross-checks and the `semi_structured` dispatch backend (CUDA, fp16/bf16, shapes that
torch accepts: `check_semi_structured_fits`).

Exactness: `to_torch_semi_structured` compresses the exact dense weight. Back, a CUTLASS
tensor (2-D metadata) decompresses exactly; any other, cuSPARSELt's included, gives its
dense weight as a matmul with an identity, W @ I: exact for finite values (one product by
1.0 per output, the rest exact zeros), but an inf or NaN weight makes NaN of its whole row
(inf * 0). `from_torch_semi_structured` refuses such a tensor whose dense form holds
non-finite values rather than return a different weight. Zeros come back as +0.0.
"""

from __future__ import annotations

import torch

from .formats import FORMAT_24, Sparse24Weight, pack, unpack

SEMI_STRUCTURED_BACKENDS = ("cusparselt", "cutlass")
_CLASSES = {
    "cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT,
    "cutlass": torch.sparse.SparseSemiStructuredTensorCUTLASS,
}
# torch's fp32 semi-structured tensors (CUTLASS only) are 1:2 sparse, not 2:4: converting
# a 2:4 weight keeps one value of each pair and drops the other without an error
# (torch/sparse/_semi_structured_conversions.py).
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def check_semi_structured_fits(backend: str, dtype: torch.dtype, n: int, k: int) -> None:
    """Raise a ValueError naming torch's semi-structured `backend` ("cusparselt" or
    "cutlass"), the dtype or shape and the rule, unless a 2:4 weight [n, k] of `dtype`
    converts to it: fp16 or bf16, and N and K multiples of the rows and columns that
    torch's class for that backend and dtype requires of its sparse operand (its
    `_DTYPE_SHAPE_CONSTRAINTS`: 16 x 16 for cuSPARSELt, 32 x 64 for CUTLASS in torch 2.13),
    which torch checks only on CUDA, deep in the conversion. Pure: no CUDA needed."""
    cls = _semi_structured_class(backend)
    if dtype not in SEMI_STRUCTURED_DTYPES:
        names = " or ".join(str(d).removeprefix("torch.") for d in SEMI_STRUCTURED_DTYPES)
        raise ValueError(
            f"the semi_structured backend ({backend}) runs {names} 2:4 weights only, got "
            f"{dtype} (torch's fp32 semi-structured tensors are 1:2 sparse)"
        )
    constraints = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    rows, cols = constraints.sparse_min_rows, constraints.sparse_min_cols
    if n < rows or n % rows or k < cols or k % cols:
        raise ValueError(
            f"the semi_structured backend ({backend}) needs a {dtype} weight [N, K] with N a "
            f"positive multiple of {rows} and K of {cols} (torch's {cls.__name__}), got "
            f"[{n}, {k}]"
        )


def to_torch_semi_structured(weight: Sparse24Weight, backend: str = "cusparselt"):
    """A torch SparseSemiStructuredTensor [N, K] holding the same weight (its split_sizes
    are not carried: pass them back to `from_torch_semi_structured`). torch builds them
    on CUDA only, from fp16 or bf16 weights of the shapes it takes: a weight on another
    device, or that torch's `backend` would refuse (`check_semi_structured_fits`), is
    refused (ValueError)."""
    if not isinstance(weight, Sparse24Weight):
        raise ValueError(f"expected a Sparse24Weight, got {type(weight).__name__}")
    cls = _semi_structured_class(backend)
    if weight.device.type != "cuda":
        raise ValueError(
            f"torch's semi-structured tensors are built on CUDA only, the weight is on "
            f"{weight.device}: move it first (weight.to('cuda'))"
        )
    check_semi_structured_fits(backend, weight.dtype, *weight.shape)
    return cls.from_dense(unpack(weight).contiguous())


def _semi_structured_class(backend: str) -> type:
    """torch's SparseSemiStructuredTensor subclass for `backend` ("cusparselt", "cutlass")."""
    if backend not in _CLASSES:
        raise ValueError(f"backend must be one of {SEMI_STRUCTURED_BACKENDS}, got {backend!r}")
    return _CLASSES[backend]


def _decompresses_exactly(tensor) -> bool:
    """Whether torch's to_dense of `tensor` is a decompression, not the matmul W @ I."""
    return (
        isinstance(tensor, torch.sparse.SparseSemiStructuredTensorCUTLASS)
        and tensor.meta is not None
        and tensor.meta.ndim == 2
    )


def from_torch_semi_structured(
    tensor, split_sizes: tuple[int, ...] | None = None
) -> Sparse24Weight:
    """The Sparse24Weight of a torch SparseSemiStructuredTensor [N, K].

    split_sizes: rows of each weight packed side by side in it (as `pack` takes them);
    default one weight. Raises ValueError for a tensor decompressed through W @ I
    (cuSPARSELt) whose dense form holds inf or NaN: those weights cannot be recovered."""
    if not isinstance(tensor, torch.sparse.SparseSemiStructuredTensor):
        raise ValueError(f"expected a SparseSemiStructuredTensor, got {type(tensor).__name__}")
    dense = tensor.to_dense()
    if not _decompresses_exactly(tensor) and not bool(torch.isfinite(dense).all()):
        raise ValueError(
            f"this {type(tensor).__name__} holds inf or NaN weights: its to_dense() is the "
            f"matmul W @ I, which turns them into NaN rows (inf * 0), so the weight cannot be "
            f"recovered; convert a CUTLASS tensor or pack the dense weight instead"
        )
    return pack(dense, FORMAT_24, split_sizes=split_sizes)
