"""Public entry point: `sparse_linear(x, weight, bias)`, checked, dispatched and launched.
The copies of a weight that some backends run on are kept by `weight_cache`.

Routing. The inputs are checked once per call (`_check_inputs`: the launchers do not
check again, an eager decode step waits on host time). Eager, the dispatcher picks a
Plan: reference, dense and semi_structured run in PyTorch; a Triton or streams plan
launches its kernels directly where nothing must see the custom op (`_launch_directly`),
else calls the op (ops.py), whose autograd node makes a backward raise. Under
torch.compile (`_defer_to_op`) the call is one op that picks its plan when it runs
(`_run_deferred`): no dispatcher code is traced and a new M never recompiles, so the
dense and semi-structured copies eager dispatch may pick are not used there, and the
streams only where their layout was built before tracing. Under CUDA-graph capture a
copy of the weight not built before cannot be (it would hold data only once the graph
replays): "auto" takes a Triton plan instead (`_needs_triton_plan`), a forced backend
raises.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from . import dispatch, ops
from .dispatch import (
    BACKENDS,
    TRITON_BACKENDS,
    Plan,
    WeightKey,
    check_backend_format,
    choose_plan,
    plan_for_key,
    with_weight_tile,
)
from .formats import BitmapWeight, Sparse24Weight
from .interop import check_semi_structured_fits
from .reference import (
    as_kernel_input,
    autocast_off,
    check_dense_weight,
    check_operands,
    reference_linear,
)
from .weight_cache import (
    LAST_STREAMS,
    check_holds_data,
    copy_missing,
    derived_copy,
    prepare_streams,
)

# derived_copy and prepare_streams are imported from here by callers (and the package).
__all__ = ["dense_linear_triton", "derived_copy", "prepare_streams", "sparse_linear"]

# torch.mm(..., out_dtype=torch.float32) on fp16/bf16 (cuBLAS writing its fp32 product)
# exists from torch 2.8; before, a wide bias goes through the fp32 reference.
_MM_WRITES_FP32 = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 8)


def sparse_linear(
    x: torch.Tensor,
    weight: Sparse24Weight | BitmapWeight,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    plan: Plan | None = None,
    decode_streams: bool = False,
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ W^T + bias, for a packed weight W of shape [N, K],
    accumulated in fp32 and returned in x's dtype.

    x: fp16, bf16 or fp32 with W's dtype and device, any leading dims, dense (not sparse
        or nested). A view whose K axis is not unit-stride (or that cannot be viewed as
        [M, K]) is copied to a contiguous tensor first, and so is a lazy negation view (as
        a bias); other strides and unaligned storage offsets are used as they are.
    bias: [N], any of the three float dtypes, added in fp32 to the fp32 product, which is
        then rounded once to x's dtype. One exception: torch's semi-structured kernels
        write x's dtype only, so a forced "semi_structured" backend adds a bias that x's
        dtype cannot hold exactly (fp32 for fp16 x, say) to the rounded product, rounding
        twice ("auto" runs a Triton plan there instead).
    backend: "auto" (measured dispatch table, else built-in rules; `reference` on a CPU)
        or one of dispatch.BACKENDS to force it.
    plan: an explicit `lcc_kernels.Plan` (benchmarks, tests) instead of a backend.
    decode_streams: a bool; with "auto", a bitmap weight runs on its streams layout
        (built on first use and kept on the weight, ~1.1x the bitmap's bytes) up to
        dispatch.STREAMS_MAX_M rows where no measured entry says otherwise. Without it
        the rules never pick streams (a measured table still may, in eager calls).

    An active torch.autocast does not change the result: every backend computes as
    stated here and returns x's dtype, with the values it gives without autocast (the
    PyTorch backends run with autocast disabled for x's device type).

    Non-finite x at pruned positions: like F.linear on the dense weight, the paths give
    NaN (0 * inf) in the rows whose stored entries reach them. Dense tiles store every
    position; the paths that walk stored entries only (skinny with block_m < 16 on 2:4
    weights, streams) skip most pruned positions but not all (the zero slots of 2:4
    groups with fewer than two kept, the streams' escape and padding entries), so which
    rows turn NaN depends on the path. Check x where it matters.

    torch.compile traces a Triton or streams call ("auto" on a GPU) as one custom op, a
    PyTorch backend's ("reference", "dense", "auto" on the CPU) as its PyTorch ops: no
    graph break either way. There the streams backend needs the weight's layout built
    before tracing (`prepare_streams`, or an eager call); under CUDA-graph capture, a
    forced dense, semi_structured or streams backend needs its copy of the weight built
    before ("auto" falls back to a Triton plan).

    The Triton backends (streams included) are inference only: a backward through them
    raises a RuntimeError, forward-mode AD (dual tensors) and torch.func transforms (jvp,
    grad, vmap) a ValueError at the call, both naming backend "reference" or "dense",
    which have derivatives of every kind (the packed weight itself gets no gradient).
    Bad input raises a ValueError naming the shape, dtype, device, backend or plan.

    >>> from lcc_kernels import pack
    >>> w = pack(torch.tensor([[1.0, 0, 0, 2], [0, 3, 4, 0]]), "2:4")
    >>> sparse_linear(torch.ones(1, 4), w, torch.tensor([0.5, 0.0]))
    tensor([[3.5000, 7.0000]])
    """
    _check_inputs(x, weight, bias)
    if plan is not None and not isinstance(plan, Plan):
        raise ValueError(
            f"plan must be an lcc_kernels.Plan, got {type(plan).__name__} {plan!r}; a "
            f"backend is forced by name with backend= (one of {BACKENDS})"
        )
    if plan is not None and backend != "auto":
        raise ValueError(f"give either backend ({backend!r}) or plan, not both")
    if plan is None and backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if not isinstance(decode_streams, bool):
        raise ValueError(f"decode_streams must be True or False, got {decode_streams!r}")
    _check_backend_fits(plan or backend, weight, x.device)
    n, k = weight.shape
    x2d = as_kernel_input(x.reshape(-1, k))
    if bias is not None:
        bias = as_kernel_input(bias)
    rows = x2d.shape[0]
    if plan is None and _defer_to_op(backend, x):
        # While compiling (see the module docstring); M = 0 launches nothing.
        if rows > 0:
            y = _run_deferred(x2d, weight, bias, backend, decode_streams)
        else:
            y = _empty_output(x2d, weight, bias, None)
    else:
        if plan is None:
            plan = choose_plan(rows, weight, x.dtype, x.device, backend, decode_streams)
            if backend == "auto" and _needs_triton_plan(plan, x2d, weight, bias):
                key = WeightKey.of(weight, x.dtype)
                plan = plan_for_key(rows, key, x.device, triton_only=True)
        plan = with_weight_tile(plan, weight)
        y = _run(x2d, weight, bias, plan) if rows > 0 else _empty_output(x2d, weight, bias, plan)
    return y.reshape(*x.shape[:-1], n)


