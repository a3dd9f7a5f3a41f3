"""Dispatch: M buckets, split-K rules, default plans, measured tables and their lookup."""

import json

import pytest
import torch
from _kernels_helpers import random_24, random_unstructured
from hypothesis import given, settings
from hypothesis import strategies as st

from lcc_kernels import dispatch, pack
from lcc_kernels.dispatch import (
    TABLE_SCHEMA,
    DispatchTable,
    Plan,
    WeightKey,
    m_bucket,
    plan_for,
    split_k_for,
)

H200 = "NVIDIA H200"
KEY_24 = WeightKey("2:4", "bfloat16", 6144, 4096)
KEY_BITMAP = WeightKey("bitmap", "bfloat16", 4096, 4096, (64, 64), 0.3)


@pytest.fixture(autouse=True)
def _no_tables():
    dispatch.clear_tables()
    yield
    dispatch.clear_tables()


def _entry(m_bucket_, plan, fmt="2:4", n=6144, k=4096, tile=None, density=None):
    return {
        "format": fmt,
        "dtype": "bfloat16",
        "n": n,
        "k": k,
        "tile": tile,
        "density": density,
        "m_bucket": m_bucket_,
        "plan": plan.to_dict(),
    }


def _table(entries):
    return {"schema": TABLE_SCHEMA, "device": H200, "entries": entries}


def test_m_buckets_are_capped_powers_of_two():
    assert [m_bucket(m) for m in (0, 1, 2, 3, 16, 17, 1000, 4096, 10**6)] == [
        1,
        1,
        2,
        4,
        16,
        32,
        1024,
        4096,
        4096,
    ]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 512), st.integers(1, 264))
def test_split_k_has_no_empty_splits(output_tiles, k_tiles, sms):
    split = split_k_for(output_tiles, k_tiles, sms)
    assert 1 <= split <= min(k_tiles, dispatch.MAX_SPLIT_K)
    per_split = -(-k_tiles // split)
    assert (split - 1) * per_split < k_tiles  # the last split has work


def test_defaults_without_a_table():
    assert plan_for(1, KEY_24, "cpu", 4).backend == "reference"
    decode = plan_for(1, KEY_24, H200, 132)
    assert (decode.backend, decode.block_m) == ("skinny", 1)
    assert decode.split_k > 1  # 96 column tiles alone would leave most of 132 SMs idle
    assert plan_for(16, KEY_24, H200, 132).block_m == 16
    prefill = plan_for(17, KEY_24, H200, 132)
    assert prefill.backend == "tiled" and prefill.block_m >= 16
    bitmap = plan_for(4096, KEY_BITMAP, H200, 132)
    assert (bitmap.block_n, bitmap.block_k) == (64, 64)
    for backend in ("dense", "semi_structured", "reference", "skinny", "tiled"):
        assert plan_for(1, KEY_24, "cpu", 4, backend=backend).backend == backend
    with pytest.raises(ValueError, match="unknown backend"):
        plan_for(1, KEY_24, H200, 132, backend="cublas")


def test_measured_table_is_used_per_bucket(tmp_path):
    fast_decode = Plan("skinny", block_m=1, block_n=128, block_k=128, split_k=7)
    prefill = Plan("semi_structured", semi_structured="cutlass")
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_table([_entry(1, fast_decode), _entry(1024, prefill)])))
    dispatch.load_table(path)
    assert plan_for(1, KEY_24, H200, 132) == fast_decode
    assert plan_for(2, KEY_24, H200, 132) == fast_decode  # a neighbouring bucket
    assert plan_for(2000, KEY_24, H200, 132) == prefill
    assert plan_for(4, KEY_24, H200, 132).split_k != 7  # too far from bucket 1: rules
    assert plan_for(4096, KEY_24, H200, 132).backend == "tiled"
    other_shape = WeightKey("2:4", "bfloat16", 4096, 4096)
    assert plan_for(1, other_shape, H200, 132).split_k != 7  # no entry: default rules
    assert plan_for(1, KEY_24, "NVIDIA H100", 132).split_k != 7  # other device


def test_memoised_plans_follow_the_registered_tables():
    # Plans are memoised per table: registering, replacing or clearing one must show at once.
    before = plan_for(1, KEY_24, H200, 132)
    assert plan_for(1, KEY_24, H200, 132) is before  # memoised
    dispatch.register_table(DispatchTable.from_dict(_table([_entry(1, Plan("skinny", split_k=5))])))
    assert plan_for(1, KEY_24, H200, 132).split_k == 5
    dispatch.register_table(DispatchTable.from_dict(_table([_entry(1, Plan("skinny", split_k=6))])))
    assert plan_for(1, KEY_24, H200, 132).split_k == 6
    dispatch.clear_tables()
    assert plan_for(1, KEY_24, H200, 132) == before


def test_bitmap_entries_match_tile_and_density():
    measured = Plan("tiled", block_m=128, block_n=64, block_k=64, num_warps=8)
    wrong_tile = Plan("tiled", block_m=64, block_n=32, block_k=64)
    dispatch.register_table(
        DispatchTable.from_dict(
            _table(
                [
                    _entry(1024, measured, "bitmap", 4096, 4096, [64, 64], 0.3),
                    _entry(1024, Plan("dense"), "bitmap", 4096, 4096, [64, 64], 0.7),
                    _entry(1024, wrong_tile, "bitmap", 4096, 4096, [32, 64], 0.3),
                ]
            )
        )
    )
    assert plan_for(1024, KEY_BITMAP, H200, 132) == measured
    denser = WeightKey("bitmap", "bfloat16", 4096, 4096, (64, 64), 0.65)
    assert plan_for(1024, denser, H200, 132).backend == "dense"
    far = WeightKey("bitmap", "bfloat16", 4096, 4096, (64, 64), 0.5)
    assert plan_for(1024, far, H200, 132).backend == "tiled"  # 0.2 away from both: defaults


