"""Compressed weight formats, 2:4 and bitmap, with exact pack / unpack.

A pruned weight arrives as a dense tensor `[N, K]` (out_features x in_features, the
`nn.Linear` layout) whose zeros are the pruning mask. `pack` turns it into one of two
containers; `unpack` gives the dense tensor back exactly, every zero as +0.0:

- `Sparse24Weight` ("2:4", format_24.py), for weights with at most 2 nonzeros in every
  group of 4 along K: the kept values and a 2-bit in-group index per value.
- `BitmapWeight` ("bitmap", format_bitmap.py), for any pattern: per tile, a bitmap of the
  nonzero positions and the nonzeros in order.

Both hold plain tensors plus Python ints, so `to_state_dict()` gives tensors only
(safetensors-friendly; format_common.py) and `load_state_dict()` rebuilds either container.
A `torch.save`d container loads with torch.load's default weights_only=True once
lcc_kernels is imported (both are registered as safe globals; unpickling checks them).
Packed tensors must not be modified in place; after any such change, `validate()` (which
checks them again and drops the copies derived from the old data, `weight.cache`).
Several weights packed side by side (q, k and v) remember their `split_sizes`;
`split_output` cuts the result of one fused launch back into the separate projections.
`packed_nbytes` gives the `nbytes` a pack would have without packing (each format's rule
beside its layout: `_nbytes_24`, `_nbytes_bitmap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .format_24 import (
    INDICES_PER_WORD,
    K_ALIGN_24,
    Sparse24Weight,
    _check_24,
    _nbytes_24,
    _pack_24,
    _unpack_24,
)
from .format_bitmap import (
    DEFAULT_BITMAP_TILE,
    VALUE_ALIGN,
    BitmapWeight,
    _nbytes_bitmap,
    _pack_bitmap,
    _unpack_bitmap,
    check_bitmap_tile,
)
from .format_common import (
    FORMAT_24,
    FORMAT_BITMAP,
    FORMAT_IDS,
    SUPPORTED_DTYPES,
    PackedContainer,
    check_strided,
    state_format_id,
)

__all__ = [
    "DEFAULT_BITMAP_TILE",
    "FORMAT_24",
    "FORMAT_BITMAP",
    "INDICES_PER_WORD",
    "K_ALIGN_24",
    "SUPPORTED_DTYPES",
    "VALUE_ALIGN",
    "BitmapWeight",
    "PackedContainer",
    "PackedWeight",
    "Sparse24Weight",
    "check_bitmap_tile",
    "concat",
    "load_state_dict",
    "pack",
    "pack_many",
    "packed_nbytes",
    "split_output",
    "unpack",
]

PackedWeight = Sparse24Weight | BitmapWeight

# torch.load(weights_only=True), torch's default, builds only allowed classes; these
# check what they are unpickled from (PackedContainer.__setstate__).
torch.serialization.add_safe_globals([Sparse24Weight, BitmapWeight])


def _check_dense(weight: torch.Tensor) -> None:
    """Refuse a weight to pack that is not a dense [N, K] fp16/bf16/fp32 tensor with data,
    N and K > 0."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    check_strided(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"weight dtype must be float16, bfloat16 or float32, got {weight.dtype}")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")
    if weight.device.type == "meta":
        raise ValueError("weight is on the meta device: it holds no values to pack")


def _check_format(format: str) -> None:
    if format not in (FORMAT_24, FORMAT_BITMAP):
        raise ValueError(f"unknown format {format!r}; expected {FORMAT_24!r} or {FORMAT_BITMAP!r}")


def _check_stack(weights: Sequence[torch.Tensor], format: str, caller: str) -> None:
    """Refuse weights [N_i, K] that cannot be packed side by side in `format`: none, one
    that is not a dense 2-D fp16/bf16/fp32 tensor with data, K, dtype or device unlike
    weight 0's, or (2:4) one that is not 2:4 (naming its first bad group)."""
    if len(weights) == 0:
        raise ValueError(f"{caller} needs at least one weight")
    for i, w in enumerate(weights):
        _check_dense(w)
        if w.shape[1] != weights[0].shape[1] or w.dtype != weights[0].dtype:
            raise ValueError(
                f"weight {i} has shape {tuple(w.shape)} and dtype {w.dtype}; all weights must "
                f"share K = {weights[0].shape[1]} and dtype {weights[0].dtype}"
            )
        if w.device != weights[0].device:
            raise ValueError(f"weight {i} is on {w.device}, weight 0 on {weights[0].device}")
        if format == FORMAT_24:
            _check_24(w, f"weight {i}")


