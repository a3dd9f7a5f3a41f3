"""sparse_linear through the Triton kernels (interpreted on a CPU) against an fp64 oracle:
formats, paths, dtypes, split-K, tiles, strided inputs, backends chosen or forced,
graph-capture rules and forward derivatives. Bad input and refusals:
test_kernels_linear_errors.py; sizes and plans: _linear_helpers.py.
"""

import pytest
import torch
import torch.nn.functional as F
from _kernels_helpers import (
    assert_kernel_matches_oracle,
    assert_matches_oracle,
    needs_triton,
    random_unstructured,
)
from _linear_helpers import K, N, packed_weight, small_plan

from lcc_kernels import Plan, dense_linear_triton, launch, pack, sparse_linear, unpack


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("path", ["skinny", "tiled"])
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_kernel_matches_oracle(fmt, path, dtype, with_bias, m):
    dense, packed = packed_weight(fmt, dtype)
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N) if with_bias else None  # fp32, like the restoration bias
    y = sparse_linear(x, packed, bias, plan=small_plan(path, m))
    assert_matches_oracle(y, x, dense, bias)


@needs_triton
@pytest.mark.parametrize("m", [1, 17])  # skinny plans: without tl.dot, then with it
@pytest.mark.parametrize("path", ["skinny", "tiled"])
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_kernel_matches_oracle_in_bf16(fmt, path, m):
    # 16-bit values are placed in their lanes by shifts of their bits (decode.py); bf16's
    # bits take that path too (tl.dot runs in fp32 under the interpreter, whose rounding
    # to bf16 has a rule of its own: assert_kernel_matches_oracle).
    dense, packed = packed_weight(fmt, torch.bfloat16)
    x = torch.randn(m, K, dtype=torch.bfloat16)
    bias = torch.randn(N)
    y = sparse_linear(x, packed, bias, plan=small_plan(path, m))
    assert_kernel_matches_oracle(y, x, dense, bias)


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("path", ["skinny", "tiled"])
def test_dense_triton_baseline_matches_oracle(path, dtype, m):
    weight = torch.randn(N, K, dtype=dtype)
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N)
    y = dense_linear_triton(x, weight, bias, small_plan(path, m))
    assert_matches_oracle(y, x, weight, bias)


@needs_triton
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_split_k_is_deterministic_and_both_reductions_agree(fmt):
    dense, packed = packed_weight(fmt, torch.float16, n=40, k=264)
    x = torch.randn(5, 264, dtype=torch.float16)
    bias = torch.randn(40)
    results = {}
    for split in (1, 2, 5):
        for serial in (True, False):
            plan = Plan(
                "skinny", block_m=8, block_n=16, block_k=32, split_k=split, serial_reduction=serial
            )
            first = sparse_linear(x, packed, bias, plan=plan)
            assert torch.equal(first, sparse_linear(x, packed, bias, plan=plan))
            assert_matches_oracle(first, x, dense, bias)
            results[split, serial] = first
    for split in (2, 5):
        assert torch.equal(results[split, True], results[split, False])


@needs_triton
@pytest.mark.parametrize("block_k", [32, 128, 256])
def test_24_tiles_past_the_padded_k(block_k):
    # K = 136 is stored padded to 192 positions; 128- and 256-wide tiles overrun it.
    dense, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(2, K)
    y = sparse_linear(
        x, packed, plan=Plan("skinny", block_m=2, block_n=16, block_k=block_k, split_k=2)
    )
    assert_matches_oracle(y, x, dense)


@needs_triton
@pytest.mark.parametrize("tile", [(1, 32), (32, 64), (64, 128)])
def test_bitmap_tiles_of_other_shapes(tile):
    dense = random_unstructured(N, K, 0.3, torch.float16)
    packed = pack(dense, "bitmap", tile=tile)
    x = torch.randn(3, K, dtype=torch.float16)
    bias = torch.randn(N)
    y = sparse_linear(x, packed, bias, plan=Plan("skinny", block_m=4, split_k=2))
    assert_matches_oracle(y, x, dense, bias)


@needs_triton
def test_bitmap_tiles_under_16_rows_run_without_tl_dot():
    dense = random_unstructured(N, K, 0.3, torch.float16)
    packed = pack(dense, "bitmap", tile=(8, 32))
    x = torch.randn(5, K, dtype=torch.float16)
    assert_matches_oracle(sparse_linear(x, packed, backend="skinny"), x, dense)
    with pytest.raises(ValueError, match=r"tile \(8, 32\) has fewer rows"):
        sparse_linear(x, packed, backend="tiled")


@needs_triton
def test_bitmap_all_zero_and_all_dense_weights():
    x = torch.randn(3, 70)
    for density in (0.0, 1.0):
        dense = random_unstructured(33, 70, density)
        packed = pack(dense, "bitmap", tile=(16, 32))
        for path in ("skinny", "tiled"):
            y = sparse_linear(x, packed, plan=small_plan(path, 3))
            assert_matches_oracle(y, x, dense)


