"""``bench.replay_times`` caps both its warm-up and its timed replays at MAX_TIMED_CALLS
(a replay far shorter than its budget would otherwise queue millions of them); the device
copy's rate is of the median replay. With the fake device of test_kernels_gpu_suite_timing."""

import pytest
import torch
from test_kernels_gpu_suite_timing import _fake_cuda


def test_warmup_and_timed_replays_are_capped(monkeypatch):
    from lcc_kernels import bench

    monkeypatch.setattr(bench, "MAX_TIMED_CALLS", 7)
    device = _fake_cuda(monkeypatch, [1.0])
    times = bench.replay_times(device.run, warmup_ms=100, rep_ms=100)  # 100 replays each
    assert times == [1.0] * 7
    estimate = ["sync", "event", *["run"] * bench.ESTIMATE_CALLS, "event", "sync"]
    assert device.log == [*estimate, *["run"] * 7, "event", *["run", "event"] * 7, "sync"]


def test_the_device_copy_rate_is_of_the_median_replay(monkeypatch):
    """Replays of 0.5, 1 and 4 ms in turn: the median is 1 ms (p20 0.5, p80 4)."""
    from lcc_kernels import bench

    _fake_cuda(monkeypatch, [0.5, 1.0, 4.0])
    src = torch.ones(2**10, dtype=torch.bfloat16)
    assert bench.copy_rate(src, torch.zeros_like(src)) == pytest.approx(2 * src.nbytes / 1e-3)