def _check_packed(packed, what: str) -> None:
    if not isinstance(packed, PackedContainer):
        raise ValueError(
            f"{what} must be a Sparse24Weight or BitmapWeight, got {type(packed).__name__}"
        )


def pack(
    weight: torch.Tensor,
    format: str = FORMAT_24,
    *,
    tile: tuple[int, int] = DEFAULT_BITMAP_TILE,
    split_sizes: tuple[int, ...] | None = None,
) -> PackedWeight:
    """Compress a dense pruned weight [N, K]; its zeros are the pruning mask. The packed
    weight holds detached copies: no autograd history, and no gradient flows to it.

    format: "2:4" (K divisible by 4; a ValueError names the first row/group with more
    than 2 nonzeros in a group of 4 along K) or "bitmap" (any pattern).
    tile: (rows, columns) per bitmap tile (powers of two, columns >= 32). Checked for
    either format, so that a bad tile is refused whatever the format; "2:4" does not use
    it (one tile can then be given for weights packed in both formats).
    split_sizes: output sizes when `weight` is several weights stacked along N (see
    `pack_many`); default one weight.

    >>> w = torch.tensor([[1.0, 0, 0, 2, 0, 3, 0, 0]])
    >>> torch.equal(unpack(pack(w, "2:4")), w)
    True
    """
    _check_dense(weight)
    _check_format(format)
    tile = check_bitmap_tile(tile)
    if format == FORMAT_24:
        _check_24(weight)
    sizes = (weight.shape[0],) if split_sizes is None else split_sizes
    return _pack_checked(weight.detach(), format, tile, sizes)


def _pack_checked(
    weight: torch.Tensor, format: str, tile: tuple[int, int], sizes: tuple[int, ...]
) -> PackedWeight:
    """`pack` of a weight [N, K] whose checks passed (dense, format, tile, 2:4 pattern)."""
    shape = tuple(weight.shape)
    if format == FORMAT_24:
        values, meta = _pack_24(weight)
        return Sparse24Weight(values, meta, shape, sizes, check_data=False)
    bits, values, offsets, nnz = _pack_bitmap(weight, tile)
    return BitmapWeight(bits, values, offsets, shape, tile, nnz, sizes, check_data=False)


def unpack(packed: PackedWeight) -> torch.Tensor:
    """The exact dense weight [N, K]. Positions that hold no value are +0.0, and so are
    the zeros `pack` stored (a -0.0 in the packed weight comes back as +0.0)."""
    if isinstance(packed, Sparse24Weight):
        return _unpack_24(packed)
    if isinstance(packed, BitmapWeight):
        return _unpack_bitmap(packed)
    raise ValueError(f"expected a Sparse24Weight or BitmapWeight, got {type(packed).__name__}")


def pack_many(
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...],
    format: str = FORMAT_24,
    *,
    tile: tuple[int, int] = DEFAULT_BITMAP_TILE,
) -> PackedWeight:
    """Pack several weights [N_i, K] with the same K side by side (e.g. q, k, v) as one
    [sum N_i, K] weight, as `pack` does one (same checks, a 2:4 violation named by its
    weight's index); `split_output` cuts the fused output back into the N_i parts."""
    _check_stack(weights, format, "pack_many")
    _check_format(format)
    tile = check_bitmap_tile(tile)
    stacked = torch.cat([w.detach() for w in weights], dim=0)
    return _pack_checked(stacked, format, tile, tuple(w.shape[0] for w in weights))


