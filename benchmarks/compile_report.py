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

This script picks the plans and writes the report; compile_launch.py compiles one plan's
launches and computes the ceilings, compile_sass.py reads the machine code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_report.py compiles real kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
from compile_launch import DEVICE, LaunchReport, compile_plan  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

SHAPES = ("llama3-8b-qkv", "llama3-8b-o")
KINDS = ("dense", "2:4", "bitmap50", "bitmap70")


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
