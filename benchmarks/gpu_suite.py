#!/usr/bin/env python
"""One GPU run of lcc_kernels: correctness at real shapes, timings against the
baselines, a measured dispatch table and the acceptance summary of issue 5 (see kernels.md).

    python benchmarks/gpu_suite.py OUT_DIR [--budget-s 360] [--commit SHA] [--phases ...]
    python benchmarks/gpu_suite.py OUT_DIR --smoke     # CPU, Triton interpreter, tiny shapes
    python benchmarks/gpu_suite.py OUT_DIR --e2e-budget-s 90   # + end-to-end phase, below

On an H200 the full run takes about --budget-s seconds plus a few (it stops adding work
when the budget is spent, then summarises); give the device 60-90 s more than that.
Phases, most important first (each also stops at its own cap, PHASE_CAPS):
  env          GPU, versions, commit, measured device-copy bandwidth -> env.json
  correctness  bf16/fp16, every format and path, bias, at the Llama-3-8B shapes, vs fp64;
               split-K determinism, CUDA graphs (two, replayed out of order and at once;
               torch.compile reduce-overhead, budget allowing), torch semi-structured round trips
  acceptance   M = 1 and 16 on Llama-3-8B qkv 6144x4096 and o 4096x4096, bf16: dense
               F.linear + bias, torch semi-structured (cuSPARSELt, CUTLASS), ours (2:4,
               bitmap 50% and 70% each in two tiles, a sweep of block configs), the dense
               Triton kernel with the same tilings, the bias-epilogue cost (best plan
               with vs without), then M = 1 calls issued eagerly (no graph): dense F.linear
               vs ours as dispatched by default, host overhead included
  prefill      M = 1024 and 4096 on the same shapes
  sweep        the other M of kernels.md on the same shapes
  shapes       Llama-2-7B, Llama-3-70B and its TP splits, as time allows
Optional last phase, off by default: --e2e-budget-s S keeps the last S seconds of the
budget for benchmarks/bench_e2e.py (swapped attention, and attention + MLP, in a
Llama-3-8B-shaped model, decode and prefill, with this run's dispatch table) in its own
process, writing OUT_DIR/e2e/.
While correctness runs, worker processes compile the Triton configs of the timing phases
in parallel (into Triton's on-disk cache), so the timing phases rarely wait for compilers.

All phases run in one child process; if it dies (a CUDA fault poisons a process), a new
child resumes at the next phase, and one provider failing only marks its row. Results are
appended to OUT_DIR as they are measured, seven files: env.json, phases.jsonl,
correctness.jsonl, timings.jsonl, timings.csv, then dispatch_table.json (for
lcc_kernels.load_table) and summary.json (each acceptance check pass / fail / unmeasured
with the measured ratio; lcc_kernels.bench_report). Schema: benchmarks/results/README.md.
Timings are per call, from CUDA-graph replays of calls that rotate over weight copies
(L2 cannot serve them), timed with triton.testing.do_bench (median, 20% and 80%).

This file drives the run (child processes, resume, compile workers, summary); what is
timed is in suite_plans.py, how a job runs in suite_runner.py, the phases in
suite_phases.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from suite_phases import phase_correctness, phase_env, phase_shapes, phase_timing  # noqa: E402
from suite_plans import Config, config, phase_jobs  # noqa: E402
from suite_runner import Runner, describe_error, exit_if_fatal  # noqa: E402

# Seconds each phase may use at most (the whole run is also capped by --budget-s).
PHASE_CAPS = {
    "env": 30,
    "correctness": 75,
    "acceptance": 110,
    "prefill": 50,
    "sweep": 70,
    "shapes": 10**6,
}
PHASES = tuple(PHASE_CAPS)
TIMING_PHASES = ("acceptance", "prefill", "sweep")
# Longest wait for the compile workers before timing starts (then they are killed).
PRECOMPILE_WAIT_S = 60
# The optional end-to-end phase (bench_e2e.py) is skipped with less than this many
# seconds left (building the model and compiling its kernels take some); its process may
# overrun its budget by the grace, to finish the timing it started.
E2E_MIN_S = 30
E2E_GRACE_S = 60


# ---------------------------------------------------------------------------- precompile


def start_precompile(out: Path, cfg: Config, workers: int) -> list[subprocess.Popen]:
    """Worker processes that run every timing job once, filling Triton's disk cache."""
    command = [sys.executable, __file__, str(out), "--precompile-worker"]
    if cfg.smoke:
        command.append("--smoke")
    return [
        subprocess.Popen(command + [f"--worker={i}/{workers}"], stdout=subprocess.DEVNULL)
        for i in range(workers)
    ]