def test_semi_structured_entries_never_apply_to_bitmap_or_fp32():
    table = _table([_entry(1024, Plan("semi_structured"), "2:4", 4096, 4096)])
    table["entries"][0]["dtype"] = "float32"
    dispatch.register_table(DispatchTable.from_dict(table))
    assert plan_for(1024, WeightKey("2:4", "float32", 4096, 4096), H200, 132).backend == "tiled"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.update(schema="other/1"), "schema"),
        (lambda t: t.pop("device"), "device"),
        (lambda t: t["entries"][0]["plan"].update(block_m=3), "power of two"),
        (lambda t: t["entries"][0]["plan"].update(colour="red"), "unknown Plan fields"),
        (lambda t: t["entries"][0].update(density=None, format="bitmap"), "tile and density"),
    ],
)
def test_malformed_tables_are_refused(mutate, message):
    table = _table([_entry(1, Plan("skinny"))])
    mutate(table)
    with pytest.raises(ValueError, match=message):
        DispatchTable.from_dict(table)


def test_tables_named_in_the_environment_are_loaded(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table([_entry(1, Plan("skinny", split_k=9))])))
    monkeypatch.setenv(dispatch.TABLE_ENV, str(path))
    monkeypatch.setattr(dispatch, "_ENV_LOADED", False)
    dispatch._load_env_tables()
    assert plan_for(1, KEY_24, H200, 132).split_k == 9
    missing = tmp_path / "missing.json"
    monkeypatch.setenv(dispatch.TABLE_ENV, str(missing))
    monkeypatch.setattr(dispatch, "_ENV_LOADED", False)
    with pytest.raises(ValueError, match=f"{dispatch.TABLE_ENV}: cannot load {missing}: No such"):
        dispatch._load_env_tables()


def test_choose_plan_keys_on_the_weight():
    bitmap = pack(random_unstructured(40, 64, 0.3), "bitmap", tile=(16, 32))
    key = WeightKey.of(bitmap, torch.float16)
    assert (key.format, key.dtype, key.tile) == ("bitmap", "float16", (16, 32))
    assert key.density == pytest.approx(bitmap.nnz / (40 * 64))
    plan = dispatch.choose_plan(3, pack(random_24(8, 64)), torch.float32, torch.device("cpu"))
    assert plan.backend == "reference"
    forced = dispatch.choose_plan(3, bitmap, torch.float32, torch.device("cpu"), "skinny")
    assert (forced.backend, forced.block_n, forced.block_k) == ("skinny", 16, 32)


@pytest.mark.parametrize("tile", [(1, 32), (8, 64)])
def test_bitmap_tiles_under_16_rows_never_get_a_dot_plan(tile):
    narrow = WeightKey("bitmap", "bfloat16", 4096, 4096, tile, 0.3)
    dot_plan = Plan("tiled", block_m=64, block_n=tile[0], block_k=tile[1])
    table = _table([_entry(1024, dot_plan, "bitmap", 4096, 4096, list(tile), 0.3)])
    with pytest.raises(ValueError, match=r"entry 0: .* needs block_m, block_n and block_k >= 16"):
        DispatchTable.from_dict(table)  # a table cannot give one either
    for m in (1, 2, 3, 16, 1024):
        for backend in ("auto", "skinny"):
            plan = plan_for(m, narrow, H200, 132, backend=backend)
            assert plan.backend == "skinny" and plan.block_m < 16, (m, backend, plan)
            assert (plan.block_n, plan.block_k) == tile


def test_bitmap_lookup_tries_every_density_within_tolerance():
    """The nearest density's entry lacks M bucket 1024: the next one within
    DENSITY_TOLERANCE that has it answers; none nearer than the tolerance: rules."""
    decode = Plan("skinny", block_m=1, block_n=64, block_k=64, split_k=8)
    measured = Plan("tiled", block_m=128, block_n=64, block_k=64, num_warps=8)
    entries = [
        _entry(1, decode, "bitmap", 4096, 4096, [64, 64], 0.30),
        _entry(1024, measured, "bitmap", 4096, 4096, [64, 64], 0.36),
        _entry(1024, Plan("dense"), "bitmap", 4096, 4096, [64, 64], 0.5),
    ]
    table = DispatchTable.from_dict(_table(entries))
    key = WeightKey("bitmap", "bfloat16", 4096, 4096, (64, 64), 0.31)
    assert table.lookup(key, 1024) == measured
    assert table.lookup(key, 1) == decode  # the nearest entry still comes first
    far = WeightKey("bitmap", "bfloat16", 4096, 4096, (64, 64), 0.2)  # 0.36 is 0.16 away
    assert table.lookup(far, 1024) is None


@pytest.mark.parametrize("kwargs", [{"backend": "streams"}, {"decode_streams": True}])
def test_streams_plans_for_zero_rows(kwargs):
    """M = 0 (an empty batch) has no output tiles: one program's split, no division by 0."""
    plan = plan_for(0, KEY_BITMAP, H200, 132, **kwargs)
    assert plan.backend == "streams" and plan.block_m == 1 and plan.split_k >= 1
    assert dispatch.streams_plan(0, KEY_BITMAP, 132) == plan
