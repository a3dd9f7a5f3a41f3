"""The GPU suite's phases (see gpu_suite.py): env, correctness, the timing phases and the
other shapes. Each phase is a list of passes of items (correctness checks, timing jobs,
rounds of paired re-timings) run in order; a child resumed after a fatal CUDA error
starts after the item it died in (`resume`), or records the rest as skipped."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from suite_plans import (
    EXTRA_BITMAP_TILES,
    Job,
    Pass,
    Rounds,
    phase_passes,
    shapes_jobs,
)
from suite_runner import Runner, describe_error, exit_if_fatal, log_phase

from lcc_kernels.acceptance import SPARSE_KINDS
from lcc_kernels.bench_report import load_rows
from lcc_kernels.dispatch import STREAMS_MAX_M


def phase_env(runner: Runner, commit: str | None) -> None:
    from lcc_kernels.bench import copy_bandwidth, environment
    from restorelcc.io import atomic_write_json

    info = environment(runner.device, commit)
    info["copy_bandwidth_bytes_per_s"] = copy_bandwidth(runner.device)
    info["smoke"] = runner.cfg.smoke
    info["main_shapes"] = list(runner.cfg.main_shapes)  # the report's required checks
    info["cutlass_semi_structured"] = _cutlass_not_run(runner, info)
    atomic_write_json(runner.out / "env.json", info)
    runner.copy_bw = copy_bw = info["copy_bandwidth_bytes_per_s"]
    print(
        f"env: {info.get('gpu')} torch {info['torch']} triton {info['triton']} copy "
        f"{'-' if copy_bw is None else f'{copy_bw / 1e12:.2f} TB/s'}",
        flush=True,
    )


def _cutlass_not_run(runner: Runner, info: dict) -> str | None:
    """Why the CUTLASS semi-structured jobs are left out (Runner.cutlass_matmul), or None
    where they run: the summary says so, rather than their rows being silently absent."""
    if runner.cutlass_matmul:
        return None
    capability = ".".join(map(str, info.get("capability") or [])) or "unknown"
    return (
        "not run: torch runs its CUTLASS 2:4 matmul on compute capability 8.x only, "
        f"this device's is {capability}"
    )


@dataclass(frozen=True)
class Check:
    """One correctness check: its row's identifying fields and what computes the rest."""

    row: dict
    run: Callable[[], dict]
    cuda_only: bool = False


COMPILED_CHECK_RESERVE_S = 30.0


def correctness_passes(runner: Runner) -> list[Pass]:
    """The named checks first, then the kernels against fp64 at every path, then (last:
    torch.compile takes tens of seconds) the compiled graphs. What the budget leaves out
    is recorded as skipped, as are the CUDA-only checks on a CPU."""
    torch = runner.torch
    shapes = list(runner.cfg.main_shapes)
    named = [
        Check({"name": "split_k_bitwise_determinism"}, lambda: _determinism(runner, shapes[0])),
        Check({"name": "cuda_graph_replay"}, lambda: _graph_check(runner, shapes[0]), True),
        Check(
            {"name": "cuda_graph_replay_streams"},
            lambda: _graph_check(runner, shapes[0], streams=True),
            True,
        ),
    ]
    named += [
        Check(
            {"name": f"semi_structured_round_trip_{backend}"},
            lambda backend=backend: _interop_check(runner, shapes[0], backend),
            True,
        )
        for backend in ("cusparselt", "cutlass")
    ]
    dtypes = [torch.float32] if runner.cfg.smoke else [torch.bfloat16, torch.float16]
    paths = list(zip(runner.cfg.correctness_m, ("skinny", "skinny", "tiled"), strict=True))
    problems = [
        (dtype, shape, kind, m, backend, None)
        for dtype in dtypes
        for shape in (shapes if dtype == dtypes[0] else shapes[:1])
        for kind in SPARSE_KINDS
        for m, backend in paths
    ]
    # The bitmap tiles the timing phases add (each a packing of its own).
    problems += [
        (dtypes[0], shapes[0], "bitmap50", m, backend, tile)
        for tile in EXTRA_BITMAP_TILES
        for m, backend in paths
    ]
    # The streams backend, at the row counts it is timed for.
    problems += [
        (dtypes[0], shape, kind, m, "streams", None)
        for shape in shapes
        for kind in ("bitmap50", "bitmap70")
        for m in sorted({1, STREAMS_MAX_M})
    ]
    kernels = []
    for dtype, shape, kind, m, backend, tile in problems:
        row = dict(dtype=str(dtype), shape=shape, kind=kind, m=m, backend=backend)
        kernels.append(
            Check(
                row if tile is None else dict(row, tile=list(tile)),
                lambda problem=(dtype, shape, kind, m, backend, tile): _linear_check(
                    runner, *problem
                ),
            )
        )
    compiled = Check(
        {"name": "compiled_cuda_graphs"}, lambda: _compiled_graphs_check(runner, shapes[0]), True
    )
    return [
        Pass("named", lambda rows: named),
        Pass("kernels", lambda rows: kernels),
        # Started only with 30 s of the phase cap left: a cold torch.compile beside the
        # compile workers can take tens of seconds, which the cap cannot cut short, and
        # the acceptance phase's timings come after it.
        Pass("compiled", lambda rows: [compiled], phase_reserve_s=COMPILED_CHECK_RESERVE_S),
    ]


