"""Converters between Sparse24Weight and torch's semi-structured (2:4) tensors.

torch keeps its own compressed layouts (cuSPARSELt: one opaque buffer; CUTLASS: values and
interleaved metadata), so the conversion goes through the dense weight; it is exact.
These serve cross-checks and the `semi_structured` dispatch backend (CUDA, fp16/bf16,
shapes that torch accepts: N and K multiples of 32/64 depending on the backend).
"""

from __future__ import annotations

import torch

from .formats import FORMAT_24, Sparse24Weight, pack, unpack

SEMI_STRUCTURED_BACKENDS = ("cusparselt", "cutlass")


def to_torch_semi_structured(weight: Sparse24Weight, backend: str = "cusparselt"):
    """A torch SparseSemiStructuredTensor [N, K] holding the same weight."""
    if not isinstance(weight, Sparse24Weight):
        raise ValueError(f"expected a Sparse24Weight, got {type(weight).__name__}")
    classes = {
        "cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT,
        "cutlass": torch.sparse.SparseSemiStructuredTensorCUTLASS,
    }
    if backend not in classes:
        raise ValueError(f"backend must be one of {SEMI_STRUCTURED_BACKENDS}, got {backend!r}")
    return classes[backend].from_dense(unpack(weight).contiguous())


def from_torch_semi_structured(tensor) -> Sparse24Weight:
    """The Sparse24Weight of a torch SparseSemiStructuredTensor."""
    if not isinstance(tensor, torch.sparse.SparseSemiStructuredTensor):
        raise ValueError(f"expected a SparseSemiStructuredTensor, got {type(tensor).__name__}")
    return pack(tensor.to_dense(), FORMAT_24)
