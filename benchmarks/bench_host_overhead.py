"""Host time of an eager `sparse_linear` call: the part our own Python adds to a launch.

An uncompiled decode step (`generate` without torch.compile or CUDA graphs) waits on the
host: a one-row call on a GPU computes for a few microseconds, less than Python takes to
check, dispatch and launch it. This times that Python on the CPU. `sparse_linear` runs
as on an H200: forced Triton backends, the dispatcher told the device has 132 SMs (so
plans split K as there), and the Triton kernels replaced by recorders. What is timed is
every step up to the launch (checks, plan, operands, grid, split-K workspace and
counters), not Triton's own launcher, which adds its cost on top. The baseline, timed in
the same run, is one small `F.linear` on the CPU (a PyTorch op's dispatch): the ratio
says how many plain ops one of our calls costs.

    python benchmarks/bench_host_overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import timeit
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import lcc_kernels
from lcc_kernels import dispatch, launch
from restorelcc.io import atomic_write_json, format_table, run_metadata

H200 = ("NVIDIA H200", 132)  # dispatch.device_info's (name, SM count)
N, K = 4096, 4096  # Llama-3-8B o_proj: its split-K; host time does not depend on the size
# (format, backend, M): decode, where the host time is what a step waits on. Larger M
# would time the CPU's malloc of out and the split-K partials, which a GPU's caching
# allocator serves in well under a microsecond.
CASES = (
    ("2:4", "skinny", 1),
    ("bitmap", "skinny", 1),
    ("bitmap", "streams", 1),
    ("2:4", "skinny", 2),
    ("bitmap", "streams", 4),
)
KERNELS = ("skinny_linear_kernel", "tiled_linear_kernel", "stream_linear_kernel")


class _Recorder:
    """Stands in for a Triton kernel: `kernel[grid](*args, **options)` counts, runs nothing."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **options) -> None:
        self.launches += 1


@contextlib.contextmanager
def recorded_launches():
    """The launchers' kernels replaced by recorders, CPU tensors let through, and the
    dispatcher planning for an H200."""
    recorders = {name: _Recorder() for name in (*KERNELS, "reduce_partials_kernel")}
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(dispatch, "device_info", lambda d: H200))
        for name, recorder in recorders.items():
            stack.enter_context(mock.patch.object(launch, name, recorder))
        stack.enter_context(mock.patch.object(launch, "_check_runnable", lambda x: None))
        yield recorders


def _weight(fmt: str, n: int, k: int, generator: torch.Generator):
    dense = torch.randn(n, k, generator=generator, dtype=torch.float16)
    if fmt == "2:4":
        dense.view(-1, 4)[:, :2] = 0
    else:
        dense *= torch.rand(n, k, generator=generator) > 0.5
    return lcc_kernels.pack(dense, fmt)


def _per_call_us(call, number: int, repeat: int) -> float:
    call()
    return 1e6 * min(timeit.repeat(call, number=number, repeat=repeat)) / number


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=5000, help="calls per timing")
    p.add_argument("--repeat", type=int, default=5, help="timings per case (the best is kept)")
    p.add_argument("--shape", type=int, nargs=2, default=(N, K), metavar=("N", "K"))
    p.add_argument("--out", default="benchmarks/results/host_overhead_cpu.json")
    args = p.parse_args(argv)

    n, k = args.shape
    generator = torch.Generator().manual_seed(0)
    weights = {fmt: _weight(fmt, n, k, generator) for fmt in ("2:4", "bitmap")}
    bias = torch.randn(n, generator=generator, dtype=torch.float16)
    small_x, small_w, small_b = torch.randn(1, 8), torch.randn(8, 8), torch.randn(8)
    plain_op = lambda: F.linear(small_x, small_w, small_b)  # noqa: E731
    baseline_us = _per_call_us(plain_op, args.number, args.repeat)

    rows = []
    with torch.inference_mode(), recorded_launches() as recorders:
        for fmt, backend, m in CASES:
            weight, x = weights[fmt], torch.randn(m, k, generator=generator, dtype=torch.float16)
            if backend == "streams":
                lcc_kernels.prepare_streams(weight)
            before = sum(r.launches for r in recorders.values())
            lcc_kernels.sparse_linear(x, weight, bias, backend=backend)
            launches = sum(r.launches for r in recorders.values()) - before
            us = _per_call_us(
                lambda x=x, w=weight, b=backend: lcc_kernels.sparse_linear(x, w, bias, backend=b),
                args.number,
                args.repeat,
            )
            plan = dispatch.choose_plan(m, weight, x.dtype, x.device, backend)
            rows.append(
                {
                    "format": fmt,
                    "backend": backend,
                    "m": m,
                    "split_k": plan.split_k,
                    "launches": launches,
                    "host_us": round(us, 2),
                    "vs_F.linear": round(us / baseline_us, 2),
                }
            )
    result = {
        "shape": [n, k],
        "dtype": "float16",
        "baseline": {"op": "F.linear [1, 8] x [8, 8] + bias, CPU", "host_us": baseline_us},
        "rows": rows,
        "median_host_us": statistics.median(r["host_us"] for r in rows),
        "torch_threads": torch.get_num_threads(),
        "run_metadata": run_metadata(),
    }
    out = atomic_write_json(Path(args.out), result)
    print(format_table(rows))
    print(f"baseline: F.linear on [1, 8] x [8, 8], {baseline_us:.2f} us per call")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
