"""Value streams: a bitmap weight re-laid out for calls with few rows (decode).

The bitmap kernels rebuild every weight position on chip, kept or not: a popcount and a
gathered load per position, ~14 SASS instructions each (compile_report.py), which bounds
their decode speed-up near 1.1x, whatever the density. Here the work follows the kept
values instead. Each weight row becomes a stream of entries, in K order:

    entry = (value, step)   step = its column minus the previous entry's column (the
                            first entry's: minus 0), 0 .. 2**step_bits - 1

A gap wider than the largest step is bridged by escape entries (value 0, the largest
step); a row's stream ends in padding entries (value 0, step 0, so their column stays the
last one, a valid one). Every entry's column is then start + a running sum of steps, and
y[m, row] = sum over entries of value * x[m, column]: one gathered x element and one FMA
per kept value, ~11-13 instructions (M = 1), with no work for pruned positions.

Steps take 4 bits below STEP3_FROM_DENSITY kept values per position and 3 bits from it
(fewer bits, more escapes: 3 bits need one per gap of 8+, 0.8% of the values at 50%
density but 8% at 30%). In bf16, with escapes, padding and segment starts, a 70% sparse
weight streams ~0.77 bytes per position with 4-bit steps (bitmap: 0.725, dense: 2) and
a 50% one ~1.21 with 3-bit steps (bitmap: 1.125; 4-bit steps: ~1.27).

Layout, for kernels that give one weight row to each of `block_n` lanes and cut every row's
stream into `split` segments (split-K):

    rows are sorted by stream length, longest first, and dealt to row blocks of block_n
    lanes (row_ids: the weight row of each lane; N for lanes past the last row), so that
    a block pads its streams only to its own longest one, rounded up to a whole group;
    a group is E = 8 (4-bit steps) or 32 (3-bit) entries of one lane: their values and
    one (4-bit) or three (3-bit) int32 words of steps, entry j's step in bits
    step_bits * j ... of the words read as one little-endian bit string. Block b holds
    groups[b] groups per lane, global groups group_base[b] ..., stored lane-major:
        values [total_groups, block_n, E]      the entries' values (weight dtype)
        steps  [total_groups, W, block_n]      int32, W = E * step_bits / 32
    so a group is contiguous 16-byte loads per lane (fp16/bf16) and coalesced words;
    segment s of a block is its groups s * G ... (s + 1) * G - 1, G = ceil(groups[b] /
    split) (the last segments may be shorter or empty);
    starts [blocks, split, block_n] int32: the column each segment's running sum starts
    from (the column of the entry before the segment; 0 for the first).

The layout is derived from the weight (exactly: `to_dense` gives it back) and cached on it
by `sparse_linear` when a plan asks for the "streams" backend (or by `prepare_streams`,
ahead of torch.compile and CUDA-graph capture), like the dense copy of the "dense"
backend: it costs its own memory, `nbytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .format_common import SUPPORTED_DTYPES, band_rows, check_tensors_together
from .formats import BitmapWeight, unpack

# Kept values per position from which steps take 3 bits rather than 4. Per kept value a
# 3-bit step saves 1/8 byte and costs 2.4 bytes per escape, one per gap of 8+ positions:
# (1 - d)**7 of the values at density d (1/16 byte less at 40%, about even at 35%).
STEP3_FROM_DENSITY = 0.4
# Entries per group, by step width: one int32 word of 4-bit steps, three of 3-bit ones.
GROUP_ENTRIES = {4: 8, 3: 32}
# The layout's tensors, in BitmapStreams field order.
LAYOUT_FIELDS = ("values", "steps", "starts", "group_base", "groups", "row_ids")
_INT32 = (torch.int32,)


def step_bits_for(density: float) -> int:
    """Step width for a weight keeping `density` of its positions."""
    return 3 if density >= STEP3_FROM_DENSITY else 4


def _pack_steps(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., E] steps -> [..., E * bits / 32] int32 words (one little-endian bit string)."""
    shape = (*fields.shape[:-1], fields.shape[-1] * bits // 32)
    words = torch.zeros(shape, dtype=torch.int64, device=fields.device)
    for j in range(fields.shape[-1]):
        word, shift = divmod(bits * j, 32)
        words[..., word] |= (fields[..., j] << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # straddles two words
            words[..., word + 1] |= fields[..., j] >> (32 - shift)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_steps(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of _pack_steps: [..., W] int32 -> [..., W * 32 / bits] int64."""
    unsigned = words.to(torch.int64) & 0xFFFFFFFF
    fields = []
    for j in range(words.shape[-1] * 32 // bits):
        word, shift = divmod(bits * j, 32)
        field = unsigned[..., word] >> shift
        if shift + bits > 32:
            field = field | (unsigned[..., word + 1] << (32 - shift))
        fields.append(field & ((1 << bits) - 1))
    return torch.stack(fields, -1)


@dataclass(eq=False)
class BitmapStreams:
    """A weight of logical shape (N, K) as value streams; see the module docstring."""

    values: torch.Tensor
    steps: torch.Tensor
    starts: torch.Tensor
    group_base: torch.Tensor
    groups: torch.Tensor
    row_ids: torch.Tensor
    shape: tuple[int, int]
    block_n: int
    split: int
    step_bits: int

    @property
    def blocks(self) -> int:
        return self.group_base.shape[0]

    @property
    def group_entries(self) -> int:
        return GROUP_ENTRIES[self.step_bits]

    @property
    def words_per_group(self) -> int:
        return self.group_entries * self.step_bits // 32

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The layout's tensors, in field order (values ... row_ids)."""
        return (self.values, self.steps, self.starts, self.group_base, self.groups, self.row_ids)

    def validate_layout(self) -> None:
        """Check block_n, split, step_bits and the tensors' dtypes, sizes, device and
        contiguity (see the module docstring), as the streams op does at every call.
        Reads no data: groups and group_base are trusted to index the values."""
        block_n, split, step_bits = self.block_n, self.split, self.step_bits
        if block_n < 1 or block_n & (block_n - 1) or split < 1 or step_bits not in GROUP_ENTRIES:
            raise ValueError(
                f"streams layout needs block_n a power of two, split >= 1 and step_bits in "
                f"{sorted(GROUP_ENTRIES)}; got {block_n}, {split}, {step_bits}"
            )
        tensors = self.tensors
        check_tensors_together("streams", dict(zip(LAYOUT_FIELDS, tensors, strict=True)))
        blocks = -(-self.shape[0] // block_n)
        entries = block_n * self.group_entries  # per group of all lanes
        groups = self.values.numel() // entries
        sizes = (
            groups * entries,  # values
            groups * self.words_per_group * block_n,  # steps
            blocks * split * block_n,  # starts
            blocks,  # group_base
            blocks,  # groups
            blocks * block_n,  # row_ids
        )
        for name, tensor, size in zip(LAYOUT_FIELDS, tensors, sizes, strict=True):
            dtypes = SUPPORTED_DTYPES if name == "values" else _INT32
            if tensor.dtype not in dtypes or tensor.shape != (size,):
                names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
                raise ValueError(
                    f"streams {name} must be 1-D {names} of {size} elements for weight shape "
                    f"{self.shape}, block_n {block_n}, split {split}, step_bits {step_bits}; "
                    f"got {tensor.dtype} {tuple(tensor.shape)}"
                )

    @property
    def nbytes(self) -> int:
        """Bytes a few-row call reads: every tensor once."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def to_dense(self) -> torch.Tensor:
        """The dense [N, K] weight back (pruned zeros as +0.0)."""
        n, k = self.shape
        per_lane = self.values.view(-1, self.block_n, self.group_entries)
        words = self.steps.view(per_lane.shape[0], self.words_per_group, self.block_n)
        steps = _unpack_steps(words.transpose(1, 2), self.step_bits)
        dense = torch.zeros(n, k, dtype=self.values.dtype, device=self.values.device)
        starts = self.starts.view(self.blocks, self.split, self.block_n)
        for block, (base, groups) in enumerate(
            zip(self.group_base.tolist(), self.groups.tolist(), strict=True)
        ):
            rows = self.row_ids[block * self.block_n : (block + 1) * self.block_n].long()
            per_split = -(-groups // self.split)
            for segment in range(self.split):
                first = base + min(segment * per_split, groups)
                last = base + min((segment + 1) * per_split, groups)
                # [block_n, entries] of this segment, in stream order
                seg_steps = steps[first:last].permute(1, 0, 2).reshape(self.block_n, -1)
                seg_values = per_lane[first:last].permute(1, 0, 2).reshape(self.block_n, -1)
                cols = starts[block, segment].long()[:, None] + seg_steps.cumsum(1)
                lanes = (rows < n)[:, None].expand_as(cols)
                dense.index_put_(
                    (rows[:, None].expand_as(cols)[lanes], cols[lanes]),
                    seg_values[lanes],
                    accumulate=True,  # escape and padding entries add zeros
                )
        return dense


def build_streams(
    weight: BitmapWeight | torch.Tensor, block_n: int, split: int, step_bits: int | None = None
) -> BitmapStreams:
    """Streams of a bitmap weight (or of a dense [N, K] tensor whose zeros are the mask),
    for kernels with `block_n` lanes (a power of two) and `split` segments per row; steps
    of `step_bits` (3 or 4; default by density, step_bits_for).

    Built a band at a time, so that the working tensors (~130 bytes per kept value, 8
    per entry) cover at most max(PACK_BAND, K) weight positions whatever the weight's
    size: the row lengths a band of whole weight rows at a time, then the entries a band
    of whole row blocks (or, where one block holds more than PACK_BAND positions, of
    lanes of one block), written into the layout's tensors. Beyond those, the layout and
    the dense weight (unpacked from a BitmapWeight), a few int64 per row are kept: about
    0.1 GB at 50% density (a whole 4096 x 4096 weight at once took 1.1 GB)."""
    if block_n < 1 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    if split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    dense = unpack(weight) if isinstance(weight, BitmapWeight) else weight
    if dense.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(dense.shape)}")
    n, k = dense.shape
    device = dense.device
    rows = band_rows(max(k, 1))  # weight rows of about PACK_BAND positions
    if step_bits is None:
        step_bits = step_bits_for(_kept_count(dense, rows) / max(n * k, 1))
    if step_bits not in GROUP_ENTRIES:
        raise ValueError(f"step_bits must be one of {sorted(GROUP_ENTRIES)}, got {step_bits}")
    lengths = _stream_lengths(dense, (1 << step_bits) - 1, rows)

    # Longest streams first, so that a block's rows need little padding.
    order = torch.sort(lengths, descending=True, stable=True).indices
    blocks = -(-n // block_n)
    block_longest = torch.zeros(blocks * block_n, dtype=torch.int64, device=device)
    block_longest[:n] = lengths[order]
    groups = -(-block_longest.view(blocks, block_n).amax(1) // GROUP_ENTRIES[step_bits])
    group_base = torch.cumsum(groups, 0) - groups
    total_groups = int(groups.sum())
    row_ids = torch.full((blocks * block_n,), n, dtype=torch.int32, device=device)
    row_ids[:n] = order.to(torch.int32)
    streams = BitmapStreams(
        values=torch.zeros(
            total_groups * block_n * GROUP_ENTRIES[step_bits], dtype=dense.dtype, device=device
        ),
        steps=torch.zeros(
            total_groups * GROUP_ENTRIES[step_bits] * step_bits // 32 * block_n,
            dtype=torch.int32,
            device=device,
        ),
        starts=torch.zeros(blocks * split * block_n, dtype=torch.int32, device=device),
        group_base=group_base.to(torch.int32),
        groups=groups.to(torch.int32),
        row_ids=row_ids,
        shape=(n, k),
        block_n=block_n,
        split=split,
        step_bits=step_bits,
    )
    for band in _bands(n, block_n, rows):
        weight_rows = order[band.first_lane : band.first_lane + band.blocks * band.lanes]
        _fill_band(streams, band, dense.index_select(0, weight_rows), lengths[weight_rows])
    return streams


@dataclass(frozen=True)
class _Band:
    """Row blocks first_block ... first_block + blocks - 1, lanes first_lane % block_n ...
    + lanes - 1 of each (all block_n lanes of each block where blocks > 1)."""

    first_block: int
    blocks: int
    first_lane: int  # counted over all lanes, block by block
    lanes: int


def _bands(n: int, block_n: int, band_rows: int) -> list[_Band]:
    """The bands of the layout of an [N, K] weight that hold a row, of at most band_rows
    lanes each: whole blocks where band_rows >= block_n, else lanes of one block."""
    blocks = -(-n // block_n)
    if band_rows >= block_n:
        per_band = band_rows // block_n
        return [
            _Band(first, min(per_band, blocks - first), first * block_n, block_n)
            for first in range(0, blocks, per_band)
        ]
    return [
        _Band(lane // block_n, 1, lane, min(band_rows, block_n - lane % block_n))
        for block in range(blocks)
        for lane in range(block * block_n, min((block + 1) * block_n, n), band_rows)
    ]


def _kept_values(rows: torch.Tensor, max_step: int) -> tuple[torch.Tensor, ...]:
    """Rows [R, K] of a weight -> per kept value, row-major (each row's in K order): its
    (row in rows, column, column of the row's previous kept value or 0 for its first,
    escape entries before it for steps of at most max_step), each [V] int64."""
    rows_of, cols = (rows != 0).nonzero(as_tuple=True)
    previous = torch.zeros_like(cols)
    same_row = rows_of[1:] == rows_of[:-1]
    previous[1:] = torch.where(same_row, cols[:-1], torch.zeros_like(cols[1:]))
    escapes = (cols - previous - 1).clamp(min=0) // max_step
    return rows_of, cols, previous, escapes


def _kept_count(dense: torch.Tensor, band_rows: int) -> int:
    """Kept (nonzero) positions of dense [N, K], counted band_rows rows at a time."""
    return sum(
        int(torch.count_nonzero(dense[row : row + band_rows]))
        for row in range(0, dense.shape[0], band_rows)
    )


def _stream_lengths(dense: torch.Tensor, max_step: int, band_rows: int) -> torch.Tensor:
    """Entries [N] int64 of each row's stream (kept values and their escapes, no padding)
    of dense [N, K], band_rows rows at a time."""
    lengths = torch.zeros(dense.shape[0], dtype=torch.int64, device=dense.device)
    for row in range(0, dense.shape[0], band_rows):
        rows_of, _, _, escapes = _kept_values(dense[row : row + band_rows], max_step)
        lengths[row : row + band_rows].index_add_(0, rows_of, 1 + escapes)
    return lengths


def _fill_band(
    streams: BitmapStreams, band: _Band, rows: torch.Tensor, lengths: torch.Tensor
) -> None:
    """Write the entries and segment starts of one band into `streams` (zero-filled):
    rows [R, K] are the weight rows of the band's lanes, in lane order (R <= blocks *
    lanes: lanes past the weight's last row hold none), lengths [R] their streams'."""
    block_n, split, entries = streams.block_n, streams.split, streams.group_entries
    max_step = (1 << streams.step_bits) - 1
    group_base, groups = streams.group_base.long(), streams.groups.long()
    last_block = band.first_block + band.blocks - 1
    first_group = int(group_base[band.first_block])
    band_groups = int(group_base[last_block] + groups[last_block]) - first_group
    lane = band.first_lane % block_n
    lanes = slice(lane, lane + band.lanes)

    rows_of, cols, previous, escapes = _kept_values(rows, max_step)
    gap = cols - previous
    row_first = torch.cumsum(lengths, 0) - lengths
    entry = torch.cumsum(1 + escapes, 0) - 1 - row_first[rows_of]  # the value's own entry

    def place(row: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(group in band, lane in band, entry in group) of entry `index` of band row `row`
        (both [E] int64, one per entry placed)."""
        group = group_base[band.first_block + row // band.lanes] - first_group
        return group + index // entries, row % band.lanes, index % entries

    values = streams.values.view(-1, block_n, entries)[
        first_group : first_group + band_groups, lanes
    ]
    values[place(rows_of, entry)] = rows[rows_of, cols]
    fields = torch.zeros(band_groups, band.lanes, entries, dtype=torch.int64, device=rows.device)
    fields[place(rows_of, entry)] = gap - max_step * escapes

    # Escape entries: value 0, the largest step, just before the value that needed them.
    owner = torch.repeat_interleave(torch.arange(rows_of.numel(), device=rows.device), escapes)
    nth = torch.arange(owner.numel(), device=rows.device)
    nth -= (torch.cumsum(escapes, 0) - escapes)[owner]
    escape_entry = entry[owner] - escapes[owner] + nth
    fields[place(rows_of[owner], escape_entry)] = max_step
    words = _pack_steps(fields, streams.step_bits)  # [band_groups, lanes, W]
    steps = streams.steps.view(-1, streams.words_per_group, block_n)
    steps[first_group : first_group + band_groups, :, lanes] = words.transpose(1, 2)

    # A segment starts from the column of the entry before it, or from the row's last
    # column when the row's stream ends earlier (then it holds padding only).
    starts = torch.zeros(band.blocks * band.lanes, split, dtype=torch.int64, device=rows.device)
    last = entry == lengths[rows_of] - 1
    row_last_col = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    row_last_col[rows_of[last]] = cols[last]
    starts[: rows.shape[0], 1:] = row_last_col[:, None]
    entry_cols = torch.cat([cols, previous[owner] + max_step * (nth + 1)])
    entry_rows = torch.cat([rows_of, rows_of[owner]])
    entry_index = torch.cat([entry, escape_entry])
    per_split = -(-groups // split)  # groups per segment, per block
    length = per_split[band.first_block + entry_rows // band.lanes] * entries
    segment = (entry_index + 1) // length
    ends_segment = ((entry_index + 1) % length == 0) & (segment < split)
    starts[entry_rows[ends_segment], segment[ends_segment]] = entry_cols[ends_segment]
    band_starts = streams.starts.view(-1, split, block_n)[band.first_block : last_block + 1]
    band_starts[:, :, lanes] = starts.view(band.blocks, band.lanes, split).transpose(1, 2)
