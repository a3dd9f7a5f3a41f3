"""benchmarks/gpu_suite.py: resuming after a fatal CUDA error, the order and reserves of a
phase's passes, the correctness budget, and the compile workers' lifetime."""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from _suite_helpers import (
    SUITE,
    gpu_suite,
    injection_dir,
    lines,
    process_state,
    suite_phases,
    suite_plans,
    suite_precompile,
    suite_runner,
)

from lcc_kernels import bench_report
from lcc_kernels.dispatch import Plan

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _option(command, name):
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{name}="))


def test_a_child_that_dies_in_a_job_is_resumed_after_it(tmp_path, monkeypatch):
    """Markers say which job was running; the next child resumes that phase after it and
    skips the job's like; the third death in one phase records the rest as skipped."""
    out = tmp_path / "out"
    keys = [["ours", "bitmap50", Plan("streams", 1, 128).to_dict()], ["ours", "2:4", None]]
    seen = []

    def fake_run(command, **kwargs):
        scratch = _option(command, "scratch")
        resume_path = os.path.join(scratch, "resume.json")
        resume = None
        if os.path.exists(resume_path):
            with open(resume_path) as handle:
                resume = json.load(handle)
        seen.append((command[command.index("--child") + 1].split(","), resume))
        with open(out / "phases.jsonl", "a") as handle:
            if len(seen) == 1:
                for phase in ("env", "correctness", "acceptance"):
                    handle.write(json.dumps({"phase": phase, "event": "start", "time": 7.0}))
                    handle.write("\n")
            else:
                handle.write(json.dumps({"phase": "acceptance", "event": "resume"}) + "\n")
        if len(seen) == 4:
            return subprocess.CompletedProcess(command, 0)
        marker = {
            "phase": "acceptance",
            "pass": "candidates",
            "index": 4 * len(seen),
            "item": f"job {len(seen)}",
            "fault_key": keys[min(len(seen), 2) - 1],
        }
        with open(os.path.join(scratch, "progress.jsonl"), "a") as handle:
            handle.write(json.dumps(marker) + "\n")
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(gpu_suite.subprocess, "run", fake_run)
    args = SimpleNamespace(
        out=str(out), budget_s=60, smoke=True, commit=None, workers=1, phases=gpu_suite.PHASES
    )
    assert gpu_suite.orchestrate(args) == 0
    assert len(seen) == 4 and seen[0][1] is None
    for phases, resume in seen[1:]:
        assert phases == list(gpu_suite.PHASES[2:])  # the same phase again, then the rest
        assert (resume["phase"], resume["pass"], resume["phase_started"]) == (
            "acceptance",
            "candidates",
            7.0,
        )
    assert [r["index"] for _, r in seen[1:]] == [5, 9, 13]
    assert [r["faulted"] for _, r in seen[1:]] == [keys[:1], keys, keys]
    assert [r["skip_rest"] for _, r in seen[1:]] == [
        None,
        None,
        "the child died 3 times in this phase (last exit 3)",
    ]
    crashes = [e for e in lines(out / "phases.jsonl") if e["event"] == "crash"]
    assert [(c["phase"], c["index"], c["item"]) for c in crashes] == [
        ("acceptance", 4, "job 1"),
        ("acceptance", 8, "job 2"),
        ("acceptance", 12, "job 3"),
    ]


