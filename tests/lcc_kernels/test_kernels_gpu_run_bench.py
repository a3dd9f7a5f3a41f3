"""gpu_run.sh's pytest-benchmark step and the commit it records: bench_kernels.py at the
Llama-3-8B shapes and M = 1, 16, 1024 (LCC_BENCH_M), its JSON packed with the suite's run
directory, and COMMIT (with its "-dirty" suffix) in the suite's and the benchmarks'
records, where the tree has no .git (benchmarks/conftest.py reads LCC_COMMIT)."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import pytest
from _suite_helpers import BENCHMARKS, gpu_run_with_stand_ins

import lcc_kernels.bench as bench

DIRTY = "0123456789abcdef-dirty"  # what `git rev-parse HEAD` + "-dirty" looks like, shortened


def _packed(out):
    """{name in the run directory: bytes} of the one .tgz in OUT, and the run's name."""
    (packed,) = out.glob("*.tgz")
    run = packed.name.removesuffix(".tgz")
    with tarfile.open(packed) as tar:
        files = {m.name.removeprefix(run + "/"): tar.extractfile(m) for m in tar if m.isfile()}
        return {name: handle.read() for name, handle in files.items()}, run


def test_the_benchmarks_json_comes_back_in_the_run_directory_with_the_commit(tmp_path):
    done, out, records = gpu_run_with_stand_ins(tmp_path, 5, commit=DIRTY)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files, run = _packed(out)
    assert run.endswith("-0123456789")  # commit[:10]
    assert json.loads(files["bench_kernels.json"]) == {"commit": DIRTY}
    names = {p.name for p in out.iterdir()}
    assert names == {f"{run}.tgz", "bench.log", "pytest.log", "suite.log"}
    args, *variables = (records / "bench-args").read_text().splitlines()
    assert variables == ["LCC_BENCH_M=1,16,1024", f"LCC_COMMIT={DIRTY}"]
    assert "benchmarks/bench_kernels.py -k test_linear or test_device_copy" in args
    assert "--benchmark-enable" in args.split()
    assert args.split()[-1].endswith(f"/{run}/bench_kernels.json")
    said = f"gpu_run: benchmarks exit 0, results in {run}.tgz: {run}/bench_kernels.json"
    assert said in (out / "bench.log").read_text()
    assert "gpu_run: suite exit 0, benchmarks exit 0, tests exit 0;" in done.stdout
    suite = (records / "suite-args").read_text().split()
    assert suite[2:] == ["--budget-s", "270", "--commit", DIRTY, "--e2e-budget-s", "0"]


def test_the_end_to_end_phase_is_opt_in(tmp_path):
    done, _, records = gpu_run_with_stand_ins(tmp_path, 5, GPU_RUN_E2E_S="45")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (records / "suite-args").read_text().split()[-2:] == ["--e2e-budget-s", "45"]


def test_benchmarks_stopped_at_their_time_keep_what_ran_and_the_tests_still_run(tmp_path):
    """SIGINT at GPU_RUN_BENCH_S: pytest-benchmark writes what ran and exits 2, the JSON is
    packed, the tests run after it; the call's status is the benchmarks' 2."""
    done, out, records = gpu_run_with_stand_ins(
        tmp_path, 5, GPU_RUN_BENCH_S="1", FAKE_BENCH_INT_S="1"
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "gpu_run: suite exit 0, benchmarks exit 2, tests exit 0;" in done.stdout
    assert "bench_kernels.json" in _packed(out)[0]
    assert "3 passed in 9.00s" in (out / "bench.log").read_text()
    assert (records / "pytest-args").exists()


def test_benchmarks_that_all_skip_say_there_is_no_json(tmp_path):
    done, out, _ = gpu_run_with_stand_ins(tmp_path, 5, FAKE_BENCH_JSON="0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "bench_kernels.json" not in _packed(out)[0]
    assert (
        "gpu_run: benchmarks exit 0, none ran (bench_kernels skips them without a CUDA"
        in (out / "bench.log").read_text()
    )


def test_lcc_bench_m_picks_the_m_and_the_benchmarks_go_m_by_m():
    """A run cut short keeps every provider of the M values it reached."""
    import bench_kernels

    assert bench_kernels.bench_m("1,16,1024") == (1, 16, 1024)
    assert bench_kernels.bench_m(None) == bench_kernels.bench_m("") == bench.M_VALUES
    for wrong in ("1,x", "0,16", ","):
        with pytest.raises(ValueError, match="LCC_BENCH_M must be comma-separated positive"):
            bench_kernels.bench_m(wrong)
    env = {**os.environ, "LCC_BENCH_M": "1,16,1024"}
    env.pop("LCC_BENCH_SHAPES", None)
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    command += [str(BENCHMARKS / "bench_kernels.py"), "-k", "test_linear"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=BENCHMARKS.parent, timeout=120
    )
    ids = [line.split("[", 1)[1].rstrip("]") for line in done.stdout.splitlines() if "[" in line]
    providers = len(bench_kernels.PROVIDERS)
    assert len(ids) == 3 * 2 * providers, done.stdout[-2000:] + done.stderr[-2000:]
    firsts = [i.split("-", 1)[0] for i in ids]
    assert firsts == [m for m in ("1", "16", "1024") for _ in range(2 * providers)]
    assert ids[:providers] == [f"1-llama3-8b-qkv-{p}" for p in bench_kernels.PROVIDERS]


def _benchmarks_conftest():
    spec = importlib.util.spec_from_file_location("benchmarks_conftest", BENCHMARKS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pytest_benchmark_results_record_lcc_commit(monkeypatch):
    """On the lent machine the tree has no .git: the commit comes from LCC_COMMIT, into
    machine_info (whole, suffix kept) and into commit_info where git gave none."""
    conftest = _benchmarks_conftest()
    monkeypatch.setenv("LCC_COMMIT", DIRTY)
    machine_info = {}
    conftest.pytest_benchmark_update_machine_info(None, machine_info)
    assert machine_info["lcc_kernels"]["commit"] == DIRTY
    commit_info = {"id": "unversioned", "dirty": False, "project": "main"}
    conftest.pytest_benchmark_update_commit_info(None, commit_info)
    assert commit_info == {"id": DIRTY, "dirty": True, "project": "main"}
    from_git = {"id": "ba5094e4", "dirty": False}
    conftest.pytest_benchmark_update_commit_info(None, from_git)
    assert from_git == {"id": "ba5094e4", "dirty": False}  # git's own word stays


def test_without_git_dirty_comes_from_the_commits_suffix(monkeypatch):
    """env.json's `dirty` was null on the lent machine although edits travel with the tree:
    the "-dirty" suffix the caller appends says so; a bare sha says nothing."""
    monkeypatch.setattr(bench, "_git", lambda *args: None)
    env = bench.environment("cpu", DIRTY)
    assert (env["commit"], env["dirty"]) == (DIRTY, True)
    assert bench.environment("cpu", "0123456789abcdef")["dirty"] is None
    assert bench.environment("cpu")["commit"] is None