def precompile_worker(out: Path, cfg: Config, worker: str) -> None:
    import torch

    from lcc_kernels.bench import build_calls, plan_tile

    index, count = (int(v) for v in worker.split("/"))
    runner = Runner(out, cfg, deadline=float("inf"))
    jobs = [
        job
        for phase in TIMING_PHASES
        for job in phase_jobs(cfg, phase, runner.sms)
        if job.provider in ("ours", "dense_triton")
    ]
    mine = jobs[index::count][: 2 if cfg.smoke else None]
    for job in mine:
        try:
            dense = runner.dense(job.shape, job.kind)
            packed = (
                runner.packed(job.shape, job.kind, tile=plan_tile(job.kind, job.plan))
                if job.provider == "ours"
                else None
            )
            calls, _ = build_calls(
                job.provider, dense, job.m, bias=job.bias, copies=1, plan=job.plan, packed=packed
            )
            calls[0]()
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as error:  # recorded; the timing phase will meet it again
            _log_phase(out, "precompile", "error", job=repr(job), error=describe_error(error))
            exit_if_fatal(error)


def finish_precompile(workers: list[subprocess.Popen], out: Path, wait_s: float) -> None:
    end = time.time() + wait_s
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, end - time.time()))
        except subprocess.TimeoutExpired:
            worker.kill()  # what it compiled so far stays in the cache
            worker.wait()
    codes = [worker.returncode for worker in workers]
    with open(out / "phases.jsonl", "a") as handle:
        handle.write(
            json.dumps(
                {"phase": "precompile", "event": "end", "exit_codes": codes, "time": time.time()}
            )
            + "\n"
        )


# ---------------------------------------------------------------------------- driver


def run_child(
    out: Path, cfg: Config, phases: list[str], deadline: float, commit: str | None, workers: int
) -> None:
    runner = Runner(out, cfg, deadline)
    compilers: list[subprocess.Popen] = []
    wants_compilers = workers > 0 and any(p in TIMING_PHASES for p in phases)
    for phase in phases:
        if wants_compilers and phase != "env":  # after the copy-bandwidth measurement
            compilers, wants_compilers = start_precompile(out, cfg, workers), False
        if phase in TIMING_PHASES + ("shapes",) and compilers:
            finish_precompile(compilers, out, min(PRECOMPILE_WAIT_S, deadline - time.time()))
            compilers = []
        _log_phase(out, phase, "start")
        runner.phase = phase
        runner.phase_deadline = time.time() + PHASE_CAPS[phase]
        status = "ok"
        try:
            if phase == "env":
                phase_env(runner, commit)
            elif phase == "correctness":
                phase_correctness(runner)
            elif phase == "shapes":
                phase_shapes(runner)
            else:
                phase_timing(runner, phase)
        except Exception as error:  # a bug in one phase must not stop the others
            status = "error: " + describe_error(error)
            traceback.print_exc()
            exit_if_fatal(error)
        _log_phase(out, phase, "end", status=status)
        if phase == "correctness":
            runner.forget_weights()
    if compilers:
        finish_precompile(compilers, out, 0)