def dense_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ weight [N, K]^T + bias [N] with the sparse kernels' code and
    tiling, reading the weight densely: the baseline that isolates the cost of
    decompression."""
    n, k = check_dense_weight(weight)
    check_operands(x, n, k, weight, bias, two_d=True)
    if bias is not None:
        bias = bias.contiguous()
    return ops.dense_linear(x.contiguous(), weight.contiguous(), bias, ops.plan_to_config(plan))


def _check_inputs(x, weight, bias) -> None:
    """Refuse what sparse_linear cannot run: a weight that is not packed, x [..., K] or a
    bias [N] that does not fit the packed [N, K] weight (`check_operands`)."""
    if not isinstance(weight, (Sparse24Weight, BitmapWeight)):
        raise ValueError(
            f"weight must be a Sparse24Weight or BitmapWeight (see pack), "
            f"got {type(weight).__name__}"
        )
    check_operands(x, *weight.shape, weight, bias)


def _check_backend_fits(forced: str | Plan, weight, device: torch.device) -> None:
    """Raise where a forced backend (a name, or a Plan given) cannot run on this packed
    [N, K] weight or device: torch's semi-structured tensors need CUDA and the dtypes and
    shapes torch converts (`check_semi_structured_fits`), checked before converting."""
    plan = forced if isinstance(forced, Plan) else None
    backend = forced if plan is None else plan.backend
    check_backend_format(backend, weight.format)
    if backend == "semi_structured":
        if device.type != "cuda":
            raise ValueError(
                f"the semi_structured backend runs on CUDA tensors only, x is on {device}"
            )
        variant = (plan or Plan(backend)).semi_structured
        check_semi_structured_fits(variant, weight.dtype, *weight.shape)
    check_holds_data(backend, device)


def _empty_output(x2d, weight, bias, plan: Plan | None) -> torch.Tensor:
    """y [0, N] for x [0, K], `plan` checked as `_run` checks it at M > 0 (same errors;
    None while compiling, where the op would choose it), with nothing launched, the weight
    not unpacked and no copy of it built; as from F.linear, part of the autograd graph of
    x and the bias."""
    if plan is not None and plan.backend in (*TRITON_BACKENDS, "streams"):
        _check_launch(x2d, weight, bias, plan)
    zero_weight = x2d.new_zeros(()).expand(weight.shape)
    with autocast_off(x2d.device):
        return F.linear(x2d, zero_weight, None if bias is None else bias.to(x2d.dtype))


def _check_launch(x2d, weight, bias, plan: Plan) -> None:
    """What `_run` and the launchers refuse before a Triton or streams plan launches,
    for x [0, K]: a derivative asked, a device the kernels cannot run on, a plan that
    does not fit the weight (a streams block_m where the plan's own would be launched)."""
    if not torch.compiler.is_compiling():
        ops.check_inference_only(x2d, weight.values, bias)
    launch = _launchers()
    if plan.backend in TRITON_BACKENDS:
        launch.check_without_rows(x2d, plan, _operand(weight), bias)
    else:
        direct = _launch_directly(x2d, weight, bias)
        launch.check_without_rows(x2d, plan, streams_block_m=direct)


def _bias_fits(bias, dtype: torch.dtype) -> bool:
    """Whether `dtype` holds every value of the bias [N] (None: no bias) exactly."""
    return bias is None or bias.dtype == dtype or dtype == torch.float32


def _needs_triton_plan(plan: Plan, x2d, weight, bias) -> bool:
    """Where "auto" trades the plan it chose for x2d [M, K], bias [N] | None and the
    packed weight for a Triton one: torch's 2:4 kernels with a bias that x's dtype cannot
    hold (see `_torch_linear`), or a copy of the weight still missing under CUDA-graph
    capture (built there, it would hold data only once the graph replays)."""
    if plan.backend == "semi_structured" and not _bias_fits(bias, x2d.dtype):
        return True
    return copy_missing(weight, plan) and dispatch.capturing(x2d.device)


def _run(x2d, weight, bias, plan: Plan) -> torch.Tensor:
    """y [M, N] for x2d [M, K] (M > 0) and bias [N] | None, both checked (`_check_inputs`),
    on the packed [N, K] weight, run by `plan` (a copy of the weight built where its
    backend runs on one)."""
    if plan.backend == "reference":
        return reference_linear(x2d, weight, bias)
    if plan.backend in ("dense", "semi_structured"):
        return _torch_linear(x2d, derived_copy(weight, plan), bias, plan.backend)
    if not torch.compiler.is_compiling():
        ops.check_inference_only(x2d, weight.values, bias)
    if plan.backend in TRITON_BACKENDS:
        return _run_triton(x2d, weight, bias, plan)
    layout = derived_copy(weight, plan)  # streams
    if not _launch_directly(x2d, weight, bias):
        return _streams_op(x2d, weight, bias, plan, layout, forced=True)
    return _launchers().run_streams(x2d, layout, bias, plan)


def _torch_linear(x2d, copy, bias, backend: str) -> torch.Tensor:
    """y [M, N] = F.linear of x2d [M, K] on the weight's dense [N, K] or torch
    semi-structured copy (`backend` "dense" or "semi_structured"), bias [N] | None. A
    bias that x's dtype holds exactly goes in as x's dtype: the GEMM adds it to its fp32
    product, rounding once. A wider one (fp32 for fp16/bf16 x) is added to an fp32
    product, which cuBLAS writes on a GPU (torch.mm with out_dtype, torch >= 2.8, which
    has no derivative: where one is asked, off a GPU, and on older torch, the reference
    computes in fp32). torch's 2:4 kernels cannot write fp32 from fp16/bf16, so
    semi_structured adds it to the rounded product (two roundings; "auto" does not run
    them with such a bias). An active torch.autocast does not apply (`autocast_off`)."""
    with autocast_off(x2d.device):
        if _bias_fits(bias, x2d.dtype):
            return F.linear(x2d, copy, None if bias is None else bias.to(x2d.dtype))
        if backend == "semi_structured":
            return (F.linear(x2d, copy).float() + bias).to(x2d.dtype)
        if x2d.device.type == "cuda" and _MM_WRITES_FP32 and not _differentiated(x2d, bias):
            return torch.mm(x2d, copy.t(), out_dtype=torch.float32).add_(bias).to(x2d.dtype)
        return reference_linear(x2d, copy, bias)


def _differentiated(x2d, bias) -> bool:
    """Whether autograd records the call or a forward-mode or torch.func derivative is
    asked of x2d [M, K] or the bias [N] (a packed weight gets no gradient)."""
    recorded = torch.is_grad_enabled() and (
        x2d.requires_grad or (bias is not None and bias.requires_grad)
    )
    return recorded or ops.transformed(x2d, bias)


def _defer_to_op(backend: str, x: torch.Tensor) -> bool:
    """Whether the call, x [..., K] with `backend` (not a plan), is traced as one op
    choosing its plan when it runs: while compiling, for the Triton and streams backends
    or "auto" on a GPU (elsewhere "auto" is the reference)."""
    if not torch.compiler.is_compiling():
        return False
    return backend in (*TRITON_BACKENDS, "streams") or (
        backend == "auto" and x.device.type == "cuda"
    )


def _run_deferred(x2d, weight, bias, backend: str, decode_streams: bool) -> torch.Tensor:
    """y [M, N] for x2d [M, K] (M > 0) and bias [N] | None under torch.compile: one custom
    op that picks its plan when it runs; the streams op where the weight has a layout and
    streams are asked for (forced, or decode_streams)."""
    wants_streams = backend == "streams" or (
        backend == "auto" and decode_streams and isinstance(weight, BitmapWeight)
    )
    built = weight.cache.get(LAST_STREAMS) if wants_streams else None
    if built is None:
        if backend == "streams":
            raise ValueError(
                "under torch.compile the streams backend runs on a layout built before "
                "tracing: call lcc_kernels.prepare_streams(weight) (or run the call once "
                "without compiling) first"
            )
        return _run_triton(x2d, weight, bias, None, backend)
    return _streams_op(x2d, weight, bias, *built, forced=backend == "streams")


def _streams_op(x2d, weight, bias, plan: Plan, layout, forced: bool) -> torch.Tensor:
    """y [M, N] for x2d [M, K] and bias [N] | None from the streams custom op on `layout`
    (the bitmap weight's streams.BitmapStreams, built for `plan`): the streams at any M if
    forced (block_m chosen from M), else streams or a Triton plan as the dispatcher picks."""
    return ops.bitmap_streams_linear(
        x2d,
        *_bitmap_op_args(weight),
        list(layout.tensors),
        ops.streams_config(plan, layout),
        bias,
        forced,
    )


def _launch_directly(x2d, weight, bias) -> bool:
    """Whether an eager call on x2d [M, K] and bias [N] | None may launch the kernels
    itself rather than through the custom op, whose dispatch costs more host time than
    the rest of the call (torch issue 177109). Only for plain tensors outside tracing:
    torch.compile, torch.jit.trace, a dispatch mode (export, FLOP counters) or a tensor
    subclass must see the op; and when autograd would record the call, the op's node is
    what makes a backward raise instead of silently giving no gradient."""
    if (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or is_in_torch_dispatch_mode()
        or type(x2d) is not torch.Tensor
    ):
        return False
    if not torch.is_grad_enabled():
        return True
    return not (
        x2d.requires_grad
        or weight.values.requires_grad
        or (bias is not None and bias.requires_grad)
    )


def _run_triton(x2d, weight, bias, plan: Plan | None, backend: str = "auto") -> torch.Tensor:
    """y [M, N] for x2d [M, K] and bias [N] | None by a Triton plan (launched directly
    where `_launch_directly`, else through the op), or with plan None by the op, which
    picks one for `backend` when it runs."""
    if plan is not None and _launch_directly(x2d, weight, bias):
        return _launchers().run_linear(x2d, _operand(weight), bias, plan)
    config = ops.deferred_config(backend) if plan is None else ops.plan_to_config(plan)
    if isinstance(weight, Sparse24Weight):
        return ops.sparse24_linear(x2d, weight.values, weight.meta, weight.shape[1], bias, config)
    return ops.bitmap_linear(x2d, *_bitmap_op_args(weight), bias, config)


def _operand(weight):
    """The packed [N, K] weight as the Triton launchers take it (launch.Operand)."""
    launch = _launchers()
    if isinstance(weight, Sparse24Weight):
        return launch.sparse24_operand(weight.values, weight.meta, weight.shape[1])
    return launch.bitmap_operand(
        weight.bits, weight.values, weight.offsets, *weight.shape, weight.tile
    )


@functools.cache
def _launchers():
    """lcc_kernels.launch, imported on the first Triton launch (it imports triton, which a
    CPU-only user need not have); kept here since an import statement costs host time at
    every eager call."""
    from . import launch

    return launch


def _bitmap_op_args(weight: BitmapWeight) -> tuple:
    """A bitmap weight as the bitmap ops take it: bits [T, words], values [V], offsets
    [T], n, k, tile_n, tile_k, nnz."""
    return (weight.bits, weight.values, weight.offsets, *weight.shape, *weight.tile, weight.nnz)