@needs_triton
def test_leading_dims_strided_and_misaligned_inputs():
    dense, packed = packed_weight("2:4", torch.float16)
    plan = small_plan("skinny", 3)
    x = torch.randn(2, 3, K, dtype=torch.float16)
    assert_matches_oracle(sparse_linear(x, packed, plan=plan), x, dense)
    # Rows further apart than K: used in place through the row stride.
    wide = torch.randn(3, K + 5, dtype=torch.float16)[:, :K]
    assert_matches_oracle(sparse_linear(wide, packed, plan=plan), wide, dense)
    # K not unit-stride: copied to a contiguous tensor first.
    strided = torch.randn(3, 2 * K, dtype=torch.float16)[:, ::2]
    assert_matches_oracle(sparse_linear(strided, packed, plan=plan), strided, dense)
    # Storage starting one element (2 bytes) past an aligned address.
    shifted = torch.randn(3 * K + 1, dtype=torch.float16)[1:].view(3, K)
    assert shifted.data_ptr() % 16 != 0
    assert_matches_oracle(sparse_linear(shifted, packed, plan=plan), shifted, dense)
    # A bias in x's dtype, and a strided bias.
    bias = torch.randn(2 * N, dtype=torch.float16)[::2]
    assert_matches_oracle(sparse_linear(wide, packed, bias, plan=plan), wide, dense, bias)


@needs_triton
@pytest.mark.parametrize(
    "fmt, backend", [("2:4", "skinny"), ("2:4", "tiled"), ("bitmap", "streams")]
)
def test_negation_views_are_read_with_their_sign(fmt, backend):
    """x._neg_view() (what conj().imag of a complex tensor is) holds -x in memory with the
    negation pending: the kernels get it resolved, and a bias's, not the raw memory."""
    dense, packed = packed_weight(fmt, torch.float32)
    x, bias = torch.randn(3, K), torch.randn(N)
    y = sparse_linear(x._neg_view(), packed, bias._neg_view(), backend=backend)
    assert_matches_oracle(y, -x, dense, -bias)


def test_cpu_auto_runs_the_reference_path(monkeypatch):
    from lcc_kernels import linear

    ran = []
    real = linear.reference_linear
    monkeypatch.setattr(
        linear, "reference_linear", lambda *a, **kw: ran.append(1) or real(*a, **kw)
    )
    dense, packed = packed_weight("bitmap", torch.float32)
    x = torch.randn(4, K)
    bias = torch.randn(N)
    assert_matches_oracle(sparse_linear(x, packed, bias), x, dense, bias)
    assert ran == [1]  # not the dense copy's F.linear, which gives the same numbers
    assert_matches_oracle(sparse_linear(x, packed, bias, backend="reference"), x, dense, bias)


def test_dense_backend_caches_one_dense_copy():
    dense, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(4, K)
    y = sparse_linear(x, packed, torch.zeros(N), backend="dense")
    assert_matches_oracle(y, x, dense, torch.zeros(N))
    assert torch.equal(packed.cache["dense"], unpack(packed))


@needs_triton
def test_weight_copies_are_never_first_built_under_graph_capture(monkeypatch):
    """Built by graph nodes, a dense copy would hold data only after the graph's first
    replay, and eager calls would read it before: under (simulated) capture, "auto" runs
    a Triton plan instead and a forced backend says what to do; a copy built eagerly is
    used."""
    from lcc_kernels import dispatch, linear

    dense, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(4, K)
    monkeypatch.setattr(linear, "choose_plan", lambda *args: Plan("dense"))
    monkeypatch.setattr(dispatch, "capturing", lambda device: True)
    assert_matches_oracle(sparse_linear(x, packed), x, dense)
    assert "dense" not in packed.cache
    with pytest.raises(RuntimeError, match="run the call once before capturing"):
        sparse_linear(x, packed, backend="dense")
    monkeypatch.setattr(dispatch, "capturing", lambda device: False)
    sparse_linear(x, packed, backend="dense")
    monkeypatch.setattr(dispatch, "capturing", lambda device: True)
    assert_matches_oracle(sparse_linear(x, packed), x, dense)
    assert_matches_oracle(sparse_linear(x, packed, backend="dense"), x, dense)


def _span(t: torch.Tensor) -> range:
    return range(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())


