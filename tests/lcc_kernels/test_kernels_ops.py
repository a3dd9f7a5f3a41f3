"""Custom ops: registration checks, torch.compile(fullgraph=True), and the CPU guard."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from _kernels_helpers import assert_matches_oracle, needs_triton, random_24, random_unstructured
from torch.library import opcheck
from torch.utils._python_dispatch import TorchDispatchMode

from lcc_kernels import Plan, ops, pack, prepare_streams, sparse_linear
from lcc_kernels.ops import bitmap_linear, dense_linear, plan_to_config, sparse24_linear

SMALL_PLAN = Plan("skinny", block_m=4, block_n=16, block_k=32, split_k=2)


@needs_triton
def test_opcheck_passes_for_every_op():
    x, bias = torch.randn(3, 64), torch.randn(40)
    config = plan_to_config(SMALL_PLAN)
    w24 = pack(random_24(40, 64), "2:4")
    bitmap = pack(random_unstructured(40, 64, 0.4), "bitmap", tile=(16, 32))
    cases = [
        (sparse24_linear, (x, w24.values, w24.meta, 64, bias, config)),
        (
            bitmap_linear,
            (
                x,
                bitmap.bits,
                bitmap.values,
                bitmap.offsets,
                40,
                64,
                16,
                32,
                bitmap.nnz,
                None,
                config,
            ),
        ),
        (dense_linear, (x, torch.randn(40, 64), bias, plan_to_config(Plan("tiled", 16, 16, 16)))),
    ]
    for op, args in cases:
        results = opcheck(op, args)
        assert all(v == "SUCCESS" for v in results.values()), (op, results)


class _OpRecorder(TorchDispatchMode):
    """Records the ops dispatched while it is active (as FLOP counters and export see them)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@needs_triton
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_eager_calls_launch_directly_and_others_go_through_the_op(fmt, monkeypatch):
    dense = random_24(40, 64) if fmt == "2:4" else random_unstructured(40, 64, 0.4)
    packed = pack(dense, fmt, tile=(16, 32))
    bias = torch.randn(40)
    op_name = "sparse24_linear" if fmt == "2:4" else "bitmap_linear"
    op_calls = []
    real_op = getattr(ops, op_name)
    monkeypatch.setattr(ops, op_name, lambda *args: op_calls.append(1) or real_op(*args))
    x = torch.randn(3, 64, requires_grad=True)

    with torch.no_grad():  # plain tensors, nothing to record: no dispatcher
        direct = sparse_linear(x, packed, bias, plan=SMALL_PLAN)
    assert op_calls == [] and not direct.requires_grad
    assert_matches_oracle(direct, x.detach(), dense, bias)

    with torch.no_grad(), _OpRecorder() as recorder:  # a dispatch mode must see the op
        seen = sparse_linear(x, packed, bias, plan=SMALL_PLAN)
    assert f"lcc_kernels.{op_name}.default" in recorder.ops and len(op_calls) == 1
    assert torch.equal(seen, direct)
    with torch.no_grad(), warnings.catch_warnings():  # so must torch.jit.trace (deprecated)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            lambda x: sparse_linear(x, packed, bias, plan=SMALL_PLAN), x, check_trace=False
        )
    assert f"lcc_kernels::{op_name}" in str(traced.graph) and len(op_calls) == 2
    assert torch.equal(traced(x.detach()), direct)

    # Autograd records the op, so that a backward fails loudly instead of giving no grad.
    y = sparse_linear(x, packed, bias, plan=SMALL_PLAN)
    assert y.requires_grad and len(op_calls) == 3
    # The op's own formula: the fix named, not PyTorch's "use register_autograd to add one".
    message = (
        f"inference only: a backward cannot run through them \\(lcc_kernels::{op_name} has "
        "no derivative\\); use backend='reference' \\(or 'dense'\\) for training"
    )
    with pytest.raises(RuntimeError, match=message):
        y.sum().backward()
    y = sparse_linear(x.detach(), packed, bias.requires_grad_(), plan=SMALL_PLAN)
    assert y.requires_grad and len(op_calls) == 4


@needs_triton
def test_a_backward_through_the_dense_baseline_op_names_the_fix():
    from lcc_kernels import dense_linear_triton

    x = torch.randn(3, 64, requires_grad=True)
    y = dense_linear_triton(x, torch.randn(40, 64), None, Plan("tiled", 16, 16, 16))
    message = r"\(lcc_kernels::dense_linear has no derivative\); use backend='reference'"
    with pytest.raises(RuntimeError, match=message):
        y.sum().backward()