def _log_phase(out: Path, phase: str, event: str, **extra) -> None:
    with open(out / "phases.jsonl", "a") as handle:
        handle.write(
            json.dumps({"phase": phase, "event": event, "time": time.time(), **extra}) + "\n"
        )
    if event != "error":
        print(f"[{time.strftime('%H:%M:%S')}] {phase} {event} {extra or ''}", flush=True)


def _phases_started(out: Path) -> list[str]:
    path = out / "phases.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["phase"] for e in events if e["event"] == "start"]


def orchestrate(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; give a new directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    e2e_budget_s = getattr(args, "e2e_budget_s", 0.0)  # callers may build args by hand
    deadline = start + args.budget_s - e2e_budget_s
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.smoke:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    remaining = ["env"] + [p for p in PHASES if p in args.phases and p != "env"]
    while remaining and time.time() < deadline:
        command = [
            sys.executable,
            __file__,
            str(out),
            "--child",
            ",".join(remaining),
            f"--deadline={deadline}",
            f"--workers={args.workers}",
        ]
        command += ["--smoke"] if args.smoke else []
        command += [f"--commit={args.commit}"] if args.commit else []
        try:
            code = subprocess.run(command, env=env, timeout=deadline - time.time() + 30).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        started = _phases_started(out)
        if code == 0:
            break
        crashed = [p for p in remaining if p in started][-1:] or remaining[:1]
        _log_phase(out, crashed[0], "crash", exit_code=code)
        remaining = remaining[remaining.index(crashed[0]) + 1 :]
    from lcc_kernels.bench_report import build_dispatch_table, format_summary, summarize

    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "dispatch_table.json").write_text(json.dumps(build_dispatch_table(out), indent=2))
    print(format_summary(summary) + f"\n(whole run {time.time() - start:.0f} s)")
    if e2e_budget_s > 0:
        run_e2e(out, start + args.budget_s - time.time(), args)
    return 0


def run_e2e(out: Path, budget_s: float, args) -> None:
    """The optional end-to-end phase: benchmarks/bench_e2e.py in its own process."""
    if budget_s < E2E_MIN_S:
        _log_phase(out, "e2e", "end", status=f"skipped: {budget_s:.0f} s left")
        return
    command = [
        sys.executable,
        str(Path(__file__).with_name("bench_e2e.py")),
        str(out / "e2e"),
        f"--budget-s={budget_s}",
        f"--dispatch-table={out / 'dispatch_table.json'}",
    ]
    command += ["--smoke"] if args.smoke else []
    command += [f"--commit={args.commit}"] if args.commit else []
    _log_phase(out, "e2e", "start")
    try:  # the bench stops starting work at budget_s; allow the last job to finish
        code = subprocess.run(
            command, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=budget_s + E2E_GRACE_S
        ).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    _log_phase(out, "e2e", "end", status="ok" if code == 0 else f"error: exit {code}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory for the results (created)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (interpreter)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="wall-clock budget of the whole run in seconds",
    )
    parser.add_argument(
        "--commit",
        default=os.environ.get("LCC_COMMIT"),
        help="git commit to record when the tree has no .git",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel compile workers (default: CPUs - 2, at most 12)",
    )
    parser.add_argument(
        "--e2e-budget-s",
        type=float,
        default=0.0,
        help="seconds of the budget kept for the end-to-end phase (0: off)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (env always runs)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precompile-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phases = args.phases.split(",")
    if not 0 <= args.e2e_budget_s < args.budget_s:
        parser.error(f"--e2e-budget-s must be in [0, --budget-s), got {args.e2e_budget_s}")
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    if args.workers is None:
        args.workers = 1 if args.smoke else max(1, min(12, (os.cpu_count() or 2) - 2))
    if args.precompile_worker:
        precompile_worker(Path(args.out), config(args.smoke), args.worker)
        return 0
    if args.child is not None:
        run_child(
            Path(args.out),
            config(args.smoke),
            args.child.split(","),
            args.deadline,
            args.commit,
            args.workers,
        )
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
