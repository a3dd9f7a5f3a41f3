"""Plain-PyTorch sparse linear: the CPU execution path and the test oracle.

It states what every kernel computes: unpack the weight, multiply in a wide dtype, add
the bias in that dtype, round once to the output dtype. Also the input checks that every
entry point shares (`check_operands`, `check_bias`, `check_strided`, `as_kernel_input`),
and `autocast_off`, under which the PyTorch backends ignore an active torch.autocast.
"""

from __future__ import annotations

import contextlib

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

    weight: a packed weight or a dense [N, K] tensor. x, the weight and the bias may each
    be fp16, bf16, fp32 or fp64 (`check_operands`), on one device. The result is returned
    in `out_dtype` (default x's dtype). fp32 is the CPU path (the kernels' accumulation
    precision); fp64 is the oracle the tests compare against. An active torch.autocast
    does not change the dtypes (`autocast_off`).
    """
    dense = weight if isinstance(weight, torch.Tensor) else unpack(weight)
    n, k = check_dense_weight(dense)
    check_operands(x, n, k, dense, bias, dtypes=_REFERENCE_DTYPES, same_dtype=False)
    wide_bias = None if bias is None else bias.to(compute_dtype)
    with autocast_off(x.device):
        y = F.linear(x.to(compute_dtype), dense.to(compute_dtype), wide_bias)
    return y.to(out_dtype or x.dtype)


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context where a torch.autocast active for `device`'s type is disabled (else a
    no-op): the PyTorch backends compute in the dtypes they state, as the Triton
    kernels (custom ops, which autocast leaves alone) do, so that every backend returns
    x's dtype with the same values under autocast as without."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def oracle_linear(x, weight, bias=None) -> torch.Tensor:
    """y [..., N] in fp64 = x [..., K] @ W[N, K]^T + bias [N], all in fp64: the
    `reference_linear` that error measurements compare against."""
    return reference_linear(x, weight, bias, compute_dtype=torch.float64, out_dtype=torch.float64)


def check_operands(
    x,
    n: int,
    k: int,
    weight,
    bias,
    *,
    two_d: bool = False,
    dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES,
    same_dtype: bool = True,
) -> None:
    """Raise a ValueError naming what is wrong unless x is a dense tensor [..., k] (with
    `two_d`: [M, k]) of one of `dtypes`, with the dtype (where `same_dtype`; else any of
    `dtypes`) and the device of the [n, k] `weight` (a packed weight or a tensor: its
    dtype and device are read), and bias is None or [n] of one of `dtypes` on that
    device (`check_bias`). Reads no data. The checks of every entry point:
    sparse_linear (once per call), the custom ops, dense_linear_triton, the reference."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_strided(x, "x")
    if x.dtype not in dtypes:
        raise ValueError(f"x dtype must be {_dtype_names(dtypes)}, got {x.dtype}")
    if same_dtype and x.dtype != weight.dtype:
        raise ValueError(f"x dtype {x.dtype} does not match the weight dtype {weight.dtype}")
    if weight.dtype not in dtypes:  # reached with same_dtype=False only
        raise ValueError(f"the weight dtype must be {_dtype_names(dtypes)}, got {weight.dtype}")
    if x.dim() == 0 or x.shape[-1] != k or (two_d and x.dim() != 2):
        form = "[M, K]" if two_d else "[..., K]"
        raise ValueError(
            f"x must be {form} with the weight's K = {k} (weight shape {(n, k)}), "
            f"got shape {tuple(x.shape)}"
        )
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the weight is on {weight.device}")
    if bias is not None:
        check_bias(bias, n, weight.device, dtypes)


def check_dense_weight(weight: torch.Tensor) -> tuple[int, int]:
    """(N, K) of a dense weight [N, K]; a ValueError unless it is a 2-D strided tensor."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor [N, K], got {type(weight).__name__}")
    check_strided(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    return weight.shape


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    """The names of two dtypes or more: "float16, bfloat16 or float32"."""
    *names, last = (str(d).removeprefix("torch.") for d in dtypes)
    return f"{', '.join(names)} or {last}"


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
        raise ValueError(f"bias dtype must be {_dtype_names(dtypes)}, got {bias.dtype}")
    if bias.device != device:
        raise ValueError(f"bias is on {bias.device} but the weight is on {device}")


def as_kernel_input(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` [..., L] as the Triton kernels read it: a lazy negation view (`is_neg()`,
    whose memory holds the values negated) resolved, and unit-stride along L; copied
    only where it is not so already."""
    # resolve_neg() whatever the tensor: torch.compile cannot trace is_neg() (a bool)
    tensor = tensor.resolve_neg()  # itself where no negation is pending
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
