"""The streams backend (streams.py, stream_linear_kernel): exact layout, interpreted kernel
against an fp64 oracle, and where dispatch may and may not pick it.

Weights have rows the layout must handle on purpose: a gap wider than a 4-bit step
(escape entries), an empty row and a fully dense one; N = 72 and K = 136 are multiples
of no block, M = 17 needs five M tiles of 4 rows.
"""

import pytest
import torch
from _kernels_helpers import (
    assert_kernel_matches_oracle,
    assert_matches_oracle,
    needs_triton,
    random_unstructured,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from lcc_kernels import Plan, pack, sparse_linear
from lcc_kernels.dispatch import (
    DispatchTable,
    WeightKey,
    plan_for,
    streams_block_m,
    streams_plan,
)
from lcc_kernels.streams import build_streams

N, K = 72, 136


def _awkward(n: int, k: int, density: float, dtype=torch.float32) -> torch.Tensor:
    weight = random_unstructured(n, k, density, dtype)
    if n > 3 and k > 40:
        weight[1, 3 : k - 2] = 0  # one gap of many steps
        weight[2] = 0
        weight[3] = torch.randn(k).to(dtype) + 4.0  # no zero: every step is 1 (0 first)
    return weight


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.02, 0.3, 0.5, 1.0]),
    block_n=st.sampled_from([1, 2, 8, 32]),
    split=st.integers(1, 6),
    step_bits=st.sampled_from([3, 4, None]),
    seed=st.integers(0, 2**16),
)
def test_streams_give_the_weight_back_exactly(n, k, density, block_n, split, step_bits, seed):
    torch.manual_seed(seed)
    weight = _awkward(n, k, density)
    streams = build_streams(weight, block_n, split, step_bits)
    assert torch.equal(streams.to_dense(), weight)
    assert streams.starts.numel() == streams.blocks * split * block_n
    assert streams.steps.numel() * 32 == streams.values.numel() * streams.step_bits
    # No block pads its lanes beyond its longest stream rounded up to a group.
    longest = (weight != 0).sum(1).max().item()
    escapes = -(-k // ((1 << streams.step_bits) - 1))
    assert streams.groups.max().item() <= -(-(longest + escapes) // streams.group_entries)


@pytest.mark.parametrize("density, step_bits", [(0.3, 4), (0.5, 3)])
def test_streams_of_a_bitmap_weight_and_their_bytes(density, step_bits):
    torch.manual_seed(0)
    weight = random_unstructured(256, 1024, density, torch.float16)
    packed = pack(weight, "bitmap")
    streams = build_streams(packed, 64, 4)
    assert streams.step_bits == step_bits  # the narrower steps from STEP3_FROM_DENSITY
    assert torch.equal(streams.to_dense(), weight)
    # 2 bytes of value + 3 or 4 bits of step per kept value, a few percent of escapes,
    # padding and segment starts: between the bitmap's bytes and 1.15x them.
    assert packed.nbytes < streams.nbytes < 1.15 * packed.nbytes


def test_bad_streams_arguments_raise():
    weight = torch.eye(4)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        build_streams(weight, 48, 1)
    with pytest.raises(ValueError, match="split must be >= 1"):
        build_streams(weight, 4, 0)
    with pytest.raises(ValueError, match=r"2-D \[N, K\]"):
        build_streams(torch.ones(4), 4, 1)
    with pytest.raises(ValueError, match="step_bits must be one of"):
        build_streams(weight, 4, 1, step_bits=2)


def _plan(m: int, block_n: int = 32, split: int = 3, serial: bool = True) -> Plan:
    block_m = streams_block_m(m)  # M = 17: five M tiles of 4
    return Plan(
        "streams",
        block_m,
        block_n,
        split_k=split,
        num_warps=max(1, block_n // 32),
        serial_reduction=serial,
    )


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("density", [0.3, 0.6], ids=["4bit", "3bit"])  # step widths
def test_streams_kernel_matches_oracle(density, dtype, with_bias, m):
    dense = _awkward(N, K, density, dtype)
    packed = pack(dense, "bitmap", tile=(16, 32))
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N) if with_bias else None
    # M = 17: fewer, wider programs (the interpreter runs one at a time)
    plan = _plan(m) if m < 17 else _plan(m, block_n=64, split=2)
    assert_matches_oracle(sparse_linear(x, packed, bias, plan=plan), x, dense, bias)


@needs_triton
@pytest.mark.parametrize("block_n, split, serial", [(16, 1, True), (64, 5, False), (128, 2, True)])
def test_streams_kernel_blocks_splits_and_reductions(block_n, split, serial):
    # One split (no partials), the second-launch reduction, and a block wider than N.
    dense = _awkward(N, K, 0.3)
    packed = pack(dense, "bitmap")
    x = torch.randn(2, K)
    bias = torch.randn(N)
    y = sparse_linear(x, packed, bias, plan=_plan(2, block_n, split, serial))
    assert_matches_oracle(y, x, dense, bias)


@needs_triton
def test_streams_kernel_in_bf16_and_on_strided_x():
    dense = _awkward(N, K, 0.5, torch.bfloat16)
    packed = pack(dense, "bitmap")
    x = torch.randn(3, 2 * K, dtype=torch.bfloat16)[:, ::2]  # copied: K stride 2
    bias = torch.randn(N)
    y = sparse_linear(x, packed, bias, backend="streams")
    assert_kernel_matches_oracle(y, x, dense, bias)
    wide = torch.randn(2, K + 8, dtype=torch.bfloat16)[:, 8:]  # row stride K + 8
    y = sparse_linear(wide, packed, bias, backend="streams")
    assert_kernel_matches_oracle(y, wide, dense, bias)


@needs_triton
def test_streams_are_built_once_per_block_and_split():
    dense = _awkward(N, K, 0.4)
    packed = pack(dense, "bitmap")
    x = torch.randn(1, K)
    sparse_linear(x, packed, plan=_plan(1, 32, 3))
    first = packed.cache["streams:32:3"]
    sparse_linear(x, packed, plan=_plan(1, 32, 3))
    sparse_linear(x, packed, plan=_plan(1, 16, 2))
    assert packed.cache["streams:32:3"] is first
    assert sorted(packed.cache) == ["streams:16:2", "streams:32:3", "streams:last"]
    plan, layout = packed.cache["streams:last"]  # the one compiled calls would run on
    assert plan == _plan(1, 16, 2) and layout is packed.cache["streams:16:2"]


@needs_triton
def test_streams_go_through_their_op_where_autograd_or_a_dispatch_mode_must_see_them(
    monkeypatch,
):
    """Eager no-grad calls launch the streams directly; where autograd would record the
    call, or a dispatch mode watches, they run through the custom op, whose missing
    autograd formula makes a backward raise instead of silently giving no gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from lcc_kernels import launch, linear, ops

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    dense = _awkward(N, K, 0.4)
    packed = pack(dense, "bitmap", tile=(16, 32))
    bias = torch.randn(N)
    op_calls, seen = [], []
    real_op = ops.bitmap_streams_linear
    monkeypatch.setattr(ops, "bitmap_streams_linear", lambda *a: op_calls.append(1) or real_op(*a))
    monkeypatch.setattr(linear, "choose_plan", lambda *args: _plan(2))
    x = torch.randn(2, K, requires_grad=True)
    refused = r"a backward cannot run through them \(lcc_kernels::bitmap_streams_linear has"
    for y in (sparse_linear(x, packed, bias, backend="streams"), sparse_linear(x, packed, bias)):
        assert y.requires_grad
        assert_matches_oracle(y.detach(), x.detach(), dense, bias)
        with pytest.raises(RuntimeError, match=refused):
            y.sum().backward()
    assert len(op_calls) == 2
    with torch.no_grad():
        launched = []
        real = launch.run_streams
        monkeypatch.setattr(launch, "run_streams", lambda *a: launched.append(1) or real(*a))
        direct = sparse_linear(x, packed, bias)
        assert launched == [1] and len(op_calls) == 2
        with Recorder():
            watched = sparse_linear(x, packed, bias)
    assert "lcc_kernels.bitmap_streams_linear.default" in seen and len(op_calls) == 3
    assert torch.equal(watched, direct)
    assert sorted(packed.cache) == ["streams:32:3", "streams:last"]


@needs_triton
def test_streams_are_never_first_built_under_graph_capture(monkeypatch):
    from lcc_kernels import dispatch, linear

    dense = _awkward(N, K, 0.4)
    packed = pack(dense, "bitmap", tile=(16, 32))
    x = torch.randn(1, K)
    monkeypatch.setattr(linear, "choose_plan", lambda *args: _plan(1))
    monkeypatch.setattr(dispatch, "capturing", lambda device: True)
    assert_matches_oracle(sparse_linear(x, packed), x, dense)
    assert not packed.cache
    with pytest.raises(RuntimeError, match="run the call once before capturing"):
        sparse_linear(x, packed, plan=_plan(1))


def test_streams_need_a_bitmap_weight_and_a_matching_layout():
    from lcc_kernels import launch

    weight_24 = pack(torch.tensor([[1.0, 0, 0, 2] * 8] * 4), "2:4")
    with pytest.raises(ValueError, match="streams backend needs a bitmap weight"):
        sparse_linear(torch.randn(1, 32), weight_24, backend="streams")
    with pytest.raises(ValueError, match="streams backend needs a bitmap weight"):
        sparse_linear(torch.randn(1, 32), weight_24, plan=_plan(1))
    streams = build_streams(torch.eye(8), 4, 2)
    out = torch.empty(1, 8)
    with pytest.raises(ValueError, match="built for block_n 4, split 2"):
        launch.stream_launches(torch.randn(1, 8), streams, None, _plan(1, 4, 3), out)


def test_dispatch_picks_streams_only_from_a_table_and_only_for_bitmap_weights():
    key = WeightKey("bitmap", "bfloat16", 6144, 4096, (64, 64), 0.3)
    default = plan_for(1, key, "gpu-with-streams", 132)
    assert default.backend == "skinny"  # the rules never build a second copy
    entry = {
        "format": "bitmap",
        "dtype": "bfloat16",
        "n": 6144,
        "k": 4096,
        "tile": [64, 64],
        "density": 0.3,
        "m_bucket": 1,
        "plan": streams_plan(1, key, 132).to_dict(),
    }
    from lcc_kernels import dispatch

    dispatch.register_table(DispatchTable("gpu-with-streams", [entry]))
    try:
        assert plan_for(1, key, "gpu-with-streams", 132).backend == "streams"
        # Inside the custom ops (torch.compile) only the Triton plans can run.
        assert plan_for(1, key, "gpu-with-streams", 132, triton_only=True) == default
    finally:
        dispatch._TABLES.pop("gpu-with-streams")


def test_streams_plan_fills_the_gpu_with_long_enough_segments():
    key = WeightKey("bitmap", "bfloat16", 6144, 4096, (64, 64), 0.3)
    plan = streams_plan(1, key, 132)
    assert (plan.block_m, plan.block_n, plan.num_warps) == (1, 128, 4)
    # 48 row blocks x splits: several programs per SM; ~154 groups of 8 kept values per
    # row: >= 4 groups per segment
    assert 48 * plan.split_k >= 3 * 132 and plan.split_k <= 154 // 4
    assert streams_plan(3, key, 132).block_m == 4
    small = WeightKey("bitmap", "float32", 72, 136, (16, 32), 0.05)
    assert streams_plan(1, small, 132).split_k == 1  # ~1 group per row: nothing to split
    with pytest.raises(ValueError, match="needs a bitmap weight"):
        streams_plan(1, WeightKey("2:4", "bfloat16", 64, 64), 132)


@needs_triton
def test_forced_streams_keep_one_layout_whatever_m():
    """A layout is built once per weight and kept (weight.cache): the forced backend at M
    rows past STREAMS_MAX_M (more M tiles, which once asked for fewer segments) runs on
    the same one, the one compiled calls find, instead of building one more per M."""
    # ~26 groups of 8 kept values per row: 6 segments, 5 where M = 25 counted 7 M tiles.
    dense = random_unstructured(5, 700, 0.3, torch.float16)
    packed = pack(dense, "bitmap", tile=(4, 32))
    layouts = set()
    for m in (1, 17, 21, 25):
        x = torch.randn(m, 700, dtype=torch.float16)
        assert_kernel_matches_oracle(sparse_linear(x, packed, backend="streams"), x, dense)
        layouts.update(key for key in packed.cache if key != "streams:last")
        assert len(layouts) == 1 and packed.cache.keys() == {*layouts, "streams:last"}
    (key,) = layouts
    assert packed.cache["streams:last"][1] is packed.cache[key]
