"""Compressed weight formats: 2:4 and bitmap, with exact pack / unpack.

A pruned weight arrives as a dense tensor `[N, K]` (out_features x in_features, the
`nn.Linear` layout) whose zeros are the pruning mask. `pack` turns it into one of two
containers; `unpack` gives the dense tensor back exactly (up to the sign of pruned zeros).

2:4 (`Sparse24Weight`), for weights with at most 2 nonzeros in every group of 4 along K:
    values  [N, Kp/2]   the two kept values of each group, in K order (Kp = K padded)
    meta    [N, Kp/32]  int32; the in-group index (0..3) of value slot j sits in bits
                        2*(j % 16) .. 2*(j % 16)+1 of word j // 16
    = 1.125 bytes per position in fp16/bf16 (kernels.md).

Bitmap (`BitmapWeight`), for any sparsity pattern. The matrix is cut into tiles of
tile_n rows x tile_k columns, stored tile by tile (row blocks outer, K tiles inner), so
that one tile's data is contiguous, the order the kernels read it in:
    bits    [T, tile_n*tile_k/32]  int32; bit b of word w in a tile's row r covers column
                                   32*w + b of that row (words r*tile_k/32 ... of the tile)
    values  [V]       the tile's nonzeros in row-major order, each tile's run starting at
                      offsets[t] and padded to a multiple of VALUE_ALIGN elements
    offsets [T]       int32 start of each tile's run in `values`
Tiles are powers of two, tile_k >= 32. The kernels work on whole tiles; tiles of fewer
than 16 rows cannot feed tl.dot, so their weights run the multiply-and-sum loop at every M.

Both hold plain tensors plus Python ints, so `to_state_dict()` gives tensors only
(safetensors-friendly) and `load_state_dict()` rebuilds either container. Several weights
packed side by side (q, k and v) remember their `split_sizes`; `split_output` cuts the
result of one fused launch back into the separate projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

FORMAT_24 = "2:4"
FORMAT_BITMAP = "bitmap"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# 2:4 rows are padded along K to a multiple of 64 positions: every row of `values` then
# starts on a 64-byte boundary in fp16 (vector loads need 16) and no kernel K tile
# (32..256 positions, a power of two) straddles a metadata word.
K_ALIGN_24 = 64
INDICES_PER_WORD = 16  # 2-bit in-group indices per int32 metadata word

# 64 x 64 positions per bitmap tile: 512 bytes of bitmap and ~4 KB of fp16 values at 50%
# per tile, a tl.dot-friendly block (>= 16) and two 32-bit words per row.
DEFAULT_BITMAP_TILE = (64, 64)
# Each tile's run of values starts on a multiple of 8 elements (16 bytes in fp16/bf16),
# so a tile's values can be fetched with aligned vector loads.
VALUE_ALIGN = 8

_FORMAT_IDS = {FORMAT_24: 1, FORMAT_BITMAP: 2}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pack_words(fields: torch.Tensor, bits_per_field: int) -> torch.Tensor:
    """[..., W, 32 // bits_per_field] small ints -> [..., W] int32 words (two's complement)."""
    shifts = torch.arange(fields.shape[-1], device=fields.device) * bits_per_field
    words = (fields.to(torch.int64) << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def _unpack_words(
    words: torch.Tensor, bits_per_field: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """[..., W] int32 words -> [..., W * 32 // bits_per_field] fields, as `dtype`."""
    per_word = 32 // bits_per_field
    shifts = torch.arange(per_word, dtype=torch.int32, device=words.device) * bits_per_field
    # Shifted in int32: the sign bits an arithmetic shift brings in are masked off.
    fields = (words.unsqueeze(-1) >> shifts) & ((1 << bits_per_field) - 1)
    return fields.flatten(-2).to(dtype)


def _check_dense(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.layout != torch.strided:
        raise ValueError(f"weight must be a dense (strided) tensor, got layout {weight.layout}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"weight dtype must be float16, bfloat16 or float32, got {weight.dtype}")
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")


def _check_split_sizes(split_sizes: tuple[int, ...], n: int) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in split_sizes)
    if any(s <= 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"split_sizes {sizes} must be positive and sum to N = {n}")
    return sizes


@dataclass(eq=False)
class Sparse24Weight:
    """A 2:4 sparse weight of logical shape (N, K); see the module docstring for layout."""

    values: torch.Tensor
    meta: torch.Tensor
    shape: tuple[int, int]
    split_sizes: tuple[int, ...]
    format: ClassVar[str] = FORMAT_24
    # Derived copies (dense, torch semi-structured) made on demand by the dispatcher.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.split_sizes = _check_split_sizes(self.split_sizes, self.shape[0])
        self.validate_layout()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for the whole weight (values + metadata)."""
        return self.values.numel() * self.values.element_size() + self.meta.numel() * 4

    def validate_layout(self) -> None:
        """Check dtypes, shapes, devices and contiguity (no data is read)."""
        n, k = self.shape
        padded_k = _round_up(k, K_ALIGN_24)
        if k % 4 or k <= 0 or n <= 0:
            raise ValueError(f"2:4 weight needs N > 0 and K > 0 divisible by 4, got {self.shape}")
        if self.values.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"2:4 values dtype must be fp16/bf16/fp32, got {self.values.dtype}")
        if tuple(self.values.shape) != (n, padded_k // 2):
            raise ValueError(
                f"2:4 values must have shape {(n, padded_k // 2)} for weight shape {self.shape}, "
                f"got {tuple(self.values.shape)}"
            )
        expected_meta = (n, padded_k // 2 // INDICES_PER_WORD)
        if self.meta.dtype != torch.int32 or tuple(self.meta.shape) != expected_meta:
            raise ValueError(
                f"2:4 meta must be int32 of shape {expected_meta}, got "
                f"{self.meta.dtype} {tuple(self.meta.shape)}"
            )
        if self.meta.device != self.values.device:
            raise ValueError(f"2:4 meta on {self.meta.device} but values on {self.values.device}")
        if not (self.values.is_contiguous() and self.meta.is_contiguous()):
            raise ValueError("2:4 values and meta must be contiguous")

    def validate_data(self) -> None:
        """Check that every group's two indices are distinct and in order, and that the
        groups padding K to K_ALIGN_24 hold zeros (the kernels read them; reads the data)."""
        n, k = self.shape
        indices = _unpack_words(self.meta, 2).view(n, -1, 2)
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

    def to(self, device: torch.device | str) -> Sparse24Weight:
        return Sparse24Weight(
            self.values.to(device), self.meta.to(device), self.shape, self.split_sizes
        )

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        n, k = self.shape
        return {
            "info": torch.tensor([_FORMAT_IDS[FORMAT_24], n, k], dtype=torch.int64),
            "split_sizes": torch.tensor(self.split_sizes, dtype=torch.int64),
            "values": self.values.clone(),
            "meta": self.meta.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Sparse24Weight:
        _, n, k = _state_info(state, FORMAT_24, ("values", "meta"), ("N", "K"))
        weight = cls(
            state["values"].contiguous(),
            state["meta"].contiguous(),
            (n, k),
            tuple(int(s) for s in state["split_sizes"].tolist()),
        )
        weight.validate_data()
        return weight


@dataclass(eq=False)
class BitmapWeight:
    """An unstructured sparse weight of logical shape (N, K) in tiled bitmap form."""

    bits: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]
    tile: tuple[int, int]
    nnz: int
    split_sizes: tuple[int, ...]
    format: ClassVar[str] = FORMAT_BITMAP
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        self.tile = (int(self.tile[0]), int(self.tile[1]))
        self.nnz = int(self.nnz)
        self.split_sizes = _check_split_sizes(self.split_sizes, self.shape[0])
        self.validate_layout()

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def grid(self) -> tuple[int, int]:
        """(row blocks, K tiles)."""
        return -(-self.shape[0] // self.tile[0]), -(-self.shape[1] // self.tile[1])

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for the whole weight (bitmap + values + offsets)."""
        return (
            self.bits.numel() * 4
            + self.values.numel() * self.values.element_size()
            + self.offsets.numel() * 4
        )

    def validate_layout(self) -> None:
        """Check dtypes, shapes, devices and contiguity (no data is read)."""
        check_bitmap_tile(self.tile)
        n, k = self.shape
        if n <= 0 or k <= 0:
            raise ValueError(f"bitmap weight needs a non-empty shape, got {self.shape}")
        tiles = self.grid[0] * self.grid[1]
        words = self.tile[0] * self.tile[1] // 32
        if self.bits.dtype != torch.int32 or tuple(self.bits.shape) != (tiles, words):
            raise ValueError(
                f"bitmap bits must be int32 of shape {(tiles, words)}, got "
                f"{self.bits.dtype} {tuple(self.bits.shape)}"
            )
        if self.offsets.dtype != torch.int32 or tuple(self.offsets.shape) != (tiles,):
            raise ValueError(
                f"bitmap offsets must be int32 of shape {(tiles,)}, got "
                f"{self.offsets.dtype} {tuple(self.offsets.shape)}"
            )
        if self.values.dtype not in SUPPORTED_DTYPES or self.values.dim() != 1:
            raise ValueError(
                f"bitmap values must be a 1-D fp16/bf16/fp32 tensor, got "
                f"{self.values.dtype} {tuple(self.values.shape)}"
            )
        for name in ("bits", "offsets"):
            if getattr(self, name).device != self.values.device:
                raise ValueError(
                    f"bitmap {name} on {getattr(self, name).device}, values on {self.values.device}"
                )
        if not all(t.is_contiguous() for t in (self.bits, self.values, self.offsets)):
            raise ValueError("bitmap bits, values and offsets must be contiguous")

    def validate_data(self) -> None:
        """Check offsets, alignment, nnz and padding against the bitmap (reads the data)."""
        counts = _unpack_words(self.bits, 1).sum(-1)
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
        inside = torch.zeros(
            self.grid[0] * self.tile[0],
            self.grid[1] * self.tile[1],
            dtype=torch.bool,
            device=self.device,
        )
        inside[:n, :k] = True
        if bool((_tiles_of(~inside, self.tile) & (_unpack_words(self.bits, 1) != 0)).any()):
            raise ValueError("bitmap marks nonzeros in the padding beyond the weight's shape")

    def to(self, device: torch.device | str) -> BitmapWeight:
        return BitmapWeight(
            self.bits.to(device),
            self.values.to(device),
            self.offsets.to(device),
            self.shape,
            self.tile,
            self.nnz,
            self.split_sizes,
        )

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        n, k = self.shape
        info = [_FORMAT_IDS[FORMAT_BITMAP], n, k, self.tile[0], self.tile[1], self.nnz]
        return {
            "info": torch.tensor(info, dtype=torch.int64),
            "split_sizes": torch.tensor(self.split_sizes, dtype=torch.int64),
            "bits": self.bits.clone(),
            "values": self.values.clone(),
            "offsets": self.offsets.clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> BitmapWeight:
        fields = ("N", "K", "tile_n", "tile_k", "nnz")
        _, n, k, tile_n, tile_k, nnz = _state_info(
            state, FORMAT_BITMAP, ("bits", "values", "offsets"), fields
        )
        weight = cls(
            state["bits"].contiguous(),
            state["values"].contiguous(),
            state["offsets"].contiguous(),
            (n, k),
            (tile_n, tile_k),
            nnz,
            tuple(int(s) for s in state["split_sizes"].tolist()),
        )
        weight.validate_data()
        return weight


PackedWeight = Sparse24Weight | BitmapWeight


def _state_info(
    state: dict[str, torch.Tensor], format: str, tensors: tuple[str, ...], fields: tuple[str, ...]
) -> list[int]:
    """``state["info"]`` as ints (format id, then ``fields``), after checking that the
    state dict holds every entry ``format`` needs."""
    missing = [name for name in ("info", "split_sizes", *tensors) if name not in state]
    if missing:
        raise ValueError(f"{format} state dict lacks {', '.join(map(repr, missing))}")
    info = state["info"]
    if info.dim() != 1 or info.numel() != 1 + len(fields) or info.is_floating_point():
        raise ValueError(
            f"{format} state dict 'info' must be 1-D integers (format id, "
            f"{', '.join(fields)}), got {info.dtype} of shape {tuple(info.shape)}"
        )
    return [int(v) for v in info.tolist()]


def check_bitmap_tile(tile: tuple[int, int]) -> None:
    if not (
        isinstance(tile, (tuple, list))
        and len(tile) == 2
        and all(isinstance(t, int) and not isinstance(t, bool) for t in tile)
    ):
        raise ValueError(f"bitmap tile must be a pair of ints (rows, columns), got {tile!r}")
    tile_n, tile_k = tile
    if tile_n < 1 or tile_n & (tile_n - 1) or tile_k < 32 or tile_k & (tile_k - 1):
        raise ValueError(
            f"bitmap tile must be (power of two >= 1 rows, power of two >= 32 columns), got {tile}"
        )


def pack(
    weight: torch.Tensor,
    format: str = FORMAT_24,
    *,
    tile: tuple[int, int] = DEFAULT_BITMAP_TILE,
    split_sizes: tuple[int, ...] | None = None,
) -> PackedWeight:
    """Compress a dense pruned weight [N, K]; its zeros are the pruning mask.

    format: "2:4" (raises ValueError naming the first row/group with more than 2 nonzeros
    in a group of 4 along K) or "bitmap" (any pattern; `tile` = (rows, columns) per tile).
    split_sizes: output sizes when `weight` is several weights stacked along N (see
    `pack_many`); default one weight.

    >>> w = torch.tensor([[1.0, 0, 0, 2, 0, 3, 0, 0]])
    >>> torch.equal(unpack(pack(w, "2:4")), w)
    True
    """
    _check_dense(weight)
    weight = weight.detach()
    sizes = (weight.shape[0],) if split_sizes is None else tuple(split_sizes)
    if format == FORMAT_24:
        values, meta = _pack_24(weight)
        return Sparse24Weight(values, meta, tuple(weight.shape), sizes)
    if format == FORMAT_BITMAP:
        check_bitmap_tile(tile)
        bits, values, offsets, nnz = _pack_bitmap(weight, tile)
        return BitmapWeight(bits, values, offsets, tuple(weight.shape), tile, nnz, sizes)
    raise ValueError(f"unknown format {format!r}; expected {FORMAT_24!r} or {FORMAT_BITMAP!r}")


def unpack(packed: PackedWeight) -> torch.Tensor:
    """The exact dense weight [N, K] (pruned positions are +0.0)."""
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
    [sum N_i, K] weight; `split_output` cuts the fused output back into the N_i parts."""
    if len(weights) == 0:
        raise ValueError("pack_many needs at least one weight")
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
    stacked = torch.cat([w.detach() for w in weights], dim=0)
    return pack(stacked, format, tile=tile, split_sizes=tuple(w.shape[0] for w in weights))


def concat(packed: list[PackedWeight] | tuple[PackedWeight, ...]) -> PackedWeight:
    """Concatenate already packed weights of one format along N (exact)."""
    if len(packed) == 0:
        raise ValueError("concat needs at least one packed weight")
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
        return Sparse24Weight(values, meta, (sum(sizes), first.shape[1]), sizes)
    if any(p.tile != first.tile for p in packed):
        raise ValueError(f"bitmap tiles differ: {[p.tile for p in packed]}")
    dense = torch.cat([unpack(p) for p in packed])
    return pack(dense, FORMAT_BITMAP, tile=first.tile, split_sizes=sizes)


def split_output(output: torch.Tensor, packed: PackedWeight) -> tuple[torch.Tensor, ...]:
    """Cut the [..., N] output of a weight made by `pack_many` into its [..., N_i] parts."""
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


def load_state_dict(state: dict[str, torch.Tensor]) -> PackedWeight:
    """Rebuild a packed weight from `to_state_dict()` output (validates the data)."""
    if "info" not in state or state["info"].numel() == 0:
        raise ValueError("not a packed weight state dict: no 'info' entry (format id first)")
    format_id = int(state["info"].flatten()[0])
    if format_id == _FORMAT_IDS[FORMAT_24]:
        return Sparse24Weight.from_state_dict(state)
    if format_id == _FORMAT_IDS[FORMAT_BITMAP]:
        return BitmapWeight.from_state_dict(state)
    raise ValueError(f"unknown packed format id {format_id}")


# ---------------------------------------------------------------------------- 2:4


_SAME_SIZE_INT = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
}


def _check_24(weight: torch.Tensor, name: str = "weight") -> None:
    """Refuse a weight [N, K] that is not 2:4, naming its first bad group."""
    n, k = weight.shape
    if k % 4:
        raise ValueError(f"2:4 needs K divisible by 4, got {name} of shape {(n, k)}")
    nonzero = weight.reshape(n, k // 4, 4) != 0
    counts = nonzero.sum(-1)
    violating = counts > 2
    if bool(violating.any()):
        row, group = violating.nonzero()[0].tolist()
        raise ValueError(
            f"{name} is not 2:4 sparse: row {row}, group {group} (columns {4 * group}.."
            f"{4 * group + 3}) has {int(counts[row, group])} nonzeros; at most 2 of every 4 "
            f"consecutive values along K may be nonzero ({int(violating.sum())} groups violate it)"
        )


def _pack_24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = weight.shape
    _check_24(weight)
    padded_k = _round_up(k, K_ALIGN_24)
    groups = F.pad(weight, (0, padded_k - k)).reshape(n, padded_k // 4, 4)
    # Keep the nonzeros; groups with fewer than two also keep their first zero positions,
    # so every group stores exactly two (index, value) pairs and unpack is exact.
    position = torch.arange(4, device=weight.device)
    order_key = (groups == 0).to(torch.int64) * 4 + position
    keep = order_key.argsort(dim=-1)[..., :2].sort(dim=-1).values
    # Moved as integers: a float gather may rewrite NaN payloads (bf16 on the CPU does).
    bits = groups.view(_SAME_SIZE_INT[weight.dtype]).gather(-1, keep)
    values = bits.view(weight.dtype).reshape(n, padded_k // 2).contiguous()
    meta = _pack_words(keep.reshape(n, -1, INDICES_PER_WORD), 2).contiguous()
    return values, meta


def _unpack_24(packed: Sparse24Weight) -> torch.Tensor:
    n, k = packed.shape
    indices = _unpack_words(packed.meta, 2).view(n, -1, 2)
    values = packed.values.view(n, -1, 2)
    integer = _SAME_SIZE_INT[packed.dtype]
    groups = torch.zeros(n, values.shape[1], 4, dtype=integer, device=packed.device)
    groups.scatter_(-1, indices, values.view(integer))
    return groups.view(packed.dtype).reshape(n, -1)[:, :k].contiguous()


# ---------------------------------------------------------------------------- bitmap


def _tiles_of(matrix: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """Padded [Np, Kp] -> [T, tile_n * tile_k], tiles row blocks outer, K tiles inner."""
    tile_n, tile_k = tile
    rows, cols = matrix.shape
    blocks = matrix.reshape(rows // tile_n, tile_n, cols // tile_k, tile_k).permute(0, 2, 1, 3)
    return blocks.reshape(-1, tile_n * tile_k)


def _pack_bitmap(
    weight: torch.Tensor, tile: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    n, k = weight.shape
    padded = F.pad(weight, (0, _round_up(k, tile[1]) - k, 0, _round_up(n, tile[0]) - n))
    tiles = _tiles_of(padded, tile)
    mask = tiles != 0
    counts = mask.sum(-1)
    slots = (counts + VALUE_ALIGN - 1) // VALUE_ALIGN * VALUE_ALIGN
    starts = torch.cumsum(slots, 0) - slots
    total = max(int(slots.sum()), VALUE_ALIGN)
    if total >= 2**31:
        raise ValueError(f"weight {(n, k)} has too many nonzeros for int32 tile offsets")
    values = torch.zeros(total, dtype=weight.dtype, device=weight.device)
    destination = starts.unsqueeze(-1) + torch.cumsum(mask, -1) - 1
    values[destination[mask]] = tiles[mask]
    bits = _pack_words(mask.reshape(mask.shape[0], -1, 32), 1).contiguous()
    return bits, values, starts.to(torch.int32).contiguous(), int(counts.sum())


def _unpack_bitmap(packed: BitmapWeight) -> torch.Tensor:
    # One gather, static shapes only (no boolean indexing), so the reference path built on
    # this traces under torch.compile(fullgraph=True). Pruned positions gather a +0.0
    # appended to the values. int32 indices and index_select: int64 ones, a where or a
    # masked_fill over every position each cost more than the rest (CPU, every call).
    mask = _unpack_words(packed.bits, 1, torch.int32)  # [tiles, tile_n * tile_k]
    rank = torch.cumsum(mask, -1, dtype=torch.int32)
    zero_slot = packed.values.numel()
    source = (packed.offsets.unsqueeze(-1) + (rank - 1 - zero_slot)) * mask + zero_slot
    values = torch.cat([packed.values, packed.values.new_zeros(1)])
    tiles = values.index_select(0, source.flatten()).view(source.shape)
    row_blocks, k_tiles = packed.grid
    tile_n, tile_k = packed.tile
    dense = tiles.reshape(row_blocks, k_tiles, tile_n, tile_k).permute(0, 2, 1, 3)
    n, k = packed.shape
    return dense.reshape(row_blocks * tile_n, k_tiles * tile_k)[:n, :k].contiguous()
