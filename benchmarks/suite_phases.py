"""The GPU suite's phases (see gpu_suite.py): env, correctness, the timing phases with the
bias-epilogue cost, and the other shapes."""

from __future__ import annotations

import json
import time

from suite_plans import (
    EXTRA_BITMAP_TILES,
    Job,
    candidates,
    eager_jobs,
    phase_jobs,
    timing_jobs,
)
from suite_runner import Runner, describe_error, exit_if_fatal

from lcc_kernels.bench_report import SPARSE_KINDS
from lcc_kernels.dispatch import STREAMS_MAX_M


def phase_env(runner: Runner, commit: str | None) -> None:
    from lcc_kernels.bench import copy_bandwidth, environment

    info = environment(runner.device, commit)
    info["copy_bandwidth_bytes_per_s"] = copy_bandwidth(runner.device)
    info["smoke"] = runner.cfg.smoke
    (runner.out / "env.json").write_text(json.dumps(info, indent=2))
    runner.copy_bw = info["copy_bandwidth_bytes_per_s"]
    copy_bw = info["copy_bandwidth_bytes_per_s"]
    print(
        f"env: {info.get('gpu')} torch {info['torch']} triton {info['triton']} copy "
        f"{'-' if copy_bw is None else f'{copy_bw / 1e12:.2f} TB/s'}",
        flush=True,
    )


def phase_correctness(runner: Runner) -> None:
    torch = runner.torch
    from lcc_kernels import Plan, sparse_linear

    dtypes = [torch.float32] if runner.cfg.smoke else [torch.bfloat16, torch.float16]
    shapes = list(runner.cfg.main_shapes)
    paths = list(zip(runner.cfg.correctness_m, ("skinny", "skinny", "tiled"), strict=True))
    checks = [
        (dtype, shape, kind, m, backend, None)
        for dtype in dtypes
        for shape in (shapes if dtype == dtypes[0] else shapes[:1])
        for kind in SPARSE_KINDS
        for m, backend in paths
    ]
    # The bitmap tiles the timing phases add (each a packing of its own).
    checks += [
        (dtypes[0], shapes[0], "bitmap50", m, backend, tile)
        for tile in EXTRA_BITMAP_TILES
        for m, backend in paths
    ]
    # The streams backend, at the row counts it is timed for.
    checks += [
        (dtypes[0], shape, kind, m, "streams", None)
        for shape in shapes
        for kind in ("bitmap50", "bitmap70")
        for m in sorted({1, STREAMS_MAX_M})
    ]
    for dtype, shape, kind, m, backend, tile in checks:
        if not runner.time_left():
            return
        row = dict(dtype=str(dtype), shape=shape, kind=kind, m=m, backend=backend)
        _check(
            runner,
            row if tile is None else dict(row, tile=list(tile)),
            lambda dtype=dtype, shape=shape, kind=kind, m=m, backend=backend, tile=tile: (
                _linear_check(runner, dtype, shape, kind, m, backend, tile)
            ),
        )

    def determinism():
        packed = runner.packed(shapes[0], "2:4")
        x = torch.randn(4, packed.shape[1], device=runner.device, dtype=runner.dtype)
        plans = [
            Plan("skinny", 16, 64, 64, split_k=16, serial_reduction=serial)
            for serial in (True, False)
        ]
        first = sparse_linear(x, packed, plan=plans[0])
        same = all(torch.equal(sparse_linear(x, packed, plan=plans[0]), first) for _ in range(10))
        return {"ok": same and torch.equal(sparse_linear(x, packed, plan=plans[1]), first)}

    _check(runner, {"name": "split_k_bitwise_determinism"}, determinism)
    if runner.device.type == "cuda":
        _check(runner, {"name": "cuda_graph_replay"}, lambda: _graph_check(runner, shapes[0]))
        _check(
            runner,
            {"name": "cuda_graph_replay_streams"},
            lambda: _graph_check(runner, shapes[0], streams=True),
        )
        for backend in ("cusparselt", "cutlass"):
            _check(
                runner,
                {"name": f"semi_structured_round_trip_{backend}"},
                lambda backend=backend: _interop_check(runner, shapes[0], backend),
            )
        # Last: torch.compile takes tens of seconds, which the timing phases need more.
        if runner.time_left():
            _check(
                runner,
                {"name": "compiled_cuda_graphs"},
                lambda: _compiled_graphs_check(runner, shapes[0]),
            )
        else:
            row = {"name": "compiled_cuda_graphs", "status": "skipped", "reason": "budget"}
            runner.append("correctness.jsonl", row)
            print(f"correctness skip {row}", flush=True)


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
    streams = [torch.cuda.Stream() for _ in graphs]
    results = []
    for _ in range(3):
        for x in xs:
            x.copy_(torch.randn_like(x))
        torch.cuda.synchronize()
        for graph, stream in reversed(list(zip(graphs, streams, strict=True))):
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


