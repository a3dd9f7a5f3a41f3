"""sparse_linear, reference_linear and dense_linear_triton on bad input: clear errors
naming the shape, dtype, device, backend or plan at fault, refused before any work; and
calls with no rows, which still check what they are given.
"""

import re
import warnings

import pytest
import torch
from _kernels_helpers import assert_matches_oracle, needs_triton
from _linear_helpers import K, N, packed_weight, small_plan

from lcc_kernels import (
    Plan,
    dense_linear_triton,
    dispatch_table,
    pack,
    reference_linear,
    sparse_linear,
    unpack,
)


def test_no_rows_gives_an_empty_output():
    _, packed = packed_weight("2:4", torch.float32)
    x, bias = torch.randn(2, 0, K, requires_grad=True), torch.randn(N, requires_grad=True)
    y = sparse_linear(x, packed, bias)  # as F.linear: still part of the autograd graph
    assert y.shape == (2, 0, N)
    y.sum().backward()
    assert torch.equal(bias.grad, torch.zeros(N)) and x.grad.shape == x.shape


@needs_triton
def test_dense_triton_baseline_checks_its_bias():
    weight, x = torch.randn(N, K), torch.randn(3, K)
    every_other = torch.randn(2 * N)[::2]
    y = dense_linear_triton(x, weight, every_other, small_plan("skinny", 3))
    assert_matches_oracle(y, x, weight, every_other)
    for bias, message in (
        (torch.zeros(N - 4), r"bias must have shape \(72,\)"),
        (torch.zeros(3, N), "bias must have shape"),
        (torch.zeros(N, dtype=torch.int64), "bias dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            dense_linear_triton(x, weight, bias, small_plan("skinny", 3))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        dense_linear_triton(x.double(), weight.double(), None, small_plan("skinny", 3))


@pytest.mark.parametrize("weight", [[[1.0] * K] * N, None], ids=["list", "None"])
def test_a_dense_weight_that_is_no_tensor_is_named(weight):
    """The dense baseline and the reference take a tensor weight [N, K]: anything else is a
    ValueError naming it, not an AttributeError from inside the checks."""
    x = torch.ones(2, K)
    with pytest.raises(ValueError, match="weight must be a torch.Tensor"):
        dense_linear_triton(x, weight, None, small_plan("skinny", 3))


def test_reference_refuses_integer_or_mismatched_inputs():
    _, packed = packed_weight("2:4", torch.float32)
    message = "x dtype must be float16, bfloat16, float32 or float64, got torch.int64"
    with pytest.raises(ValueError, match=message):
        reference_linear(torch.ones(1, K, dtype=torch.int64), packed)
    message = r"x must be \[\.\.\., K\] with the weight's K = 136 \(weight shape \(72, 136\)\)"
    with pytest.raises(ValueError, match=message):
        reference_linear(torch.ones(1, K - 4), packed)
    with pytest.raises(ValueError, match="the weight dtype must be float16, .* got torch.int32"):
        reference_linear(torch.ones(1, K), unpack(packed).int())
    # checked as sparse_linear checks its inputs (F.linear gave its own errors, or none)
    with pytest.raises(ValueError, match="x is on meta but the weight is on cpu"):
        reference_linear(torch.ones(1, K, device="meta"), packed)
    with pytest.raises(ValueError, match=_not_dense("x", "layout torch.sparse_coo")):
        reference_linear(torch.ones(1, K).to_sparse(), packed)
    with pytest.raises(ValueError, match=r"weight must be 2-D \[N, K\], got shape \(136,\)"):
        reference_linear(torch.ones(1, K), torch.ones(K))


def _bad_inputs():
    _, packed = packed_weight("2:4", torch.float16)
    x = torch.randn(3, K, dtype=torch.float16)
    csr, nested = _quietly(lambda: (x.to_sparse_csr(), torch.nested.nested_tensor([x[:1], x[1:]])))
    return [
        ("x dtype", packed, x.float(), None, "x dtype torch.float32 does not match"),
        ("int x", packed, x.to(torch.int16), None, "x dtype must be"),
        ("wrong K", packed, x[:, :-4], None, r"x must be \[\.\.\., K\] with the weight's K = 136"),
        (
            "scalar x",
            packed,
            torch.tensor(1.0, dtype=torch.float16),
            None,
            r"x must be \[\.\.\., K\] .* got shape \(\)",
        ),
        ("x device", packed, x.to("meta"), None, "x is on meta"),
        ("bias shape", packed, x, torch.zeros(N + 1), r"bias must have shape \(72,\)"),
        ("bias 2-D", packed, x, torch.zeros(1, N), "bias must have shape"),
        ("bias dtype", packed, x, torch.zeros(N, dtype=torch.int32), "bias dtype"),
        ("bias device", packed, x, torch.zeros(N, device="meta"), "bias is on meta"),
        ("dense weight", unpack(packed), x, None, "Sparse24Weight or BitmapWeight"),
        ("sparse x", packed, x.to_sparse(), None, _not_dense("x", "layout torch.sparse_coo")),
        ("CSR x", packed, csr, None, _not_dense("x", "layout torch.sparse_csr")),
        ("nested x", packed, nested, None, _not_dense("x", "a nested tensor")),
        ("sparse bias", packed, x, torch.ones(N).to_sparse(), _not_dense("bias", "layout")),
    ]


def _not_dense(name: str, got: str) -> str:
    return rf"{name} must be a dense \(strided\) tensor, got {got}"


def _quietly(make):
    """make(), its warnings silenced (CSR tensors warn that they are beta, nested tensors
    that they are a prototype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
def test_bad_input_raises_a_clear_error(case):
    _, weight, x, bias, message = case
    with pytest.raises(ValueError, match=message):
        sparse_linear(x, weight, bias)


def test_bad_backend_or_plan_raises():
    _, packed = packed_weight("2:4", torch.float32)
    x = torch.randn(2, K)
    with pytest.raises(ValueError, match="unknown backend"):
        sparse_linear(x, packed, backend="cusparse")
    with pytest.raises(ValueError, match="semi_structured backend runs on CUDA tensors only"):
        sparse_linear(x, packed, backend="semi_structured")
    with pytest.raises(ValueError, match="not both"):
        sparse_linear(x, packed, backend="tiled", plan=Plan("tiled"))
    # a backend name given as the plan (it raised AttributeError: 'str' ... 'backend')
    message = r"plan must be an lcc_kernels.Plan, got str 'skinny'; .* with backend="
    with pytest.raises(ValueError, match=message):
        sparse_linear(x, packed, plan="skinny")
    with pytest.raises(ValueError, match="plan must be an lcc_kernels.Plan, got dict"):
        sparse_linear(x, packed, plan=Plan("skinny").to_dict())
    with pytest.raises(ValueError, match="power of two"):
        Plan("skinny", block_n=48)
    with pytest.raises(ValueError, match="block_k >= 32"):
        sparse_linear(x, packed, plan=Plan("skinny", block_m=2, block_k=16))
    with pytest.raises(ValueError, match="needs block_m, block_n and block_k >= 16"):
        sparse_linear(x, packed, plan=Plan("tiled", block_m=8))


@needs_triton
@pytest.mark.parametrize("backend", ["skinny", "streams"])
def test_triton_backends_refuse_forward_mode_and_func_transforms(backend):
    """No derivative formula: a tangent (or a batch) would be lost or fail obscurely."""
    import torch.autograd.forward_ad as fwAD

    _, packed = packed_weight("bitmap", torch.float32)
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


def test_no_rows_checks_the_call_and_unpacks_nothing(monkeypatch):
    from lcc_kernels import reference, weight_cache

    def no_unpack(weight):
        raise AssertionError("unpacked")

    _, packed = packed_weight("2:4", torch.float32)
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
def test_no_rows_checks_a_forced_triton_plan(monkeypatch):
    from lcc_kernels import launch

    _, packed = packed_weight("2:4", torch.float32)
    with pytest.raises(ValueError, match="needs block_m, block_n and block_k >= 16"):
        sparse_linear(torch.randn(0, K), packed, plan=Plan("tiled", block_m=8))
    monkeypatch.setattr(launch, "_issue", lambda *args: pytest.fail("launched at M = 0"))
    y = sparse_linear(torch.randn(0, K), packed, plan=small_plan("skinny", 3))
    assert y.shape == (0, N)
    _, bitmap = packed_weight("bitmap", torch.float32)
    for backend in ("skinny", "tiled", "streams"):
        assert sparse_linear(torch.randn(2, 0, K), bitmap, backend=backend).shape == (2, 0, N)
    assert bitmap.cache == {}  # no streams layout built for a call with no rows


def _misfits():
    """(what, weight, sparse_linear keywords): forced backends and plans that cannot run
    on the weight."""
    dense, bitmap = packed_weight("bitmap", torch.float32)
    narrow = pack(dense, "bitmap", tile=(8, 32))
    _, sparse24 = packed_weight("2:4", torch.float32)
    return [
        ("tiled on 8-row tiles", narrow, dict(backend="tiled")),
        ("tiled plan on 8-row tiles", narrow, dict(plan=Plan("tiled", 16, 64, 64))),
        ("semi_structured on bitmap", bitmap, dict(backend="semi_structured")),
        ("streams block_m 8", bitmap, dict(plan=Plan("streams", 8, 32))),
        ("streams block_m 16 (default)", bitmap, dict(plan=Plan("streams", block_n=32))),
        ("streams on 2:4", sparse24, dict(plan=Plan("streams", 1, 32))),
        ("2:4 block_k 16", sparse24, dict(plan=Plan("skinny", block_m=2, block_k=16))),
    ]


@needs_triton
@pytest.mark.parametrize("case", _misfits(), ids=lambda case: case[0])
def test_no_rows_refuses_what_a_row_refuses(case):
    """x [0, K] and [2, 0, K] go through the checks of x [1, K], with the same error,
    rather than return an empty output that the first real call then refuses."""
    _, weight, kwargs = case
    with pytest.raises(ValueError) as one_row:
        sparse_linear(torch.randn(1, K), weight, **kwargs)
    for shape in ((0, K), (2, 0, K)):
        with pytest.raises(ValueError, match=re.escape(str(one_row.value))):
            sparse_linear(torch.randn(*shape), weight, **kwargs)


@pytest.mark.parametrize("backend", ["skinny", "streams"])
def test_no_rows_refuses_a_derivative_or_a_device_the_kernels_cannot_run_on(backend, monkeypatch):
    import torch.autograd.forward_ad as fwAD

    from lcc_kernels import launch

    _, packed = packed_weight("bitmap", torch.float32)
    for rows in (1, 0):
        with fwAD.dual_level(), pytest.raises(ValueError, match="inference only"):
            x = torch.randn(rows, K)
            sparse_linear(fwAD.make_dual(x, torch.randn_like(x)), packed, backend=backend)
    monkeypatch.setattr(launch, "INTERPRETED", False)  # CPU tensors, compiled kernels
    for rows in (1, 0):
        with pytest.raises(RuntimeError, match="the Triton kernels need a CUDA tensor"):
            sparse_linear(torch.randn(rows, K), packed, backend=backend)


def test_reference_checks_its_bias():
    dense, packed = packed_weight("2:4", torch.float32)
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
@pytest.mark.parametrize("rows", [2, 0])
@pytest.mark.parametrize("backend", ["skinny", "tiled", "streams"])
def test_kernel_backends_name_a_weight_on_the_meta_device(backend, rows):
    """A meta weight has shapes and no data: the kernels cannot run on it (with no rows
    either, as a row refuses); reference and dense give the output's shape."""
    _, packed = packed_weight("bitmap", torch.float32)
    on_meta, x = packed.to("meta"), torch.randn(rows, K, device="meta")
    with pytest.raises(ValueError, match=f"on the meta device .*: the {backend} backend runs"):
        sparse_linear(x, on_meta, backend=backend)
    for shapes_only in ("reference", "dense"):
        assert sparse_linear(x, on_meta, backend=shapes_only).shape == (rows, N)


@needs_triton
def test_a_skinny_split_k_workspace_over_the_bound_is_refused(monkeypatch):
    """A forced plan's fp32 workspace [split, M, N] is bounded (1 GiB; 5 KiB here), by
    the bound in force at the call: a geometry worked out under the real one is not
    reused."""
    dense, packed = packed_weight("bitmap", torch.float32)
    x = torch.randn(5, K)
    split_2 = Plan("skinny", 4, 16, 32, split_k=2)  # 2 x 5 x 72 x 4 B = 2.8 KiB
    split_5 = Plan("skinny", 4, 16, 32, split_k=5)  # 7 KiB
    assert_matches_oracle(sparse_linear(x, packed, plan=split_5), x, dense)
    monkeypatch.setattr(dispatch_table, "MAX_SPLIT_K_WORKSPACE_BYTES", 5 * 1024)
    assert_matches_oracle(sparse_linear(x, packed, plan=split_2), x, dense)
    with pytest.raises(
        ValueError,
        match=r"splits K 5 ways at M = 5, N = 72: .* 7\.0 KiB is over the 5\.0 KiB allowed",
    ):
        sparse_linear(x, packed, plan=split_5)
