import itertools

import pytest
import torch

from restorelcc import latency


def test_cpu_median_of_an_even_number_of_rounds_is_the_mean_of_the_middle_two(monkeypatch):
    durations_ms = [4.0, 1.0, 3.0, 2.0]
    clock = itertools.chain.from_iterable((0.0, d / 1e3) for d in durations_ms)
    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(clock))
    timing = latency.time_call(lambda: None, torch.device("cpu"), rounds=4)
    assert timing["median_ms"] == pytest.approx(2.5)
