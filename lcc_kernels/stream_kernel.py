"""`stream_linear_kernel`: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for a bitmap weight W
laid out as value streams (streams.py), for 1-4 rows of x (decode).

One weight row per lane: the lane walks its stream of kept values a group per iteration
(8 entries with 4-bit steps: a 16-byte load of values and a word of steps; 32 with 3-bit
steps: four such loads and three words), the group's loads issued NUM_STAGES - 1
iterations ahead, and gathers the x element of each entry. The work follows the kept
values, not the positions: ~11-13 SASS instructions per kept value at M = 1
(compile_report.py), against ~14 per position for the bitmap tiles.
Split-K, partials and their reduction are the skinny kernel's (kernels.finish_output); the
rows are permuted, so each lane writes the output column of its weight row.
"""

import triton
import triton.language as tl

from .kernels import finish_output


@triton.jit
def _eighths(v):
    """[BN, 8] -> its 8 columns, each [BN]: splits within a thread's registers."""
    even, odd = tl.split(tl.reshape(v, [v.shape[0], 4, 2]))  # columns 0 2 4 6 / 1 3 5 7
    e04, e26 = tl.split(tl.reshape(even, [v.shape[0], 2, 2]))
    o15, o37 = tl.split(tl.reshape(odd, [v.shape[0], 2, 2]))
    v0, v4 = tl.split(e04)
    v2, v6 = tl.split(e26)
    v1, v5 = tl.split(o15)
    v3, v7 = tl.split(o37)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _x_row(x_ptr, stride_xm, row, M, col):
    """x[row, col] [BN] in fp32 (0 past M)."""
    in_x = (tl.zeros_like(col) + row) < M  # the interpreter takes no scalar (or splat) mask
    return tl.load(x_ptr + row.to(tl.int64) * stride_xm + col, mask=in_x, other=0.0).to(tl.float32)


@triton.jit
def _x_rows(x_ptr, stride_xm, first_row, M, col, BLOCK_M: tl.constexpr):
    """x[first_row + i, col] as [BN, BLOCK_M] fp32, BLOCK_M in 1, 2, 4. Joined rather than
    loaded as one [BLOCK_M, BN] gather: triton 3.6 lays that out over threads along
    BLOCK_M and moved every entry's column through shared memory (230 instead of 126
    instructions per group at M = 2, compile_report.py)."""
    x0 = _x_row(x_ptr, stride_xm, first_row, M, col)
    if BLOCK_M == 1:
        rows = x0[:, None]
    else:
        pair = tl.join(x0, _x_row(x_ptr, stride_xm, first_row + 1, M, col))
        if BLOCK_M == 2:
            rows = pair
        else:
            x2 = _x_row(x_ptr, stride_xm, first_row + 2, M, col)
            other = tl.join(x2, _x_row(x_ptr, stride_xm, first_row + 3, M, col))
            # [BN, 2 (row % 2), 2 (row // 2)] -> [BN, 4]
            rows = tl.reshape(tl.permute(tl.join(pair, other), 0, 2, 1), [col.shape[0], 4])
    return rows


@triton.jit
def _stream_entry(
    col,
    steps,
    value,
    x_ptr,
    stride_xm,
    first_row,
    M,
    BLOCK_M: tl.constexpr,
    BITS: tl.constexpr,
    J: tl.constexpr,
):
    """value [BN] * x [first_row + i, column] as [BN, BM] fp32, and the column, moved by
    entry J's step: bits BITS * J ... of `steps` [BN] (bits above the step may be anything)."""
    col = col + ((steps >> (BITS * J)) & ((1 << BITS) - 1))
    x = _x_rows(x_ptr, stride_xm, first_row, M, col, BLOCK_M)
    return x * value.to(tl.float32)[:, None], col


@triton.jit
def _stream_eight(
    acc,
    col,
    values,
    steps,
    x_ptr,
    stride_xm,
    first_row,
    M,
    BLOCK_M: tl.constexpr,
    BITS: tl.constexpr,
):
    """acc [BN, BM] += eight consecutive entries: values [BN, 8], their steps in the low
    8 * BITS bits of steps [BN].

    For fp32 x the eight are summed on their own first, so that the lane's running sum
    takes one rounding per group rather than one per kept value, as a blocked matmul does
    (the per-value chain reached ~3.7x PyTorch's fp32 error). That costs an add per eight
    and up to 32 registers per thread at M = 4 (occupancy unchanged, shared memory bounds
    it: compile_report.py --dtype float32); fp16/bf16 outputs round far more coarsely than
    the chain does, so their kernels keep the plain chain."""
    GROUP_SUMS: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    v0, v1, v2, v3, v4, v5, v6, v7 = _eighths(values)
    term, col = _stream_entry(col, steps, v0, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 0)
    total = term if GROUP_SUMS else acc + term
    term, col = _stream_entry(col, steps, v1, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 1)
    total += term
    term, col = _stream_entry(col, steps, v2, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 2)
    total += term
    term, col = _stream_entry(col, steps, v3, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 3)
    total += term
    term, col = _stream_entry(col, steps, v4, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 4)
    total += term
    term, col = _stream_entry(col, steps, v5, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 5)
    total += term
    term, col = _stream_entry(col, steps, v6, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 6)
    total += term
    term, col = _stream_entry(col, steps, v7, x_ptr, stride_xm, first_row, M, BLOCK_M, BITS, 7)
    total += term
    return (acc + total if GROUP_SUMS else total), col


