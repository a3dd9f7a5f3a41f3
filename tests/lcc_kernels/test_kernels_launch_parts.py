"""The Triton launchers past their limits: M whose row tiles exceed a grid axis, or whose
streams split-K workspace exceeds its bound, runs in parts of rows, and a launch that
raises part-way leaves no nonzero split-K counters for the next one."""

import pytest
import torch
from _kernels_helpers import assert_matches_oracle, needs_triton, random_unstructured
from _linear_helpers import K, N, packed_weight

from lcc_kernels import Plan, launch, launch_geometry, pack, sparse_linear

pytestmark = needs_triton


def _spy(monkeypatch, name: str) -> list[int]:
    """The M of each call of launch.<name> (plan_launches or stream_launches)."""
    rows, real = [], getattr(launch, name)

    def spied(x, *args):
        rows.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(launch, name, spied)
    return rows


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_skinny_rows_past_the_grid_limit_run_in_parts(monkeypatch, fmt):
    """A bitmap tile under 16 rows keeps "auto" on the skinny path at any M; its row tiles
    (the grid's z) are capped, here at 2 instead of CUDA's 65535."""
    dense = random_unstructured(N, K, 0.4, torch.float32)
    packed = pack(dense, "bitmap", tile=(8, 32))
    if fmt == "2:4":
        dense, packed = packed_weight("2:4", torch.float32)
    monkeypatch.setattr(launch_geometry, "MAX_GRID_YZ", 2)
    launched = _spy(monkeypatch, "plan_launches")
    x, bias = torch.randn(11, K), torch.randn(N)
    plan = Plan("skinny", block_m=4, block_n=8, block_k=32, split_k=2)
    assert_matches_oracle(sparse_linear(x, packed, bias, plan=plan), x, dense, bias)
    assert launched == [8, 3]


def test_streams_rows_past_the_grid_limit_run_in_parts(monkeypatch):
    dense, packed = packed_weight("bitmap", torch.float32)
    monkeypatch.setattr(launch_geometry, "MAX_GRID_YZ", 2)
    launched = _spy(monkeypatch, "stream_launches")
    x = torch.randn(11, K)
    assert_matches_oracle(sparse_linear(x, packed, backend="streams"), x, dense)
    assert launched == [8, 3]  # block_m 4 at M = 11


def test_streams_rows_past_the_workspace_bound_run_in_parts(monkeypatch):
    """A layout split for decode, run at a large M: its split-K workspace [split, M, N] fp32
    is bounded by launching fewer rows at a time (here 4 rows of 3 x 72 floats fit)."""
    from lcc_kernels import dispatch_table

    dense, packed = packed_weight("bitmap", torch.float32)
    monkeypatch.setattr(dispatch_table, "MAX_SPLIT_K_WORKSPACE_BYTES", 5 * 3 * N * 4)
    launched = _spy(monkeypatch, "stream_launches")
    x, bias = torch.randn(11, K), torch.randn(N)
    plan = Plan("streams", 4, 32, split_k=3, num_warps=1)
    assert_matches_oracle(sparse_linear(x, packed, bias, plan=plan), x, dense, bias)
    assert launched == [4, 4, 3]


def test_one_launch_past_the_grid_limit_is_refused():
    """plan_launches (one launch's worth, also used to compile ahead of time) refuses what
    run_linear would split."""
    _, packed = packed_weight("2:4", torch.float32)
    x, out = torch.zeros(65536, K), torch.empty(65536, N)
    operand = launch.sparse24_operand(packed.values, packed.meta, K)
    message = "at most 65535 row tiles of block_m = 1 in one launch, got M = 65536 rows"
    with pytest.raises(ValueError, match=message):
        launch.plan_launches(x, operand, None, Plan("skinny", block_m=1, block_k=32), out)


class _StoppedPartWay:
    """A split-K kernel stopped after some splits were counted (an interpreted one
    interrupted by Ctrl-C, say): its ticket counters are left nonzero."""

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, x, out, bias, partials, counters, *args, **options):
        counters.fill_(1)
        raise KeyboardInterrupt


def test_a_launch_stopped_part_way_leaves_no_counters_to_the_next(monkeypatch):
    dense, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(3, K)
    plan = Plan("skinny", block_m=4, block_n=32, block_k=32, split_k=3)
    with monkeypatch.context() as patch:
        patch.setattr(launch, "skinny_linear_kernel", _StoppedPartWay())
        with pytest.raises(KeyboardInterrupt):
            sparse_linear(x, packed, plan=plan)
    assert_matches_oracle(sparse_linear(x, packed, plan=plan), x, dense)