def test_an_injected_fault_costs_only_its_job_and_its_like(tmp_path):
    """The review's reproduction: each streams job of one smoke shape raises a fatal CUDA
    error. The acceptance phase goes on after each, through its verdict, bias and eager
    passes, and the same launch at the other shape is skipped, not re-run."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(injection_dir(tmp_path)))
    command = [sys.executable, str(SUITE), str(out), "--smoke", "--phases", "acceptance"]
    result = subprocess.run(
        command + ["--workers", "0"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [(e["phase"], e["event"]) for e in lines(out / "phases.jsonl")]
    assert events.count(("acceptance", "crash")) == events.count(("acceptance", "resume")) == 2
    assert events[-1] == ("acceptance", "end")
    rows = lines(out / "timings.jsonl")
    fatal = [r for r in rows if "illegal memory access" in r.get("error", "")]
    assert {(r["shape"], r["kind"], r["plan"]["backend"]) for r in fatal} == {
        ("smoke-qkv", "bitmap50", "streams"),
        ("smoke-qkv", "bitmap70", "streams"),
    }
    launches = {json.dumps([r["kind"], r["plan"]]) for r in fatal}
    later = [r for r in rows[rows.index(fatal[-1]) + 1 :] if r["provider"] == "ours"]
    alike = [r for r in later if json.dumps([r["kind"], r["plan"]]) in launches]
    assert alike and all(r["status"] == "skipped" for r in alike)
    assert {r["tag"] for r in later if r["status"] == "ok"} == {"", "verdict", "bias_cost", "eager"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing_skipped"] == len(alike)


def _stub_runner(tmp_path, phase_left_s, budget_left_s, later_reserve_s):
    now = time.time()
    runner = SimpleNamespace(
        out=tmp_path,
        phase="acceptance",
        phase_deadline=now + phase_left_s,
        deadline=now + budget_left_s,
        later_reserve_s=later_reserve_s,
        ran=[],
    )
    runner.time_left = lambda *a: suite_runner.Runner.time_left(runner, *a)
    runner.mark = lambda step, index, item: None
    runner.run = lambda job, quick=False: runner.ran.append(job.tag)
    runner.run_rounds = lambda rounds: runner.ran.append("rounds")
    return runner


def test_required_and_paired_passes_keep_their_time(tmp_path):
    """Candidates stop where the phase cap less the paired reserve is reached, optional
    passes where the budget less the later phases' reserve is: required and paired
    passes still run."""

    def job(tag):
        return suite_plans.Job("s", 1, "2:4", "ours", tag=tag)

    rounds = suite_plans.Rounds((job("verdict"),), 5)
    passes = [
        suite_plans.Pass("required", lambda rows: [job("required")] * 2),
        suite_plans.Pass("candidates", lambda rows: [job("candidate")], 35.0, optional=True),
        suite_plans.Pass("verdict", lambda rows: [rounds]),
        suite_plans.Pass("eager", lambda rows: [job("eager")], optional=True),
    ]
    runner = _stub_runner(tmp_path, phase_left_s=30, budget_left_s=100, later_reserve_s=20)
    suite_phases.run_passes(runner, passes)
    assert runner.ran == ["required", "required", "rounds", "eager"]
    runner = _stub_runner(tmp_path, phase_left_s=100, budget_left_s=15, later_reserve_s=20)
    suite_phases.run_passes(runner, passes)
    assert runner.ran == ["required", "required", "rounds"]
    # Candidates also leave the paired reserve and the later phases' one of the budget.
    runner = _stub_runner(tmp_path, phase_left_s=100, budget_left_s=50, later_reserve_s=20)
    suite_phases.run_passes(runner, passes)
    assert runner.ran == ["required", "required", "rounds", "eager"]
    runner = _stub_runner(tmp_path, phase_left_s=100, budget_left_s=100, later_reserve_s=20)
    suite_phases.run_passes(runner, passes, {"pass": "candidates", "index": 1})
    assert runner.ran == ["rounds", "eager"]  # resumed after the first candidate


def test_verdict_and_bias_rounds_re_time_the_fastest_plan_so_far():
    cfg = suite_plans.config(smoke=False)
    fast, slow = Plan("skinny", 1, 64, 128, 8), Plan("skinny", 1, 64, 128, 4)

    def row(provider, kind, plan, ms, tag=""):
        return {
            "shape": "llama3-8b-o",
            "m": 1,
            "provider": provider,
            "kind": kind,
            "plan": plan and plan.to_dict(),
            "bias": True,
            "tag": tag,
            "status": "ok",
            "median_ms": ms,
        }

    rows = [
        row("dense", "dense", None, 1.0),
        row("cusparselt", "2:4", None, 2.0),
        row("ours", "2:4", slow, 0.7),
        row("ours", "2:4", fast, 0.6),
        row("ours", "2:4", slow, 0.1, tag="bias_cost"),  # not a candidate's timing
    ]
    rounds = suite_plans.verdict_rounds(cfg, "llama3-8b-o", 1, rows)
    assert rounds.rounds == suite_plans.VERDICT_ROUNDS
    assert [(j.provider, j.kind, j.plan, j.tag) for j in rounds.jobs] == [
        ("dense", "dense", None, "verdict"),
        ("cusparselt", "2:4", None, "verdict"),  # cutlass never ran: not re-timed
        ("ours", "2:4", fast, "verdict"),
    ]
    bias = suite_plans.bias_rounds("llama3-8b-o", 1, "2:4", rows)
    assert [(j.plan, j.bias, j.tag) for j in bias.jobs] == [
        (fast, False, "bias_cost"),
        (fast, True, "bias_cost"),
    ]
    assert suite_plans.bias_rounds("llama3-8b-o", 1, "bitmap50", rows) is None


def test_correctness_cap_records_every_check_it_leaves_out(tmp_path):
    """The review's reproduction: the cap expires after three checks. The named checks
    run first; every check that did not run has a skipped row, and the summary counts it."""
    runner = suite_runner.Runner(tmp_path, suite_plans.config(True), deadline=float("inf"))
    left = {"checks": 3}

    def time_left(*args):
        left["checks"] -= 1
        return left["checks"] >= 0

    runner.time_left = time_left
    runner.phase = "correctness"
    suite_phases.phase_correctness(runner)
    rows = lines(tmp_path / "correctness.jsonl")
    expected = [c for p in suite_phases.correctness_passes(runner) for c in p.build([])]
    assert [r.get("name") or r["kind"] for r in rows] == [
        c.row.get("name") or c.row["kind"] for c in expected
    ]
    assert rows[0] == {**rows[0], "name": "split_k_bitwise_determinism", "ok": True}
    reasons = [r.get("reason") for r in rows[1:]]
    assert reasons[:2] == ["needs CUDA", "needs CUDA"] and set(reasons[2:]) == {"budget"}
    summary = bench_report.summarize(tmp_path)
    assert len(summary["correctness"]["skipped"]) == len(rows) - 1
    assert f"{len(rows)} checks, 0 failed, {len(rows) - 1} skipped" in (
        bench_report.format_summary(summary)
    )


def test_precompile_jobs_go_acceptance_first_each_launch_once():
    cfg = suite_plans.config(smoke=False)
    jobs = suite_precompile.precompile_jobs(cfg, 132)
    groups = [group for group, _ in jobs]
    assert groups == sorted(groups, key=suite_precompile.PRECOMPILE_GROUPS.index)
    keys = [(j.m, j.kind, j.provider, j.plan) for _, j in jobs]
    assert len(keys) == len(set(keys)) and {j.provider for _, j in jobs} == {
        "ours",
        "dense_triton",
    }
    first = {(j.m, j.kind, j.plan) for g, j in jobs if g == "acceptance"}
    for shape in cfg.main_shapes:
        for m in cfg.acceptance_m:
            for j in suite_plans.required_jobs(cfg, shape, m, 132):
                assert j.provider not in ("ours", "dense_triton") or (m, j.kind, j.plan) in first
    rules = {
        (m, suite_plans.rules_plans("2:4", n, k, m, 132)[0])
        for n, k in cfg.main_shapes.values()
        for m in cfg.acceptance_m + cfg.prefill_m
    }
    dense_triton = [(g, (j.m, j.plan)) for g, j in jobs if j.provider == "dense_triton"]
    assert {g for g, key in dense_triton if key not in rules} == {"rest"}  # other tilings last
    assert {g for g, key in dense_triton if key in rules} == {"acceptance"}
    # In the order the acceptance phase times them: the prefill M's required launches
    # before its candidates.
    order = [(j.m, j.kind, j.provider, j.plan) for g, j in jobs if g == "acceptance"]
    large = [
        (m, j.kind, j.provider, j.plan)
        for shape in cfg.main_shapes
        for m in cfg.prefill_m
        for j in suite_plans.required_jobs(cfg, shape, m, 132)
        if j.provider in ("ours", "dense_triton")
    ]
    first_candidate = min(
        order.index((m, j.kind, j.provider, j.plan))
        for shape in cfg.main_shapes
        for m in cfg.acceptance_m
        for j in suite_plans.candidate_jobs(cfg, shape, m, 132, extra_tiles=True)
        if (m, j.kind, j.provider, j.plan) in order
    )
    assert all(order.index(key) < first_candidate for key in large)


def _worker_command(out, scratch, deadline, parent_pid):
    return [
        sys.executable,
        str(SUITE),
        str(out),
        "--precompile-worker",
        "--smoke",
        "--worker=0/1",
        f"--scratch={scratch}",
        f"--deadline={deadline}",
        f"--parent-pid={parent_pid}",
    ]


@linux_only
def test_a_compile_worker_dies_with_its_parent(tmp_path):
    """A child ended by os._exit (a fatal CUDA error) runs no clean-up: its worker, busy
    in a long job, must go at once, not at its next job."""
    env = dict(os.environ, PYTHONPATH=str(injection_dir(tmp_path)))  # 120 s per job
    parent = f"""
