"""Host time of an eager `sparse_linear` call: the part our own Python adds to a launch.

An uncompiled decode step (`generate` without torch.compile or CUDA graphs) waits on the
host: a one-row call on a GPU computes for a few microseconds, less than Python takes to
check, dispatch and launch it. This times that Python on the CPU. `sparse_linear` runs
as on an H200: forced Triton backends, the dispatcher told the device has 132 SMs (so
plans split K as there), and the Triton kernels replaced by recorders. What is timed is
every step up to the launch (checks, plan, operands, grid, split-K workspace and
counters), not Triton's own launcher, which adds its cost on top. The baseline is one
small `F.linear` on the CPU (a PyTorch op's dispatch), timed with each case in the same
context, round for round (`restorelcc.latency.interleaved_rounds`: `--repeat` rounds of
`--number` calls each, the two alternating who goes first): a case's `vs_F.linear` is the
median of its per-round ratios, i.e. how many plain ops one of our calls costs.
`host_us` and `baseline_us` are each the fastest round's time per call. Rounds are kept
short (20 calls: about half a millisecond) so that few of them contain a preemption by
another process; on a busy machine long rounds made the ratio jump by 1.5x.
`tests/latency` re-measures the ratios against the stored result.

    python benchmarks/bench_host_overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import lcc_kernels
from lcc_kernels import dispatch, launch
from restorelcc.io import atomic_write_json, format_table
from restorelcc.latency import interleaved_rounds, median_ratios
from restorelcc.provenance import load_average, run_metadata

RESULTS = Path(__file__).resolve().parent / "results"
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


def plain_op():
    """The baseline: `F.linear` of a [1, 8] input by an [8, 8] weight plus bias, on the CPU."""
    x, w, b = torch.randn(1, 8), torch.randn(8, 8), torch.randn(8)
    return lambda: F.linear(x, w, b)


def measure_case(weight, x, bias, backend: str, recorders, number: int, repeat: int) -> dict:
    """Host time of `sparse_linear(x, weight, bias, backend=...)` against `plain_op`, in
    `repeat` interleaved rounds of `number` calls each; run inside `recorded_launches()`
    (whose `recorders` count the launches) and the caller's inference mode."""
    call = lambda: lcc_kernels.sparse_linear(x, weight, bias, backend=backend)  # noqa: E731
    before = sum(r.launches for r in recorders.values())
    call()
    launches = sum(r.launches for r in recorders.values()) - before
    times = interleaved_rounds(
        {"F.linear": plain_op(), "sparse_linear": call}, repeat, number=number
    )
    plan = dispatch.choose_plan(x.shape[0], weight, x.dtype, x.device, backend)
    return {
        "split_k": plan.split_k,
        "launches": launches,
        "host_us": round(1e6 * min(times["sparse_linear"]), 2),
        "baseline_us": round(1e6 * min(times["F.linear"]), 2),
        "vs_F.linear": round(median_ratios(times, "F.linear")["sparse_linear"], 2),
    }


def case_operands(cases, shape: tuple[int, int]) -> list[tuple[tuple, object, object, object]]:
    """(case, packed weight [N, K], x [M, K], bias [N]) in fp16 for each (format, backend,
    M) of `cases`; one weight per format."""
    n, k = shape
    generator = torch.Generator().manual_seed(0)
    weights = {fmt: _weight(fmt, n, k, generator) for fmt in dict.fromkeys(c[0] for c in cases)}
    bias = torch.randn(n, generator=generator, dtype=torch.float16)
    operands = []
    for fmt, backend, m in cases:
        x = torch.randn(m, k, generator=generator, dtype=torch.float16)
        operands.append(((fmt, backend, m), weights[fmt], x, bias))
    return operands


def measure_cases(operands, number: int, repeat: int) -> list[dict]:
    """One row per `case_operands` entry: `measure_case` under inference mode, with the
    launches recorded and H200 plans (streams laid out for them first)."""
    rows = []
    with torch.inference_mode(), recorded_launches() as recorders:
        for (fmt, backend, m), weight, x, bias in operands:
            if backend == "streams":
                lcc_kernels.prepare_streams(weight)
            timing = measure_case(weight, x, bias, backend, recorders, number, repeat)
            rows.append({"format": fmt, "backend": backend, "m": m, **timing})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=20, help="calls per round")
    p.add_argument(
        "--repeat", type=int, default=400, help="rounds per case, each timing both calls"
    )
    p.add_argument("--shape", type=int, nargs=2, default=(N, K), metavar=("N", "K"))
    p.add_argument("--out", default=str(RESULTS / "host_overhead_cpu.json"))
    args = p.parse_args(argv)
    for name in ("number", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.shape) < 1:
        p.error(f"--shape must be two sizes >= 1, got {args.shape}")

    load_before = load_average()
    operands = case_operands(CASES, tuple(args.shape))
    rows = measure_cases(operands, args.number, args.repeat)
    result = {
        "shape": list(args.shape),
        "dtype": "float16",
        "baseline": {"op": "F.linear [1, 8] x [8, 8] + bias, CPU, timed with each case"},
        "number": args.number,
        "repeat": args.repeat,
        "rows": rows,
        "median_host_us": statistics.median(r["host_us"] for r in rows),
        "median_vs_F.linear": statistics.median(r["vs_F.linear"] for r in rows),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_average()},
        "run_metadata": run_metadata(),
    }
    out = atomic_write_json(Path(args.out), result)
    print(format_table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
