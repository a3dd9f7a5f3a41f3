"""compile_report.py's per-plan work: the device its ceilings model (DEVICE, an H200), the
record of one launch (LaunchReport), compile_plan (every launch of a plan compiled for that
device and its machine code read), and the static issue-rate ceiling of the decode
launches (see compile_report's docstring)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from compile_sass import disassemble, loop_global_loads, main_loop, resource_usage

# The device the ceilings are computed for: H200 SXM (an H100 SXM has the same SM count
# and clock, and ~3.35 TB/s).
DEVICE = {
    "name": "H200 SXM (sm_90)",
    "arch": 90,
    "sms": 132,
    "clock_hz": 1.98e9,
    "copy_bytes_per_s": 4.3e12,
    "schedulers_per_sm": 4,
    "registers_per_sm": 65536,
    "max_warps_per_sm": 64,
    "shared_bytes_per_sm": 228 * 1024,
}
DECODE_KERNELS = ("skinny_linear_kernel", "stream_linear_kernel")


@dataclass
class LaunchReport:
    shape: str
    n: int
    k: int
    m: int
    kind: str
    kernel: str
    plan: dict
    grid: list
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0
    warps_per_sm: int = 0
    loop_instructions: int = 0
    loop_global_loads: dict | None = None
    loop_iterations: int = 0  # per M tile, over the whole weight
    bytes_per_iteration: int = 0
    positions_per_iteration: int = 0
    instructions_per_position: float | None = None
    issue_bytes_per_s: float | None = None
    bound_speedup_vs_dense: float | None = None
    error: str = ""


def _issue_bound(
    report: LaunchReport,
    weight_bytes: int,
    dense_bytes: int,
    weight_iterations: int,
    x_bytes: int,
) -> None:
    """Fill the issue-rate ceiling of a decode launch, see compile_report's docstring; the
    loop runs weight_iterations times per M tile, each reading weight_bytes /
    weight_iterations of the weight on average."""
    plan = report.plan
    report.loop_iterations = weight_iterations
    iterations = weight_iterations * math.ceil(report.m / plan["block_m"])
    positions = report.n * report.k / weight_iterations  # on average, for streams
    report.positions_per_iteration = round(positions)
    report.bytes_per_iteration = round(weight_bytes / weight_iterations)  # x comes from L2
    threads = 32 * plan["num_warps"]
    report.instructions_per_position = round(report.loop_instructions * threads / positions, 2)
    issue_cycles = iterations * report.loop_instructions * plan["num_warps"]
    issue_s = issue_cycles / (DEVICE["schedulers_per_sm"] * DEVICE["sms"] * DEVICE["clock_hz"])
    total = weight_bytes + x_bytes
    dense_total = dense_bytes + x_bytes
    report.issue_bytes_per_s = total / issue_s
    ours_s = max(total / DEVICE["copy_bytes_per_s"], issue_s)
    report.bound_speedup_vs_dense = round(dense_total / DEVICE["copy_bytes_per_s"] / ours_s, 3)


def compile_plan(
    shape: str, m: int, kind: str, plan, weights: dict, dtype=torch.bfloat16
) -> list[LaunchReport]:
    """Compile every launch of `plan` for x [m, K] in `dtype` (the weights' dtype) and read
    its machine code."""
    from lcc_kernels import launch
    from lcc_kernels.bench import SHAPES as BENCH_SHAPES
    from lcc_kernels.linear import derived_copy

    n, k = BENCH_SHAPES[shape]
    weight = _weight_for(weights, shape, kind, plan)
    dense_bytes = n * k * dtype.itemsize
    if kind == "dense":
        operand = launch.dense_operand(weight)
    elif kind == "2:4":
        operand = launch.sparse24_operand(weight.values, weight.meta, k)
    else:
        operand = launch.bitmap_operand(
            weight.bits, weight.values, weight.offsets, n, k, weight.tile
        )
    x = torch.zeros(m, k, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    bias = torch.zeros(n, dtype=torch.float32)
    if plan.backend == "streams":
        streams = derived_copy(weight, plan)  # kept on the weight for the next M
        items = launch.stream_launches(x, streams, bias, plan, out)
        weight_bytes, weight_iterations = streams.nbytes, int(streams.groups.sum())
    else:
        items = launch.plan_launches(x, operand, bias, plan, out)
        weight_bytes = weight.nbytes
        weight_iterations = math.ceil(n / plan.block_n) * math.ceil(k / plan.block_k)
    reports = []
    for item in items:
        report = LaunchReport(
            shape, n, k, m, kind, item.kernel.__name__, asdict(plan), list(item.grid)
        )
        reports.append(report)
        try:
            compiled = item.kernel.warmup(*item.args, grid=item.grid, **item.options)
        except Exception as exc:  # a compile error is a finding, reported per launch
            report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            continue
        cubin = compiled.asm["cubin"]
        report.registers, report.spill_bytes, static_shared = resource_usage(cubin, report.kernel)
        report.shared_bytes = static_shared + compiled.metadata.shared
        warps = item.options["num_warps"]
        by_registers = DEVICE["registers_per_sm"] // max(report.registers * 32 * warps, 1)
        by_shared = DEVICE["shared_bytes_per_sm"] // max(report.shared_bytes, 1)
        by_warps = DEVICE["max_warps_per_sm"] // warps
        report.warps_per_sm = min(by_registers, by_shared, by_warps) * warps
        body = main_loop(disassemble(cubin))
        report.loop_instructions = len(body)
        report.loop_global_loads = loop_global_loads(body)
        if item.kernel.__name__ in DECODE_KERNELS and body:
            x_bytes = m * k * dtype.itemsize
            _issue_bound(report, weight_bytes, dense_bytes, weight_iterations, x_bytes)
    return reports


def _weight_for(weights: dict, shape: str, kind: str, plan):
    """The weight of compile_report.build_weights, repacked (and kept) in the bitmap tile
    `plan` runs on."""
    from lcc_kernels import unpack
    from lcc_kernels.bench import pack_kind, plan_tile

    weight = weights[(shape, kind)]
    tile = plan_tile(kind, plan)
    if tile is None or tile == weight.tile:
        return weight
    if (shape, kind, tile) not in weights:
        weights[(shape, kind, tile)] = pack_kind(unpack(weight), kind, tile)
    return weights[(shape, kind, tile)]
