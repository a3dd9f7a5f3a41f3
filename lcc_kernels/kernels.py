"""Triton kernels for y[M, N] = x[M, K] @ W[N, K]^T (+ bias), W in any format of decode.py
(or, for bitmap weights, as the value streams of streams.py).

Three paths, all accumulating in fp32 and writing y in x's dtype:

- `skinny_linear_kernel` (decode, few rows): grid (N tiles, K splits, M tiles). Each
  program reduces its share of the K tiles; with one split it finishes the output itself.
  With several, each split writes an fp32 partial tile to a workspace [splits, M, N] and
  the partials are summed in split order 0, 1, ... (deterministic, bit-identical across
  runs), the bias added once in fp32 by the summing program:
    SERIAL_REDUCTION: in the same launch; every split takes a ticket from a per-tile
      counter (atomic add, acq_rel, GPU scope) after a block barrier, and the program
      that draws the last ticket sums the partials and resets the counter to 0.
    otherwise: `reduce_partials_kernel` runs as a second launch.
  Few rows (BLOCK_M < 16) multiply elementwise into a [BM, BN, BK] fp32 accumulator
  reduced once after the K loop (tl.dot needs every block dim >= 16); 2:4 weights there
  multiply their kept values by the x elements their indices pick, never rebuilding the
  tile, and the plan's num_stages > 1 has the loop's loads pipelined (cp.async).
  benchmarks/compile_report.py reads the resulting loops' machine code.
- `tiled_linear_kernel` (prefill, many rows): one program per output tile, grouped along
  M so that neighbouring programs share weight tiles in L2, dense tiles rebuilt on chip
  and multiplied with tl.dot.
- `stream_linear_kernel` (bitmap weights, 1-4 rows of x), in stream_kernel.py.

The interpreter (TRITON_INTERPRET=1) multiplies bf16 dot operands wrongly, so launchers
set DOT_IN_FP32 there: the same code then runs a true test in fp16/fp32. It also converts
fp32 to bf16 by truncation (toward zero, where a GPU rounds to nearest), so every
interpreted bf16 output, with or without tl.dot, may be one ulp off a GPU's.
"""

import triton
import triton.language as tl

from .decode import (  # noqa: F401  (INTERPRETED: re-exported for tests/hf)
    FORMAT_SPARSE24,
    INTERPRETED,
    load_weight_tile,
    load_x_tile,
    sparse24_products,
)


@triton.jit
def _accumulate(
    acc, x, w, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr
):
    """With tl.dot: acc [BM, BN] += x [BM, BK] @ w [BN, BK]^T in fp32. Without: acc
    [BM, BN, BK] += x[:, None, :] * w[None, :, :], reduced over K once, after the K loop
    (a reduction per tile would cost a shuffle tree per tile)."""
    if USE_DOT:
        if DOT_IN_FP32:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    else:
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    return acc


