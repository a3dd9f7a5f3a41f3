"""The bitmap container, `BitmapWeight`, for any sparsity pattern, and its pack / unpack.

The matrix [N, K] is cut into tiles of tile_n rows x tile_k columns, stored tile by tile
(row blocks outer, K tiles inner), so that one tile's data is contiguous, the order the
kernels read it in:
    bits    [T, tile_n*tile_k/32]  int32; bit b of word w in a tile's row r covers column
                                   32*w + b of that row (words r*tile_k/32 ... of the tile)
    values  [V]       the tile's nonzeros in row-major order, each tile's run starting at
                      offsets[t] and padded to a multiple of VALUE_ALIGN elements
    offsets [T]       int32 start of each tile's run in `values`
Tiles are powers of two, tile_k >= 32. The kernels work on whole tiles; tiles of fewer
than 16 rows cannot feed tl.dot, so their weights run the multiply-and-sum loop at every M.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .format_common import (
    _SAME_SIZE_INT,
    FORMAT_BITMAP,
    SUPPORTED_DTYPES,
    PackedContainer,
    _pack_words,
    _round_up,
    _unpack_words,
    as_int,
    band_rows,
    cache_field,
    check_tensors_together,
    int_pair,
)

# 64 x 64 positions per bitmap tile: 512 bytes of bitmap and ~4 KB of fp16 values at 50%
# per tile, a tl.dot-friendly block (>= 16) and two 32-bit words per row.
DEFAULT_BITMAP_TILE = (64, 64)
# Each tile's run of values starts on a multiple of 8 elements (16 bytes in fp16/bf16),
# so that a tile's values could be fetched with aligned vector loads (the format's
# contract). The kernels gather them one position at a time by rank today
# (decode._bitmap_tile), so it costs ~3.5 values per tile (~0.2% at 64 x 64, 50%) for now.
VALUE_ALIGN = 8
# Tile offsets are int32: a packed weight stores fewer values than this.
MAX_BITMAP_VALUES = 2**31
# An all-zero weight stores one aligned run of zeros, for its offsets to point at.
_EMPTY_RUN = VALUE_ALIGN


def check_bitmap_tile(tile) -> tuple[int, int]:
    """`tile` as (tile_n, tile_k) Python ints; ValueError unless it is a pair of integers
    (Python, numpy or torch scalars: `as_int`; no floats or bools), tile_n a power of two
    >= 1 rows, tile_k a power of two >= 32 columns (one int32 bitmap word or more)."""
    tile_n, tile_k = int_pair(tile, "bitmap tile", "(rows, columns)")
    _check_tile_sizes(tile_n, tile_k)
    return tile_n, tile_k


def _check_tile_sizes(tile_n: int, tile_k: int) -> None:
    if tile_n < 1 or tile_n & (tile_n - 1) or tile_k < 32 or tile_k & (tile_k - 1):
        raise ValueError(
            f"bitmap tile must be (power of two >= 1 rows, power of two >= 32 columns), "
            f"got {(tile_n, tile_k)}"
        )


@dataclass(eq=False)
class BitmapWeight(PackedContainer):
    """An unstructured sparse weight of logical shape (N, K) in tiled bitmap form.

    Built from bits, values and offsets (as `pack` makes them), it checks their layout
    and, unless check_data=False, their data (`validate_data`): a ValueError names what
    is wrong (see PackedContainer). Do not modify bits, values or offsets in place: the
    kernels trust the data checked then (a corrupt offset reads out of bounds); after any
    such change, call `validate()` (it also drops the copies derived from the old data)."""

    bits: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]
    tile: tuple[int, int]
    nnz: int
    split_sizes: tuple[int, ...]
    check_data: InitVar[bool] = True
    format: ClassVar[str] = FORMAT_BITMAP
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "values", "offsets")
    INFO_FIELDS: ClassVar[tuple[str, ...]] = ("N", "K", "tile_n", "tile_k", "nnz")
    cache: dict = cache_field()

    def __post_init__(self, check_data: bool) -> None:
        """tile as `check_bitmap_tile` gives it, nnz as a Python int (`as_int`), then
        what every container checks (PackedContainer.__post_init__)."""
        self.tile = check_bitmap_tile(self.tile)
        try:
            self.nnz = as_int(self.nnz)
        except TypeError:
            raise ValueError(f"bitmap nnz must be an int, got {self.nnz!r}") from None
        super().__post_init__(check_data)

    def _info(self) -> tuple[int, ...]:
        return (*self.shape, *self.tile, self.nnz)

    @classmethod
    def _fields_of_info(cls, info: list[int]) -> dict[str, Any]:
        n, k, tile_n, tile_k, nnz = info
        return {"shape": (n, k), "tile": (tile_n, tile_k), "nnz": nnz}

    @property
    def grid(self) -> tuple[int, int]:
        """(row blocks, K tiles)."""
        return _grid(self.shape, self.tile)

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for the whole weight (bitmap + values + offsets);
        `_nbytes_bitmap` counts it from the dense weights without packing them."""
        return (
            self.bits.numel() * 4
            + self.values.numel() * self.values.element_size()
            + self.offsets.numel() * 4
        )

    def validate_layout(self) -> None:
        """Check dtypes, shapes, devices and contiguity (no data is read)."""
        check_bitmap_layout(self.bits, self.values, self.offsets, self.shape, self.tile, self.nnz)

    def validate_data(self) -> None:
        """Check offsets, alignment, nnz and padding against the bitmap (reads the data)."""
        counts = _count_ones(self.bits).sum(-1)  # [T] int64
        starts = self.offsets.to(torch.int64)
        ends = starts + counts
        if int(counts.sum()) != self.nnz:
            raise ValueError(
                f"bitmap nnz {self.nnz} does not match the bitmap ({int(counts.sum())})"
            )
        bad = (starts < 0) | (ends > self.values.numel()) | (starts % VALUE_ALIGN != 0)
        bad[1:] |= starts[1:] < ends[:-1]
        if bool(bad.any()):
            tile = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"bitmap offsets are corrupt at tile {tile}: start {int(starts[tile])}, "
                f"{int(counts[tile])} values, {self.values.numel()} values stored"
            )
        n, k = self.shape
        padded_n, padded_k = self.grid[0] * self.tile[0], self.grid[1] * self.tile[1]
        if (padded_n, padded_k) == (n, k):
            return
        outside = torch.ones(padded_n, padded_k, dtype=torch.bool, device=self.device)
        outside[:n, :k] = False
        padding = _pack_words(_tiles_of(outside, self.tile).view(len(counts), -1, 32), 1)
        if bool((self.bits & padding).any()):
            raise ValueError("bitmap marks nonzeros in the padding beyond the weight's shape")


