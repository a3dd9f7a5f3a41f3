"""Converters between Sparse24Weight and torch's semi-structured (2:4) tensors.

torch keeps its own compressed layouts (cuSPARSELt: one opaque buffer; CUTLASS: values and
interleaved metadata), so the conversion goes through the dense weight. These serve
cross-checks and the `semi_structured` dispatch backend (CUDA, fp16/bf16, shapes that
torch accepts: N and K multiples of 32/64 depending on the backend).

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


def to_torch_semi_structured(weight: Sparse24Weight, backend: str = "cusparselt"):
    """A torch SparseSemiStructuredTensor [N, K] holding the same weight (its split_sizes
    are not carried: pass them back to `from_torch_semi_structured`). torch builds them
    on CUDA only: a weight on another device is refused (ValueError)."""
    if not isinstance(weight, Sparse24Weight):
        raise ValueError(f"expected a Sparse24Weight, got {type(weight).__name__}")
    classes = {
        "cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT,
        "cutlass": torch.sparse.SparseSemiStructuredTensorCUTLASS,
    }
    if backend not in classes:
        raise ValueError(f"backend must be one of {SEMI_STRUCTURED_BACKENDS}, got {backend!r}")
    if weight.device.type != "cuda":
        raise ValueError(
            f"torch's semi-structured tensors are built on CUDA only, the weight is on "
            f"{weight.device}: move it first (weight.to('cuda'))"
        )
    return classes[backend].from_dense(unpack(weight).contiguous())


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