def test_compiled_reference_path_has_no_graph_break(monkeypatch):
    # Inductor's own set-up allocates leaf tensors with requires_grad=True through
    # torch.empty, which the NaN-poisoning conftest cannot fill in place: un-poison here
    # (the reference path allocates no uninitialised outputs of its own).
    monkeypatch.setattr(torch, "empty", torch._C._VariableFunctions.empty)
    monkeypatch.setattr(torch, "empty_like", torch._C._VariableFunctions.empty_like)
    dense = random_unstructured(40, 64, 0.4)
    packed = pack(dense, "bitmap", tile=(16, 32))
    bias = torch.randn(40)
    compiled = torch.compile(lambda x: torch.relu(sparse_linear(x, packed, bias)), fullgraph=True)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(compiled(x), torch.relu(x @ dense.T + bias))


@pytest.mark.parametrize("backend", ["auto", "reference", "dense"])
def test_a_first_call_inside_a_compiled_region_traces_whole(backend, monkeypatch):
    # The tables named in the environment are read on the first dispatch; with none
    # named, that first dispatch must not take the loading lock (Dynamo cannot trace it).
    from lcc_kernels import dispatch

    monkeypatch.delenv(dispatch.TABLE_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_ENV_LOADED", False)
    dense = random_24(40, 64)
    packed = pack(dense, "2:4")
    bias = torch.randn(40)
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, backend=backend),
        fullgraph=True,
        backend="aot_eager",
    )
    x = torch.randn(3, 64)
    torch.testing.assert_close(compiled(x), x @ dense.T + bias)


@needs_triton
def test_compiled_triton_path_has_no_graph_break():
    dense = random_24(40, 64)
    packed = pack(dense, "2:4")
    bias = torch.randn(40)

    def fused(x):
        return sparse_linear(x, packed, bias, plan=SMALL_PLAN) * 2.0

    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 64)
    y = compiled(x)
    assert_matches_oracle(y / 2.0, x, dense, bias)


@needs_triton
def test_compiled_forced_backend_defers_the_plan_to_the_op():
    dense = random_unstructured(40, 64, 0.4)
    packed = pack(dense, "bitmap", tile=(16, 32))
    bias = torch.randn(40)
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, backend="skinny"),
        fullgraph=True,
        dynamic=True,
        backend="aot_eager",
    )
    for m in (1, 3, 17):  # symbolic M: the plan is chosen inside the op at run time
        x = torch.randn(m, 64)
        assert_matches_oracle(compiled(x), x, dense, bias)


@needs_triton
@pytest.mark.parametrize("backend", ["skinny", "tiled"])
def test_compiled_forced_backend_without_rows_reads_no_table(backend, tmp_path, monkeypatch):
    # A table named in the environment and not yet read: the dispatcher would take the
    # loading lock, which Dynamo cannot trace; at M = 0 the op has nothing to run.
    from lcc_kernels import dispatch

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"schema": dispatch.TABLE_SCHEMA, "device": "cpu", "entries": []}))
    monkeypatch.setenv(dispatch.TABLE_ENV, str(path))
    monkeypatch.setattr(dispatch, "_ENV_LOADED", False)
    dense = random_unstructured(40, 64, 0.4)
    packed = pack(dense, "bitmap", tile=(16, 32))
    bias = torch.randn(40)
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, backend=backend),
        fullgraph=True,
        backend="aot_eager",
    )
    y = compiled(torch.randn(2, 0, 64))
    assert y.shape == (2, 0, 40)
    assert not dispatch._ENV_LOADED