def check_bitmap_layout(
    bits: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    shape: tuple[int, int],
    tile: tuple[int, int],
    nnz: int,
) -> None:
    """Raise a ValueError unless bits, values and offsets are the contiguous tensors, on one
    device, of a bitmap weight of logical shape (N, K) cut into `tile` tiles (a pair of
    ints), T of them: bits [T, tile_n*tile_k/32] int32, offsets [T] int32, values [V]
    fp16/bf16/fp32 with V >= nnz; and 0 <= nnz <= N * K. Reads no data: what the custom ops check of
    the tensors they are given, at every call."""
    check_tensors_together(FORMAT_BITMAP, {"bits": bits, "values": values, "offsets": offsets})
    _check_tile_sizes(*tile)
    n, k = shape
    if n <= 0 or k <= 0:
        raise ValueError(f"bitmap weight needs a non-empty shape, got {shape}")
    row_blocks, k_tiles = _grid(shape, tile)
    tiles, words = row_blocks * k_tiles, _words_per_tile(tile)
    if bits.dtype != torch.int32 or bits.shape != (tiles, words):
        raise ValueError(
            f"bitmap bits must be int32 of shape {(tiles, words)} for weight shape {shape} "
            f"and tile {tuple(tile)}, got {bits.dtype} {tuple(bits.shape)}"
        )
    if offsets.dtype != torch.int32 or offsets.shape != (tiles,):
        raise ValueError(
            f"bitmap offsets must be int32 of shape {(tiles,)}, got "
            f"{offsets.dtype} {tuple(offsets.shape)}"
        )
    if values.dtype not in SUPPORTED_DTYPES or values.dim() != 1:
        raise ValueError(
            f"bitmap values must be a 1-D fp16/bf16/fp32 tensor, got "
            f"{values.dtype} {tuple(values.shape)}"
        )
    if not 0 <= nnz <= n * k:
        raise ValueError(f"bitmap nnz must be in 0 .. N * K = {n * k}, got {nnz}")
    if values.numel() < nnz:  # the offsets (data) are trusted, not a short values tensor
        raise ValueError(f"bitmap values hold {values.numel()} values, fewer than nnz {nnz}")


