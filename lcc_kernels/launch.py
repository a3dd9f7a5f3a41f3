"""Host launchers for the Triton kernels: operand description, grids, split-K workspace.

What a launch needs apart from its tensors (grid, constexprs, split) is worked out once
per plan, M and weight shape (`_Geometry`): an eager decode step repeats the same calls.

`run_linear(x [M, K], operand, bias [N] | None, plan) -> y [M, N]` is what the custom ops
and eager `sparse_linear` call; `run_streams` the same for a streams layout. Their inputs
are checked by the caller: the ops pass theirs through `checked_inputs` (x 2-D with the
weight's K, dtype and device, a bias of [N] on that device, both unit-stride, copied if
not), `sparse_linear` checks its own before, so that an eager call, whose host time a
decode step waits on, checks once. Here a plan is checked against the weight and the
split-K workspace it would need. Split-K counters: `counters.py`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch

from . import decode, dispatch_table
from .counters import split_k_counters
from .decode import INTERPRETED
from .dispatch import Plan
from .dispatch_table import skinny_split, split_workspace_bytes
from .formats import SUPPORTED_DTYPES
from .kernels import (
    reduce_partials_kernel,
    skinny_linear_kernel,
    tiled_linear_kernel,
)
from .reference import check_bias
from .stream_kernel import stream_linear_kernel

MAX_GRID_YZ = 65535  # CUDA's limit on a grid's y and z dimensions
STREAMS_BLOCK_M = (1, 2, 4)  # rows of x per streams program (stream_kernel._x_rows)


class Operand(NamedTuple):
    """A weight as the kernels see it (see decode.load_weight_tile for the pointers).
    NamedTuples, as Launch: eager decode builds them at every call, and a frozen
    dataclass costs several times the host time."""

    weight_format: int  # decode.FORMAT_*.value
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
    if weight.dim() != 2 or (weight.stride(1) != 1 and weight.shape[1] > 1):
        raise ValueError(
            f"the dense weight must be [N, K], unit-stride along K; got shape "
            f"{tuple(weight.shape)}, strides {weight.stride()}"
        )
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


def checked_inputs(
    x: torch.Tensor, n: int, k: int, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [M, k] and bias [n] as the kernels read them (unit stride along K, and along the
    bias), for an [n, k] weight whose values tensor is `weight`; a ValueError names any
    mismatch (shape, dtype, device)."""
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, K = {k}] for this weight, got {tuple(x.shape)}")
    if x.dtype != weight.dtype or x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"x dtype {x.dtype} must be the weight's ({weight.dtype}): float16, bfloat16 or float32"
        )
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the weight is on {weight.device}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None:
        check_bias(bias, n, x.device)
        if bias.stride(0) != 1:
            bias = bias.contiguous()
    return x, bias


def _check_plan(plan: Plan, weight_format: int, tile: tuple[int, int] | None) -> None:
    if tile is not None and (plan.block_n, plan.block_k) != tile:
        raise ValueError(
            f"bitmap kernels need block_n x block_k = the weight tile {tile}, "
            f"got {plan.block_n} x {plan.block_k}"
        )
    if weight_format == decode.FORMAT_SPARSE24.value and plan.block_k < 32:
        raise ValueError(f"2:4 kernels need block_k >= 32 (one metadata word), got {plan.block_k}")
    if weight_format == decode.FORMAT_BITMAP.value and plan.block_k < 32:
        raise ValueError(f"bitmap kernels need block_k >= 32, got {plan.block_k}")
    if plan.uses_dot and min(plan.block_m, plan.block_n, plan.block_k) < 16:
        narrow = f" (the bitmap tile {tile} has fewer rows)" if tile and tile[0] < 16 else ""
        raise ValueError(
            f"tl.dot (the tiled backend, or skinny with block_m >= 16) needs block_m, block_n "
            f"and block_k >= 16{narrow}, got {plan}"
        )


