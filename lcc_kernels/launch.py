"""Host launchers for the Triton kernels: operand description, grids, split-K workspace.

`run_linear(x [M, K], operand, bias [N] | None, plan) -> y [M, N]` is what the custom ops
call. Inputs are assumed checked by `linear.sparse_linear` (dtypes, devices, shapes);
this module checks only what the kernels themselves need from a plan. Split-K counters:
`counters.py`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from . import decode
from .counters import split_k_counters
from .dispatch import Plan
from .kernels import (
    INTERPRETED,
    reduce_partials_kernel,
    skinny_linear_kernel,
    tiled_linear_kernel,
)
from .stream_kernel import stream_linear_kernel

MAX_GRID_YZ = 65535  # CUDA's limit on a grid's y and z dimensions
STREAMS_BLOCK_M = (1, 2, 4)  # rows of x per streams program (stream_kernel._x_rows)


@dataclass(frozen=True)
class Operand:
    """A weight as the kernels see it (see decode.load_weight_tile for the pointers)."""

    format: int
    n: int
    k: int
    w: torch.Tensor
    meta: torch.Tensor
    offsets: torch.Tensor
    w_cols: int
    stride_w: int
    stride_meta: int
    tile: tuple[int, int] | None = None


def dense_operand(weight: torch.Tensor) -> Operand:
    """weight [N, K], unit stride along K."""
    n, k = weight.shape
    return Operand(decode.FORMAT_DENSE.value, n, k, weight, weight, weight, k, weight.stride(0), 0)


def sparse24_operand(values: torch.Tensor, meta: torch.Tensor, k: int) -> Operand:
    """values [N, Kp/2] and meta [N, Kp/32] int32 of a Sparse24Weight of logical K."""
    return Operand(
        decode.FORMAT_SPARSE24.value,
        values.shape[0],
        k,
        values,
        meta,
        meta,
        values.shape[1],
        values.stride(0),
        meta.stride(0),
    )


def bitmap_operand(
    bits: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    n: int,
    k: int,
    tile: tuple[int, int],
) -> Operand:
    """bits [T, tile_n*tile_k/32] int32, values [V], offsets [T] int32 of a BitmapWeight."""
    return Operand(decode.FORMAT_BITMAP.value, n, k, values, bits, offsets, 0, 0, 0, tuple(tile))


def _check_runnable(x: torch.Tensor) -> None:
    if x.device.type == "cuda" or INTERPRETED:
        return
    raise RuntimeError(
        f"the Triton kernels need a CUDA tensor, got one on {x.device}; on a CPU use "
        "backend='reference', or set TRITON_INTERPRET=1 before lcc_kernels is imported"
    )


def _check_plan(plan: Plan, operand: Operand) -> None:
    if operand.tile is not None and (plan.block_n, plan.block_k) != operand.tile:
        raise ValueError(
            f"bitmap kernels need block_n x block_k = the weight tile {operand.tile}, "
            f"got {plan.block_n} x {plan.block_k}"
        )
    if operand.format == decode.FORMAT_SPARSE24.value and plan.block_k < 32:
        raise ValueError(f"2:4 kernels need block_k >= 32 (one metadata word), got {plan.block_k}")
    if operand.format == decode.FORMAT_BITMAP.value and plan.block_k < 32:
        raise ValueError(f"bitmap kernels need block_k >= 32, got {plan.block_k}")
    uses_dot = plan.backend == "tiled" or plan.block_m >= 16
    if uses_dot and min(plan.block_m, plan.block_n, plan.block_k) < 16:
        raise ValueError(f"tl.dot needs block_m, block_n, block_k >= 16, got {plan}")


def _dot_flags(x: torch.Tensor) -> dict:
    return {
        # bf16 tl.dot is wrong in the interpreter; fp32 operands are exact there.
        "DOT_IN_FP32": INTERPRETED,
        # fp32 inputs get fp32 products as F.linear does (tf32 would be ~1e-3 off).
        "DOT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
    }


@dataclass(frozen=True)
class Launch:
    """One kernel launch: `kernel[grid](*args, **options)` (options: constexprs, warps)."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    options: dict


