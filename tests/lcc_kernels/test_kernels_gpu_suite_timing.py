"""The GPU suite's timing harness (lcc_kernels.bench, benchmarks/): eager rounds issue calls
for their time budget, graph replays and the device copy are timed back to back between
events (on a stand-in CUDA here), the environment describes the device it is given, and
CUTLASS 2:4 jobs and benchmarks are left out where torch's CUTLASS matmul cannot run."""

import itertools
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


class _FakeDevice:
    """A stream whose calls cost `costs` ms in turn, and the log of what reached it: "run"
    (a call), "event" (an event recorded) and "sync" (the host waiting for it)."""

    def __init__(self, costs):
        self.clock, self.costs, self.log = 0.0, itertools.cycle(costs), []

    def run(self):
        self.clock += next(self.costs)
        self.log.append("run")

    def synchronize(self):
        self.log.append("sync")

    def event(self, enable_timing=False):
        device = self

        class Event:
            def record(self):
                self.at, self.logged = device.clock, len(device.log)
                device.log.append("event")

            def elapsed_time(self, end):
                assert enable_timing and "sync" in device.log[end.logged :], "not synchronised"
                return end.at - self.at

        return Event()


def _fake_cuda(monkeypatch, costs):
    from lcc_kernels import bench

    device = _FakeDevice(costs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", device.synchronize)
    monkeypatch.setattr(torch.cuda, "Event", device.event)
    monkeypatch.setattr(bench, "_graph_of", lambda calls: (device.run, "cuda_graph"))
    return device


def test_replays_are_timed_back_to_back_between_events(monkeypatch):
    """No flush and no synchronisation between the timed replays (a flush leaves dirty
    lines in L2 whose write-back the next replay pays): five replays size the rest, ~20 ms
    of them warm up, ~100 ms of them are timed, each between two events, one sync after."""
    from lcc_kernels import bench

    device = _fake_cuda(monkeypatch, [1.0, 3.0])
    times = bench.replay_times(device.run, warmup_ms=20, rep_ms=100)
    estimate = (1 + 3 + 1 + 3 + 1) / bench.ESTIMATE_CALLS
    warmup, timed = math.ceil(20 / estimate), math.ceil(100 / estimate)
    assert device.log == (
        ["sync", "event", *["run"] * bench.ESTIMATE_CALLS, "event", "sync", *["run"] * warmup]
        + ["event", *["run", "event"] * timed, "sync"]
    )
    first = bench.ESTIMATE_CALLS + warmup  # the costs go on alternating
    assert times == [(1.0, 3.0)[i % 2] for i in range(first, first + timed)]


def test_time_calls_gives_per_call_quantiles_of_the_replays(monkeypatch):
    """Quantiles (QUANTILES) of the replay times, divided by the calls in one replay; each
    call runs once first (compiles) and the fields stay those the suite records."""
    from lcc_kernels import bench

    device = _fake_cuda(monkeypatch, [1.0, 3.0])
    ran = []
    timing = bench.time_calls([lambda: ran.append(1)] * 4, rep_ms=100, warmup_ms=20)
    assert ran == [1] * 4 and device.log.count("sync") == 4
    assert timing == {
        "median_ms": pytest.approx(2.0 / 4),  # 28 replays of 1 ms and 28 of 3 ms
        "p20_ms": pytest.approx(1.0 / 4),
        "p80_ms": pytest.approx(3.0 / 4),
        "method": "cuda_graph",
        "copies": 4,
    }


def test_the_device_copy_is_timed_as_the_calls_are(monkeypatch):
    """The bandwidth check's reference: the copy's median replay time, the same timing as
    the calls' (no flush either), bytes read plus written."""
    from lcc_kernels import bench

    device = _fake_cuda(monkeypatch, [0.5])
    src = torch.ones(2**20, dtype=torch.bfloat16)
    dst = torch.zeros_like(src)
    assert bench.copy_rate(src, dst) == pytest.approx(2 * src.nbytes / 0.5e-3)
    assert torch.equal(dst, src) and device.log.count("sync") == 4