@needs_triton
def test_deferred_configs_resolve_to_triton_plans(monkeypatch):
    from lcc_kernels import dispatch
    from lcc_kernels.dispatch import TABLE_SCHEMA, DispatchTable, WeightKey
    from lcc_kernels.ops import deferred_config, resolve_config

    key = WeightKey("2:4", "float32", 40, 64)
    cpu = torch.device("cpu")
    monkeypatch.setattr(dispatch, "_TABLES", {})
    dispatch.register_table(
        DispatchTable.from_dict(
            {
                "schema": TABLE_SCHEMA,
                "device": "cpu",
                "entries": [
                    {
                        "format": "2:4",
                        "dtype": "float32",
                        "n": 40,
                        "k": 64,
                        "m_bucket": 1,
                        "plan": Plan("dense").to_dict(),
                    },
                    {
                        "format": "2:4",
                        "dtype": "float32",
                        "n": 40,
                        "k": 64,
                        "m_bucket": 4,
                        "plan": Plan("skinny", 4, 16, 32, 3).to_dict(),
                    },
                ],
            }
        )
    )
    assert resolve_config(deferred_config(), 1, key, cpu).backend == "skinny"  # not dense
    assert resolve_config(deferred_config(), 4, key, cpu) == Plan("skinny", 4, 16, 32, 3)
    assert resolve_config(deferred_config("tiled"), 4, key, cpu).backend == "tiled"
    assert resolve_config(plan_to_config(SMALL_PLAN), 4, key, cpu) == SMALL_PLAN
    dense = random_24(40, 64)
    packed = pack(dense)
    x = torch.randn(4, 64)
    y = sparse24_linear(x, packed.values, packed.meta, 64, None, deferred_config())
    assert_matches_oracle(y, x, dense)


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error():
    script = (
        "import torch, lcc_kernels as L\n"
        "w = L.pack(torch.eye(8, 16) * 0 + torch.eye(8, 16), '2:4')\n"
        "try:\n"
        "    L.sparse_linear(torch.ones(1, 16), w, backend='skinny')\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "RuntimeError: the Triton kernels need a CUDA tensor" in result.stdout
    assert "TRITON_INTERPRET=1" in result.stdout


def _op_calls(x, bias):
    """Each Triton op on a [40, 64] weight of its kind, as a call of (x, bias), with the
    dense weight it stands for."""
    dense24, dense_bitmap, dense = (
        random_24(40, 64),
        random_unstructured(40, 64, 0.4),
        torch.randn(40, 64),
    )
    w24 = pack(dense24, "2:4")
    bitmap = pack(dense_bitmap, "bitmap", tile=(16, 32))
    config = plan_to_config(SMALL_PLAN)
    bitmap_args = (bitmap.bits, bitmap.values, bitmap.offsets, 40, 64, 16, 32, bitmap.nnz)
    layout = prepare_streams(bitmap, Plan("streams", 1, 16, split_k=2))
    streams_args = (*bitmap_args, list(layout.tensors))
    streams_config = ops.streams_config(Plan("streams", 1, 16, split_k=2), layout)
    return {
        "2:4": (lambda x, b: sparse24_linear(x, w24.values, w24.meta, 64, b, config), dense24),
        "bitmap": (lambda x, b: bitmap_linear(x, *bitmap_args, b, config), dense_bitmap),
        "dense": (lambda x, b: dense_linear(x, dense, b, config), dense),
        "streams": (
            lambda x, b: ops.bitmap_streams_linear(x, *streams_args, streams_config, b, True),
            dense_bitmap,
        ),
    }


@needs_triton
@pytest.mark.parametrize("kind", ["2:4", "bitmap", "dense", "streams"])
def test_ops_check_and_copy_what_they_are_given(kind):
    """Called directly (not through sparse_linear), an op takes a transposed x and a
    strided bias (copied first) and names a wrong shape, dtype or device."""
    x = torch.randn(64, 3).t()  # [3, 64], K not unit-stride
    bias = torch.randn(80)[::2]
    call, dense = _op_calls(x, bias)[kind]
    assert_matches_oracle(call(x, bias), x, dense, bias)
    for bad_x, bad_bias, message in (
        (
            torch.randn(3, 72),
            None,
            r"x must be \[M, K\] with the weight's K = 64 \(weight shape "
            r"\(40, 64\)\), got shape \(3, 72\)",
        ),
        (torch.randn(2, 3, 64), None, r"x must be \[M, K\] .* got shape \(2, 3, 64\)"),
        (torch.randn(3, 64).half(), None, "x dtype torch.float16 does not match the weight dtype"),
        (x, torch.randn(41), r"bias must have shape \(40,\), got \(41,\)"),
        (x, torch.zeros(40, dtype=torch.int32), "bias dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            call(bad_x, bad_bias)


@needs_triton
def test_op_inputs_on_another_device_are_named():
    # A meta tensor given to an op runs its fake implementation: the check itself here.
    from lcc_kernels.launch import checked_inputs

    weight = torch.randn(40, 64)
    with pytest.raises(ValueError, match="x is on meta but the weight is on cpu"):
        checked_inputs(torch.randn(3, 64, device="meta"), 40, 64, weight, None)
    with pytest.raises(ValueError, match="bias is on meta but the weight is on cpu"):
        checked_inputs(torch.randn(3, 64), 40, 64, weight, torch.randn(40, device="meta"))


@needs_triton
def test_dense_op_names_a_weight_not_unit_stride_along_k():
    weight = torch.randn(64, 40).t()
    with pytest.raises(ValueError, match="unit-stride along K"):
        dense_linear(torch.randn(3, 64), weight, None, plan_to_config(SMALL_PLAN))


@needs_triton
@pytest.mark.parametrize("kind", ["2:4", "bitmap", "dense", "streams"])
def test_ops_refuse_forward_mode_dual_inputs(kind):
    """An op has no forward-mode formula: a dual x would lose its tangent silently."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(3, 64)
    call, _ = _op_calls(x, None)[kind]
    with fwAD.dual_level(), pytest.raises(ValueError, match="inference only"):
        call(fwAD.make_dual(x, torch.randn(3, 64)), None)


def test_plan_configs_round_trip_every_field():
    for plan in (
        Plan("skinny", 2, 32, 128, 5, num_warps=8, num_stages=1, group_m=4),
        Plan("tiled", 64, 16, 32, serial_reduction=False, num_stages=2, group_m=1),
    ):
        config = plan_to_config(plan)
        assert len(config) == 9 and all(type(v) is int for v in config)
        assert ops.resolve_config(config, 7, None, torch.device("cpu")) == plan
