"""The GPU suite's timing harness (lcc_kernels.bench, benchmarks/): eager rounds issue calls
for their time budget, the environment describes the device it is given, and CUTLASS 2:4
jobs and benchmarks are left out where torch's CUTLASS matmul cannot run."""

import math

import pytest
import torch
from _suite_helpers import suite_plans, suite_runner


def test_eager_rounds_issue_calls_for_their_time_budget(monkeypatch):
    from lcc_kernels import bench

    clock = {"ms": 0.0, "calls": 0}

    def call(cost_ms):
        clock["ms"] += cost_ms
        clock["calls"] += 1

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["ms"] / 1e3)
    calls = [lambda: call(1.0), lambda: call(2.0)]  # one pass: 3 ms, i.e. 1.5 ms per call
    timing = bench._wall_clock(calls, rounds=3, repeat=None)
    passes = math.ceil(bench.EAGER_ROUND_MS / 3.0)  # 7 passes fill a 20 ms round
    assert clock["calls"] == 2 * (1 + 3 * passes)  # the deciding pass, then the rounds
    assert timing["median_ms"] == pytest.approx(1.5) and timing["copies"] == 2
    clock["calls"] = 0
    bench._wall_clock([lambda: call(1e-6)], rounds=2, repeat=None)  # cheap: capped
    assert clock["calls"] == 1 + 2 * bench.EAGER_CALLS_PER_ROUND


def test_environment_describes_the_device_it_is_given(monkeypatch):
    """The capability of the device asked for (cuda:1 here), not the current one's."""
    from types import SimpleNamespace

    from lcc_kernels import bench

    props = SimpleNamespace(name="GPU1", multi_processor_count=8, L2_cache_size=1, total_memory=1)
    capability = {0: (9, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_capability",
        lambda device=None: capability[0 if device is None else torch.device(device).index],
    )
    info = bench.environment("cuda:1", commit="abc")
    assert (info["gpu"], info["sm_count"], info["capability"]) == ("GPU1", 8, [8, 0])


def test_cutlass_jobs_are_not_run_where_its_matmul_cannot(tmp_path):
    """torch's CUTLASS 2:4 matmul runs on compute capability 8.x only: on an H100/H200 the
    suite neither converts nor times for it (a CPU smoke run does, where it can)."""
    cfg = suite_plans.config(smoke=True)
    runner = suite_runner.Runner(tmp_path, cfg, deadline=float("inf"))
    assert runner.cutlass_matmul == (
        not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] == 8
    )
    runner.cutlass_matmul = False
    shape = next(iter(cfg.main_shapes))
    assert runner.run(suite_plans.Job(shape, 1, "2:4", "cutlass")) is None
    assert not (tmp_path / "timings.jsonl").exists() and not runner.weights


def test_the_pytest_benchmarks_skip_cutlass_where_its_matmul_cannot_run(monkeypatch):
    import bench_kernels  # benchmarks/, on sys.path from _suite_helpers

    from lcc_kernels.bench import cutlass_matmul_supported

    assert cutlass_matmul_supported("cpu")  # there every semi-structured call fails alike
    monkeypatch.setattr(bench_kernels, "cutlass_matmul_supported", lambda device: False)
    with pytest.raises(pytest.skip.Exception, match="compute capability 8.x"):
        bench_kernels._provider_setup("cutlass", "llama3-8b-o", 1, weights=None)
