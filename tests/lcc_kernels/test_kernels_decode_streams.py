"""decode_streams: the opt-in that lets the rules pick streams at decode, `prepare_streams`,
and the `bitmap_streams_linear` op that keeps them under torch.compile.

On a CPU "auto" always runs the reference path, so the choices a GPU would make are
checked on the pure dispatcher (`plan_for`) and on the op, whose own dispatch skips the
reference path (as the Triton ops' does) and so runs interpreted here.
"""

import dataclasses

import pytest
import torch
from _kernels_helpers import (
    assert_matches_oracle,
    needs_triton,
    random_unstructured,
)
from torch.library import opcheck

from lcc_kernels import Plan, ops, pack, prepare_streams, sparse_linear
from lcc_kernels.dispatch import (
    STREAMS_MAX_M,
    DispatchTable,
    WeightKey,
    plan_for,
    streams_block_m,
    streams_plan,
)
from lcc_kernels.ops import bitmap_streams_linear, streams_config

N, K = 72, 136
TILE = (16, 32)
H200 = "NVIDIA H200"


def _bitmap(density=0.4, dtype=torch.float32):
    dense = random_unstructured(N, K, density, dtype)
    dense[2] = 0  # an empty row
    dense[5, 4 : K - 3] = 0  # a gap of escapes
    return dense, pack(dense, "bitmap", tile=TILE)


def test_rules_pick_streams_at_decode_only_when_asked():
    key = WeightKey("bitmap", "bfloat16", 6144, 4096, (64, 64), 0.3)
    for m in range(1, STREAMS_MAX_M + 1):
        assert plan_for(m, key, H200, 132).backend == "skinny"
        opted = plan_for(m, key, H200, 132, decode_streams=True)
        assert opted == streams_plan(m, key, 132)
        assert opted.block_m == streams_block_m(m)
        # inside the op (which holds the layout) too; and one layout serves every M <= 4
        assert plan_for(m, key, H200, 132, triton_only=True, decode_streams=True) == opted
        assert (opted.block_n, opted.split_k) == (128, streams_plan(1, key, 132).split_k)
    assert plan_for(STREAMS_MAX_M + 1, key, H200, 132, decode_streams=True).backend == "skinny"
    assert plan_for(4096, key, H200, 132, decode_streams=True).backend == "tiled"
    assert plan_for(1, key, "cpu", 4, decode_streams=True).backend == "reference"
    key_24 = WeightKey("2:4", "bfloat16", 6144, 4096)
    assert plan_for(1, key_24, H200, 132, decode_streams=True).backend == "skinny"
    assert [streams_block_m(m) for m in (1, 2, 3, 4, 5, 17)] == [1, 2, 4, 4, 4, 4]


def test_a_measured_entry_wins_over_the_opt_in():
    key = WeightKey("bitmap", "bfloat16", 6144, 4096, (64, 64), 0.3)
    measured = Plan("skinny", 1, 64, 64, split_k=5, num_stages=1)
    entry = dict(format="bitmap", dtype="bfloat16", n=6144, k=4096, tile=[64, 64])
    table = DispatchTable(
        "gpu-measured",
        [
            dict(entry, density=0.3, m_bucket=1, plan=measured.to_dict()),
            dict(entry, density=0.3, m_bucket=2, plan=Plan("dense").to_dict()),
        ],
    )
    from lcc_kernels import dispatch

    dispatch.register_table(table)
    try:
        assert plan_for(1, key, "gpu-measured", 132, decode_streams=True) == measured
        assert plan_for(2, key, "gpu-measured", 132, decode_streams=True).backend == "dense"
        # the op cannot run a dense copy: its rules then, which take the streams it holds
        inside = plan_for(2, key, "gpu-measured", 132, triton_only=True, decode_streams=True)
        assert inside.backend == "streams"
    finally:
        dispatch._TABLES.pop("gpu-measured")


@needs_triton
def test_prepare_streams_builds_the_layout_compiled_calls_use():
    dense, packed = _bitmap()
    layout = prepare_streams(packed)
    plan, last = packed.cache["streams:last"]
    assert (
        last is layout
        and plan.backend == "streams"
        and packed.cache[f"streams:128:{plan.split_k}"] is layout
    )
    assert prepare_streams(packed) is layout  # built once
    record = packed.cache["streams:last"]
    x = torch.randn(2, K)
    with torch.no_grad():  # an eager call on the layout (another block_m) keeps the record
        sparse_linear(x, packed, plan=dataclasses.replace(plan, block_m=2))
    assert packed.cache["streams:last"] is record
    assert torch.equal(layout.to_dense(), dense)
    other = prepare_streams(packed, Plan("streams", 1, 32, split_k=3, num_warps=1))
    assert packed.cache["streams:last"][0].block_n == 32 and other is not layout
    with pytest.raises(ValueError, match="needs a streams plan"):
        prepare_streams(packed, Plan("skinny"))
    with pytest.raises(ValueError, match="built for bitmap weights"):
        prepare_streams(pack(torch.tensor([[1.0, 0, 0, 2]]), "2:4"))
    # A layout whose record another thread's first call has yet to write (it stores the
    # layout, then the record): prepare_streams records it itself.
    del packed.cache["streams:last"]
    assert prepare_streams(packed, plan) is layout
    assert packed.cache["streams:last"] == (plan, layout)


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("forced", [False, True])
def test_op_picks_streams_at_decode_and_tiles_above(m, forced, monkeypatch):
    from lcc_kernels import launch

    dense, packed = _bitmap()
    bias = torch.randn(N)
    layout = prepare_streams(packed)
    ran = []
    for name in ("run_streams", "run_linear"):
        real = getattr(launch, name)
        monkeypatch.setattr(launch, name, lambda *a, _r=real, _n=name: ran.append(_n) or _r(*a))
    x = torch.randn(m, K)
    y = bitmap_streams_linear(
        x,
        packed.bits,
        packed.values,
        packed.offsets,
        N,
        K,
        *TILE,
        packed.nnz,
        list(layout.tensors),
        streams_config(packed.cache["streams:last"][0], layout),
        bias,
        forced,
    )
    assert_matches_oracle(y, x, dense, bias)
    assert ran == ["run_streams" if forced or m <= STREAMS_MAX_M else "run_linear"]