def packed_nbytes(
    weights: torch.Tensor | Sequence[torch.Tensor],
    format: str = FORMAT_24,
    *,
    tile: tuple[int, int] = DEFAULT_BITMAP_TILE,
) -> int:
    """`pack_many(weights, format, tile=tile).nbytes` (for one weight [N, K],
    `pack(weight, format, tile=tile).nbytes`), worked out without packing.

    weights: dense [N_i, K] tensors sharing K, dtype and device, stacked along N as
    pack_many does. "2:4" depends on the stacked shape and the dtype alone; "bitmap" counts
    the nonzeros of each tile (NaN counts, -0.0 does not, as pack keeps them), reading the
    weights a band of rows at a time. Raises the ValueError pack_many would raise: unknown
    format, a weight that is not dense 2-D fp16/bf16/fp32 with data, mismatched K, dtype
    or device, a bad tile (either format, as pack), a weight that is not 2:4 ("2:4"), too
    many values ("bitmap").

    >>> w = torch.tensor([[1.0, 0, 0, 2, 0, 3, 0, 0]])
    >>> packed_nbytes(w, "2:4") == pack(w, "2:4").nbytes
    True
    """
    weights = [weights] if isinstance(weights, torch.Tensor) else weights
    _check_stack(weights, format, "packed_nbytes")
    _check_format(format)  # after the weights, as pack_many
    tile = check_bitmap_tile(tile)
    weights = [w.detach() for w in weights]
    if format == FORMAT_24:
        shape = (sum(w.shape[0] for w in weights), weights[0].shape[1])
        return _nbytes_24(shape, weights[0].dtype)
    return _nbytes_bitmap(weights, tile)


def concat(packed: list[PackedWeight] | tuple[PackedWeight, ...]) -> PackedWeight:
    """Packed weights [N_i, K] of one format, K, dtype and device -> one packed weight
    [sum N_i, K] (exact), whose split_sizes are theirs in order. 2:4 joins the tensors
    directly; bitmap repacks the joined dense weight (a tile may span two of them)."""
    if len(packed) == 0:
        raise ValueError("concat needs at least one packed weight")
    for i, p in enumerate(packed):
        _check_packed(p, f"packed weight {i}")
    first = packed[0]
    for i, p in enumerate(packed):
        if type(p) is not type(first) or p.shape[1] != first.shape[1] or p.dtype != first.dtype:
            raise ValueError(
                f"packed weight {i} ({type(p).__name__}, shape {p.shape}, {p.dtype}) does not "
                f"match weight 0 ({type(first).__name__}, shape {first.shape}, {first.dtype})"
            )
        if p.device != first.device:
            raise ValueError(f"packed weight {i} is on {p.device}, weight 0 on {first.device}")
    sizes = tuple(s for p in packed for s in p.split_sizes)
    if isinstance(first, Sparse24Weight):
        values = torch.cat([p.values for p in packed])
        meta = torch.cat([p.meta for p in packed])
        shape = (sum(sizes), first.shape[1])
        return Sparse24Weight(values, meta, shape, sizes, check_data=False)  # checked parts
    if any(p.tile != first.tile for p in packed):
        raise ValueError(f"bitmap tiles differ: {[p.tile for p in packed]}")
    dense = torch.cat([unpack(p) for p in packed])
    return pack(dense, FORMAT_BITMAP, tile=first.tile, split_sizes=sizes)


def split_output(output: torch.Tensor, packed: PackedWeight) -> tuple[torch.Tensor, ...]:
    """Cut the [..., N] output of a weight made by `pack_many` into its [..., N_i] parts."""
    _check_packed(packed, "packed")
    if not isinstance(output, torch.Tensor) or output.dim() == 0:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"output must be a tensor [..., N] with N = {packed.shape[0]}, got {shape}"
        )
    if output.shape[-1] != packed.shape[0]:
        raise ValueError(
            f"output has {output.shape[-1]} features, the packed weight has N = {packed.shape[0]}"
        )
    # narrow, not torch.split: a model may modify a part in place (OLMo clamps q/k/v), which
    # autograd refuses on the outputs of split's multi-output view
    parts, start = [], 0
    for size in packed.split_sizes:
        parts.append(output.narrow(-1, start, size))
        start += size
    return tuple(parts)


def load_state_dict(state: Mapping[str, torch.Tensor]) -> PackedWeight:
    """Rebuild a packed weight from `to_state_dict()` output, whose entries are "info"
    (int64 [1 + F]: format id, then N, K and the format's other ints), "split_sizes"
    (int64 [P]) and the container's tensors. Refuses missing, unexpected or malformed
    entries by name and validates the data."""
    format_id = state_format_id(state)
    for container in (Sparse24Weight, BitmapWeight):
        if format_id == FORMAT_IDS[container.format]:
            return container.from_state_dict(state)
    raise ValueError(f"unknown packed format id {format_id}")
