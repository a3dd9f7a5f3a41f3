#!/usr/bin/env python
"""Compile the kernels for an NVIDIA GPU on a machine without one, and read the machine code.

    python benchmarks/compile_report.py [--out FILE.json] [--m 1,16,1024] [--candidates]
                                        [--dtype bfloat16|float16|float32]

For each weight kind of lcc_kernels.bench (dense Triton, 2:4, bitmap 50% / 70%), each
shape of the acceptance (Llama-3-8B qkv 6144x4096 and o 4096x4096) and each M, every
launch of the plan the built-in rules pick (with --candidates, every plan the GPU suite
would time) is compiled for the target (default sm_90: H100/H200) with the exact
specialisation a real launch gets, for x and weights in --dtype (default bfloat16, the
acceptance's; the rules pick fp32 plans of their own), and the report gives per launch:

  registers, spills (local memory), shared memory, resident warps per SM;
  the main loop (the backward branch over K tiles that holds the most global loads):
    SASS instructions per iteration and the global loads in it, by width;
  for the decode paths (skinny, and streams for bitmap weights at M <= 4, shown besides
    the rules' plan), a static issue-rate ceiling: an SM issues at most one warp
    instruction per scheduler per cycle (4 per cycle on sm_80/90), so T iterations of a
    loop of I instructions in W warps take at least T * I * W / (4 * SMs * clock)
    seconds, however fast memory is (a streams iteration is one group, 8 or 32 entries, per
    lane, T the layout's groups: the count follows the kept values, not the positions).
    `issue_bytes_per_s` = the call's bytes (weight and x, each read once) over that time;
    `bound_speedup_vs_dense` = dense bytes at the measured device-copy bandwidth
    (kernels.md: ~4.3 TB/s on an H200) / the longer of ours at that bandwidth and the
    issue time: an upper bound on the decode speed-up that the GPU run can show (it
    ignores latency, partial reductions, slower pipes, and for streams the L1 traffic of
    their gathered x elements).

Nothing here runs a kernel: it needs triton's bundled ptxas, cuobjdump and nvdisasm, and
the weights are packed on the CPU. A compile error is reported as such (and makes the exit
status 1), as are spills.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_report.py compiles real kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

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
SHAPES = ("llama3-8b-qkv", "llama3-8b-o")
DECODE_KERNELS = ("skinny_linear_kernel", "stream_linear_kernel")
KINDS = ("dense", "2:4", "bitmap50", "bitmap70")
RESOURCE_LINE = re.compile(r"Function (\w+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL_LINE = re.compile(r"^(\.L_x_\d+):")
GLOBAL_LOAD = re.compile(r"\b(LDGSTS|LDG)((?:\.[A-Z0-9]+)*)")
BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


class _Target:
    """Stands in for the CUDA driver while compiling: names the target, never launches."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


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


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _run_tool(tool: str, flag: str, cubin: bytes) -> str:
    """stdout of one of triton's bundled NVIDIA tools run on a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run(
            [_tool(tool), flag, handle.name], capture_output=True, text=True, check=True
        ).stdout


def _resources(cubin: bytes, kernel: str) -> tuple[int, int, int]:
    """(registers, stack + local bytes, static shared bytes) from cuobjdump."""
    text = _run_tool("cuobjdump", "--dump-resource-usage", cubin)
    for name, reg, stack, shared, local in RESOURCE_LINE.findall(text):
        if name == kernel:
            return int(reg), int(stack) + int(local), int(shared)
    raise RuntimeError(f"cuobjdump reports no function {kernel}:\n{text}")


def _sass(cubin: bytes) -> list[tuple[int, str]]:
    """[(address, instruction)] with labels as (address of the next instruction, label)."""
    lines, pending = [], []
    for raw in _run_tool("nvdisasm", "-c", cubin).splitlines():
        label = LABEL_LINE.match(raw.strip())
        if label:
            pending.append(label.group(1))
            continue
        match = SASS_LINE.search(raw)
        if match:
            address = int(match.group(1), 16)
            lines += [(address, f"{name}:") for name in pending]
            pending = []
            lines.append((address, match.group(2).strip()))
    return lines


def main_loop(sass: list[tuple[int, str]]) -> list[str]:
    """Instructions of the longest backward-branch loop that loads weights from global
    memory (the loop over K tiles; the split-K partial sums, read with .cg, i.e. STRONG.GPU
    loads, are not counted as such); [] if there is none."""
    labels = {text[:-1]: address for address, text in sass if text.endswith(":")}
    best: list[str] = []
    for address, text in sass:
        branch = BRANCH.search(text)
        if not branch or labels.get(branch.group(1), address + 1) > address:
            continue
        body = [
            t
            for a, t in sass
            if labels[branch.group(1)] <= a <= address and not t.endswith(":") and t != "NOP"
        ]
        loads = any(GLOBAL_LOAD.search(t) and "STRONG.GPU" not in t for t in body)
        if loads and len(body) > len(best):
            best = body
    return best


def _global_loads(body: list[str]) -> dict:
    """Global loads (LDG, and LDGSTS: global to shared) in the loop, by access width."""
    counts: dict[str, int] = {}
    for text in body:
        match = GLOBAL_LOAD.search(text)
        if match:
            suffix = match.group(2) or ""
            width = next((w for w in ("128", "64", "U16", "U8") if w in suffix), "32")
            name = f"{match.group(1)}.{width}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def _issue_bound(
    report: LaunchReport,
    weight_bytes: int,
    dense_bytes: int,
    weight_iterations: int,
    x_bytes: int,
) -> None:
    """Fill the issue-rate ceiling of a decode launch, see the module docstring; the loop
    runs weight_iterations times per M tile, each reading weight_bytes / weight_iterations
    of the weight on average."""
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
        report.registers, report.spill_bytes, static_shared = _resources(cubin, report.kernel)
        report.shared_bytes = static_shared + compiled.metadata.shared
        warps = item.options["num_warps"]
        by_registers = DEVICE["registers_per_sm"] // max(report.registers * 32 * warps, 1)
        by_shared = DEVICE["shared_bytes_per_sm"] // max(report.shared_bytes, 1)
        by_warps = DEVICE["max_warps_per_sm"] // warps
        report.warps_per_sm = min(by_registers, by_shared, by_warps) * warps
        body = main_loop(_sass(cubin))
        report.loop_instructions = len(body)
        report.loop_global_loads = _global_loads(body)
        if item.kernel.__name__ in DECODE_KERNELS and body:
            x_bytes = m * k * dtype.itemsize
            _issue_bound(report, weight_bytes, dense_bytes, weight_iterations, x_bytes)
    return reports


def _weight_for(weights: dict, shape: str, kind: str, plan):
    """The weight of build_weights, repacked (and kept) in the bitmap tile `plan` runs on."""
    from lcc_kernels import unpack
    from lcc_kernels.bench import pack_kind, plan_tile

    weight = weights[(shape, kind)]
    tile = plan_tile(kind, plan)
    if tile is None or tile == weight.tile:
        return weight
    if (shape, kind, tile) not in weights:
        weights[(shape, kind, tile)] = pack_kind(unpack(weight), kind, tile)
    return weights[(shape, kind, tile)]


def plans_for(kind: str, n: int, k: int, m: int, candidates: bool, dtype=torch.bfloat16) -> list:
    """The GPU suite's plans for one problem in `dtype`; without `candidates`, only the
    first: the plan the built-in rules pick (and the streams one, where there is one)."""
    from suite_plans import candidates as suite_candidates  # this script's directory

    dtype_name = str(dtype).removeprefix("torch.")
    plans = suite_candidates(kind, n, k, m, DEVICE["sms"], smoke=False, dtype=dtype_name)
    if candidates:
        return plans
    return plans[:1] + [plan for plan in plans if plan.backend == "streams"][:1]


def build_weights(shapes, kinds, dtype=torch.bfloat16) -> dict:
    from lcc_kernels.bench import SHAPES as BENCH_SHAPES
    from lcc_kernels.bench import make_dense, pack_kind

    weights = {}
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        n, k = BENCH_SHAPES[shape]
        for kind in kinds:
            dense = make_dense(n, k, kind, dtype, "cpu", generator)
            weights[(shape, kind)] = dense if kind == "dense" else pack_kind(dense, kind)
    return weights


def run(
    shapes, kinds, ms, candidates: bool, progress: bool = True, dtype=torch.bfloat16
) -> list[LaunchReport]:
    from lcc_kernels.bench import SHAPES as BENCH_SHAPES

    previous = driver._active  # None until a driver was needed; no GPU driver here
    driver.set_active(_Target(DEVICE["arch"]))
    try:
        weights = build_weights(shapes, kinds, dtype)
        reports = []
        for shape in shapes:
            n, k = BENCH_SHAPES[shape]
            for m in ms:
                for kind in kinds:
                    for plan in plans_for(kind, n, k, m, candidates, dtype):
                        reports += compile_plan(shape, m, kind, plan, weights, dtype)
                        if progress:
                            print(_row(reports[-1]), flush=True)
        return reports
    finally:
        driver._active = previous  # reset_active() would look for a GPU driver


def _row(r: LaunchReport) -> str:
    p = r.plan
    blocks = f"{p['block_m']}x{p['block_n']}x{p['block_k']}"
    plan = f"{p['backend']} {blocks} s{p['split_k']} w{p['num_warps']}"
    if r.error:
        return f"{r.shape:14} M={r.m:<5} {r.kind:9} {r.kernel:24} {plan:28} ERROR {r.error}"
    loads = ",".join(f"{w}x{c}" for w, c in sorted((r.loop_global_loads or {}).items()))
    bound = (
        f" {r.instructions_per_position:6.2f} instr/pos"
        f"  ceiling {r.issue_bytes_per_s / 1e12:5.2f} TB/s"
        f"  <= {r.bound_speedup_vs_dense:4.2f}x dense"
        if r.bound_speedup_vs_dense is not None
        else ""
    )
    return (
        f"{r.shape:14} M={r.m:<5} {r.kind:9} {r.kernel:24} {plan:28} reg {r.registers:3} "
        f"spill {r.spill_bytes:4} smem {r.shared_bytes:6} warps/SM {r.warps_per_sm:2} "
        f"loop {r.loop_instructions:5} LDG[{loads}]{bound}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON report path")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--m", default="1,16,1024", help="comma-separated M values")
    parser.add_argument("--candidates", action="store_true", help="every plan the GPU suite times")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="x's and the weights' dtype (the acceptance's is bfloat16)",
    )
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    ms = [int(v) for v in args.m.split(",")]
    dtype = getattr(torch, args.dtype)
    reports = run(args.shapes.split(","), args.kinds.split(","), ms, args.candidates, dtype=dtype)
    if args.out:
        from lcc_kernels.bench import environment
        from restorelcc.io import atomic_write_text

        payload = {
            "device_model": DEVICE,
            "dtype": args.dtype,
            "environment": environment("cpu"),
            "command": " ".join(["python", "benchmarks/compile_report.py", *given]),
            "launches": [asdict(r) for r in reports],
        }
        atomic_write_text(args.out, json.dumps(payload, indent=1))
    failed = [r for r in reports if r.error or r.spill_bytes]
    for r in failed:
        print(f"FAILED: {_row(r)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
