"""Split-K against CUDA's grid limit: the K splits are a launch grid's y dimension, which
holds at most 65535 programs. The dispatcher's rules never split past dispatch.MAX_SPLIT_K,
at any shape; a plan given (or one of a measured table) that splits more is refused before
anything is launched, naming split_k and the limit. Geometry only: nothing runs."""

import pytest
import torch

from lcc_kernels import decode, dispatch, launch
from lcc_kernels.dispatch import Plan, WeightKey, plan_for
from lcc_kernels.dispatch_table import MAX_SPLIT_K_WORKSPACE_BYTES
from lcc_kernels.launch_geometry import MAX_GRID_YZ, operand_geometry, streams_geometry

SPARSE24 = decode.FORMAT_SPARSE24.value
BITMAP = decode.FORMAT_BITMAP.value
# a skinny plan of one-row, 32-column K tiles: K = 32 * splits gives each split one tile
SKINNY = dict(block_m=1, block_n=16, block_k=32)


def _skinny_geometry(split_k: int):
    plan = Plan("skinny", **SKINNY, split_k=split_k)
    k = 32 * split_k
    return operand_geometry(
        plan, 1, 16, k, SPARSE24, None, False, torch.float16, MAX_SPLIT_K_WORKSPACE_BYTES
    )


def _refusal(split_k: int, splits: int, backend: str) -> str:
    return (
        f"the {backend} plan's split_k = {split_k} splits K {splits} ways, over the 65535 "
        "one launch's grid can hold"
    )


def test_a_skinny_split_at_the_limit_is_launched():
    geometry = _skinny_geometry(MAX_GRID_YZ)
    assert geometry.grid == (1, MAX_GRID_YZ, 1) and geometry.split == MAX_GRID_YZ


def test_a_skinny_split_past_the_limit_is_refused():
    """The grid (1, 65536, 1) had been returned: CUDA fails such a launch."""
    with pytest.raises(ValueError, match=_refusal(MAX_GRID_YZ + 1, MAX_GRID_YZ + 1, "skinny")):
        _skinny_geometry(MAX_GRID_YZ + 1)


def test_split_k_past_the_limit_splits_at_most_once_per_k_tile():
    """A split_k over the limit on a K of fewer tiles splits once per tile: launched."""
    plan = Plan("skinny", **SKINNY, split_k=100_000)
    geometry = operand_geometry(
        plan, 1, 16, 32 * 1000, SPARSE24, None, False, torch.float16, MAX_SPLIT_K_WORKSPACE_BYTES
    )
    assert geometry.grid == (1, 1000, 1)


def test_plan_launches_refuses_it_before_allocating_the_workspace():
    """What run_linear and sparse_linear launch (and ahead-of-time compiles) go through."""
    k = 32 * (MAX_GRID_YZ + 7)
    x, out = torch.zeros(1, k, dtype=torch.float16), torch.empty(1, 16, dtype=torch.float16)
    values = torch.zeros(16, k // 2, dtype=torch.float16)
    operand = launch.sparse24_operand(values, torch.zeros(16, k // 32, dtype=torch.int32), k)
    plan = Plan("skinny", **SKINNY, split_k=10**6)
    with pytest.raises(ValueError, match=_refusal(10**6, MAX_GRID_YZ + 7, "skinny")):
        launch.plan_launches(x, operand, None, plan, out)


@pytest.mark.parametrize("split", [MAX_GRID_YZ, MAX_GRID_YZ + 1])
def test_a_streams_layout_split_past_the_limit_is_refused(split):
    plan = Plan("streams", 1, 32, split_k=split, num_warps=1)
    if split <= MAX_GRID_YZ:
        assert streams_geometry(plan, 1, 32, split, 2, 4, False).grid == (2, split, 1)
        return
    with pytest.raises(ValueError, match=_refusal(split, split, "streams")):
        streams_geometry(plan, 1, 32, split, 2, 4, False)


@pytest.mark.parametrize("m", [1, 2, 4, 16, 4096])
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_the_dispatchers_plans_stay_within_the_grid_at_extreme_shapes(m, fmt):
    """One 16-row output tile, K of 2^26 and a GPU of 10^6 SMs: every split the rules
    could want, capped at MAX_SPLIT_K; the row tiles of M = 4096 within the grid too."""
    dispatch.clear_tables()
    tile = (16, 32) if fmt == "bitmap" else None
    key = WeightKey(fmt, "float16", 16, 2**26, tile, 0.5 if tile else None)
    weight_format = BITMAP if tile else SPARSE24
    for streams in (False, True) if tile else (False,):
        plan = plan_for(m, key, "a GPU", 10**6, decode_streams=streams, triton_only=True)
        if plan.backend == "streams":
            blocks = -(-key.n // plan.block_n)
            geometry = streams_geometry(plan, m, plan.block_n, plan.split_k, blocks, 4, False)
        else:
            geometry = operand_geometry(
                plan, m, key.n, key.k, weight_format, tile, False, torch.float16, 2**40
            )
        assert all(size <= MAX_GRID_YZ for size in geometry.grid[1:]), (plan, geometry.grid)
        assert geometry.split <= dispatch.MAX_SPLIT_K
