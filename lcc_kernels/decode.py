"""Rebuild one dense weight tile [BLOCK_N, BLOCK_K] on chip, for each weight format.

The kernels in `kernels.py` are written once and call `load_weight_tile` with the format
as a constexpr, so the dense, 2:4 and bitmap kernels share the exact same tiling and
loop structure: the dense Triton kernel is the baseline that separates the cost of
decompression from the Triton-vs-cuBLAS gap. Layouts are described in `formats.py`.

Tile (pid_n, t) covers weight rows pid_n*BLOCK_N ... and columns t*BLOCK_K ...; for the
bitmap format BLOCK_N x BLOCK_K is the format's tile, so (pid_n, t) is one stored tile.
`sparse24_products` is the 2:4 alternative for the skinny path without tl.dot: x times
the kept values, without the dense tile.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

FORMAT_DENSE = tl.constexpr(0)
FORMAT_SPARSE24 = tl.constexpr(1)
FORMAT_BITMAP = tl.constexpr(2)


@triton.jit
def _probe():
    pass


def _is_interpreted(kernel) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - interpreter always ships with triton >= 3.0
        return False
    return isinstance(kernel, InterpretedFunction)


# Whether the kernels are decorated under TRITON_INTERPRET=1 (read when @triton.jit runs,
# i.e. when this module is first imported).
INTERPRETED = _is_interpreted(_probe)
_HARDWARE_POPCOUNT = tl.constexpr(not INTERPRETED)


@triton.jit
def load_x_tile(x_ptr, rows, M, stride_xm, t, K, BLOCK_K: tl.constexpr):
    """Activation tile [len(rows), BLOCK_K] of x [M, K] (row stride stride_xm), zero-padded."""
    cols = t * BLOCK_K + tl.arange(0, BLOCK_K)
    ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :]
    return tl.load(ptrs, mask=(rows < M)[:, None] & (cols < K)[None, :], other=0.0)


@triton.jit
def _dense_tile(w_ptr, pid_n, t, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = t * BLOCK_K + tl.arange(0, BLOCK_K)
    ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_w + cols[None, :]
    return tl.load(ptrs, mask=(rows < N)[:, None] & (cols < K)[None, :], other=0.0)


@triton.jit
def _sparse24_pairs(
    values_ptr,
    meta_ptr,
    pid_n,
    t,
    N,
    value_cols,
    stride_values,
    stride_meta,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The two kept values of each group of 4 columns and their in-group indices (0..3):
    (first_value, second_value, first_index, second_index), each [BLOCK_N, BLOCK_K/4]."""
    # values [N, value_cols] hold two kept values per group of 4 columns; meta
    # [N, value_cols / 16] int32 holds their 2-bit in-group indices, 16 per word.
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = (rows < N)[:, None]
    row_offset = rows.to(tl.int64)[:, None]
    slots = t * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    values = tl.load(
        values_ptr + row_offset * stride_values + slots[None, :],
        mask=row_ok & (slots < value_cols)[None, :],
        other=0.0,
    )
    words = t * (BLOCK_K // 32) + tl.arange(0, BLOCK_K // 32)
    meta = tl.load(
        meta_ptr + row_offset * stride_meta + words[None, :],
        # exact because rows are padded to whole words: value_cols = Kp / 2, Kp a
        # multiple of format_24.K_ALIGN_24 (>= 32 positions, one word)
        mask=row_ok & (words < value_cols // 16)[None, :],
        other=0,
    )
    # A word holds the indices of 8 groups, 4 bits per group (first index in the low 2):
    # one shift per group, [BLOCK_N, BLOCK_K/32, 8] -> [BLOCK_N, BLOCK_K/4].
    shifts = 4 * tl.arange(0, 8)
    nibbles = tl.reshape((meta[:, :, None] >> shifts[None, None, :]) & 15, [BLOCK_N, BLOCK_K // 4])
    first_value, second_value = tl.split(tl.reshape(values, [BLOCK_N, BLOCK_K // 4, 2]))
    return first_value, second_value, nibbles & 3, nibbles >> 2


@triton.jit
def _shifted_lanes(first_value, second_value, first_index, second_index):
    """The 4 lanes of each group [BN, G] of 16-bit values, by shifts: both values' bits
    placed at 16 x their index in one 64-bit word, then read back 16 bits at a time. With
    no comparisons, ~28% fewer SASS instructions per tile than the where-chain below
    (triton 3.6 and 3.9, compile_report.py), where LLVM packs the compares' i1 vectors into
    integers and unpacks them again."""
    value_type = first_value.dtype
    first = first_value.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF
    second = second_value.to(tl.int16, bitcast=True).to(tl.int64) & 0xFFFF
    word = (first << (first_index.to(tl.int64) * 16)) | (second << (second_index.to(tl.int64) * 16))
    v0 = (word & 0xFFFF).to(tl.int16).to(value_type, bitcast=True)
    v1 = ((word >> 16) & 0xFFFF).to(tl.int16).to(value_type, bitcast=True)
    v2 = ((word >> 32) & 0xFFFF).to(tl.int16).to(value_type, bitcast=True)
    v3 = ((word >> 48) & 0xFFFF).to(tl.int16).to(value_type, bitcast=True)
    return v0, v1, v2, v3


@triton.jit
def _selected_lanes(first_value, second_value, first_index, second_index):
    """The 4 lanes of each group [BN, G], by comparisons (any value width). The format
    keeps two distinct ascending indices per group (validate_data), so lane 0 can only
    hold the first value and lane 3 only the second."""
    zero = tl.zeros_like(first_value)
    v0 = tl.where(first_index == 0, first_value, zero)
    v1 = tl.where(first_index == 1, first_value, tl.where(second_index == 1, second_value, zero))
    v2 = tl.where(first_index == 2, first_value, tl.where(second_index == 2, second_value, zero))
    v3 = tl.where(second_index == 3, second_value, zero)
    return v0, v1, v2, v3


@triton.jit
def _sparse24_tile(
    values_ptr,
    meta_ptr,
    pid_n,
    t,
    N,
    value_cols,
    stride_values,
    stride_meta,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    first_value, second_value, first_index, second_index = _sparse24_pairs(
        values_ptr, meta_ptr, pid_n, t, N, value_cols, stride_values, stride_meta, BLOCK_N, BLOCK_K
    )
    if first_value.dtype.primitive_bitwidth == 16:
        v0, v1, v2, v3 = _shifted_lanes(first_value, second_value, first_index, second_index)
    else:
        v0, v1, v2, v3 = _selected_lanes(first_value, second_value, first_index, second_index)
    # Lanes are built one by one and joined: triton 3.6 compiled a [BN, G, 4] where-chain
    # into ~40% more SASS.
    groups = tl.join(tl.join(v0, v1), tl.join(v2, v3))  # [BN, G, 2, 2]: lane = 2 * a + b
    return tl.reshape(tl.permute(groups, 0, 1, 3, 2), [BLOCK_N, BLOCK_K])


@triton.jit
def _pick(x0, x1, x2, x3, index):
    """x0..x3 [BM, G] picked per index [BN, G] in 0..3 -> [BM, BN, G]."""
    index = index[None, :, :]
    low = tl.where((index & 1) != 0, x1[:, None, :], x0[:, None, :])
    high = tl.where((index & 1) != 0, x3[:, None, :], x2[:, None, :])
    return tl.where((index & 2) != 0, high, low)


@triton.jit
def sparse24_products(
    x,
    values_ptr,
    meta_ptr,
    pid_n,
    t,
    N,
    value_cols,
    stride_values,
    stride_meta,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """x [BM, BLOCK_K] times the kept values of 2:4 tile (pid_n, t), without rebuilding
    the tile: [BM, BLOCK_N, BLOCK_K/4] fp32, each entry the two products of one group
    (summed over the last axis, it is x @ tile^T). The x element of each kept value is
    picked by its index, so the work follows the kept values, not the positions."""
    first_value, second_value, first_index, second_index = _sparse24_pairs(
        values_ptr, meta_ptr, pid_n, t, N, value_cols, stride_values, stride_meta, BLOCK_N, BLOCK_K
    )
    x = x.to(tl.float32)
    even, odd = tl.split(tl.reshape(x, [x.shape[0], BLOCK_K // 4, 2, 2]))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    first = _pick(x0, x1, x2, x3, first_index) * first_value.to(tl.float32)[None, :, :]
    return first + _pick(x0, x1, x2, x3, second_index) * second_value.to(tl.float32)[None, :, :]


@triton.jit
def _popcount(v):
    """Set bits of each uint32 -> int32. Compiled: libdevice's popc, one POPC. Interpreted
    (no libdevice there): the classic SWAR sum. LLVM turns that sum into one POPC with
    triton 3.9 but not 3.6 (the GPU machines' version), where it cost ~12 instructions per
    position and made the 50% bitmap decode loop 741 instructions instead of 439."""
    if _HARDWARE_POPCOUNT:
        return libdevice.popc(v.to(tl.int32, bitcast=True))
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _bitmap_tile(
    values_ptr,
    bits_ptr,
    offsets_ptr,
    pid_n,
    t,
    n_k_tiles,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Stored tile `tile` has a bitmap of BLOCK_N rows x BLOCK_K/32 words and its nonzeros,
    # row-major, at values[offsets[tile]:]. A nonzero's place in that run is the number of
    # set bits before it: the words before its row (one scan over the rows per tile), the
    # words before its word in the row, and the bits below it in its word (one popcount
    # per position, no scan across threads).
    tile = pid_n.to(tl.int64) * n_k_tiles + t
    words_per_row: tl.constexpr = BLOCK_K // 32
    word_ids = tl.arange(0, BLOCK_N)[:, None] * words_per_row + tl.arange(0, words_per_row)[None, :]
    words = tl.load(bits_ptr + tile * (BLOCK_N * words_per_row) + word_ids)
    words = words.to(tl.uint32, bitcast=True)
    counts = _popcount(words)
    row_counts = tl.sum(counts, axis=1)
    word_start = (tl.cumsum(row_counts, axis=0) - row_counts)[:, None] + (
        tl.cumsum(counts, axis=1) - counts
    )
    bit = tl.arange(0, 32).to(tl.uint32)[None, None, :]
    rank = word_start[:, :, None] + _popcount(words[:, :, None] & ((1 << bit) - 1))
    present = ((words[:, :, None] >> bit) & 1) != 0
    tile_values = values_ptr + tl.load(offsets_ptr + tile).to(tl.int64)
    values = tl.load(tile_values + rank, mask=present, other=0.0)
    return tl.reshape(values, [BLOCK_N, BLOCK_K])


@triton.jit
def load_weight_tile(
    w_ptr,
    meta_ptr,
    offsets_ptr,
    pid_n,
    t,
    N,
    K,
    w_cols,
    stride_w,
    stride_meta,
    n_k_tiles,
    FORMAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Dense weight tile [BLOCK_N, BLOCK_K] in the weight's dtype; zeros outside [N, K].

    dense:  w_ptr = weight [N, K] (row stride stride_w)
    2:4:    w_ptr = values [N, w_cols], meta_ptr = meta [N, w_cols/16] (strides as named)
    bitmap: w_ptr = values, meta_ptr = bits, offsets_ptr = offsets (tile-major, contiguous)
    """
    if FORMAT == FORMAT_DENSE:
        tile = _dense_tile(w_ptr, pid_n, t, N, K, stride_w, BLOCK_N, BLOCK_K)
    elif FORMAT == FORMAT_SPARSE24:
        tile = _sparse24_tile(
            w_ptr, meta_ptr, pid_n, t, N, w_cols, stride_w, stride_meta, BLOCK_N, BLOCK_K
        )
    else:
        tile = _bitmap_tile(w_ptr, meta_ptr, offsets_ptr, pid_n, t, n_k_tiles, BLOCK_N, BLOCK_K)
    # tl.dot needs both operands in one dtype; keep the tile in the stored one.
    return tile.to(w_ptr.dtype.element_ty)
