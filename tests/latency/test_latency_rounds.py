"""restorelcc.latency.interleaved_rounds / median_ratios (shared by the demo's latency
column and the CPU benchmarks), and the comparison the regression tests make."""

import itertools

import pytest
import torch
from _latency_baselines import regressions
from torch import nn

from restorelcc import latency
from restorelcc.demo import forward_latency


def recorder(log: list, name: str):
    return lambda: log.append(name)


def test_rounds_rotate_who_goes_first():
    log = []
    calls = {name: recorder(log, name) for name in "abc"}
    times = latency.interleaved_rounds(calls, rounds=4, warmup=1)
    assert log == list("abc" + "abc" + "bca" + "cab" + "abc")  # warm-up, then rotated
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}


def test_each_round_times_number_calls_and_reports_seconds_per_call(monkeypatch):
    clock = itertools.count(0.0, 0.5)  # every perf_counter call advances 0.5 s
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    log, synced = [], []
    times = latency.interleaved_rounds(
        {"a": recorder(log, "a"), "b": recorder(log, "b")},
        rounds=2,
        number=5,
        warmup=0,
        sync=lambda: synced.append(1),
    )
    assert log == ["a"] * 5 + ["b"] * 5 + ["b"] * 5 + ["a"] * 5
    assert times == {"a": [0.1, 0.1], "b": [0.1, 0.1]}  # 0.5 s over 5 calls
    assert len(synced) == 2 * 4  # before and after each timing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
        ({"rounds": 1, "number": 0}, "number must be >= 1, got 0"),
        ({"rounds": 1, "warmup": -1}, "warmup must be >= 0, got -1"),
    ],
)
def test_rounds_refuse_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        latency.interleaved_rounds({"a": lambda: None}, **kwargs)


def test_median_ratios_are_per_round():
    times = {"base": [1.0, 2.0, 4.0], "x": [2.0, 2.0, 2.0]}
    # per round 2, 1, 0.5 -> median 1; the ratio of medians would be 1 too, the mean 7/6
    assert latency.median_ratios(times, "base") == {"base": 1.0, "x": 1.0}
    with pytest.raises(KeyError, match="baseline 'pruned' is not among"):
        latency.median_ratios(times, "pruned")


class Named(nn.Module):
    """A stand-in model that logs its name on every forward."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        self.log.append(self.name)
        return ids


def test_forward_latency_alternates_who_goes_first():
    log = []
    models = {"pruned": Named("pruned", log), "folded": Named("folded", log)}
    ratios = forward_latency(models, vocab=8, rounds=3, baseline="pruned")
    assert log[2:] == ["pruned", "folded", "folded", "pruned", "pruned", "folded"]
    assert ratios["pruned"] == 1.0 and ratios["folded"] > 0


def test_regressions_flag_only_slower_or_missing_ratios():
    stored = {"folded": 1.0, "hooked": 1.0, "lora": 1.0}
    measured = {"folded": 1.19, "hooked": 1.21}  # lora not measured
    assert regressions(measured, stored, tolerance=0.2) == {
        "hooked": "ratio 1.210 > stored 1.000 x 1.2 = 1.200",
        "lora": "not measured",
    }
    assert regressions({"folded": 0.5}, {"folded": 1.0}, tolerance=0.0) == {}
