"""What a launch needs apart from its tensors, worked out once per plan, M and weight
shape (`operand_geometry`, `streams_geometry`): grid, constexprs, split-K, and the checks
of a plan against the weight and the workspace it would need. Eager decode launches the
same ones at every step, and the host time is what it waits on (launch.py uses these).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from . import decode
from .decode import INTERPRETED
from .dispatch import Plan
from .dispatch_table import (
    check_kernel_plan,
    check_streams_block_m,
    skinny_split,
    split_workspace_bytes,
)
from .formats import FORMAT_24, FORMAT_BITMAP

MAX_GRID_YZ = 65535  # CUDA's limit on a grid's y and z dimensions
# decode.FORMAT_*.value -> the format name the plan rules take (None: a dense weight).
_FORMAT_NAMES = {
    decode.FORMAT_DENSE.value: None,
    decode.FORMAT_SPARSE24.value: FORMAT_24,
    decode.FORMAT_BITMAP.value: FORMAT_BITMAP,
}


def _dot_flags(dtype: torch.dtype) -> dict:
    return {
        # bf16 tl.dot is wrong in the interpreter; fp32 operands are exact there. (Its
        # fp32 -> bf16 stores truncate, dot or not: interpreted bf16 outputs may be 1 ulp off.)
        "DOT_IN_FP32": INTERPRETED,
        # fp32 inputs get fp32 products as F.linear does (tf32 would be ~1e-3 off).
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


class Geometry(NamedTuple):
    """A plan's launches at M rows of one weight shape, apart from the tensors: worked
    out once per (plan, M, weight shape, bias or not, dtype), since eager decode launches
    the same ones at every step and the host time is what it waits on."""

    grid: tuple[int, ...]
    scalars: tuple[int, ...]  # the kernel's arguments after the weight's
    options: dict  # shared by every launch of this geometry: never mutated
    split: int
    tiles: int  # output tiles: split-K counters
    reduction: tuple[tuple[int, int], dict] | None  # grid and options of the partials' sum


def _row_tiles(m: int, block_m: int, path: str) -> int:
    tiles_m = -(-m // block_m)
    if tiles_m > MAX_GRID_YZ:  # the row tiles are the grid's z (and the reduction's y)
        raise ValueError(
            f"the {path} path runs at most {MAX_GRID_YZ} row tiles of block_m = "
            f"{block_m} in one launch, got M = {m} rows (run_linear and run_streams launch "
            "larger M in parts)"
        )
    return tiles_m


def _check_split(split: int, plan: Plan) -> None:
    """Refuse a plan whose K splits (the grid's y) exceed CUDA's limit: the dispatcher's
    rules split at most dispatch.MAX_SPLIT_K ways, so only a plan given, or one of a
    measured table, can."""
    if split > MAX_GRID_YZ:
        raise ValueError(
            f"the {plan.backend} plan's split_k = {plan.split_k} splits K {split} ways, over "
            f"the {MAX_GRID_YZ} one launch's grid can hold (CUDA's limit on its y dimension); "
            f"give split_k <= {MAX_GRID_YZ}"
        )


def _check_workspace(split: int, m: int, n: int, bound: int) -> None:
    """Refuse a skinny split-K workspace [split, m, n] fp32 over `bound` bytes
    (dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES; the dispatcher passes over measured
    plans by the same bound)."""
    size = split_workspace_bytes(split, m, n)
    if size > bound:
        raise ValueError(
            f"the skinny plan splits K {split} ways at M = {m}, N = {n}: its fp32 workspace "
            f"of {_bytes_text(size)} is over the {_bytes_text(bound)} allowed "
            "(dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES); split K less (or use the tiled path)"
        )


def _bytes_text(size: int) -> str:
    """`size` bytes in the largest binary unit that keeps one or more of it."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _reduction(plan: Plan, split: int, has_bias: bool, tiles_n: int, tiles_m: int):
    """The grid and options of the second launch that sums the partials, where the plan
    does not sum them in the split-K launch itself."""
    if split == 1 or plan.serial_reduction:
        return None
    options = dict(HAS_BIAS=has_bias, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, num_warps=4)
    return (tiles_n, tiles_m), options


@functools.lru_cache(maxsize=4096)
def operand_geometry(
    plan: Plan,
    m: int,
    n: int,
    k: int,
    weight_format: int,
    tile: tuple[int, int] | None,
    has_bias: bool,
    dtype: torch.dtype,
    workspace_bound: int,
) -> Geometry:
    """A skinny or tiled plan's geometry on a weight operand (weight_format, tile) of
    [n, k]; a split-K workspace over `workspace_bound` bytes is refused."""
    check_kernel_plan(plan, _FORMAT_NAMES[weight_format], tile)
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
        return Geometry(grid, (k_tiles,), options, 1, 0, None)
    split = skinny_split(plan, k)
    _check_split(split, plan)
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
    return Geometry(
        (tiles_n, split, tiles_m),
        (k_tiles, tiles_per_split, split),
        options,
        split,
        tiles_n * tiles_m,
        _reduction(plan, split, has_bias, tiles_n, tiles_m),
    )


@functools.lru_cache(maxsize=4096)
def streams_geometry(
    plan: Plan, m: int, block_n: int, split: int, blocks: int, step_bits: int, has_bias: bool
) -> Geometry:
    """A streams plan's geometry on a layout (block_n, split, blocks, step_bits)."""
    if (plan.block_n, plan.split_k) != (block_n, split):
        raise ValueError(
            f"streams built for block_n {block_n}, split {split} cannot run "
            f"plan block_n {plan.block_n}, split_k {plan.split_k}"
        )
    check_streams_block_m(plan)
    _check_split(split, plan)
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
    return Geometry(
        (blocks, split, tiles_m),
        (split,),
        options,
        split,
        blocks * tiles_m,
        _reduction(plan, split, has_bias, blocks, tiles_m),
    )
