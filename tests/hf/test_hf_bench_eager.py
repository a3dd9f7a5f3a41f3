"""``restorelcc bench --eager`` on CUDA: its calls issued from Python are timed for
``--rep-ms`` after a warm-up, as the graph replays are (on a stand-in CUDA and clock)."""

import math

import pytest
import torch


@pytest.fixture
def stand_in_cuda(monkeypatch):
    """torch.cuda said available, with no-op synchronisation, and a clock that only calls
    move: each costs CALL_MS. Returns the log of calls made."""
    from lcc_kernels import bench

    clock = {"ms": 0.0, "calls": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["ms"] / 1e3)
    return clock


CALL_MS = 3.0


def _call(clock):
    def call():
        clock["ms"] += CALL_MS
        clock["calls"] += 1

    return call


@pytest.mark.parametrize(("rep_ms", "warmup_ms"), [(300, 60), (1000, 250)])
def test_eager_calls_are_timed_for_rep_ms_after_a_warm_up(stand_in_cuda, rep_ms, warmup_ms):
    """--rep-ms changed nothing under --eager: 7 rounds of ~20 ms were timed whatever it
    asked (147 ms here), with no warm-up beyond the first call."""
    from lcc_kernels import bench

    timing = bench.time_calls(
        [_call(stand_in_cuda)], rep_ms=rep_ms, warmup_ms=warmup_ms, eager=True
    )
    passes = math.ceil(bench.EAGER_ROUND_MS / CALL_MS)  # calls per round: 7, 21 ms
    rounds = max(bench.EAGER_ROUNDS, math.ceil(rep_ms / (passes * CALL_MS)))
    warmup = math.ceil(warmup_ms / CALL_MS)
    # the compiling call, the pass that sizes the rounds, the warm-up, the timed rounds
    assert stand_in_cuda["calls"] == 1 + 1 + warmup + rounds * passes
    assert rep_ms <= rounds * passes * CALL_MS < rep_ms + passes * CALL_MS
    assert timing["median_ms"] == pytest.approx(CALL_MS) and timing["method"] == "eager_loop"


def test_a_short_rep_ms_still_times_the_least_rounds(stand_in_cuda):
    from lcc_kernels import bench

    bench.time_calls([_call(stand_in_cuda)], rep_ms=5, warmup_ms=1, eager=True)
    passes = math.ceil(bench.EAGER_ROUND_MS / CALL_MS)
    assert stand_in_cuda["calls"] == 1 + 1 + 1 + bench.EAGER_ROUNDS * passes