@triton.jit
def _accumulate_tile(
    acc,
    x,
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
    USE_DOT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """acc plus x [BM, BLOCK_K] times weight tile (pid_n, t), the weight as in
    decode.load_weight_tile; acc as in `_accumulate`, or [BM, BN, BLOCK_K/4] for 2:4
    without tl.dot (sparse24_products: the kept values only, no dense tile)."""
    if not USE_DOT and FORMAT == FORMAT_SPARSE24:
        acc += sparse24_products(
            x, w_ptr, meta_ptr, pid_n, t, N, w_cols, stride_w, stride_meta, BLOCK_N, BLOCK_K
        )
    else:
        w = load_weight_tile(
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
            FORMAT,
            BLOCK_N,
            BLOCK_K,
        )
        acc = _accumulate(acc, x, w, USE_DOT, DOT_IN_FP32, DOT_PRECISION)
    return acc


@triton.jit
def _store_output(acc, out_ptr, bias_ptr, rows, cols, M, N, stride_om, HAS_BIAS: tl.constexpr):
    """out[rows, cols] = acc [BM, BN] fp32 (+ bias[cols], in fp32), rounded once to out's
    dtype; out [M, N] with row stride stride_om, bias [N]; rows [BM], cols [BN] masked."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _partial_ptrs(partial_ptr, split, rows, cols, M, N):
    """Pointers [BM, BN] to partials[split, rows, cols] of the fp32 workspace [splits, M,
    N], contiguous. Offsets in int64, split's included: the workspace bound
    (dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES, 2**28 floats) is a setting a user may
    raise, and the dispatcher's cap of 32 splits binds only its own plans."""
    row = rows.to(tl.int64) + tl.cast(split, tl.int64) * M
    return partial_ptr + row[:, None] * N + cols[None, :]


@triton.jit
def _sum_partials(
    partial_ptr, split_k, rows, cols, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """The tile [BLOCK_M, BLOCK_N] of rows x cols summed over the split_k partials of the
    workspace [split_k, M, N] fp32, in split order (0 outside [M, N])."""
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for split in range(0, split_k):
        # .cg: read from L2, never from a possibly stale L1 line of another program's tile.
        total += tl.load(
            _partial_ptrs(partial_ptr, split, rows, cols, M, N),
            mask=mask,
            other=0.0,
            cache_modifier=".cg",
        )
    return total


@triton.jit
def finish_output(
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
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL_REDUCTION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """Write split pid_k's acc [BLOCK_M, BLOCK_N] of the y tile (rows, cols): the output
    itself without SPLIT, else a partial, summed by the last split to arrive
    (SERIAL_REDUCTION) or by reduce_partials_kernel. Shared with the streams kernel
    (stream_kernel.py), hence its public name."""
    if not SPLIT:
        _store_output(acc, out_ptr, bias_ptr, rows, cols, M, N, stride_om, HAS_BIAS)
    else:
        mask = (rows < M)[:, None] & (cols < N)[None, :]
        tl.store(_partial_ptrs(partial_ptr, pid_k, rows, cols, M, N), acc, mask=mask)
        if SERIAL_REDUCTION:
            # All threads' partial stores are ordered before the ticket by the barrier, and
            # published at GPU scope by the release half of the atomic.
            tl.debug_barrier()
            counter = counter_ptr + pid_m * tl.num_programs(0) + pid_n
            ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if ticket == split_k - 1:
                total = _sum_partials(partial_ptr, split_k, rows, cols, M, N, BLOCK_M, BLOCK_N)
                _store_output(total, out_ptr, bias_ptr, rows, cols, M, N, stride_om, HAS_BIAS)
                tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")


@triton.jit
def skinny_linear_kernel(
    x_ptr,
    out_ptr,
    bias_ptr,
    partial_ptr,
    counter_ptr,
    w_ptr,
    meta_ptr,
    offsets_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_om,
    w_cols,
    stride_w,
    stride_meta,
    n_k_tiles,
    tiles_per_split,
    split_k,
    FORMAT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL_REDUCTION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Split-K y tile: x [M, K], out [M, N], bias [N], partials [split_k, M, N] fp32,
    counters [M tiles * N tiles] int32 (zero between launches)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    first_tile = pid_k * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, n_k_tiles)
    # Without tl.dot the products are summed elementwise over the K loop and reduced once
    # after it; 2:4 weights then multiply their kept values only, [BM, BN, BLOCK_K/4].
    PRODUCTS_24: tl.constexpr = not USE_DOT and FORMAT == FORMAT_SPARSE24
    if USE_DOT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    elif PRODUCTS_24:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K // 4], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    # Without tl.dot, NUM_STAGES > 1 pipelines the loop's loads (cp.async: the weight's
    # contiguous loads run stages ahead). With tl.dot the compiler's own choice, set by the
    # launch's num_stages, is kept: it stages what feeds the dot (explicit stages would also
    # stage a bitmap's words: 492 -> 522 SASS instructions at M = 16, compile_report.py).
    LOOP_STAGES: tl.constexpr = None if USE_DOT else NUM_STAGES
    for t in tl.range(first_tile, last_tile, num_stages=LOOP_STAGES):
        x = load_x_tile(x_ptr, rows, M, stride_xm, t, K, BLOCK_K)
        acc = _accumulate_tile(
            acc,
            x,
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
            FORMAT,
            BLOCK_N,
            BLOCK_K,
            USE_DOT,
            DOT_IN_FP32,
            DOT_PRECISION,
        )
    if not USE_DOT:
        acc = tl.sum(acc, axis=2)

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


@triton.jit
def reduce_partials_kernel(
    partial_ptr,
    out_ptr,
    bias_ptr,
    M,
    N,
    stride_om,
    split_k,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out [M, N] = sum over splits of partials [split_k, M, N] (+ bias), in split order."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    total = _sum_partials(partial_ptr, split_k, rows, cols, M, N, BLOCK_M, BLOCK_N)
    _store_output(total, out_ptr, bias_ptr, rows, cols, M, N, stride_om, HAS_BIAS)


@triton.jit
def tiled_linear_kernel(
    x_ptr,
    out_ptr,
    bias_ptr,
    w_ptr,
    meta_ptr,
    offsets_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_om,
    w_cols,
    stride_w,
    stride_meta,
    n_k_tiles,
    FORMAT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One y tile [BLOCK_M, BLOCK_N] per program over all of K; 1-D grid."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_m = (pid // programs_per_group) * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % programs_per_group) % group_size
    pid_n = (pid % programs_per_group) // group_size
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(0, n_k_tiles):
        x = load_x_tile(x_ptr, rows, M, stride_xm, t, K, BLOCK_K)
        acc = _accumulate_tile(
            acc,
            x,
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
            FORMAT,
            BLOCK_N,
            BLOCK_K,
            True,
            DOT_IN_FP32,
            DOT_PRECISION,
        )
    _store_output(acc, out_ptr, bias_ptr, rows, cols, M, N, stride_om, HAS_BIAS)
