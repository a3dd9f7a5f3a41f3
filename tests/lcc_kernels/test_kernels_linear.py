"""sparse_linear through the Triton kernels (interpreted on a CPU) against an fp64 oracle.

Shapes are odd on purpose: N = 72 and K = 136 are multiples of no tile, M = 17 spills
into a second M tile, and the K splits do not divide the K tiles evenly.
"""

import pytest
import torch
import torch.nn.functional as F
from _kernels_helpers import assert_matches_oracle, needs_triton, random_24, random_unstructured

from lcc_kernels import (
    Plan,
    dense_linear_triton,
    launch,
    pack,
    reference_linear,
    sparse_linear,
    unpack,
)

N, K = 72, 136
BITMAP_TILE = (16, 32)


def _weight(fmt: str, dtype: torch.dtype, n: int = N, k: int = K):
    dense = random_24(n, k, dtype) if fmt == "2:4" else random_unstructured(n, k, 0.4, dtype)
    return dense, pack(dense, fmt, tile=BITMAP_TILE)


def _plan(path: str, m: int) -> Plan:
    """Tiles deliberately smaller than the problem; bitmap plans take the weight tile."""
    if path == "tiled":
        return Plan("tiled", block_m=16, block_n=32, block_k=32, group_m=2)
    if m == 1:
        return Plan("skinny", block_m=1, block_n=32, block_k=64, split_k=2)
    if m <= 4:
        return Plan("skinny", block_m=4, block_n=32, block_k=32, split_k=3)
    return Plan("skinny", block_m=16, block_n=32, block_k=32, split_k=4)


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("path", ["skinny", "tiled"])
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_kernel_matches_oracle(fmt, path, dtype, with_bias, m):
    dense, packed = _weight(fmt, dtype)
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N) if with_bias else None  # fp32, like the restoration bias
    y = sparse_linear(x, packed, bias, plan=_plan(path, m))
    assert_matches_oracle(y, x, dense, bias)


@needs_triton
@pytest.mark.parametrize("path", ["skinny", "tiled"])
def test_24_tiles_rebuilt_in_bf16(path):
    # 16-bit values are placed in their lanes by shifts of their bits (decode.py); bf16's
    # bits take that path too (tl.dot runs in fp32 under the interpreter).
    dense, packed = _weight("2:4", torch.bfloat16)
    x = torch.randn(17, K, dtype=torch.bfloat16)
    bias = torch.randn(N)
    y = sparse_linear(x, packed, bias, plan=_plan(path, 17))
    assert_matches_oracle(y, x, dense, bias)


@needs_triton
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("path", ["skinny", "tiled"])
def test_dense_triton_baseline_matches_oracle(path, dtype, m):
    weight = torch.randn(N, K, dtype=dtype)
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N)
    y = dense_linear_triton(x, weight, bias, _plan(path, m))
    assert_matches_oracle(y, x, weight, bias)


@needs_triton
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_split_k_is_deterministic_and_both_reductions_agree(fmt):
    dense, packed = _weight(fmt, torch.float16, n=40, k=264)
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
    dense, packed = _weight("2:4", torch.float32)
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
            y = sparse_linear(x, packed, plan=_plan(path, 3))
            assert_matches_oracle(y, x, dense)


@needs_triton
def test_leading_dims_strided_and_misaligned_inputs():
    dense, packed = _weight("2:4", torch.float16)
    plan = _plan("skinny", 3)
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


def test_cpu_auto_runs_the_reference_path(monkeypatch):
    from lcc_kernels import linear

    ran = []
    real = linear.reference_linear
    monkeypatch.setattr(
        linear, "reference_linear", lambda *a, **kw: ran.append(1) or real(*a, **kw)
    )
    dense, packed = _weight("bitmap", torch.float32)
    x = torch.randn(4, K)
    bias = torch.randn(N)
    assert_matches_oracle(sparse_linear(x, packed, bias), x, dense, bias)
    assert ran == [1]  # not the dense copy's F.linear, which gives the same numbers
    assert_matches_oracle(sparse_linear(x, packed, bias, backend="reference"), x, dense, bias)


def test_dense_backend_caches_one_dense_copy():
    dense, packed = _weight("2:4", torch.float32)
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

    dense, packed = _weight("2:4", torch.float32)
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


def test_no_rows_gives_an_empty_output():
    _, packed = _weight("2:4", torch.float32)
    y = sparse_linear(torch.randn(0, K), packed, backend="skinny")
    assert y.shape == (0, N)
    x, bias = torch.randn(2, 0, K, requires_grad=True), torch.randn(N, requires_grad=True)
    y = sparse_linear(x, packed, bias)  # as F.linear: still part of the autograd graph
    assert y.shape == (2, 0, N)
    y.sum().backward()
    assert torch.equal(bias.grad, torch.zeros(N)) and x.grad.shape == x.shape


