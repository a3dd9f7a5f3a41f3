"""Public entry point: `sparse_linear(x, weight, bias)`, checked, dispatched and launched."""

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
    choose_plan,
    plan_for_key,
    with_weight_tile,
)
from .formats import SUPPORTED_DTYPES, BitmapWeight, Sparse24Weight, unpack
from .interop import to_torch_semi_structured
from .reference import reference_linear
from .streams import build_streams


def sparse_linear(
    x: torch.Tensor,
    weight: Sparse24Weight | BitmapWeight,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    plan: Plan | None = None,
    decode_streams: bool = False,
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ W^T + bias, for a packed weight W of shape [N, K].

    x: fp16, bf16 or fp32 with W's dtype and device, any leading dims. A view whose K axis
        is not unit-stride (or that cannot be viewed as [M, K]) is copied to a contiguous
        tensor first; other strides and unaligned storage offsets are used as they are.
    bias: [N], any of the three float dtypes; the Triton kernels add it in fp32 in their
        epilogue (the dense/semi_structured backends round it to x's dtype first).
    backend: "auto" (measured dispatch table, else built-in rules; `reference` on a CPU)
        or one of dispatch.BACKENDS to force it; plan: an explicit `Plan` (benchmarks,
        tests). Accumulation is fp32; y has x's dtype. Inference only (no autograd
        through the Triton backends).
    decode_streams: with "auto", a bitmap weight runs on its streams layout (built on
        first use and kept on the weight, ~1.1x the bitmap's bytes) up to
        dispatch.STREAMS_MAX_M rows where no measured entry says otherwise. Without it
        the rules never pick streams (a measured table still may, in eager calls).

    Under torch.compile the call is one custom op; with backend "auto" on a GPU (or a
    forced Triton backend) the op picks its Triton plan when it runs, so the backends on
    a cached copy of the weight that eager dispatch may pick (dense and torch
    semi-structured for large M) are not used there. Streams are, with decode_streams or
    backend "streams", if the weight's layout was built before tracing (by
    `prepare_streams` or an eager call): the op then gets it and picks streams or a
    Triton plan when it runs. Under CUDA-graph capture the cached copies are used only if
    they were built before: "auto" falls back to a Triton plan, a forced one raises.
    Where autograd would record the call (or a tracer or dispatch mode must see it), every
    Triton backend, streams included, runs through its custom op, which has no autograd
    formula: a backward raises instead of silently giving no gradient.

    >>> w = pack(torch.tensor([[1.0, 0, 0, 2], [0, 3, 4, 0]]), "2:4")
    >>> sparse_linear(torch.ones(1, 4), w, torch.tensor([0.5, 0.0]))
    tensor([[3.5000, 7.0000]])
    """
    _check_inputs(x, weight, bias)
    n, k = weight.shape
    x2d = x.reshape(-1, k)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    if x2d.shape[0] == 0:  # F.linear keeps the autograd graph of an empty x
        return reference_linear(x2d, weight, bias).reshape(*x.shape[:-1], n)
    if plan is not None and backend != "auto":
        raise ValueError(f"give either backend ({backend!r}) or plan, not both")
    if plan is None and backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if plan is None and _defer_to_op(backend, x):
        # While compiling: let the op choose its plan when it runs, so that no dispatcher
        # code is traced and a new M never recompiles the graph.
        y = _run_deferred(x2d, weight, bias, backend, decode_streams)
    else:
        if plan is None:
            plan = choose_plan(x2d.shape[0], weight, x.dtype, x.device, backend, decode_streams)
            # A copy built under capture would hold data only once the graph replays.
            if backend == "auto" and _copy_missing(weight, plan) and dispatch.capturing(x.device):
                key = WeightKey.of(weight, x.dtype)
                plan = plan_for_key(x2d.shape[0], key, x.device, triton_only=True)
        y = _run(x2d, weight, bias, with_weight_tile(plan, weight))
    return y.reshape(*x.shape[:-1], n)


def dense_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: Plan
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ weight [N, K]^T + bias with the sparse kernels' code and tiling,
    reading the weight densely: the baseline that isolates the cost of decompression."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x {tuple(x.shape)} and weight {tuple(weight.shape)} must be [M, K] and [N, K]"
        )
    if x.dtype not in SUPPORTED_DTYPES or x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(
            f"x ({x.dtype}, {x.device}) and weight ({weight.dtype}, {weight.device}) must match, "
            "in float16, bfloat16 or float32"
        )
    if bias is not None:
        _check_bias(bias, weight.shape[0], weight.device)
        bias = bias.contiguous()
    return ops.dense_linear(x.contiguous(), weight.contiguous(), bias, ops.plan_to_config(plan))


def _check_inputs(x, weight, bias) -> None:
    if not isinstance(weight, (Sparse24Weight, BitmapWeight)):
        raise ValueError(
            f"weight must be a Sparse24Weight or BitmapWeight (see pack), "
            f"got {type(weight).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x dtype must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x dtype {x.dtype} does not match the weight dtype {weight.dtype}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; its last dim must be the weight's "
            f"K = {weight.shape[1]} (weight shape {weight.shape})"
        )
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the weight is on {weight.device}")
    if bias is not None:
        _check_bias(bias, weight.shape[0], weight.device)


def _check_bias(bias, n: int, device: torch.device) -> None:
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != n:
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if bias.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"bias dtype must be float16, bfloat16 or float32, got {bias.dtype}")
    if bias.device != device:
        raise ValueError(f"bias is on {bias.device} but the weight is on {device}")


def _run(x2d, weight, bias, plan: Plan) -> torch.Tensor:
    if plan.backend == "reference":
        return reference_linear(x2d, weight, bias)
    if plan.backend in TRITON_BACKENDS:
        return _run_triton(x2d, weight, bias, plan)
    if plan.backend == "semi_structured" and not isinstance(weight, Sparse24Weight):
        raise ValueError("the semi_structured backend needs a 2:4 weight")
    if plan.backend == "semi_structured" and x2d.device.type != "cuda":
        raise ValueError(
            f"the semi_structured backend runs on CUDA tensors only, x is on {x2d.device}"
        )
    if plan.backend == "streams":
        if not isinstance(weight, BitmapWeight):
            raise ValueError("the streams backend needs a bitmap weight")
        layout = derived_copy(weight, plan)
        if not _launch_directly(x2d, weight, bias):
            return _streams_op(x2d, weight, bias, plan, layout, forced=True)
        return _launchers().run_streams(x2d, layout, bias, plan)
    # dense or semi_structured: F.linear on the cached copy
    return F.linear(x2d, derived_copy(weight, plan), None if bias is None else bias.to(x2d.dtype))


def _defer_to_op(backend: str, x: torch.Tensor) -> bool:
    if not torch.compiler.is_compiling():
        return False
    return backend in (*TRITON_BACKENDS, "streams") or (
        backend == "auto" and x.device.type == "cuda"
    )


def _run_deferred(x2d, weight, bias, backend: str, decode_streams: bool) -> torch.Tensor:
    """Under torch.compile: one custom op that picks its plan when it runs; the streams op
    where the weight has a layout and streams are asked for (forced, or decode_streams)."""
    wants_streams = backend == "streams" or (
        backend == "auto" and decode_streams and isinstance(weight, BitmapWeight)
    )
    built = weight.cache.get(_LAST_STREAMS) if wants_streams else None
    if built is None:
        if backend == "streams":
            if not isinstance(weight, BitmapWeight):
                raise ValueError("the streams backend needs a bitmap weight")
            raise ValueError(
                "under torch.compile the streams backend runs on a layout built before "
                "tracing: call lcc_kernels.prepare_streams(weight) (or run the call once "
                "without compiling) first"
            )
        return _run_triton(x2d, weight, bias, None, backend)
    return _streams_op(x2d, weight, bias, *built, forced=backend == "streams")


def _streams_op(x2d, weight, bias, plan: Plan, layout, forced: bool) -> torch.Tensor:
    """The streams custom op on `layout` (built for `plan`): the streams at any M if forced
    (block_m chosen from M), else streams or a Triton plan as the dispatcher picks."""
    return ops.bitmap_streams_linear(
        x2d,
        *_bitmap_op_args(weight),
        list(layout.tensors),
        ops.streams_config(plan, layout),
        bias,
        forced,
    )


def _launch_directly(x2d, weight, bias) -> bool:
    """Whether an eager call may launch the kernels itself rather than through the custom
    op, whose dispatch costs more host time than the rest of the call (torch issue
    177109). Only for plain tensors outside tracing: torch.compile, torch.jit.trace, a
    dispatch mode (export, FLOP counters) or a tensor subclass must see the op; and when
    autograd would record the call, the op's node is what makes a backward raise instead
    of silently giving no gradient."""
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
    """Run a Triton plan, or with plan None let the op pick one for `backend` when it runs."""
    if plan is not None and _launch_directly(x2d, weight, bias):
        launch = _launchers()
        if isinstance(weight, Sparse24Weight):
            operand = launch.sparse24_operand(weight.values, weight.meta, weight.shape[1])
        else:
            operand = launch.bitmap_operand(
                weight.bits, weight.values, weight.offsets, *weight.shape, weight.tile
            )
        return launch.run_linear(x2d, operand, bias, plan)
    config = ops.deferred_config(backend) if plan is None else ops.plan_to_config(plan)
    if isinstance(weight, Sparse24Weight):
        return ops.sparse24_linear(x2d, weight.values, weight.meta, weight.shape[1], bias, config)
    return ops.bitmap_linear(x2d, *_bitmap_op_args(weight), bias, config)


@functools.cache
def _launchers():
    """lcc_kernels.launch, imported on the first Triton launch (it imports triton, which a
    CPU-only user need not have); kept here since an import statement costs host time at
    every eager call."""
    from . import launch

    return launch


def _bitmap_op_args(weight: BitmapWeight) -> tuple:
    """A bitmap weight as the bitmap ops take it: bits, values, offsets, n, k, tile, nnz."""
    return (weight.bits, weight.values, weight.offsets, *weight.shape, *weight.tile, weight.nnz)


# weight.cache key of (plan, layout) of the last streams layout built (or prepared):
# compiled calls find their layout there without formatting its key (traced ints may be
# symbolic). Eager calls on an existing layout (with other launch settings, say) leave the
# record as it is: a compiled graph guards on the plan it read there.
_LAST_STREAMS = "streams:last"


def _cache_key(plan: Plan) -> str | None:
    """Where `plan`'s derived copy of the weight is kept in weight.cache (None: no copy)."""
    if plan.backend == "dense":
        return "dense"
    if plan.backend == "semi_structured":
        return f"semi_structured:{plan.semi_structured}"
    if plan.backend == "streams":
        return f"streams:{plan.block_n}:{plan.split_k}"
    return None


def _copy_missing(weight, plan: Plan) -> bool:
    key = _cache_key(plan)
    return key is not None and key not in weight.cache


def derived_copy(weight, plan: Plan):
    """The copy of `weight` that `plan` runs on, built now if missing (dense tensor, torch
    semi-structured tensor or streams.BitmapStreams); None for plans on the weight itself.
    The last streams layout built is remembered with its plan: compiled calls run on it."""
    if plan.backend == "dense":
        return _cached(weight, plan, lambda: unpack(weight).contiguous())
    if plan.backend == "semi_structured":
        return _cached(weight, plan, lambda: to_torch_semi_structured(weight, plan.semi_structured))
    if plan.backend == "streams":
        fresh = _copy_missing(weight, plan)
        layout = _cached(weight, plan, lambda: build_streams(weight, plan.block_n, plan.split_k))
        if fresh:
            weight.cache[_LAST_STREAMS] = (plan, layout)
        return layout
    return None


def prepare_streams(weight: BitmapWeight, plan: Plan | None = None):
    """Build (or find) `weight`'s streams layout now and make it the one that compiled
    calls run on; returns it (streams.BitmapStreams). Do this before torch.compile or
    CUDA-graph capture, which cannot build it. plan: a "streams" Plan; by default the one
    a one-row call with decode_streams picks on the weight's device (the same layout
    serves up to dispatch.STREAMS_MAX_M rows)."""
    if not isinstance(weight, BitmapWeight):
        raise ValueError(
            f"streams layouts are built for bitmap weights, got {type(weight).__name__}"
        )
    if plan is None:
        plan = choose_plan(1, weight, weight.dtype, weight.device, "auto", True)
        if plan.backend != "streams":  # a measured entry (or the CPU) says otherwise
            plan = choose_plan(1, weight, weight.dtype, weight.device, "streams")
    elif plan.backend != "streams":
        raise ValueError(f"prepare_streams needs a streams plan, got {plan.backend!r}")
    layout = derived_copy(weight, plan)
    if weight.cache[_LAST_STREAMS][1] is not layout:
        weight.cache[_LAST_STREAMS] = (plan, layout)
    return layout


def _cached(weight, plan: Plan, build):
    """The derived copy of the weight (dense, torch-converted, streams) that `plan` runs
    on, built once and kept on the weight."""
    key = _cache_key(plan)
    if key not in weight.cache:
        if dispatch.capturing(weight.device):
            raise RuntimeError(
                f"the {key} copy of this weight is built on its first use, which cannot be "
                "captured in a CUDA graph (its data would exist only after a replay): run "
                "the call once before capturing"
            )
        weight.cache[key] = build()
    return weight.cache[key]
