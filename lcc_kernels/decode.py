"""Rebuild one dense weight tile [BLOCK_N, BLOCK_K] on chip, for each weight format.

The kernels in `kernels.py` are written once and call `load_weight_tile` with the format
as a constexpr, so the dense, 2:4 and bitmap kernels share the exact same tiling and
loop structure: the dense Triton kernel is the baseline that separates the cost of
decompression from the Triton-vs-cuBLAS gap. Layouts are described in `formats.py`.

Tile (pid_n, t) covers weight rows pid_n*BLOCK_N ... and columns t*BLOCK_K ...; for the
bitmap format BLOCK_N x BLOCK_K is the format's tile, so (pid_n, t) is one stored tile.
"""

import triton
import triton.language as tl

FORMAT_DENSE = tl.constexpr(0)
FORMAT_SPARSE24 = tl.constexpr(1)
FORMAT_BITMAP = tl.constexpr(2)


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
        mask=row_ok & (words < value_cols // 16)[None, :],
        other=0,
    )
    # Expand each word into its 16 indices: [BLOCK_N, BLOCK_K/32, 16] -> [BLOCK_N, BLOCK_K/2].
    shifts = 2 * tl.arange(0, 16)
    indices = tl.reshape((meta[:, :, None] >> shifts[None, None, :]) & 3, [BLOCK_N, BLOCK_K // 2])
    first_value, second_value = tl.split(tl.reshape(values, [BLOCK_N, BLOCK_K // 4, 2]))
    first_index, second_index = tl.split(tl.reshape(indices, [BLOCK_N, BLOCK_K // 4, 2]))
    lane = tl.arange(0, 4)[None, None, :]
    groups = tl.where(
        first_index[:, :, None] == lane,
        first_value[:, :, None],
        tl.where(second_index[:, :, None] == lane, second_value[:, :, None], 0.0),
    )
    return tl.reshape(groups, [BLOCK_N, BLOCK_K])


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
    # set bits before it in row-major order (a prefix count; the interpreter has no popc).
    tile = pid_n.to(tl.int64) * n_k_tiles + t
    words_per_row: tl.constexpr = BLOCK_K // 32
    word_ids = tl.arange(0, BLOCK_N)[:, None] * words_per_row + tl.arange(0, words_per_row)[None, :]
    words = tl.load(bits_ptr + tile * (BLOCK_N * words_per_row) + word_ids)
    bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
    bits = tl.reshape(bits, [BLOCK_N, BLOCK_K])
    row_counts = tl.sum(bits, axis=1)
    rank = (tl.cumsum(row_counts, axis=0) - row_counts)[:, None] + tl.cumsum(bits, axis=1) - bits
    start = tl.load(offsets_ptr + tile).to(tl.int64)
    return tl.load(values_ptr + start + rank, mask=bits != 0, other=0.0)


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