@needs_triton
def test_captured_launches_get_counters_of_their_own(monkeypatch):
    """A split-K launch captured in a CUDA graph must find its counters zero at the first
    replay and share them with nothing: graphs replay in any order, on any stream. Capture
    is simulated (interpreted launches run at once, so the results are checked too)."""
    from lcc_kernels import counters, dispatch

    handed, split_k_counters = [], counters.split_k_counters

    def recording(device, count):
        handed.append(split_k_counters(device, count))
        return handed[-1]

    dense, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(3, K)
    plan = Plan("skinny", block_m=4, block_n=16, block_k=32, split_k=3)  # 5 counters

    def run(capturing: bool) -> torch.Tensor:
        monkeypatch.setattr(dispatch, "capturing", lambda device: capturing)
        assert all(int(c.abs().sum()) == 0 for c in handed)
        return sparse_linear(x, packed, plan=plan)

    monkeypatch.setattr(launch, "split_k_counters", recording)
    monkeypatch.setattr(counters, "_DEVICES", {})
    monkeypatch.setattr(counters, "CAPTURE_RESERVE", 16)  # two captures of 5 (each 16-B aligned)
    results = [run(capturing) for capturing in (False, True, True, True, False, True)]
    # eager; reserve, reserve, zeroed in the graph (reserve spent); eager: new reserve;
    # the new reserve.
    device = counters._DEVICES[torch.device("cpu")]
    first_reserve, second_reserve = device.retired[0], device.reserve
    inside = [
        [set(_span(c)) <= set(_span(r)) for c in handed] for r in (first_reserve, second_reserve)
    ]
    assert inside == [
        [False, True, True, False, False, False],
        [False, False, False, False, False, True],
    ]
    assert handed[4] is handed[0]  # one block per stream for eager launches
    captured = handed[1:4] + handed[5:]
    assert all(c.data_ptr() % 16 == 0 for c in captured)  # as eager blocks: no new kernel
    for i, first in enumerate(captured):
        for second in [handed[0], *captured[i + 1 :]]:
            assert not set(_span(first)) & set(_span(second))
    assert all(int(c.abs().sum()) == 0 for c in handed)  # every launch leaves them at zero
    for y in results:
        assert torch.equal(y, results[0])
    assert_matches_oracle(results[0], x, dense)


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_reference_and_dense_backends_have_forward_derivatives(backend):
    import torch.autograd.forward_ad as fwAD

    dense, packed = packed_weight("2:4", torch.float32)
    x, tangent, bias = torch.randn(3, K), torch.randn(3, K), torch.randn(N)
    with fwAD.dual_level():
        y = sparse_linear(fwAD.make_dual(x, tangent), packed, bias, backend=backend)
        assert_matches_oracle(fwAD.unpack_dual(y).tangent, tangent, dense)
    _, jvp = torch.func.jvp(
        lambda a: sparse_linear(a, packed, bias, backend=backend), (x,), (tangent,)
    )
    assert_matches_oracle(jvp, tangent, dense)


@needs_triton
@pytest.mark.parametrize(
    ("dtype", "backend"),
    [(torch.float16, "skinny"), (torch.float16, "dense"), (torch.bfloat16, "dense")],
    ids=["fp16-skinny", "fp16-dense", "bf16-dense"],
)
def test_a_bias_wider_than_x_is_added_before_the_one_rounding(dtype, backend):
    """An fp32 bias that x's dtype cannot hold (a RestoreLCC-like compensation of ~1000,
    spread over a few ulps there): y is within half an ulp of the fp64 result (plus the
    fp32 accumulation's error), as for one rounding; rounding the bias first (or the
    product) is up to one ulp off. (Not bf16 through the interpreted kernels: triton
    3.9's interpreter converts fp32 to bf16 (the kernels' `acc.to(bf16)` before the
    store) by dropping the low 16 bits, rounding toward zero where a GPU rounds to
    nearest, so its bf16 outputs are up to one ulp off, past this half-ulp bound.)"""
    dense, packed = packed_weight("2:4", dtype)
    x = torch.randn(33, K, dtype=dtype) * 0.01
    ulp = 512 * torch.finfo(dtype).eps  # of outputs in [512, 1024)
    bias = 1000 - 8 * ulp + torch.rand(N) * 8 * ulp
    y = sparse_linear(x, packed, bias, backend=backend)
    exact = F.linear(x.double(), dense.double(), bias.double())
    error = (y.double() - exact).abs().max().item()
    assert error <= ulp / 2 + ulp / 64, f"max error {error} ulp {ulp}"


def test_auto_runs_no_torch_2_4_kernel_with_a_bias_wider_than_x(monkeypatch):
    """torch's semi-structured kernels write fp16 only: with an fp32 bias on fp16 x,
    "auto" trades a measured semi_structured plan for a Triton one."""
    from lcc_kernels import linear

    _, packed = packed_weight("2:4", torch.float16)
    x = torch.randn(20, K, dtype=torch.float16)
    monkeypatch.setattr(linear, "choose_plan", lambda *args: Plan("semi_structured"))
    plans = []
    monkeypatch.setattr(linear, "_run", lambda x2d, w, b, plan: plans.append(plan) or x2d[:, :N])
    sparse_linear(x, packed, torch.randn(N))
    sparse_linear(x, packed, torch.randn(N, dtype=torch.float16))
    sparse_linear(x, packed)
    assert plans[0].backend in ("skinny", "tiled")
    assert [p.backend for p in plans[1:]] == ["semi_structured", "semi_structured"]