@triton.jit
def _quarter_steps(w0, w1, w2, QUARTER: tl.constexpr):
    """The 24 bits of 3-bit steps of entries 8 * QUARTER ... of a 32-entry group, from its
    three words w0..w2 [BN] int32, in the low bits (bits above may be anything). >> is
    arithmetic on int32: the high parts are masked before joining."""
    if QUARTER == 0:
        steps = w0
    elif QUARTER == 1:
        steps = ((w0 >> 24) & 0xFF) | (w1 << 8)
    elif QUARTER == 2:
        steps = ((w1 >> 16) & 0xFFFF) | (w2 << 16)
    else:
        steps = w2 >> 8
    return steps


@triton.jit
def _load_eight(values_ptr, slot, GROUP: tl.constexpr, FIRST: tl.constexpr):
    """Values FIRST ... FIRST + 7 of the lanes' groups [BN, 8] (GROUP entries per group)."""
    return tl.load(values_ptr + slot[:, None] * GROUP + FIRST + tl.arange(0, 8)[None, :])


@triton.jit
def stream_linear_kernel(
    x_ptr,
    out_ptr,
    bias_ptr,
    partial_ptr,
    counter_ptr,
    values_ptr,
    steps_ptr,
    starts_ptr,
    group_base_ptr,
    groups_ptr,
    row_ids_ptr,
    M,
    N,
    stride_xm,
    stride_om,
    split_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    STEP_BITS: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL_REDUCTION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Split-K y tile from value streams (streams.py): lane i of row block pid_n walks
    segment pid_k of weight row row_ids[i]'s stream. x [M, K], out [M, N], bias [N],
    partials [split_k, M, N] fp32, counters [M tiles * row blocks] int32; values
    [groups, BLOCK_N, E], steps [groups, W, BLOCK_N] int32 (E, W = 8, 1 for 4-bit steps,
    32, 3 for 3-bit ones), starts [blocks, split_k, BLOCK_N] int32, group_base and groups
    [blocks] int32, row_ids [blocks * BLOCK_N]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    lanes = tl.arange(0, BLOCK_N)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.load(row_ids_ptr + pid_n * BLOCK_N + lanes)
    block_groups = tl.load(groups_ptr + pid_n)
    per_split = tl.cdiv(block_groups, split_k)
    first = tl.minimum(pid_k * per_split, block_groups)
    last = tl.minimum(first + per_split, block_groups)
    base = tl.load(group_base_ptr + pid_n).to(tl.int64)
    col = tl.load(starts_ptr + (pid_n * split_k + pid_k) * BLOCK_N + lanes)
    first_row = pid_m * BLOCK_M
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for g in tl.range(first, last, num_stages=NUM_STAGES):
        slot = (base + g) * BLOCK_N + lanes
        if STEP_BITS == 4:
            steps = tl.load(steps_ptr + slot)
            values = _load_eight(values_ptr, slot, 8, 0)
            acc, col = _stream_eight(
                acc, col, values, steps, x_ptr, stride_xm, first_row, M, BLOCK_M, 4
            )
        else:
            words = steps_ptr + (base + g) * (3 * BLOCK_N) + lanes
            w0 = tl.load(words)
            w1 = tl.load(words + BLOCK_N)
            w2 = tl.load(words + 2 * BLOCK_N)
            for quarter in tl.static_range(4):
                values = _load_eight(values_ptr, slot, 32, 8 * quarter)
                steps = _quarter_steps(w0, w1, w2, quarter)
                acc, col = _stream_eight(
                    acc, col, values, steps, x_ptr, stride_xm, first_row, M, BLOCK_M, 3
                )
    acc = tl.trans(acc)
    finish_output(
        acc,
        out_ptr,
        bias_ptr,
        partial_ptr,
        counter_ptr,
        pid_k,
        pid_m,
        pid_n,
        rows,
        cols,
        M,
        N,
        stride_om,
        split_k,
        BLOCK_M,
        BLOCK_N,
        SPLIT,
        SERIAL_REDUCTION,
        HAS_BIAS,
    )