import os, subprocess, sys, time
command = {_worker_command(tmp_path, tmp_path, time.time() + 600, 0)!r}
command[-1] = f"--parent-pid={{os.getpid()}}"
worker = subprocess.Popen(  # not holding the pipes the test reads to their end
    command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
print(worker.pid, flush=True)
while not os.path.exists({str(tmp_path / "precompile-0.json")!r}):
    time.sleep(0.1)  # the worker is in its first job
os._exit(3)
"""
    result = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 3, result.stderr[-2000:]
    pid = int(result.stdout.split()[0])
    ended = time.time() + 20
    while process_state(pid) not in (None, "Z") and time.time() < ended:
        time.sleep(0.1)
    assert process_state(pid) in (None, "Z")


def test_a_compile_worker_starts_no_job_after_its_deadline(tmp_path):
    command = _worker_command(tmp_path, tmp_path, time.time() - 1, os.getpid())
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "precompile-0.json").exists()  # it never entered a group


@linux_only
def test_workers_pause_after_the_wait_and_are_killed_with_their_sessions(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(injection_dir(tmp_path)))  # each job: 120 s
    cfg, scratch = suite_plans.config(True), tmp_path / "scratch"
    scratch.mkdir()
    compilers = suite_precompile.Precompiler(tmp_path, cfg, 1, scratch, time.time() + 600)
    (worker,) = compilers.workers
    assert os.getsid(worker.pid) == worker.pid  # a session of its own
    compilers.wait_for("acceptance", 1.0)  # still in its first job: the wait times out
    stopped = time.time() + 10
    while process_state(worker.pid) != "T" and time.time() < stopped:
        time.sleep(0.05)
    assert process_state(worker.pid) == "T"  # stopped while a phase times
    compilers.close()
    assert worker.returncode == -9 and process_state(worker.pid) is None
    events = [(e["event"], e.get("group")) for e in lines(tmp_path / "phases.jsonl")]
    assert events == [("start", None), ("wait_timeout", "acceptance"), ("end", None)]


def test_the_wait_ends_when_the_group_is_compiled(tmp_path):
    cfg, scratch = suite_plans.config(True), tmp_path / "scratch"
    scratch.mkdir()
    compilers = suite_precompile.Precompiler(tmp_path, cfg, 1, scratch, time.time() + 600)
    compilers.wait_for("acceptance", 300)
    compilers.close()
    (ready,) = [e for e in lines(tmp_path / "phases.jsonl") if e["event"] == "ready"]
    assert ready["group"] == "acceptance" and ready["seconds"] < 300
    assert compilers.workers == [] and (scratch / "workers.json").exists()


def test_orphaned_worker_sessions_are_killed(tmp_path):
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    (tmp_path / "workers.json").write_text(json.dumps([sleeper.pid]))
    suite_precompile.kill_orphans(tmp_path)
    assert sleeper.wait(timeout=10) == -9 and not (tmp_path / "workers.json").exists()