@needs_triton
def test_op_registration_passes_opcheck():
    _, packed = _bitmap()
    layout = prepare_streams(packed)
    config = streams_config(packed.cache["streams:last"][0], layout)
    for m, forced in ((2, False), (5, False), (3, True)):
        args = (torch.randn(m, K), packed.bits, packed.values, packed.offsets, N, K, *TILE)
        args += (packed.nnz, list(layout.tensors), config, torch.randn(N), forced)
        results = opcheck(bitmap_streams_linear, args)
        assert all(v == "SUCCESS" for v in results.values()), results


def test_streams_config_refuses_a_plan_of_another_layout():
    from lcc_kernels.streams import build_streams

    layout = build_streams(torch.eye(8), 4, 2)
    assert streams_config(Plan("streams", 1, 4, split_k=2), layout) == [4, 2, 4, 4, 3, 1]
    with pytest.raises(ValueError, match="built for block_n 4, split 2"):
        streams_config(Plan("streams", 1, 8, split_k=2), layout)


@needs_triton
def test_compiled_forced_streams_run_the_prepared_layout():
    dense, packed = _bitmap()
    bias = torch.randn(N)

    def fn(x):
        return sparse_linear(x, packed, bias, backend="streams")

    with pytest.raises(Exception, match="prepare_streams"):
        torch.compile(fn, fullgraph=True, backend="aot_eager")(torch.randn(1, K))
    torch._dynamo.reset()
    prepare_streams(packed)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for m in (1, 3, 6):  # symbolic M: the streams run at any M when forced
        x = torch.randn(m, K)
        assert_matches_oracle(compiled(x), x, dense, bias)


@needs_triton
def test_compiled_auto_decode_streams_go_through_the_streams_op(monkeypatch):
    """On a GPU, "auto" under torch.compile defers to the op; here that is forced, so the
    graph the GPU would trace runs interpreted."""
    from lcc_kernels import linear

    dense, packed = _bitmap()
    bias = torch.randn(N)
    monkeypatch.setattr(linear, "_defer_to_op", lambda backend, x: True)
    seen = []
    real_op = ops.bitmap_streams_linear
    monkeypatch.setattr(ops, "bitmap_streams_linear", lambda *a: seen.append(1) or real_op(*a))

    def fn(x):
        return sparse_linear(x, packed, bias, decode_streams=True)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    x = torch.randn(1, K)
    assert_matches_oracle(compiled(x), x, dense, bias)  # no layout yet: the bitmap op
    assert seen == []
    torch._dynamo.reset()
    prepare_streams(packed)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for m in (1, 3, 17):
        x = torch.randn(m, K)
        assert_matches_oracle(compiled(x), x, dense, bias)
    assert seen  # traced through the streams op (which chose per M when it ran)


@needs_triton
def test_eager_calls_on_the_layout_keep_a_compiled_graph_valid(monkeypatch):
    """A compiled graph guards on the layout it was traced with: eager calls that run on
    it (prefill of a few tokens, say) do not force a recompile; a new layout does."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from lcc_kernels import linear

    dense, packed = _bitmap()
    monkeypatch.setattr(linear, "_defer_to_op", lambda backend, x: torch.compiler.is_compiling())
    prepare_streams(packed)
    plan, _ = packed.cache["streams:last"]
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, decode_streams=True), backend=counter, fullgraph=True
    )
    x = torch.randn(1, K)
    with torch.no_grad():
        assert_matches_oracle(compiled(x), x, dense)
        other_launch = dataclasses.replace(plan, block_m=2, num_stages=1)  # same layout
        sparse_linear(torch.randn(2, K), packed, plan=other_launch)
        assert_matches_oracle(compiled(x), x, dense)
        assert counter.frame_count == 1
        prepare_streams(packed, Plan("streams", 1, 32, split_k=2, num_warps=1))
        assert_matches_oracle(compiled(x), x, dense)
        assert counter.frame_count == 2  # traced again, on the new layout
