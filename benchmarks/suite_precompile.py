"""Compile workers of the GPU suite: processes that run each timing job's launch once, so
that Triton's on-disk cache holds its kernel before the timing phase needs it.

Jobs go in groups, most needed first (PRECOMPILE_GROUPS), in the order the phases time
them: the acceptance phase's (its required rows, the prefill M's required rows, its
candidates), the prefill phase's candidates, then the rest (dense Triton tilings, sweep). A
worker takes every count-th job of that list and, as it enters a group, writes which
groups it has finished to the scratch directory; `Precompiler.wait_for(group)` returns as
soon as every worker is past that group, and stops the workers (SIGSTOP) while the phase
times, so that they never share the GPU with a timing; the next wait lets them go on.

Workers run in sessions of their own and are killed with them by `close` (also at exit);
a worker also dies with its parent (PR_SET_PDEATHSIG on Linux, and a check between jobs)
and stops starting jobs at the deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from suite_plans import Config, Job, candidate_jobs, dense_tiling_jobs, phase_passes, required_jobs
from suite_runner import Runner, describe_error, exit_if_fatal, log_phase

PRECOMPILE_GROUPS = ("acceptance", "prefill", "rest")
POLL_S = 0.2


def precompile_jobs(cfg: Config, sms: int) -> list[tuple[str, Job]]:
    """(group, job) of every Triton launch the timing phases make, each launch once (the
    same provider, kind, plan and M compile alike at either main shape), in group order."""
    groups = {"acceptance": [], "prefill": [], "rest": []}
    for m in cfg.acceptance_m + cfg.prefill_m:  # the acceptance phase's first two passes
        for shape in cfg.main_shapes:
            groups["acceptance"] += required_jobs(cfg, shape, m, sms)
    for phase, ms in (("acceptance", cfg.acceptance_m), ("prefill", cfg.prefill_m)):
        for m in ms:
            for shape in cfg.main_shapes:
                groups[phase] += candidate_jobs(cfg, shape, m, sms, extra_tiles=True)
                groups["rest"] += dense_tiling_jobs(cfg, shape, m, sms)
    for step in phase_passes(cfg, "sweep", sms):
        groups["rest"] += step.build([])
    seen, ordered = set(), []
    for group in PRECOMPILE_GROUPS:
        for job in groups[group]:
            key = (job.m, job.kind, job.provider, job.plan)
            if job.provider in ("ours", "dense_triton") and key not in seen:
                seen.add(key)
                ordered.append((group, job))
    return ordered


class Precompiler:
    """The compile workers of one child process (see the module docstring)."""

    def __init__(self, out: Path, cfg: Config, workers: int, scratch: Path, deadline: float):
        self.out, self.cfg, self.scratch, self.deadline = out, cfg, scratch, deadline
        command = [sys.executable, str(Path(__file__).with_name("gpu_suite.py")), str(out)]
        command += ["--precompile-worker", f"--scratch={scratch}", f"--deadline={deadline}"]
        command += [f"--parent-pid={os.getpid()}"] + (["--smoke"] if cfg.smoke else [])
        for stale in scratch.glob("precompile-*.json"):
            stale.unlink()
        self.workers = [
            subprocess.Popen(
                command + [f"--worker={i}/{workers}"],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            for i in range(workers)
        ]
        pids = [w.pid for w in self.workers]
        (scratch / "workers.json").write_text(json.dumps(pids))  # the orchestrator's backstop
        atexit.register(self.close)
        log_phase(out, "precompile", "start", workers=workers)

    def wait_for(self, group: str, wait_s: float) -> None:
        """Let the workers compile until each is past `group` (or has ended), at most
        wait_s seconds; then stop them until the next wait."""
        started = time.time()
        self._signal(signal.SIGCONT)
        while not self._all_past(group) and time.time() - started < wait_s:
            time.sleep(POLL_S)
        ready = self._all_past(group)
        self._signal(signal.SIGSTOP)
        log_phase(
            self.out,
            "precompile",
            "ready" if ready else "wait_timeout",
            group=group,
            seconds=round(time.time() - started, 1),
        )

    def close(self) -> None:
        """Kill the workers' sessions (compiled kernels stay in the cache); log their ends."""
        if not self.workers:
            return
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        codes = [w.returncode for w in self.workers]
        self.workers = []
        atexit.unregister(self.close)
        log_phase(self.out, "precompile", "end", exit_codes=codes)

    def _all_past(self, group: str) -> bool:
        """Whether every worker has finished its jobs of `group` (or has ended)."""
        for index, worker in enumerate(self.workers):
            path = self.scratch / f"precompile-{index}.json"
            done = json.loads(path.read_text())["done"] if path.exists() else []
            if worker.poll() is None and group not in done:
                return False
        return True

    def _signal(self, sig: int) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, sig)


def kill_orphans(scratch: Path) -> None:
    """Kill the worker sessions a child listed, should any outlive it (a child ended by
    os._exit runs no atexit)."""
    path = scratch / "workers.json"
    if not path.exists():
        return
    for pid in json.loads(path.read_text()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    path.unlink()


def precompile_worker(
    out: Path, cfg: Config, worker: str, scratch: Path, deadline: float, parent_pid: int
) -> None:
    """Run this worker's share of precompile_jobs once each (see the module docstring)."""
    import torch

    from lcc_kernels.bench import build_calls, plan_tile

    _die_with_parent(parent_pid)
    index, count = (int(v) for v in worker.split("/"))
    runner = Runner(out, cfg, deadline=float("inf"))
    mine = precompile_jobs(cfg, runner.sms)[index::count][: 2 if cfg.smoke else None]
    entered = None
    for group, job in mine:
        if os.getppid() != parent_pid or time.time() > deadline:
            return
        if group != entered:  # the groups before it are done
            _report(scratch, index, PRECOMPILE_GROUPS[: PRECOMPILE_GROUPS.index(group)])
            entered = group
        try:
            dense = runner.dense(job.shape, job.kind)
            tile = plan_tile(job.kind, job.plan)
            packed = (
                runner.packed(job.shape, job.kind, tile=tile) if job.provider == "ours" else None
            )
            calls, _ = build_calls(
                job.provider, dense, job.m, bias=job.bias, copies=1, plan=job.plan, packed=packed
            )
            calls[0]()
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as error:  # recorded; the timing phase will meet it again
            log_phase(out, "precompile", "error", job=repr(job), error=describe_error(error))
            exit_if_fatal(error)
    _report(scratch, index, PRECOMPILE_GROUPS)


def _report(scratch: Path, index: int, done) -> None:
    path = scratch / f"precompile-{index}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": list(done)}))
    os.replace(tmp, path)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent ends (Linux), and end now if the
    parent already has."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
