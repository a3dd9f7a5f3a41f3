"""benchmarks/gpu_suite.py: a smoke run on the CPU writes every result (and the report
re-summarises it where it is stored), and a crashed child resumes at the next phase.

Beside it: test_kernels_gpu_suite_summary.py and test_kernels_gpu_suite_report.py (how the
report judges acceptance and builds the dispatch table), test_kernels_gpu_suite_plans.py
(the plans timed), test_kernels_gpu_suite_timing.py (the timing harness) and
test_kernels_gpu_suite_resume.py (resuming after faults, the compile workers)."""

import csv
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from _suite_helpers import SUITE, gpu_suite, lines, suite_plans, suite_runner

from lcc_kernels import acceptance, bench_report
from lcc_kernels.dispatch import DispatchTable, WeightKey


def test_smoke_run_writes_every_result(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SUITE), str(out), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    env = json.loads((out / "env.json").read_text())
    assert {"gpu", "torch", "triton", "commit", "copy_bandwidth_bytes_per_s"} <= set(env)
    ends = {
        e["phase"]: e["status"]
        for e in lines(out / "phases.jsonl")
        if e["event"] == "end" and "status" in e
    }
    assert ends == {phase: "ok" for phase in gpu_suite.PHASES}
    correctness = lines(out / "correctness.jsonl")
    ran = [c for c in correctness if c["status"] != "skipped"]
    assert len(ran) >= 18 and all(c["ok"] for c in ran)
    assert ran[0]["name"] == "split_k_bitwise_determinism"  # the named checks come first
    skipped = {c["name"]: c["reason"] for c in correctness if c["status"] == "skipped"}
    assert skipped == {  # on a CPU; counted in the summary, not left out
        name: "needs CUDA"
        for name in (
            "cuda_graph_replay",
            "cuda_graph_replay_streams",
            "semi_structured_round_trip_cusparselt",
            "semi_structured_round_trip_cutlass",
            "compiled_cuda_graphs",
        )
    }
    timings = lines(out / "timings.jsonl")
    ok = [t for t in timings if t["status"] == "ok"]
    assert {t["provider"] for t in ok} == {"dense", "ours", "dense_triton"}
    streams = [t for t in ok if t["plan"] and t["plan"]["backend"] == "streams"]
    assert {t["kind"] for t in streams} == {"bitmap50", "bitmap70"}
    assert {c["kind"] for c in correctness if c.get("backend") == "streams"} == {
        "bitmap50",
        "bitmap70",
    }
    # The acceptance phase times the prefill M's (33) required rows too, leaving the prefill
    # phase its candidates (none in a smoke run: the rules' plans only).
    assert {t["phase"] for t in ok} == {"acceptance", "sweep", "shapes"}
    assert {t["m"] for t in ok if t["phase"] == "acceptance"} == {1, 33}
    assert suite_plans.phase_passes(suite_plans.config(True), "prefill", 4)[0].build(timings) == []
    assert any(t["tag"] == "bias_cost" for t in ok)
    verdict = [t for t in ok if t["tag"] == "verdict"]  # dense and each kind's best, in turn
    assert {(t["provider"], t["kind"]) for t in verdict} == {
        ("dense", "dense"),
        ("ours", "2:4"),
        ("ours", "bitmap50"),
        ("ours", "bitmap70"),
    }
    assert sorted({t["round"] for t in verdict}) == list(range(suite_plans.VERDICT_ROUNDS))
    eager = [t for t in ok if t["tag"] == "eager"]  # uncaptured calls, default dispatch
    assert {(t["provider"], t["kind"]) for t in eager} == {
        ("dense", "dense"),
        ("ours", "2:4"),
        ("ours", "bitmap50"),
        ("ours", "bitmap70"),
    }
    assert all(t["plan"] is None and t["m"] == 1 for t in eager)
    # torch semi-structured needs CUDA: recorded as errors, and the run went on.
    assert {t["provider"] for t in timings if t["status"] == "error"} == {"cusparselt", "cutlass"}
    with open(out / "timings.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == suite_runner.CSV_FIELDS and len(rows) == len(timings)
    table = DispatchTable.from_dict(json.loads((out / "dispatch_table.json").read_text()))
    assert table.lookup(WeightKey("2:4", "float32", 48, 64), 1) is not None
    summary = json.loads((out / "summary.json").read_text())
    assert all(c["status"].startswith("unmeasured") for c in summary["acceptance"])
    judged = {(c["check"], c["shape"], c["m"], c["kind"]) for c in summary["acceptance"]}
    assert {
        (name, shape, m, kind)
        for shape in env["main_shapes"]
        for name, m, kind, _ in acceptance.required_checks()
    } <= judged  # the smoke run has no M = 16 or 1024: those appear, unmeasured
    assert summary["correctness"]["skipped"] and summary["timing_skipped"] == 0
    assert sum(1 for _ in out.rglob("*") if _.is_file()) <= 8
    again = subprocess.run(
        [sys.executable, str(SUITE), str(out), "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "not empty" in again.stderr
    assert not (out / "speedups.png").exists()  # the suite stays within 8 files to fetch
    assert bench_report.main([str(out)]) == 0  # re-summarised and drawn where it is stored
    assert (out / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary


def test_a_crashed_child_resumes_at_the_next_phase(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        phases = command[command.index("--child") + 1].split(",")
        with open(tmp_path / "out" / "phases.jsonl", "a") as handle:
            for phase in phases[: 3 if len(commands) == 1 else None]:
                handle.write(json.dumps({"phase": phase, "event": "start"}) + "\n")
        return subprocess.CompletedProcess(command, 3 if len(commands) == 1 else 0)

    monkeypatch.setattr(gpu_suite.subprocess, "run", fake_run)
    args = gpu_suite.argparse.Namespace(
        out=str(tmp_path / "out"),
        budget_s=60,
        smoke=True,
        commit=None,
        workers=1,
        phases=list(gpu_suite.PHASES),
    )
    assert gpu_suite.orchestrate(args) == 0
    assert len(commands) == 2
    resumed = commands[1][commands[1].index("--child") + 1].split(",")
    assert resumed == list(gpu_suite.PHASES[3:])  # the third phase crashed: skip it
    crash = [e for e in lines(tmp_path / "out" / "phases.jsonl") if e["event"] == "crash"]
    assert crash == [
        {"phase": gpu_suite.PHASES[2], "event": "crash", "time": crash[0]["time"], "exit_code": 3}
    ]


def test_the_lent_machine_script_brings_back_four_files(tmp_path):
    """benchmarks/gpu_run.sh, as one device call runs it (here its CPU smoke mode): the
    suite's directory packed into one file, and the three logs, in OUT as given from where
    it is called; its status is pytest's, not the timeout's 124, which the device tool would
    read as a call past its limit. The benchmarks step runs and, every benchmark skipped
    on a CPU, passes and says there is no JSON; the end-to-end phase is off by default. A
    test that sleeps past the tests' 20 s cut runs first (the usual selection is
    collected, ~6 s, not run), so the SIGINT lands inside pytest's session: 2. (A cut
    racing the session's end had given 130, or 1 where pytest itself failed while
    reporting the interrupt.)"""
    out = tmp_path / "out dir"
    python_first = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "GPU_RUN_SMOKE": "1", "PATH": python_first}
    env.pop("GPU_RUN_E2E_S", None)
    script = SUITE.parent / "gpu_run.sh"
    usual = [str(SUITE.parent.parent / "tests" / name) for name in ("lcc_kernels", "hf", "devices")]
    slow = "test_outlasts_the_cut.py"  # relative: read from the caller's directory
    (tmp_path / slow).write_text(
        "import time\n\nimport pytest\n\n\n@pytest.mark.triton\n"
        "def test_outlasts_the_cut():\n    time.sleep(3600)\n"
    )
    done = subprocess.run(
        ["bash", str(script), "out dir", "0123456789abcdef-dirty", "300", "20", slow, *usual],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:]
    assert f"gpu_run: suite exit 0, benchmarks exit 0, tests exit {done.returncode};" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 4 and files[:1] + files[2:] == ["bench.log", "pytest.log", "suite.log"]
    packed = out / files[1]
    assert packed.name.endswith("-0123456789.tgz"), (files, done.stderr)
    run = packed.name.removesuffix(".tgz")
    with tarfile.open(packed) as tar:
        names = {Path(n).relative_to(run).as_posix() for n in tar.getnames()}
        env_json = json.loads(tar.extractfile(f"{run}/env.json").read())
    assert {"env.json", "summary.json", "timings.jsonl", "dispatch_table.json"} <= names
    assert not {"e2e", "bench_kernels.json"} & names
    assert env_json["commit"] == "0123456789abcdef-dirty"  # the suffix kept
    suite_log = (out / "suite.log").read_text()
    assert suite_log.startswith("gpu_run: pre-flight, nvidia-smi --query-gpu=name,")
    assert "e2e start" not in suite_log and "commit 0123456789" in suite_log
    bench_log = (out / "bench.log").read_text()
    assert "skipped" in bench_log and "bench_kernels skips them without a CUDA" in bench_log
    # stopped by SIGINT in the sleeping test, pytest still ends with its summary line
    log = (out / "pytest.log").read_text()
    assert "test_outlasts_the_cut.py" in log and "KeyboardInterrupt" in log, log[-2000:]
    assert re.search(r" in [0-9.]+s", log.splitlines()[-1])
