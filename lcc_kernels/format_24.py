"""The 2:4 container, `Sparse24Weight`, and its pack / unpack / pattern check.

For weights [N, K] with at most 2 nonzeros in every group of 4 along K:
    values  [N, Kp/2]   the two kept values of each group, in K order (Kp = K padded to a
                        multiple of K_ALIGN_24; the padding groups hold zeros)
    meta    [N, Kp/32]  int32; the in-group index (0..3) of value slot j sits in bits
                        2*(j % 16) .. 2*(j % 16)+1 of word j // 16
    = 1.125 bytes per position in fp16/bf16 (kernels.md).
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .format_common import (
    _SAME_SIZE_INT,
    FORMAT_24,
    SUPPORTED_DTYPES,
    PackedContainer,
    _pack_words,
    _round_up,
    _unpack_words,
    band_rows,
    cache_field,
    check_tensors_together,
)

# 2:4 rows are padded along K to a multiple of 64 positions: every row of `values` then
# starts on a 64-byte boundary in fp16 (vector loads need 16) and no kernel K tile
# (32..256 positions, a power of two) straddles a metadata word.
K_ALIGN_24 = 64  # >= 32: the kernels mask metadata by whole words (decode._sparse24_pairs)
INDICES_PER_WORD = 16  # 2-bit in-group indices per int32 metadata word


@dataclass(eq=False)
class Sparse24Weight(PackedContainer):
    """A 2:4 sparse weight of logical shape (N, K); see the module docstring for layout.

    Built from values [N, Kp/2] and meta [N, Kp/32] int32 (as `pack` makes them), it
    checks their layout and, unless check_data=False, their data (`validate_data`): a
    ValueError names what is wrong (see PackedContainer). Do not modify values or meta
    in place: the kernels trust the data checked then; after any such change, call
    `validate()` (it also drops the copies derived from the old data)."""

    values: torch.Tensor
    meta: torch.Tensor
    shape: tuple[int, int]
    split_sizes: tuple[int, ...]
    check_data: InitVar[bool] = True
    format: ClassVar[str] = FORMAT_24
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("values", "meta")
    INFO_FIELDS: ClassVar[tuple[str, ...]] = ("N", "K")
    cache: dict = cache_field()

    def _info(self) -> tuple[int, ...]:
        return self.shape

    @classmethod
    def _fields_of_info(cls, info: list[int]) -> dict[str, Any]:
        return {"shape": tuple(info)}

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for the whole weight (values + metadata); `_nbytes_24`
        gives it from the shape and dtype alone."""
        return self.values.numel() * self.values.element_size() + self.meta.numel() * 4

    def validate_layout(self) -> None:
        """Check dtypes, shapes, devices and contiguity (no data is read)."""
        check_24_layout(self.values, self.meta, self.shape)

    def validate_data(self) -> None:
        """Check that every group's two indices are distinct and in order, and that the
        groups padding K to K_ALIGN_24 hold zeros (the kernels read them; reads the data)."""
        n, k = self.shape
        indices = _unpack_words(self.meta, 2, torch.uint8).view(n, -1, 2)
        bad = indices[..., 0] >= indices[..., 1]
        if bool(bad.any()):
            row, group = bad.nonzero()[0].tolist()
            raise ValueError(
                f"2:4 meta is corrupt: row {row}, group {group} has in-group indices "
                f"{indices[row, group].tolist()} (two distinct ascending indices expected)"
            )
        padding = self.values.view(n, -1, 2)[:, k // 4 :]
        if bool((padding != 0).any()):  # NaN != 0 too
            row = int((padding != 0).flatten(1).any(1).nonzero()[0, 0])
            raise ValueError(
                f"2:4 values are corrupt: row {row} holds nonzeros in the padding beyond "
                f"K = {k} (the state dict's K does not match its values, or they were altered)"
            )


def check_24_layout(values: torch.Tensor, meta: torch.Tensor, shape: tuple[int, int]) -> None:
    """Raise a ValueError unless values and meta are the contiguous tensors, on one device,
    of a 2:4 weight of logical shape (N, K): values [N, Kp/2] fp16/bf16/fp32, meta
    [N, Kp/32] int32 (Kp = K rounded up to K_ALIGN_24). Reads no data: what the custom
    ops check of the tensors they are given, at every call."""
    check_tensors_together(FORMAT_24, {"values": values, "meta": meta})
    n, k = shape
    if k % 4 or k <= 0 or n <= 0:
        raise ValueError(f"2:4 weight needs N > 0 and K > 0 divisible by 4, got {shape}")
    if values.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"2:4 values dtype must be fp16/bf16/fp32, got {values.dtype}")
    expected_values, expected_meta = _shapes_24(shape)
    if values.shape != expected_values:
        raise ValueError(
            f"2:4 values must have shape {expected_values} for weight shape {shape}, "
            f"got {tuple(values.shape)}"
        )
    if meta.dtype != torch.int32 or meta.shape != expected_meta:
        raise ValueError(
            f"2:4 meta must be int32 of shape {expected_meta}, got {meta.dtype} {tuple(meta.shape)}"
        )


