"""Host launchers for the Triton kernels: operand description, launches, split-K workspace.

What a launch needs apart from its tensors (grid, constexprs, split) is worked out once
per plan, M and weight shape (`launch_geometry`): an eager decode step repeats the same
calls.

`run_linear(x [M, K], operand, bias [N] | None, plan) -> y [M, N]` is what the custom ops
and eager `sparse_linear` call; `run_streams` the same for a streams layout. Their inputs
are checked by the caller: the ops pass theirs through `checked_inputs` (x 2-D with the
weight's K, dtype and device, a bias of [N] on that device, both unit-stride and with a
lazy negation resolved, copied if not), `sparse_linear` checks its own before (both with
reference.check_operands), so that an eager call, whose host time a decode step waits
on, checks once. A plan is checked
against the weight and the split-K workspace it would need in `launch_geometry`.
Split-K counters: `counters.py`.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from . import decode, dispatch_table, launch_geometry
from .counters import retire_stream_counters, split_k_counters
from .decode import INTERPRETED
from .dispatch import Plan
from .kernels import (
    reduce_partials_kernel,
    skinny_linear_kernel,
    tiled_linear_kernel,
)
from .launch_geometry import Geometry, check_streams_block_m, operand_geometry, streams_geometry
from .reference import as_kernel_input, check_operands
from .stream_kernel import stream_linear_kernel


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
    """Raise a RuntimeError unless the kernels can run on x [M, K]'s device (a GPU, or
    any device under the interpreter)."""
    if x.device.type == "cuda" or INTERPRETED:
        return
    raise RuntimeError(
        f"the Triton kernels need a CUDA tensor, got one on {x.device}; on a CPU use "
        "backend='reference', or set TRITON_INTERPRET=1 before lcc_kernels is imported"
    )


def checked_inputs(
    x: torch.Tensor, n: int, k: int, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [M, k] and bias [n] as the kernels read them (`as_kernel_input`: unit stride
    along K and along the bias, lazy negation resolved), for an [n, k] weight whose values
    tensor is `weight`; a ValueError names any mismatch (`check_operands`: layout, shape,
    dtype, device)."""
    check_operands(x, n, k, weight, bias, two_d=True)
    return as_kernel_input(x), None if bias is None else as_kernel_input(bias)


class Launch(NamedTuple):
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
        for rows in _row_parts(x.shape[0], plan):
            part_x, part_out = (x, out) if rows is None else (x[rows], out[rows])
            _issue(plan_launches(part_x, operand, bias, plan, part_out), x.device)
    return out


def run_streams(x: torch.Tensor, streams, bias: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """y [M, N] in x's dtype = x [M, K] @ W^T (+ bias [N], added in fp32), W as the value
    streams (streams.BitmapStreams) built for plan.block_n and plan.split_k."""
    _check_runnable(x)
    n = streams.shape[0]
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    # the layout's split serves every M: its workspace is bounded by launching fewer rows
    row_bytes = dispatch_table.split_workspace_bytes(streams.split, 1, n)
    with _on_device(x.device):
        for rows in _row_parts(x.shape[0], plan, row_bytes):
            part_x, part_out = (x, out) if rows is None else (x[rows], out[rows])
            _issue(stream_launches(part_x, streams, bias, plan, part_out), x.device)
    return out


def check_without_rows(
    x: torch.Tensor,
    plan: Plan,
    operand: Operand | None = None,
    bias: torch.Tensor | None = None,
    *,
    streams_block_m: bool = True,
) -> None:
    """For x [0, K] (nothing to launch), what run_linear (`plan` on `operand`) or
    run_streams (operand None) refuses before launching, with the same errors: kernels
    that cannot run on x's device; a plan that does not fit the weight or the split-K
    workspace bound; with streams_block_m, a streams block_m the kernel has no code for
    (the plan's own is launched; the streams op picks one from M instead)."""
    _check_runnable(x)
    if operand is not None:
        plan_launches(x, operand, bias, plan, x.new_empty((0, operand.n)))
    elif streams_block_m:
        check_streams_block_m(plan)


_ALL_ROWS = (None,)


def _row_parts(m: int, plan: Plan, workspace_row_bytes: int = 0) -> tuple[slice | None, ...]:
    """The rows of x that each launch (or pair) takes, None for all M at once: in parts
    where the skinny and streams paths' row tiles would exceed their grid axis (M over
    65535 x block_m; a bitmap tile under 16 rows keeps "auto" on the skinny path at any
    M), or where a streams layout's split-K workspace, `workspace_row_bytes` per row,
    would pass dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES (a layout split for decode, run
    at prefill M: 48 GiB at M = 131072, N = 6144, 16 splits). Eager decode asks at every
    call: the common answer is one shared tuple."""
    if plan.backend == "tiled":
        return _ALL_ROWS
    rows = launch_geometry.MAX_GRID_YZ * plan.block_m
    if workspace_row_bytes:
        fit = dispatch_table.MAX_SPLIT_K_WORKSPACE_BYTES // workspace_row_bytes
        rows = min(rows, max(plan.block_m, fit // plan.block_m * plan.block_m))
    if m <= rows:
        return _ALL_ROWS
    return tuple(slice(start, start + rows) for start in range(0, m, rows))


def _issue(launches: list[Launch], device: torch.device) -> None:
    """Launch in order. Where one raises in the interpreter, which runs a kernel on the
    host and can be stopped part-way (by Ctrl-C, say) with split-K counters left nonzero,
    the stream's counters are retired before re-raising. A GPU kernel, once launched,
    runs to its end."""
    try:
        for launch in launches:
            launch.kernel[launch.grid](*launch.args, **launch.options)
    except BaseException:
        if INTERPRETED:
            retire_stream_counters(device)
        raise


_ALREADY_THERE = contextlib.nullcontext()  # reusable: one for every call


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device (and its current stream), whatever the
    tensors' device: make it x's, as for a model spread over GPUs (device_map)."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return _ALREADY_THERE


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
    geometry = operand_geometry(plan, m, *shape, bias is not None, x.dtype, bound)
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
    geometry = streams_geometry(plan, m, *layout, has_bias)
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


def _split_k_launches(kernel, geometry: Geometry, x, out, bias, weight_args: tuple) -> list[Launch]:
    """The kernel's launch (x [M, K], out [M, N], bias [N] | None, split-K workspace
    [split, M, N] fp32, then the weight's and the geometry's arguments) and, where the
    plan sums the partials apart, the second one. `out` stands in for what a kernel never
    reads (no bias, one split)."""
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