def _check(runner: Runner, row: dict, check) -> None:
    """Run one correctness check; its row says ok, or why not (an exception is a failure)."""
    started = time.time()
    fatal = None
    try:
        row.update(check(), status="ok")
    except Exception as error:
        row.update(ok=False, status="error", error=describe_error(error))
        fatal = error
    runner.append("correctness.jsonl", dict(row, seconds=round(time.time() - started, 3)))
    print(f"correctness {'ok  ' if row.get('ok') else 'FAIL'} {row}", flush=True)
    if fatal is not None:
        exit_if_fatal(fatal)


def phase_timing(runner: Runner, phase: str) -> None:
    jobs = phase_jobs(runner.cfg, phase, runner.sms)
    for index, job in enumerate(jobs):
        if not runner.time_left():
            print(f"{phase}: budget spent after {index}/{len(jobs)} jobs", flush=True)
            break
        runner.run(job, quick=phase == "sweep")
        last_of_problem = index + 1 == len(jobs) or (jobs[index + 1].shape, jobs[index + 1].m) != (
            job.shape,
            job.m,
        )
        if phase == "acceptance" and last_of_problem:
            _bias_cost(runner, job.shape, job.m)
    if phase == "acceptance":
        for job in eager_jobs(runner.cfg):
            if runner.time_left():
                runner.run(job)


def _bias_cost(runner: Runner, shape: str, m: int) -> None:
    """Best plan per kind, with and without bias, alternated twice (same run, same copies)."""
    rows = [json.loads(line) for line in (runner.out / "timings.jsonl").read_text().splitlines()]
    from lcc_kernels import Plan

    for kind in SPARSE_KINDS:
        mine = [
            r
            for r in rows
            if r["status"] == "ok"
            and r["provider"] == "ours"
            and r["kind"] == kind
            and r["shape"] == shape
            and r["m"] == m
            and r["bias"]
        ]
        if not mine:
            continue
        plan = Plan.from_dict(min(mine, key=lambda r: r["median_ms"])["plan"])
        for _ in range(2):
            for bias in (False, True):
                if runner.time_left():
                    runner.run(Job(shape, m, kind, "ours", plan, bias, "bias_cost"))


def phase_shapes(runner: Runner) -> None:
    """Breadth over depth: every shape at the first M values, then at the next ones; our
    kernels with the default rules' plan only."""
    for ms in runner.cfg.more_m:
        for shape in runner.cfg.more_shapes:
            for m in ms:
                defaults = {
                    kind: candidates(kind, *runner.shape(shape), m, runner.sms, True)[0]
                    for kind in SPARSE_KINDS
                }
                for job in timing_jobs(runner.cfg, shape, m, runner.sms, all_tilings=False):
                    if not runner.time_left():
                        return
                    if job.provider != "ours" or job.plan == defaults[job.kind]:
                        runner.run(job, quick=True)
            runner.forget_weights()
