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
  acceptance   M = 1 and 16 on Llama-3-8B qkv 6144x4096 and o 4096x4096, bf16, in passes
               (suite_plans.phase_passes): first the rows every check reads (dense
               F.linear + bias, torch semi-structured (cuSPARSELt; CUTLASS on 8.x only),
               ours with the built-in rules' plans, the dense Triton kernel in the 2:4
               rules' tiling), then the same rows at the prefill phase's M (the large-M
               checks read them: timed before any optional work, so that slow compiles
               cost candidates, not checks), then our other candidates (2:4, bitmap 50%
               and 70% each in two tiles, a sweep of block configs) while
               PAIRED_RESERVE_S of the cap and of the budget is left, then the verdict
               (each kind's fastest plan, dense and torch semi-structured re-timed in
               turn, 5 rounds: the decode checks judge these medians) and the
               bias-epilogue cost (fastest plan without / with, 5 rounds), then M = 1
               calls issued eagerly (no graph, info), then the dense Triton kernel in the
               other tilings
  prefill      M = 1024 and 4096 on the same shapes: required rows the acceptance phase
               did not record (normally none), candidates, tilings
  sweep        the other M of kernels.md on the same shapes: required rows, candidates
  shapes       Llama-2-7B, Llama-3-70B and its TP splits, the rules' plans, as time allows
Optional passes (candidates, eager, tilings) of the acceptance phase leave
LATER_RESERVE_S of the budget for the prefill phase's candidates.
Optional last phase, off by default: --e2e-budget-s S keeps the last S seconds of the
budget for benchmarks/bench_e2e.py (swapped attention, and attention + MLP, in a
Llama-3-8B-shaped model, decode and prefill, with this run's dispatch table) in its own
process, writing OUT_DIR/e2e/.
While correctness runs, worker processes compile the Triton configs of the timing phases
in parallel (into Triton's on-disk cache; suite_precompile.py): the acceptance phase
starts as soon as its launches are compiled, the workers paused while it times.

All phases run in one child process; one provider failing only marks its row. Before each
item (check, job) the child notes it in a scratch directory outside OUT_DIR; if the child
dies (a fatal CUDA error poisons a process), a new child resumes the same phase after that
item, and skips (a "skipped" row) every later job of the same provider, kind and plan.
After MAX_FAULTS_PER_PHASE deaths in one phase the rest of it is recorded as skipped.
Results are appended to OUT_DIR as they are measured, seven files: env.json,
phases.jsonl, correctness.jsonl, timings.jsonl, timings.csv, then dispatch_table.json (for
lcc_kernels.load_table) and summary.json (each acceptance check pass / fail / fallback /
unmeasured with the measured ratio; lcc_kernels.bench_report). Schema:
benchmarks/results/README.md.
Timings are per call, from CUDA-graph replays of calls that rotate over weight copies
(L2 cannot serve them), timed back to back between CUDA events with no L2 flush
(lcc_kernels.bench.time_calls says why; median, 20% and 80%).

This file drives the run (child processes, resume, summary); what is timed is in
suite_plans.py, how a job runs in suite_runner.py, the phases in suite_phases.py, the
compile workers in suite_precompile.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from suite_phases import phase_correctness, phase_env, phase_shapes, phase_timing  # noqa: E402
from suite_plans import Config, config  # noqa: E402
from suite_precompile import Precompiler, kill_orphans, precompile_worker  # noqa: E402
from suite_runner import Runner, describe_error, exit_if_fatal, log_phase  # noqa: E402

# Seconds each phase may use at most (the whole run is also capped by --budget-s).
PHASE_CAPS = {
    "env": 30,
    "correctness": 75,
    "acceptance": 125,  # with the prefill phase's required rows (~15 s)
    "prefill": 35,
    "sweep": 70,
    "shapes": 10**6,
}
PHASES = tuple(PHASE_CAPS)
TIMING_PHASES = ("acceptance", "prefill", "sweep")
# Longest wait for the compile workers before a timing phase, and at most half the budget
# left (its launches compiled, the wait ends; the workers are stopped while the phase
# times, and killed before the sweep).
PRECOMPILE_WAIT_S = {"acceptance": 60, "prefill": 20}
# Seconds of the budget a phase's optional passes leave for the later phases (the
# prefill phase's candidates: the large-M checks' Triton ratio and the table read them).
LATER_RESERVE_S = {"acceptance": 20.0}
# A phase whose child died this many times is not resumed again: its rest is skipped.
MAX_FAULTS_PER_PHASE = 3
# The optional end-to-end phase (bench_e2e.py) is skipped with less than this many
# seconds left (building the model and compiling its kernels take some); its process may
# overrun its budget by the grace, to finish the timing it started.
E2E_MIN_S = 30
E2E_GRACE_S = 60


# ---------------------------------------------------------------------------- child


def run_child(
    out: Path,
    cfg: Config,
    phases: list[str],
    deadline: float,
    commit: str | None,
    workers: int,
    scratch: Path,
) -> None:
    """Run `phases` in order; resume.json in `scratch` (from the orchestrator) says where
    to resume the first one and which jobs faulted before."""
    resume_path = scratch / "resume.json"
    resume = json.loads(resume_path.read_text()) if resume_path.exists() else None
    runner = Runner(out, cfg, deadline, scratch)
    runner.faulted = resume["faulted"] if resume else []
    # Workers overlap the correctness phase; a child resumed later compiles as it times.
    wants_compilers = (
        workers > 0
        and any(p in TIMING_PHASES for p in phases)
        and (resume is None or resume["phase"] in ("env", "correctness"))
    )
    compilers = None
    try:
        for phase in phases:
            if wants_compilers and phase != "env":  # after the copy-bandwidth measurement
                compilers, wants_compilers = (
                    Precompiler(out, cfg, workers, scratch, deadline),
                    False,
                )
            if compilers and phase in PRECOMPILE_WAIT_S:  # at most half the time left
                wait_s = min(PRECOMPILE_WAIT_S[phase], (deadline - time.time()) / 2)
                compilers.wait_for(phase, wait_s)
            elif compilers and phase not in ("env", "correctness"):
                compilers.close()
            here = resume if resume and resume["phase"] == phase else None
            _run_phase(runner, phase, commit, here)
    finally:
        if compilers:
            compilers.close()


def _run_phase(runner: Runner, phase: str, commit: str | None, resume: dict | None) -> None:
    out = runner.out
    if resume:
        log_phase(
            out, phase, "resume", **{k: resume.get(k) for k in ("pass", "index", "skip_rest")}
        )
    else:
        log_phase(out, phase, "start")
    started = resume["phase_started"] if resume else time.time()
    runner.phase = phase
    runner.phase_deadline = started + PHASE_CAPS[phase]
    runner.later_reserve_s = LATER_RESERVE_S.get(phase, 0.0)
    status = "ok"
    try:
        if phase == "env":
            phase_env(runner, commit)
        elif phase == "correctness":
            phase_correctness(runner, resume)
        elif phase == "shapes":
            phase_shapes(runner, resume)
        else:
            phase_timing(runner, phase, resume)
    except Exception as error:  # a bug in one phase must not stop the others
        status = "error: " + describe_error(error)
        traceback.print_exc()
        exit_if_fatal(error)
    log_phase(out, phase, "end", status=status)
    if phase == "correctness":
        runner.forget_weights()


# ---------------------------------------------------------------------------- driver


def orchestrate(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; give a new directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    e2e_budget_s = getattr(args, "e2e_budget_s", 0.0)  # callers may build args by hand
    deadline = start + args.budget_s - e2e_budget_s
    scratch = Path(tempfile.mkdtemp(prefix="gpu_suite-"))  # outside OUT_DIR: not fetched
    try:
        _run_children(out, args, deadline, scratch)
    finally:
        kill_orphans(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    from lcc_kernels.bench_report import format_summary, write_results

    summary = write_results(out)
    print(format_summary(summary) + f"\n(whole run {time.time() - start:.0f} s)")
    if e2e_budget_s > 0:
        run_e2e(out, start + args.budget_s - time.time(), args)
    return 0


def _run_children(out: Path, args, deadline: float, scratch: Path) -> None:
    """Child processes until the phases are done or the budget is spent; after a child
    dies, resume where its progress markers say it was (module docstring)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.smoke:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    remaining = ["env"] + [p for p in PHASES if p in args.phases and p != "env"]
    resume, faulted, faults = None, [], collections.Counter()
    while remaining and time.time() < deadline:
        (scratch / "progress.jsonl").unlink(missing_ok=True)
        (scratch / "resume.json").unlink(missing_ok=True)
        if resume:
            (scratch / "resume.json").write_text(json.dumps(dict(resume, faulted=faulted)))
        command = [
            sys.executable,
            __file__,
            str(out),
            "--child",
            ",".join(remaining),
            f"--deadline={deadline}",
            f"--workers={args.workers}",
            f"--scratch={scratch}",
        ]
        command += ["--smoke"] if args.smoke else []
        command += [f"--commit={args.commit}"] if args.commit else []
        try:
            code = subprocess.run(command, env=env, timeout=deadline - time.time() + 30).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        kill_orphans(scratch)
        if code == 0:
            break
        started = [p for p in _phases_started(out) if p in remaining]
        phase = (started or remaining)[-1 if started else 0]
        marker = _last_marker(scratch, phase)
        faults[phase] += 1
        at = {k: marker[k] for k in ("pass", "index", "item")} if marker else {}
        log_phase(out, phase, "crash", exit_code=code, **at)
        position = remaining.index(phase)
        if marker is None:  # died before the phase's first item: go on with the next
            remaining, resume = remaining[position + 1 :], None
            continue
        if marker["fault_key"] and marker["fault_key"] not in faulted:
            faulted.append(marker["fault_key"])
        resume = {
            "phase": phase,
            "pass": marker["pass"],
            "index": marker["index"] + 1,
            "phase_started": _phase_start_time(out, phase),
            "skip_rest": (
                f"the child died {faults[phase]} times in this phase (last exit {code})"
                if faults[phase] >= MAX_FAULTS_PER_PHASE
                else None
            ),
        }
        remaining = remaining[position:]


def _phases_started(out: Path) -> list[str]:
    """Phases with a start or resume event, in order."""
    path = out / "phases.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e["phase"] for e in events if e["event"] in ("start", "resume")]


def _phase_start_time(out: Path, phase: str) -> float:
    events = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    return next(e["time"] for e in events if e["phase"] == phase and e["event"] == "start")


def _last_marker(scratch: Path, phase: str) -> dict | None:
    """The last item the child noted starting, if it was in `phase`."""
    path = scratch / "progress.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    marker = json.loads(lines[-1]) if lines else None
    return marker if marker and marker["phase"] == phase else None


def run_e2e(out: Path, budget_s: float, args) -> None:
    """The optional end-to-end phase: benchmarks/bench_e2e.py in its own process."""
    if budget_s < E2E_MIN_S:
        log_phase(out, "e2e", "end", status=f"skipped: {budget_s:.0f} s left")
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
    log_phase(out, "e2e", "start")
    try:  # the bench stops starting work at budget_s; allow the last job to finish
        code = subprocess.run(
            command, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=budget_s + E2E_GRACE_S
        ).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    log_phase(out, "e2e", "end", status="ok" if code == 0 else f"error: exit {code}")


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
    parser.add_argument("--scratch", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precompile-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
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
        precompile_worker(
            Path(args.out),
            config(args.smoke),
            args.worker,
            args.scratch,
            args.deadline,
            args.parent_pid,
        )
        return 0
    if args.child is not None:
        child = (Path(args.out), config(args.smoke), args.child.split(","), args.deadline)
        if args.scratch is not None:
            run_child(*child, args.commit, args.workers, args.scratch)
            return 0
        with tempfile.TemporaryDirectory(prefix="gpu_suite-") as scratch:  # run by hand
            run_child(*child, args.commit, args.workers, Path(scratch))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