def _shapes_24(shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Logical shape (N, K) -> the shapes of its `values` [N, Kp/2] and `meta` [N, Kp/32],
    Kp = K rounded up to K_ALIGN_24."""
    n, k = shape
    slots = _round_up(k, K_ALIGN_24) // 2
    return (n, slots), (n, slots // INDICES_PER_WORD)


def _nbytes_24(shape: tuple[int, int], dtype: torch.dtype) -> int:
    """`Sparse24Weight.nbytes` of a weight of logical shape (N, K) packed in `dtype`:
    values [N, Kp/2] in `dtype` plus int32 meta [N, Kp/32]. The pattern does not change it."""
    values, meta = _shapes_24(shape)
    return math.prod(values) * dtype.itemsize + math.prod(meta) * 4


def _check_24(weight: torch.Tensor, name: str = "weight") -> None:
    """Refuse a weight [N, K] that is not 2:4, naming its first bad group."""
    n, k = weight.shape
    if k % 4:
        raise ValueError(f"2:4 needs K divisible by 4, got {name} of shape {(n, k)}")
    nonzero = weight.reshape(n, k // 4, 4) != 0
    counts = nonzero.sum(-1, dtype=torch.uint8)  # a bool sum would make int64 copies
    violating = counts > 2
    if bool(violating.any()):
        row, group = violating.nonzero()[0].tolist()
        bad = int(violating.sum())
        groups = "1 group violates" if bad == 1 else f"{bad} groups violate"
        raise ValueError(
            f"{name} is not 2:4 sparse: row {row}, group {group} (columns {4 * group}.."
            f"{4 * group + 3}) has {int(counts[row, group])} nonzeros; at most 2 of every 4 "
            f"consecutive values along K may be nonzero ({groups} it)"
        )


def _pack_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense 2:4 weight [N, K] (checked by the caller: `_check_24`) -> (values [N, Kp/2]
    in weight's dtype, meta [N, Kp/32] int32), Kp = K rounded up to K_ALIGN_24. Packed a
    band of rows (`band_rows`, K padded to K_ALIGN_24) at a time."""
    rows = band_rows(_round_up(weight.shape[1], K_ALIGN_24))
    bands = [_pack_24_band(weight[row : row + rows]) for row in range(0, weight.shape[0], rows)]
    return torch.cat([values for values, _ in bands]), torch.cat([meta for _, meta in bands])


def _pack_24_band(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [R, K] of a 2:4 weight -> (values [R, Kp/2], meta [R, Kp/32] int32)."""
    n, k = weight.shape
    padded_k = _round_up(k, K_ALIGN_24)
    groups = F.pad(weight, (0, padded_k - k)).reshape(n, padded_k // 4, 4)
    # Keep the nonzeros; groups with fewer than two also keep their first zero positions,
    # so every group stores exactly two (index, value) pairs and unpack is exact.
    position = torch.arange(4, dtype=torch.uint8, device=weight.device)
    order_key = (groups == 0).to(torch.uint8) * 4 + position
    keep = order_key.argsort(dim=-1)[..., :2].sort(dim=-1).values
    integer = _SAME_SIZE_INT[weight.dtype]
    bits = groups.view(integer).gather(-1, keep)
    # A kept zero may be -0.0 (the sign bit alone): store +0.0, so that unpack gives +0.0 at
    # every zero, as the bitmap format does. Compared as integers, NaN payloads are untouched.
    bits.masked_fill_(bits == torch.iinfo(integer).min, 0)
    values = bits.view(weight.dtype).reshape(n, padded_k // 2)
    meta = _pack_words(keep.reshape(n, -1, INDICES_PER_WORD), 2)
    return values, meta


def _unpack_24(packed: Sparse24Weight) -> torch.Tensor:
    """Sparse24Weight of shape (N, K) -> the dense weight [N, K] (contiguous); positions
    that hold no value are +0.0.

    Unpacked a band of rows (as `_pack_24`) at a time into the output, so that the working
    tensors (~6 bytes per position in fp16, ~8 in fp32) cover one band, not the weight (all
    of it at once took ~2x the fp16 weight on top of it)."""
    n, k = packed.shape
    dense = packed.values.new_empty(n, k)  # not torch.empty: see _unpack_bitmap
    bits = dense.view(_SAME_SIZE_INT[packed.dtype])
    rows = band_rows(_round_up(k, K_ALIGN_24))
    for row in range(0, n, rows):
        band = _unpack_24_band(packed.values[row : row + rows], packed.meta[row : row + rows])
        bits[row : row + rows] = band[:, :k]
    return dense


def _unpack_24_band(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Rows of a 2:4 weight, values [R, Kp/2] and meta [R, Kp/32] int32 -> the dense rows
    [R, Kp] as the same-size integers of their bits (_SAME_SIZE_INT)."""
    rows = values.shape[0]
    integer = _SAME_SIZE_INT[values.dtype]
    indices = _unpack_words(meta, 2).view(rows, -1, 2)
    groups = torch.zeros(rows, indices.shape[1], 4, dtype=integer, device=values.device)
    groups.scatter_(-1, indices, values.view(integer).view(rows, -1, 2))
    return groups.view(rows, -1)
