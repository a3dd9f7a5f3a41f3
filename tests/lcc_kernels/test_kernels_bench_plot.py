"""lcc_kernels.bench_plot: the speed-ups it draws are the ratios of the stored medians."""

import pytest

from lcc_kernels.bench_plot import plot_speedups, speedup_series


def _row(m, provider, kind, ms, shape="qkv", **extra):
    return {"shape": shape, "m": m, "provider": provider, "kind": kind, "median_ms": ms,
            "bias": True, "status": "ok", "bytes": None, **extra}  # fmt: skip


ROWS = [
    _row(1, "dense", "dense", 8.0, bytes=1000),
    _row(1, "ours", "2:4", 5.0, bytes=560),
    _row(1, "ours", "2:4", 4.0, bytes=560),  # a faster plan: the one drawn
    _row(1, "ours", "2:4", 1.0, bias=False),  # no bias: not what the checks compare
    _row(1, "ours", "2:4", 0.5, tag="bias_cost"),
    _row(1, "ours", "bitmap70", 2.0, status="error"),
    _row(16, "dense", "dense", 9.0),
    _row(16, "cusparselt", "2:4", 18.0),
    _row(16, "ours", "2:4", 6.0),
    _row(4, "ours", "2:4", 3.0),  # no dense baseline at M = 4: left out
    _row(1, "ours", "bitmap50", 1.0, shape="o"),  # nor for this shape
]


def test_series_are_dense_over_the_fastest_fused_bias_plan():
    series = speedup_series(ROWS)
    assert set(series) == {"qkv"}
    assert series["qkv"] == {
        "ours 2:4": [(1, 2.0), (16, 1.5)],
        "ours 2:4 bytes bound": [(1, pytest.approx(1000 / 560))],
        "torch 2:4 (cuSPARSELt)": [(16, 0.5)],
    }


def test_plot_is_written_only_when_there_is_something_to_draw(tmp_path):
    targets = [{"check": "speedup_vs_dense_F.linear", "shape": "qkv", "m": 1, "kind": "2:4",
                "threshold": 1.6}]  # fmt: skip
    path = plot_speedups(tmp_path, ROWS, targets)
    assert path == tmp_path / "speedups.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_speedups(tmp_path / "none", ROWS[1:6], targets) is None