def phase_correctness(runner: Runner, resume: dict | None = None) -> None:
    run_passes(runner, correctness_passes(runner), resume)


def phase_timing(runner: Runner, phase: str, resume: dict | None = None) -> None:
    passes = phase_passes(runner.cfg, phase, runner.sms)
    run_passes(runner, passes, resume, quick=phase == "sweep")


def phase_shapes(runner: Runner, resume: dict | None = None) -> None:
    """Every other shape with the built-in rules' plans, as long as the budget lasts."""
    jobs = shapes_jobs(runner.cfg, runner.sms)
    run_passes(runner, [Pass("shapes", lambda rows: jobs)], resume, quick=True, per_shape=True)


def run_passes(
    runner: Runner,
    passes: list[Pass],
    resume: dict | None = None,
    quick: bool = False,
    per_shape: bool = False,
) -> None:
    """Run the items of `passes` in order, each after a progress marker. `resume` (from
    the orchestrator: "pass", "index", "skip_rest"): start at that item; with skip_rest,
    record it and every later item as skipped for that reason instead. Timing items stop
    where the budget does; correctness checks left out are recorded as skipped. Where
    the budget cuts a pass, a "budget" event in phases.jsonl gives its items done / total.
    per_shape: forget the weights whenever the shape changes (the other shapes' phase)."""
    names = [p.name for p in passes]
    at = names.index(resume["pass"]) if resume and resume.get("pass") in names else 0
    first = resume["index"] if resume and resume.get("pass") in names else 0
    skip_reason = resume.get("skip_rest") if resume else None
    shape = None
    for step in passes[at:]:
        items = step.build(load_rows(runner.out, "timings.jsonl"))
        for index in range(first, len(items)):
            item = items[index]
            if skip_reason is None and not runner.time_left(step.phase_reserve_s, step.optional):
                # phases.jsonl and the summary say what the budget left out (timings: no rows)
                cut = {"pass": step.name, "done": index, "total": len(items)}
                log_phase(runner.out, runner.phase, "budget", **cut)
                if not isinstance(item, Check):
                    break
                skip_reason = "budget"
            if skip_reason is not None:
                _skip(runner, item, skip_reason)
                continue
            if per_shape and isinstance(item, Job) and item.shape != shape:
                runner.forget_weights()
                shape = item.shape
            runner.mark(step.name, index, item)
            if isinstance(item, Check):
                _check(runner, item)
            elif isinstance(item, Rounds):
                runner.run_rounds(item)
            else:
                runner.run(item, quick=quick)
        first = 0
        if skip_reason == "budget":
            skip_reason = None  # the next pass may have a smaller reserve


def _skip(runner: Runner, item, reason: str) -> None:
    if isinstance(item, Check):
        row = dict(item.row, status="skipped", reason=reason)
        runner.append("correctness.jsonl", row)
        print(f"correctness skip {row}", flush=True)
    else:
        for job in item.jobs if isinstance(item, Rounds) else [item]:
            runner.skip(job, f"skipped: {reason}")


def _check(runner: Runner, check: Check) -> None:
    """Run one correctness check; its row says ok, or why not (an exception is a failure)."""
    if check.cuda_only and runner.device.type != "cuda":
        _skip(runner, check, "needs CUDA")
        return
    row, started, fatal = dict(check.row), time.time(), None
    try:
        row.update(check.run(), status="ok")
    except Exception as error:
        row.update(ok=False, status="error", error=describe_error(error))
        fatal = error
    runner.append("correctness.jsonl", dict(row, seconds=round(time.time() - started, 3)))
    print(f"correctness {'ok  ' if row.get('ok') else 'FAIL'} {row}", flush=True)
    if fatal is not None:
        exit_if_fatal(fatal)