def run_linear(
    x: torch.Tensor, operand: Operand, bias: torch.Tensor | None, plan: Plan
) -> torch.Tensor:
    """y [M, N] in x's dtype = x [M, K] @ W^T (+ bias [N], added in fp32)."""
    _check_runnable(x)
    out = torch.empty((x.shape[0], operand.n), dtype=x.dtype, device=x.device)
    with _on_device(x.device):
        for launch in plan_launches(x, operand, bias, plan, out):
            launch.kernel[launch.grid](*launch.args, **launch.options)
    return out


def run_streams(x: torch.Tensor, streams, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """y [M, N] in x's dtype = x [M, K] @ W^T (+ bias [N], added in fp32), W as the value
    streams (streams.BitmapStreams) built for plan.block_n and plan.split_k."""
    _check_runnable(x)
    out = torch.empty((x.shape[0], streams.shape[0]), dtype=x.dtype, device=x.device)
    with _on_device(x.device):
        for launch in stream_launches(x, streams, bias, plan, out):
            launch.kernel[launch.grid](*launch.args, **launch.options)
    return out


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device (and its current stream), whatever the
    tensors' device: make it x's, as for a model spread over GPUs (device_map)."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def plan_launches(
    x: torch.Tensor, operand: Operand, bias: torch.Tensor | None, plan: Plan, out: torch.Tensor
) -> list[Launch]:
    """The launches that write out [M, N] for `plan`, in order (none for M = 0); the
    split-K workspace is allocated here. Also used to compile ahead of time for a GPU."""
    _check_plan(plan, operand)
    if x.shape[0] == 0:
        return []
    if plan.backend == "skinny":
        return _skinny_launches(x, operand, bias, plan, out)
    if plan.backend == "tiled":
        return [_tiled_launch(x, operand, bias, plan, out)]
    raise ValueError(f"run_linear runs the Triton backends only, got {plan.backend!r}")


def _weight_args(x, operand, out) -> tuple:
    """The kernels' arguments from the weight pointers through the weight strides."""
    return (
        operand.w,
        operand.meta,
        operand.offsets,
        x.shape[0],
        operand.n,
        operand.k,
        x.stride(0),
        out.stride(0),
        operand.w_cols,
        operand.stride_w,
        operand.stride_meta,
    )


