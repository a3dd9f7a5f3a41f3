"""Plain-PyTorch sparse linear: the CPU execution path and the test oracle.

It states what every kernel computes: unpack the weight, multiply in a wide dtype, add
the bias in that dtype, round once to the output dtype. Also the input checks that every
entry point shares (`check_bias`, `check_strided`, `as_kernel_input`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format_common import check_strided
from .formats import SUPPORTED_DTYPES, BitmapWeight, Sparse24Weight, unpack

# The reference also computes in (and takes a bias of) float64: the oracle's precision.
_REFERENCE_DTYPES = (*SUPPORTED_DTYPES, torch.float64)


def reference_linear(
    x: torch.Tensor,
    weight: Sparse24Weight | BitmapWeight | torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ W[N, K]^T + bias [N], computed in `compute_dtype`.

    weight: a packed weight or a dense [N, K] tensor. The result is returned in
    `out_dtype` (default x's dtype). fp32 is the CPU path (the kernels' accumulation
    precision); fp64 is the oracle the tests compare against.
    """
    dense = weight if isinstance(weight, torch.Tensor) else unpack(weight)
    if not (x.is_floating_point() and dense.is_floating_point()):
        raise ValueError(f"x ({x.dtype}) and the weight ({dense.dtype}) must be floating point")
    if dense.dim() != 2 or x.dim() == 0 or x.shape[-1] != dense.shape[1]:
        raise ValueError(
            f"x {tuple(x.shape)} and weight {tuple(dense.shape)} must be [..., K] and [N, K]"
        )
    if bias is not None:
        check_bias(bias, dense.shape[0], dense.device, _REFERENCE_DTYPES)
    wide_bias = None if bias is None else bias.to(compute_dtype)
    y = F.linear(x.to(compute_dtype), dense.to(compute_dtype), wide_bias)
    return y.to(out_dtype or x.dtype)


def oracle_linear(x, weight, bias=None) -> torch.Tensor:
    """The fp64 result of `reference_linear`, for error measurements."""
    return reference_linear(x, weight, bias, compute_dtype=torch.float64, out_dtype=torch.float64)


def check_bias(
    bias, n: int, device: torch.device, dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES
) -> None:
    """Raise a ValueError unless `bias` is a [n] tensor of one of `dtypes` on `device`
    (shared by every entry point that takes a bias; any strides)."""
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    check_strided(bias, "bias")
    if bias.dim() != 1 or bias.shape[0] != n:
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if bias.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"bias dtype must be one of {names}; got {bias.dtype}")
    if bias.device != device:
        raise ValueError(f"bias is on {bias.device} but the weight is on {device}")


def as_kernel_input(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` [..., L] as the Triton kernels read it: a lazy negation view (`is_neg()`,
    whose memory holds the values negated) resolved, and unit-stride along L; copied
    only where it is not so already."""
    # resolve_neg() whatever the tensor: torch.compile cannot trace is_neg() (a bool)
    tensor = tensor.resolve_neg()  # itself where no negation is pending
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