def _determinism(runner: Runner, shape: str) -> dict:
    """Split-K skinny plans: ten calls bitwise equal, serial and two-pass reductions too."""
    torch = runner.torch
    from lcc_kernels import Plan, sparse_linear

    packed = runner.packed(shape, "2:4")
    x = torch.randn(4, packed.shape[1], device=runner.device, dtype=runner.dtype)
    plans = [
        Plan("skinny", 16, 64, 64, split_k=16, serial_reduction=serial) for serial in (True, False)
    ]
    first = sparse_linear(x, packed, plan=plans[0])
    same = all(torch.equal(sparse_linear(x, packed, plan=plans[0]), first) for _ in range(10))
    return {"ok": same and torch.equal(sparse_linear(x, packed, plan=plans[1]), first)}


def _linear_check(runner, dtype, shape, kind, m, backend, tile=None):
    torch = runner.torch
    from lcc_kernels import sparse_linear
    from lcc_kernels.bench import check_against_oracle

    dense = runner.dense(shape, kind, dtype)
    packed = runner.packed(shape, kind, dtype, tile)
    x = torch.randn(m, dense.shape[1], device=runner.device, dtype=dtype)
    bias = torch.randn(dense.shape[0], device=runner.device)
    return check_against_oracle(sparse_linear(x, packed, bias, backend=backend), x, dense, bias)


def _graph_check(runner, shape, streams: bool = False):
    """Two split-K graphs, the second replayed first, then both at once on two streams;
    with `streams`, of the streams backend (its copy built by the eager call before)."""
    torch = runner.torch
    from lcc_kernels import Plan, sparse_linear
    from lcc_kernels.bench import check_against_oracle

    dense, packed = runner.dense(shape, "bitmap50"), runner.packed(shape, "bitmap50")
    bias = torch.randn(dense.shape[0], device=runner.device)
    xs = [torch.randn(1, dense.shape[1], device=runner.device, dtype=runner.dtype) for _ in "ab"]
    plan = Plan("skinny", 1, 64, 64, split_k=8)
    if streams:
        plan = Plan("streams", 1, 64, split_k=8, num_warps=2)
    sparse_linear(xs[0], packed, bias, plan=plan)
    torch.cuda.synchronize()
    graphs, ys = [torch.cuda.CUDAGraph() for _ in xs], []
    for graph, x in zip(graphs, xs, strict=True):
        with torch.cuda.graph(graph):
            ys.append(sparse_linear(x, packed, bias, plan=plan))
    side_streams = [torch.cuda.Stream() for _ in graphs]
    results = []
    for _ in range(3):
        for x in xs:
            x.copy_(torch.randn_like(x))
        torch.cuda.synchronize()
        for graph, stream in reversed(list(zip(graphs, side_streams, strict=True))):
            with torch.cuda.stream(stream):
                graph.replay()
        torch.cuda.synchronize()
        results += [check_against_oracle(y, x, dense, bias) for x, y in zip(xs, ys, strict=True)]
    return {"ok": all(r["ok"] for r in results), "error": max(r["error"] for r in results)}


def _compiled_graphs_check(runner, shape):
    """torch.compile(mode="reduce-overhead"), split-K: two M values, so several recordings,
    and several runs (each hands the graph pool's memory out again)."""
    torch = runner.torch
    from torch._dynamo.utils import counters

    from lcc_kernels import sparse_linear
    from lcc_kernels.bench import check_against_oracle

    dense, packed = runner.dense(shape, "2:4"), runner.packed(shape, "2:4")
    bias = torch.randn(dense.shape[0], device=runner.device)
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, backend="skinny"), mode="reduce-overhead"
    )
    skips = counters["inductor"]["cudagraph_skips"]
    results = []
    for _ in range(3):
        for m in (1, 3):
            x = torch.randn(m, dense.shape[1], device=runner.device, dtype=runner.dtype)
            results.append(check_against_oracle(compiled(x).clone(), x, dense, bias))
    skips = counters["inductor"]["cudagraph_skips"] - skips  # graphs not used: no test
    return {
        "ok": all(r["ok"] for r in results) and skips == 0,
        "error": max(r["error"] for r in results),
        "cudagraph_skips": skips,
    }


def _interop_check(runner, shape, backend):
    torch = runner.torch
    from lcc_kernels import from_torch_semi_structured, to_torch_semi_structured, unpack

    packed = runner.packed(shape, "2:4")
    back = from_torch_semi_structured(to_torch_semi_structured(packed, backend))
    return {"ok": torch.equal(unpack(back), unpack(packed))}