def _grid(shape: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    """(row blocks, K tiles) of a weight of shape (N, K) cut into (tile_n, tile_k) tiles."""
    return -(-shape[0] // tile[0]), -(-shape[1] // tile[1])


def _words_per_tile(tile: tuple[int, int]) -> int:
    """int32 bitmap words per (tile_n, tile_k) tile: one bit per position."""
    return tile[0] * tile[1] // 32


def _run_lengths(counts: torch.Tensor) -> torch.Tensor:
    """Nonzeros per tile [T] -> the length of each tile's run in `values` [T]: its count
    rounded up to VALUE_ALIGN."""
    return (counts + VALUE_ALIGN - 1) // VALUE_ALIGN * VALUE_ALIGN


def _check_value_count(stored: int, shape: tuple[int, int]) -> None:
    """Refuse a weight of shape (N, K) whose `values` reach `stored` >= MAX_BITMAP_VALUES
    elements (beyond the int32 tile offsets)."""
    if stored >= MAX_BITMAP_VALUES:
        raise ValueError(
            f"weight {shape} has too many nonzeros for int32 tile offsets: its bitmap would "
            f"store at least {stored} values (nonzeros padded per tile), "
            f"{MAX_BITMAP_VALUES} or more"
        )


def _count_ones(words: torch.Tensor) -> torch.Tensor:
    """[..., W] int32 words -> [..., W] int32 count of set bits in each."""
    counts = torch.zeros_like(words)
    for bit in range(32):
        counts += (words >> bit) & 1
    return counts


def _tiles_of(matrix: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """Padded [Np, Kp] -> [T, tile_n * tile_k], tiles row blocks outer, K tiles inner."""
    tile_n, tile_k = tile
    rows, cols = matrix.shape
    blocks = matrix.reshape(rows // tile_n, tile_n, cols // tile_k, tile_k).permute(0, 2, 1, 3)
    return blocks.reshape(-1, tile_n * tile_k)


def _pack_bitmap(
    weight: torch.Tensor, tile: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Dense weight [N, K] -> (bits [T, tile_n*tile_k/32] int32, values [V] in weight's
    dtype, offsets [T] int32, nnz), T = ceil(N/tile_n) * ceil(K/tile_k) tiles.

    Packed a band of whole row blocks (`band_rows`, K padded to tile_k) at a time; the
    output is built twice over (the bands' values, then joined)."""
    rows = band_rows(_round_up(weight.shape[1], tile[1]), tile[0])
    bits, values, offsets, nnz, total = [], [], [], 0, 0
    for row in range(0, weight.shape[0], rows):
        band_bits, band_values, band_starts, band_nnz = _pack_band(weight[row : row + rows], tile)
        _check_value_count(total + band_values.numel(), tuple(weight.shape))
        bits.append(band_bits)
        values.append(band_values)
        offsets.append((band_starts + total).to(torch.int32))
        nnz += band_nnz
        total += band_values.numel()
    if total == 0:  # an all-zero weight: keep one aligned run of zeros to point at
        values = [weight.new_zeros(_EMPTY_RUN)]
    return torch.cat(bits), torch.cat(values), torch.cat(offsets), nnz


def _pack_band(
    band: torch.Tensor, tile: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rows [R, K] of a weight -> (bits [t, tile_n*tile_k/32] int32, values [v], starts [t]
    int64 into values, nnz) for its t tiles, R padded to whole row blocks."""
    rows, k = band.shape
    pad_n, pad_k = _round_up(rows, tile[0]) - rows, _round_up(k, tile[1]) - k
    tiles = _tiles_of(F.pad(band, (0, pad_k, 0, pad_n)), tile)  # [t, tile_n * tile_k]
    mask = tiles != 0
    # The place of each nonzero in `values`: its tile's start plus its rank in the tile.
    place = mask.to(torch.int32)
    place.cumsum_(-1)  # in place: cumsum(mask, dtype=int32) makes a second copy
    counts = place[:, -1].to(torch.int64)
    slots = _run_lengths(counts)
    starts = torch.cumsum(slots, 0) - slots
    place += (starts - 1).to(torch.int32).unsqueeze(-1)
    values = tiles.new_zeros(int(slots.sum()))
    values[place[mask]] = tiles[mask]
    bits = _pack_words(mask.view(mask.shape[0], -1, 32), 1)
    return bits, values, starts, int(counts.sum())


def _tile_counts(weights: Sequence[torch.Tensor], tile: tuple[int, int]) -> torch.Tensor:
    """Weights [N_i, K] stacked along N -> nonzeros per tile [row blocks, K tiles] int64,
    counted as `_pack_band` keeps them (entries != 0: NaN counts, -0.0 does not). A tile
    may hold rows of two weights. Counted a band of rows (`band_rows`: these need not
    be whole row blocks) at a time; the per-row counts [sum N_i, K tiles] are all that is
    kept."""
    tile_n, tile_k = tile
    k = weights[0].shape[1]
    pad_k = _round_up(k, tile_k) - k
    rows = band_rows(k + pad_k)
    per_row = []
    for weight in weights:
        for row in range(0, weight.shape[0], rows):
            mask = F.pad(weight[row : row + rows] != 0, (0, pad_k))
            per_row.append(mask.reshape(mask.shape[0], -1, tile_k).sum(-1, dtype=torch.int32))
    stacked = torch.cat(per_row)
    pad_n = _round_up(stacked.shape[0], tile_n) - stacked.shape[0]
    stacked = F.pad(stacked, (0, 0, 0, pad_n))
    return stacked.reshape(-1, tile_n, stacked.shape[1]).sum(1, dtype=torch.int64)


def _nbytes_bitmap(weights: Sequence[torch.Tensor], tile: tuple[int, int]) -> int:
    """`BitmapWeight.nbytes` of weights [N_i, K] (one dtype) packed stacked along N with
    `tile` (as `pack_many` does), counted without packing: per tile, its bitmap words
    [tile_n*tile_k/32] and its offset, both int32; then `values` [V], each tile's nonzeros
    rounded up to VALUE_ALIGN (an all-zero weight keeps one run of VALUE_ALIGN zeros).
    Raises ValueError where pack would: V >= MAX_BITMAP_VALUES."""
    shape = (sum(w.shape[0] for w in weights), weights[0].shape[1])
    stored = int(_run_lengths(_tile_counts(weights, tile)).sum()) or _EMPTY_RUN
    _check_value_count(stored, shape)
    row_blocks, k_tiles = _grid(shape, tile)
    tiles = row_blocks * k_tiles
    return tiles * (_words_per_tile(tile) + 1) * 4 + stored * weights[0].dtype.itemsize


def _unpack_bitmap(packed: BitmapWeight) -> torch.Tensor:
    """BitmapWeight of shape (N, K) -> the dense weight [N, K] (contiguous); positions
    that hold no value are +0.0.

    Unpacked a band of whole row blocks (as `_pack_bitmap`) at a time into the output, so that
    the working tensors (~12 bytes per position in fp16, ~16 in fp32) cover one band, not
    the weight (all of it at once took ~7.5x the fp16 weight on top of it)."""
    n, k = packed.shape
    tile_n, tile_k = packed.tile
    k_tiles = packed.grid[1]
    if packed.values.numel() == 0:  # all zeros, stored without a run of zeros
        return torch.zeros(n, k, dtype=packed.dtype, device=packed.device)
    # new_empty, not torch.empty: a test that swaps torch.empty for its C function (to skip
    # the NaN poisoning) would find it untraceable under torch.compile
    dense = packed.values.new_empty(n, k)
    rows = band_rows(_round_up(k, tile_k), tile_n)
    for row in range(0, n, rows):
        band_tiles = slice(row // tile_n * k_tiles, (row + rows) // tile_n * k_tiles)
        tiles = _gather_tiles(packed.bits[band_tiles], packed.offsets[band_tiles], packed.values)
        blocks = tiles.view(-1, k_tiles, tile_n, tile_k).permute(0, 2, 1, 3)
        band = blocks.reshape(-1, k_tiles * tile_k)  # [whole row blocks, padded K]
        dense[row : row + rows] = band[: min(rows, n - row), :k]
    return dense


def _gather_tiles(bits: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Bitmaps [t, tile_n*tile_k/32] int32 and offsets [t] int32 of t tiles, and the
    weight's values [V], V >= 1 -> the tiles' positions [t, tile_n*tile_k], row-major in
    each tile; +0.0 where the bit is clear."""
    # One gather, static shapes only (no boolean indexing), so the reference path built on
    # this traces under torch.compile(fullgraph=True). Clear positions gather a neighbour
    # and are cleared bitwise: a masked_fill, a where or int64 indices cost more than the
    # rest (CPU, every call).
    integer = _SAME_SIZE_INT[values.dtype]
    stored = _unpack_words(bits, 1, integer)  # 1 where the tile stores a value
    source = torch.cumsum(stored, -1, dtype=torch.int32)  # rank in the tile, from 1
    # The slot in `values` of each stored value; a clear position gets the one of the
    # value before it in its tile, or offset - 1 ahead of the first (-1 at offset 0, hence
    # the clamp), gathered only to be cleared.
    source += offsets.unsqueeze(-1) - 1
    source.clamp_(min=0)
    tiles = values.view(integer).index_select(0, source.flatten()).view(source.shape)
    tiles &= stored.neg_()  # all bits (-1) where a value is stored, none (0) elsewhere
    return tiles.view(values.dtype)