def _dot_flags(dtype: torch.dtype) -> dict:
    return {
        # bf16 tl.dot is wrong in the interpreter; fp32 operands are exact there.
        "DOT_IN_FP32": INTERPRETED,
        # fp32 inputs get fp32 products as F.linear does (tf32 would be ~1e-3 off).
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


class Launch(NamedTuple):
    """One kernel launch: `kernel[grid](*args, **options)` (options: constexprs, warps)."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    options: dict


class _Geometry(NamedTuple):
    """A plan's launches at M rows of one weight shape, apart from the tensors: worked
    out once per (plan, M, weight shape, bias or not, dtype), since eager decode launches
    the same ones at every step and the host time is what it waits on."""

    grid: tuple[int, ...]
    scalars: tuple[int, ...]  # the kernel's arguments after the weight's
    options: dict  # shared by every launch of this geometry: never mutated
    split: int
    tiles: int  # output tiles: split-K counters
    reduction: tuple[tuple[int, int], dict] | None  # grid and options of the partials' sum


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
    if plan.backend not in ("skinny", "tiled"):
        raise ValueError(f"run_linear runs the Triton backends only, got {plan.backend!r}")
    m = x.shape[0]
    shape = (operand.n, operand.k, operand.weight_format, operand.tile)
    bound = dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES  # read at each call, as the dispatcher
    geometry = _operand_geometry(plan, m, *shape, bias is not None, x.dtype, bound)
    if m == 0:
        return []
    weight_args = (
        operand.w,
        operand.meta,
        operand.offsets,
        m,
        operand.n,
        operand.k,
        x.stride(0),
        out.stride(0),
        operand.w_cols,
        operand.stride_w,
        operand.stride_meta,
    )
    if plan.backend == "skinny":
        return _split_k_launches(skinny_linear_kernel, geometry, x, out, bias, weight_args)
    args = (x, out, bias if bias is not None else out, *weight_args, *geometry.scalars)
    return [Launch(tiled_linear_kernel, geometry.grid, args, geometry.options)]


def stream_launches(x, streams, bias, plan: Plan, out) -> list[Launch]:
    """The launches of a "streams" plan (the streams must be built for its block_n and
    split_k) writing out [M, N]; none for M = 0."""
    m, has_bias = x.shape[0], bias is not None
    layout = (streams.block_n, streams.split, streams.blocks, streams.step_bits)
    geometry = _streams_geometry(plan, m, *layout, has_bias)
    if m == 0:
        return []
    weight_args = (
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
    )
    return _split_k_launches(stream_linear_kernel, geometry, x, out, bias, weight_args)


def _split_k_launches(
    kernel, geometry: _Geometry, x, out, bias, weight_args: tuple
) -> list[Launch]:
    """The kernel's launch (x, out, bias, split-K workspace, then the weight's and the
    geometry's arguments) and, where the plan sums the partials apart, the second one.
    `out` stands in for what a kernel never reads (no bias, one split)."""
    bias_arg = bias if bias is not None else out
    partials = counters = out
    if geometry.split > 1:
        partials = torch.empty((geometry.split, *out.shape), dtype=torch.float32, device=x.device)
        counters = split_k_counters(x.device, geometry.tiles)
    args = (x, out, bias_arg, partials, counters, *weight_args, *geometry.scalars)
    launches = [Launch(kernel, geometry.grid, args, geometry.options)]
    if geometry.reduction is not None:
        grid, options = geometry.reduction
        sum_args = (partials, out, bias_arg, *out.shape, out.stride(0), geometry.split)
        launches.append(Launch(reduce_partials_kernel, grid, sum_args, options))
    return launches


def _row_tiles(m: int, block_m: int, path: str) -> int:
    tiles_m = -(-m // block_m)
    if tiles_m > MAX_GRID_YZ:  # the row tiles are the grid's z (and the reduction's y)
        raise ValueError(
            f"the {path} path runs at most {MAX_GRID_YZ} row tiles of block_m = "
            f"{block_m}, got M = {m} rows" + (": use the tiled path" if path == "skinny" else "")
        )
    return tiles_m


def _check_workspace(split: int, m: int, n: int, bound: int) -> None:
    """Refuse a skinny split-K workspace [split, m, n] fp32 over `bound` bytes
    (dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES; the dispatcher passes over measured
    plans by the same bound)."""
    size = split_workspace_bytes(split, m, n)
    if size > bound:
        raise ValueError(
            f"the skinny plan splits K {split} ways at M = {m}, N = {n}: its fp32 workspace "
            f"of {size / 2**30:.2f} GiB is over the "
            f"{bound / 2**30:.0f} GiB allowed; split K less (or use "
            "the tiled path)"
        )


def _reduction(plan: Plan, split: int, has_bias: bool, tiles_n: int, tiles_m: int):
    """The grid and options of the second launch that sums the partials, where the plan
    does not sum them in the split-K launch itself."""
    if split == 1 or plan.serial_reduction:
        return None
    options = dict(HAS_BIAS=has_bias, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, num_warps=4)
    return (tiles_n, tiles_m), options


@functools.lru_cache(maxsize=4096)
def _operand_geometry(
    plan: Plan,
    m: int,
    n: int,
    k: int,
    weight_format: int,
    tile: tuple[int, int] | None,
    has_bias: bool,
    dtype: torch.dtype,
    workspace_bound: int,
) -> _Geometry:
    """A skinny or tiled plan's geometry on a weight operand (weight_format, tile) of
    [n, k]; a split-K workspace over `workspace_bound` bytes is refused."""
    _check_plan(plan, weight_format, tile)
    k_tiles = -(-k // plan.block_k)
    common = dict(
        FORMAT=weight_format,
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        BLOCK_K=plan.block_k,
        HAS_BIAS=has_bias,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    if plan.backend == "tiled":
        grid = (-(-m // plan.block_m) * -(-n // plan.block_n),)
        options = dict(common, GROUP_M=plan.group_m, **_dot_flags(dtype))
        return _Geometry(grid, (k_tiles,), options, 1, 0, None)
    split = skinny_split(plan, k)
    tiles_per_split = -(-k_tiles // split)
    _check_workspace(split, m, n, workspace_bound)
    tiles_n, tiles_m = -(-n // plan.block_n), _row_tiles(m, plan.block_m, "skinny")
    options = dict(
        common,
        SPLIT=split > 1,
        SERIAL_REDUCTION=plan.serial_reduction,
        USE_DOT=plan.uses_dot,
        **_dot_flags(dtype),
        NUM_STAGES=plan.num_stages,
    )
    return _Geometry(
        (tiles_n, split, tiles_m),
        (k_tiles, tiles_per_split, split),
        options,
        split,
        tiles_n * tiles_m,
        _reduction(plan, split, has_bias, tiles_n, tiles_m),
    )


@functools.lru_cache(maxsize=4096)
def _streams_geometry(
    plan: Plan, m: int, block_n: int, split: int, blocks: int, step_bits: int, has_bias: bool
) -> _Geometry:
    """A streams plan's geometry on a layout (block_n, split, blocks, step_bits)."""
    if (plan.block_n, plan.split_k) != (block_n, split):
        raise ValueError(
            f"streams built for block_n {block_n}, split {split} cannot run "
            f"plan block_n {plan.block_n}, split_k {plan.split_k}"
        )
    if plan.block_m not in STREAMS_BLOCK_M:
        raise ValueError(f"streams plans take block_m in {STREAMS_BLOCK_M}, got {plan.block_m}")
    tiles_m = _row_tiles(m, plan.block_m, "streams")
    options = dict(
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        STEP_BITS=step_bits,
        SPLIT=split > 1,
        SERIAL_REDUCTION=plan.serial_reduction,
        HAS_BIAS=has_bias,
        NUM_STAGES=plan.num_stages,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    return _Geometry(
        (blocks, split, tiles_m),
        (split,),
        options,
        split,
        blocks * tiles_m,
        _reduction(plan, split, has_bias, blocks, tiles_m),
    )