def _skinny_launches(x, operand, bias, plan, out) -> list[Launch]:
    m, n = out.shape
    k_tiles = -(-operand.k // plan.block_k)
    split = max(1, min(plan.split_k, k_tiles))
    tiles_per_split = -(-k_tiles // split)
    split = -(-k_tiles // tiles_per_split)  # no empty splits
    tiles_n, tiles_m = -(-n // plan.block_n), -(-m // plan.block_m)
    if tiles_m > MAX_GRID_YZ:  # the row tiles are the grid's z (and the reduction's y)
        raise ValueError(
            f"the skinny path runs at most {MAX_GRID_YZ} row tiles of block_m = "
            f"{plan.block_m}, got M = {m} rows: use the tiled path"
        )
    bias_arg, partials, counters = _split_buffers(x, bias, out, split, tiles_n * tiles_m)
    kernel = Launch(
        skinny_linear_kernel,
        (tiles_n, split, tiles_m),
        (
            x,
            out,
            bias_arg,
            partials,
            counters,
            *_weight_args(x, operand, out),
            k_tiles,
            tiles_per_split,
            split,
        ),
        dict(
            FORMAT=operand.format,
            BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n,
            BLOCK_K=plan.block_k,
            SPLIT=split > 1,
            SERIAL_REDUCTION=plan.serial_reduction,
            HAS_BIAS=bias is not None,
            USE_DOT=plan.block_m >= 16,
            **_dot_flags(x),
            NUM_STAGES=plan.num_stages,
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
        ),
    )
    return [kernel, *_reduction(plan, split, partials, out, bias, tiles_n, tiles_m)]


def _split_buffers(x, bias, out, split: int, tiles: int) -> tuple:
    """(bias argument, partials [split, M, N] fp32, tile counters) of a split-K launch;
    `out` stands in for what the kernel never reads (no bias, one split)."""
    bias_arg = bias if bias is not None else out
    if split == 1:
        return bias_arg, out, out
    partials = torch.empty((split, *out.shape), dtype=torch.float32, device=x.device)
    return bias_arg, partials, split_k_counters(x.device, tiles)


def _reduction(plan: Plan, split: int, partials, out, bias, tiles_n: int, tiles_m: int) -> list:
    """The second launch that sums the partials, where the plan does not sum them in the
    split-K launch itself."""
    if split == 1 or plan.serial_reduction:
        return []
    return [
        Launch(
            reduce_partials_kernel,
            (tiles_n, tiles_m),
            (partials, out, bias if bias is not None else out, *out.shape, out.stride(0), split),
            dict(
                HAS_BIAS=bias is not None,
                BLOCK_M=plan.block_m,
                BLOCK_N=plan.block_n,
                num_warps=4,
            ),
        )
    ]


def stream_launches(x, streams, bias, plan: Plan, out) -> list[Launch]:
    """The launches of a "streams" plan (the streams must be built for its block_n and
    split_k) writing out [M, N]; none for M = 0."""
    if (plan.block_n, plan.split_k) != (streams.block_n, streams.split):
        raise ValueError(
            f"streams built for block_n {streams.block_n}, split {streams.split} cannot run "
            f"plan block_n {plan.block_n}, split_k {plan.split_k}"
        )
    if plan.block_m not in STREAMS_BLOCK_M:
        raise ValueError(f"streams plans take block_m in {STREAMS_BLOCK_M}, got {plan.block_m}")
    m = x.shape[0]
    if m == 0:
        return []
    tiles_m = -(-m // plan.block_m)
    if tiles_m > MAX_GRID_YZ:
        raise ValueError(
            f"the streams path runs at most {MAX_GRID_YZ} row tiles of block_m = "
            f"{plan.block_m}, got M = {m} rows"
        )
    split = streams.split
    bias_arg, partials, counters = _split_buffers(x, bias, out, split, streams.blocks * tiles_m)
    kernel = Launch(
        stream_linear_kernel,
        (streams.blocks, split, tiles_m),
        (
            x,
            out,
            bias_arg,
            partials,
            counters,
            streams.values,
            streams.steps,
            streams.starts,
            streams.group_base,
            streams.groups,
            streams.row_ids,
            m,
            streams.shape[0],
            x.stride(0),
            out.stride(0),
            split,
        ),
        dict(
            BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n,
            STEP_BITS=streams.step_bits,
            SPLIT=split > 1,
            SERIAL_REDUCTION=plan.serial_reduction,
            HAS_BIAS=bias is not None,
            NUM_STAGES=plan.num_stages,
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
        ),
    )
    return [kernel, *_reduction(plan, split, partials, out, bias, streams.blocks, tiles_m)]


def _tiled_launch(x, operand, bias, plan, out) -> Launch:
    m, n = out.shape
    return Launch(
        tiled_linear_kernel,
        (-(-m // plan.block_m) * -(-n // plan.block_n),),
        (
            x,
            out,
            bias if bias is not None else out,
            *_weight_args(x, operand, out),
            -(-operand.k // plan.block_k),
        ),
        dict(
            FORMAT=operand.format,
            BLOCK_M=plan.block_m,
            BLOCK_N=plan.block_n,
            BLOCK_K=plan.block_k,
            GROUP_M=plan.group_m,
            HAS_BIAS=bias is not None,
            **_dot_flags(x),
            num_warps=plan.num_warps,
            num_stages=plan.num_stages,
        ),
    )