@needs_triton
def test_dense_triton_baseline_checks_its_bias():
    weight, x = torch.randn(N, K), torch.randn(3, K)
    every_other = torch.randn(2 * N)[::2]
    y = dense_linear_triton(x, weight, every_other, _plan("skinny", 3))
    assert_matches_oracle(y, x, weight, every_other)
    for bias, message in (
        (torch.zeros(N - 4), r"bias must have shape \(72,\)"),
        (torch.zeros(3, N), "bias must have shape"),
        (torch.zeros(N, dtype=torch.int64), "bias dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            dense_linear_triton(x, weight, bias, _plan("skinny", 3))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        dense_linear_triton(x.double(), weight.double(), None, _plan("skinny", 3))


def test_reference_refuses_integer_or_mismatched_inputs():
    _, packed = _weight("2:4", torch.float32)
    with pytest.raises(ValueError, match="must be floating point"):
        reference_linear(torch.ones(1, K, dtype=torch.int64), packed)
    with pytest.raises(ValueError, match=r"must be \[..., K\] and \[N, K\]"):
        reference_linear(torch.ones(1, K - 4), packed)


def _bad_inputs():
    _, packed = _weight("2:4", torch.float16)
    x = torch.randn(3, K, dtype=torch.float16)
    return [
        ("x dtype", packed, x.float(), None, "x dtype torch.float32 does not match"),
        ("int x", packed, x.to(torch.int16), None, "x dtype must be"),
        ("wrong K", packed, x[:, :-4], None, "last dim must be the weight's K = 136"),
        ("scalar x", packed, torch.tensor(1.0, dtype=torch.float16), None, "last dim"),
        ("x device", packed, x.to("meta"), None, "x is on meta"),
        ("bias shape", packed, x, torch.zeros(N + 1), r"bias must have shape \(72,\)"),
        ("bias 2-D", packed, x, torch.zeros(1, N), "bias must have shape"),
        ("bias dtype", packed, x, torch.zeros(N, dtype=torch.int32), "bias dtype"),
        ("bias device", packed, x, torch.zeros(N, device="meta"), "bias is on meta"),
        ("dense weight", unpack(packed), x, None, "Sparse24Weight or BitmapWeight"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_raises_a_clear_error(case):
    _, weight, x, bias, message = case
    with pytest.raises(ValueError, match=message):
        sparse_linear(x, weight, bias)


def test_bad_backend_or_plan_raises():
    _, packed = _weight("2:4", torch.float32)
    x = torch.randn(2, K)
    with pytest.raises(ValueError, match="unknown backend"):
        sparse_linear(x, packed, backend="cusparse")
    with pytest.raises(ValueError, match="semi_structured backend runs on CUDA tensors only"):
        sparse_linear(x, packed, backend="semi_structured")
    with pytest.raises(ValueError, match="not both"):
        sparse_linear(x, packed, backend="tiled", plan=Plan("tiled"))
    with pytest.raises(ValueError, match="power of two"):
        Plan("skinny", block_n=48)
    with pytest.raises(ValueError, match="block_k >= 32"):
        sparse_linear(x, packed, plan=Plan("skinny", block_m=2, block_k=16))
    with pytest.raises(ValueError, match="needs block_m, block_n and block_k >= 16"):
        sparse_linear(x, packed, plan=Plan("tiled", block_m=8))
    with pytest.raises(ValueError, match="at most 65535 row tiles of block_m = 1, got M = 65536"):
        sparse_linear(x.new_zeros(65536, K), packed, plan=Plan("skinny", block_m=1))


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

    dense, packed = _weight("2:4", torch.float32)
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


@needs_triton
@pytest.mark.parametrize("backend", ["skinny", "streams"])
def test_triton_backends_refuse_forward_mode_and_func_transforms(backend):
    """No derivative formula: a tangent (or a batch) would be lost or fail obscurely."""
    import torch.autograd.forward_ad as fwAD

    _, packed = _weight("bitmap", torch.float32)
    x, tangent = torch.randn(3, K), torch.randn(3, K)

    def call(a):
        return sparse_linear(a, packed, backend=backend)

    with fwAD.dual_level(), pytest.raises(ValueError, match="inference only"):
        call(fwAD.make_dual(x, tangent))
    for transform in (
        lambda: torch.func.jvp(call, (x,), (tangent,)),
        lambda: torch.func.grad(lambda a: call(a).sum())(x),
        lambda: torch.func.vmap(call)(torch.randn(2, 3, K)),
    ):
        with pytest.raises(ValueError, match="backend='reference'"):
            transform()


@pytest.mark.parametrize("backend", ["reference", "dense"])
def test_reference_and_dense_backends_have_forward_derivatives(backend):
    import torch.autograd.forward_ad as fwAD

    dense, packed = _weight("2:4", torch.float32)
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
    product) is up to one ulp off. (Not bf16 through the interpreted kernels: the
    interpreter truncates fp32 to bf16 where a GPU rounds.)"""
    dense, packed = _weight("2:4", dtype)
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

    _, packed = _weight("2:4", torch.float16)
    x = torch.randn(20, K, dtype=torch.float16)
    monkeypatch.setattr(linear, "choose_plan", lambda *args: Plan("semi_structured"))
    plans = []
    monkeypatch.setattr(linear, "_run", lambda x2d, w, b, plan: plans.append(plan) or x2d[:, :N])
    sparse_linear(x, packed, torch.randn(N))
    sparse_linear(x, packed, torch.randn(N, dtype=torch.float16))
    sparse_linear(x, packed)
    assert plans[0].backend in ("skinny", "tiled")
    assert [p.backend for p in plans[1:]] == ["semi_structured", "semi_structured"]


def test_no_rows_checks_the_call_and_unpacks_nothing(monkeypatch):
    from lcc_kernels import reference, weight_cache

    def no_unpack(weight):
        raise AssertionError("unpacked")

    _, packed = _weight("2:4", torch.float32)
    empty = torch.randn(2, 0, K)
    for kwargs, message in (
        (dict(backend="bogus"), "unknown backend"),
        (dict(backend="skinny", plan=Plan("tiled")), "not both"),
        (dict(plan=Plan("streams", 1, 128)), "streams backend needs a bitmap weight"),
        (dict(backend="semi_structured"), "CUDA tensors only"),
    ):
        with pytest.raises(ValueError, match=message):
            sparse_linear(empty, packed, **kwargs)
    monkeypatch.setattr(reference, "unpack", no_unpack)
    monkeypatch.setattr(weight_cache, "unpack", no_unpack)
    for backend in ("auto", "reference", "dense"):
        assert sparse_linear(empty, packed, torch.randn(N), backend=backend).shape == (2, 0, N)
    assert "dense" not in packed.cache


@needs_triton
def test_no_rows_checks_a_forced_triton_plan():
    _, packed = _weight("2:4", torch.float32)
    with pytest.raises(ValueError, match="needs block_m, block_n and block_k >= 16"):
        sparse_linear(torch.randn(0, K), packed, plan=Plan("tiled", block_m=8))
    y = sparse_linear(torch.randn(0, K), packed, plan=_plan("skinny", 3))
    assert y.shape == (0, N)


def test_reference_checks_its_bias():
    dense, packed = _weight("2:4", torch.float32)
    x = torch.randn(3, K)
    for bias, message in (
        (torch.ones(1), r"bias must have shape \(72,\), got \(1,\)"),
        (torch.ones(3, N), r"bias must have shape \(72,\), got \(3, 72\)"),
        (torch.ones(N, dtype=torch.int64), "bias dtype"),
        (torch.ones(N, device="meta"), "bias is on meta"),
    ):
        for weight in (packed, dense):
            with pytest.raises(ValueError, match=message):
                reference_linear(x, weight, bias)
    bias = torch.randn(N, dtype=torch.float64)  # the oracle's own precision is fine
    assert_matches_oracle(reference_linear(x, packed, bias), x, dense, bias)


@needs_triton
def test_a_skinny_split_k_workspace_over_the_bound_is_refused(monkeypatch):
    """A forced plan's fp32 workspace [split, M, N] is bounded (1 GiB; 5 KiB here)."""
    dense, packed = _weight("bitmap", torch.float32)
    x = torch.randn(5, K)
    monkeypatch.setattr(launch, "MAX_SPLIT_K_WORKSPACE_BYTES", 5 * 1024)
    launch._operand_geometry.cache_clear()  # geometries checked under the real bound
    split_2 = Plan("skinny", 4, 16, 32, split_k=2)  # 2 x 5 x 72 x 4 B = 2.8 KiB
    split_5 = Plan("skinny", 4, 16, 32, split_k=5)  # 7 KiB
    try:
        assert_matches_oracle(sparse_linear(x, packed, plan=split_2), x, dense)
        with pytest.raises(ValueError, match=r"splits K 5 ways at M = 5, N = 72.*over the"):
            sparse_linear(x, packed, plan=split_5)
    finally:
        launch._operand_geometry.cache_clear()
