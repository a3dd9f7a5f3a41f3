"""torch.library custom ops around the Triton launchers, so torch.compile keeps them whole.

Each op takes a 2-D x [M, K], the packed weight's tensors, the bias and a launch config
(a `Plan` encoded as ints by `plan_to_config`, or a `deferred_config` that lets the op
pick the plan when it runs), and returns a fresh y [M, N]; `bitmap_streams_linear` also
takes a streams layout of the weight, built beforehand (tracing cannot build it). Fake
implementations give torch.compile the output shape without running anything; as they
also run in the op's place wherever an argument is on the meta device, they refuse a
tensor off x's device.

Each op checks what it is given at every call, reading no data (no sync): the weight's
tensors against its n, k and tile as the containers check their layout (dtypes, shapes,
one device, contiguity: format_24.check_24_layout, format_bitmap.check_bitmap_layout,
BitmapStreams.validate_layout), the config, and x and the bias (launch.checked_inputs:
x's shape, dtype and device against the weight's; a K axis or bias that is not
unit-stride is copied first). Lazy negation views are resolved by the dispatcher before
an op runs (PyTorch's fallback for ops without a rule of their own). The stored data
(2:4 indices, bitmap offsets, stream groups) is trusted: the containers check it when
built (`validate_data`). So are the ints that describe it (k; n, k, tile and nnz): they
must be the container's. The layout check catches most others, but not one whose
padded shape is the same (a 2:4 k within the same K_ALIGN_24 columns, a bitmap n or k
within the same tiles): the kernels then read the weight as that shape, dropping
columns or reading padding, with no error. Telling them apart means reading the data
(a host sync at every call, and none possible inside a CUDA graph), so the ops do not:
`sparse_linear`, which takes the container, is the checked entry point.

The ops are inference-only: their autograd formula raises (`_refuse_backward`, naming
the backends that have derivatives), and a forward-mode AD dual input is refused
(`check_inference_only`). Inside a torch.func transform an op gets unwrapped tensors and
cannot tell: torch.func.jvp of a bare op call gives a zero tangent (PyTorch's rule for a
custom op without a forward-mode formula), so `sparse_linear` refuses those transforms
before calling an op.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import is_functorch_wrapped_tensor, maybe_current_level

from .dispatch import TRITON_BACKENDS, Plan, WeightKey, plan_for_key, streams_block_m
from .format_24 import check_24_layout
from .format_bitmap import check_bitmap_layout
from .streams import LAYOUT_FIELDS, BitmapStreams

# The Plan fields of a Triton config, in order, after the index of its backend.
_CONFIG_FIELDS = (
    "block_m",
    "block_n",
    "block_k",
    "split_k",
    "num_warps",
    "num_stages",
    "group_m",
    "serial_reduction",
)
# The lengths of a config: deferred_config's ([] or [backend]), plan_to_config's.
_CONFIG_LENGTHS = (0, 1, 1 + len(_CONFIG_FIELDS))
# streams_config's fields, in order.
_STREAMS_CONFIG_FIELDS = ("block_n", "split", "step_bits", "num_warps", "num_stages", "serial")


def plan_to_config(plan: Plan) -> list[int]:
    """A Triton-backend Plan as the int list the ops take."""
    if plan.backend not in TRITON_BACKENDS:
        raise ValueError(f"only Triton plans go through the custom ops, got {plan.backend!r}")
    return [TRITON_BACKENDS.index(plan.backend), *(int(getattr(plan, f)) for f in _CONFIG_FIELDS)]


def deferred_config(backend: str = "auto") -> list[int]:
    """A config that lets the op choose the plan when it runs: [] = any Triton plan,
    [i] = the rules' plan for TRITON_BACKENDS[i]. Under torch.compile nothing of the
    dispatcher is traced then, and a new M never causes a recompile."""
    return [] if backend == "auto" else [TRITON_BACKENDS.index(backend)]


def resolve_config(config: list[int], m: int, key: WeightKey, device: torch.device) -> Plan:
    """The Plan a config (`plan_to_config` or `deferred_config`) stands for at M = m rows
    of the weight `key` on `device`; a ValueError for a config of neither form."""
    _check_config(config)
    if len(config) == 0:
        return plan_for_key(m, key, device, triton_only=True)
    if len(config) == 1:
        return plan_for_key(m, key, device, TRITON_BACKENDS[config[0]])
    backend, *values = config
    fields = dict(zip(_CONFIG_FIELDS, values, strict=True))
    fields["serial_reduction"] = bool(fields["serial_reduction"])
    return Plan(TRITON_BACKENDS[backend], **fields)


def _check_config(config: list[int]) -> None:
    if len(config) not in _CONFIG_LENGTHS or (
        len(config) > 0 and not 0 <= config[0] < len(TRITON_BACKENDS)
    ):
        raise ValueError(
            f"config must be [] (any Triton plan), [i] (the rules' plan for "
            f"TRITON_BACKENDS[i], 0 <= i < {len(TRITON_BACKENDS)}) or the "
            f"{_CONFIG_LENGTHS[-1]} ints of plan_to_config; got {config}"
        )


def transformed(*tensors: torch.Tensor | None) -> bool:
    """Whether any of `tensors` is a forward-mode AD dual tensor, or one that a torch.func
    transform (jvp, grad, vmap...) wrapped. Cheap where neither is active: two global
    checks."""
    if maybe_current_level() is not None and any(
        t is not None and is_functorch_wrapped_tensor(t) for t in tensors
    ):
        return True
    return fwAD._current_level >= 0 and any(
        t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors
    )


def check_inference_only(*tensors: torch.Tensor | None) -> None:
    """Raise a ValueError where a derivative (or a batch) is asked of the Triton kernels,
    which have no formula for one: where `transformed(*tensors)`. (Reverse mode records
    the ops instead, so that the backward raises: `_refuse_backward`.)"""
    if transformed(*tensors):
        what = "forward-mode AD and torch.func transforms (jvp, grad, vmap) cannot run through them"
        raise ValueError(_inference_only(what))


def _inference_only(what: str) -> str:
    """The refusal of a derivative through the Triton backends, `what` naming it."""
    return (
        f"the Triton backends are inference only: {what}; use backend='reference' (or "
        "'dense') for training and other derivatives"
    )


def _refuse_backward(op, name: str) -> None:
    """Register on the custom op `op` (`lcc_kernels::name`) an autograd formula whose
    backward raises a RuntimeError naming the fix (PyTorch's own, for an op without one,
    asks for a formula). The forward records a node as before, so that the backward, not the
    forward, raises; torch.compile traces the op as before (and, where an input
    requires grad, raises while tracing the backward, as it did)."""

    def backward(ctx, grad: torch.Tensor):
        """grad: the [M, N] gradient of y; never used."""
        what = f"a backward cannot run through them (lcc_kernels::{name} has no derivative)"
        raise RuntimeError(_inference_only(what))

    op.register_autograd(backward)


def _dtype_name(x: torch.Tensor) -> str:
    """x's dtype as the dispatch keys name it ("float16")."""
    return str(x.dtype).removeprefix("torch.")


def _bitmap_key(x: torch.Tensor, n: int, k: int, tile_n: int, tile_k: int, nnz: int):
    """WeightKey.of a bitmap weight given as the bitmap ops take it, for x [M, k]."""
    return WeightKey("bitmap", _dtype_name(x), n, k, (tile_n, tile_k), nnz / (n * k))


@torch.library.custom_op("lcc_kernels::sparse24_linear", mutates_args=())
def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    config: list[int],
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T + bias, W a 2:4 weight given by values [N, Kp/2] and
    meta [N, Kp/32] int32 (a Sparse24Weight's) of logical K = k.

    k must be the container's (weight.shape[1]): another k with the same Kp passes the
    layout check and the weight is read as K = k (see the module docstring: the data is
    not read per call). `sparse_linear` is the checked entry point."""
    from .launch import checked_inputs, run_linear, sparse24_operand

    check_inference_only(x, values, bias)
    if values.dim() != 2:
        raise ValueError(f"2:4 values must be 2-D [N, Kp/2], got shape {tuple(values.shape)}")
    check_24_layout(values, meta, (values.shape[0], k))
    x, bias = checked_inputs(x, values.shape[0], k, values, bias)
    key = WeightKey("2:4", _dtype_name(x), values.shape[0], k)
    plan = resolve_config(config, x.shape[0], key, x.device)
    return run_linear(x, sparse24_operand(values, meta, k), bias, plan)


@sparse24_linear.register_fake
def _sparse24_linear_fake(x, values, meta, k, bias, config):
    """y [M, N] for x [M, K] and values [N, Kp/2], nothing run (devices checked)."""
    _check_fake_devices("sparse24_linear", x, values=values, meta=meta, bias=bias)
    return x.new_empty((x.shape[0], values.shape[0]))


@torch.library.custom_op("lcc_kernels::bitmap_linear", mutates_args=())
def bitmap_linear(
    x: torch.Tensor,
    bits: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    n: int,
    k: int,
    tile_n: int,
    tile_k: int,
    nnz: int,
    bias: torch.Tensor | None,
    config: list[int],
) -> torch.Tensor:
    """y [M, n] = x [M, k] @ W^T + bias, W a bitmap weight given by bits/values/offsets
    (a BitmapWeight's, of shape (n, k), tile (tile_n, tile_k) and nnz kept values).

    n, k, the tile and nnz must be the container's: another n or k within the same tiles
    passes the layout check and the weight is read as that shape (see the module
    docstring: the data is not read per call). `sparse_linear` is the checked entry
    point."""
    from .launch import bitmap_operand, checked_inputs, run_linear

    check_inference_only(x, values, bias)
    check_bitmap_layout(bits, values, offsets, (n, k), (tile_n, tile_k), nnz)
    x, bias = checked_inputs(x, n, k, values, bias)
    plan = resolve_config(config, x.shape[0], _bitmap_key(x, n, k, tile_n, tile_k, nnz), x.device)
    return run_linear(x, bitmap_operand(bits, values, offsets, n, k, (tile_n, tile_k)), bias, plan)


@bitmap_linear.register_fake
def _bitmap_linear_fake(x, bits, values, offsets, n, k, tile_n, tile_k, nnz, bias, config):
    """y [M, n] for x [M, k], nothing run (devices checked)."""
    _check_fake_devices("bitmap_linear", x, bits=bits, values=values, offsets=offsets, bias=bias)
    return x.new_empty((x.shape[0], n))


@torch.library.custom_op("lcc_kernels::dense_linear", mutates_args=())
def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: list[int]
) -> torch.Tensor:
    """The dense Triton baseline: same kernels and tiling, weight [N, K] read densely."""
    from .launch import checked_inputs, dense_operand, run_linear

    check_inference_only(x, weight, bias)
    operand = dense_operand(weight)
    x, bias = checked_inputs(x, operand.n, operand.k, weight, bias)
    key = WeightKey("2:4", _dtype_name(x), operand.n, operand.k)  # tiled like the 2:4 kernels
    plan = resolve_config(config, x.shape[0], key, x.device)
    return run_linear(x, operand, bias, plan)


@dense_linear.register_fake
def _dense_linear_fake(x, weight, bias, config):
    """y [M, N] for x [M, K] and weight [N, K], nothing run (devices checked)."""
    _check_fake_devices("dense_linear", x, weight=weight, bias=bias)
    return x.new_empty((x.shape[0], weight.shape[0]))


def streams_config(plan: Plan, layout: BitmapStreams) -> list[int]:
    """The streams plan a layout was built for, as the int list `bitmap_streams_linear`
    takes (block_m is chosen per call, from M)."""
    if plan.backend != "streams" or (plan.block_n, plan.split_k) != (layout.block_n, layout.split):
        raise ValueError(
            f"{plan} is not the streams plan of a layout built for "
            f"block_n {layout.block_n}, split {layout.split}"
        )
    return [
        layout.block_n,
        layout.split,
        layout.step_bits,
        plan.num_warps,
        plan.num_stages,
        int(plan.serial_reduction),
    ]


@torch.library.custom_op("lcc_kernels::bitmap_streams_linear", mutates_args=())
def bitmap_streams_linear(
    x: torch.Tensor,
    bits: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    n: int,
    k: int,
    tile_n: int,
    tile_k: int,
    nnz: int,
    layout: list[torch.Tensor],
    layout_config: list[int],
    bias: torch.Tensor | None,
    forced: bool,
) -> torch.Tensor:
    """y [M, n] = x [M, k] @ W^T + bias, W a bitmap weight (bits/values/offsets) whose
    streams layout is also given: `layout` the tensors of a streams.BitmapStreams (values,
    steps, starts, group_base, groups, row_ids), `layout_config` from `streams_config`.
    n, k, the tile and nnz must be the container's and the layout built from it, as for
    `bitmap_linear` (not read per call; `sparse_linear` is the checked entry point).

    forced: run the streams at any M. Otherwise the op asks the dispatcher (decode_streams
    on) when it runs: the streams where it picks a streams plan, else its Triton plan on
    the bitmap, so that M stays symbolic under torch.compile."""
    from .launch import bitmap_operand, checked_inputs, run_linear, run_streams

    check_inference_only(x, values, bias)
    check_bitmap_layout(bits, values, offsets, (n, k), (tile_n, tile_k), nnz)
    x, bias = checked_inputs(x, n, k, values, bias)
    streams = _checked_streams(layout, layout_config, values, (n, k))
    m = x.shape[0]
    if not forced:
        key = _bitmap_key(x, n, k, tile_n, tile_k, nnz)
        plan = plan_for_key(m, key, x.device, triton_only=True, decode_streams=True)
        if plan.backend != "streams":
            operand = bitmap_operand(bits, values, offsets, n, k, (tile_n, tile_k))
            return run_linear(x, operand, bias, plan)
    block_n, split, _, warps, stages, serial = layout_config
    plan = Plan(
        "streams",
        streams_block_m(m),
        block_n,
        split_k=split,
        num_warps=warps,
        num_stages=stages,
        serial_reduction=bool(serial),
    )
    return run_streams(x, streams, bias, plan)


def _checked_streams(
    layout: list[torch.Tensor],
    layout_config: list[int],
    values: torch.Tensor,
    shape: tuple[int, int],
) -> BitmapStreams:
    """The BitmapStreams of the streams op's `layout` (its tensors, in LAYOUT_FIELDS
    order) and `layout_config` for a bitmap weight of `shape` whose values are `values`
    [V], its layout checked (no data read)."""
    if len(layout) != len(LAYOUT_FIELDS) or len(layout_config) != len(_STREAMS_CONFIG_FIELDS):
        raise ValueError(
            f"a streams layout is {len(LAYOUT_FIELDS)} tensors ({', '.join(LAYOUT_FIELDS)}) "
            f"and its config {len(_STREAMS_CONFIG_FIELDS)} ints (streams_config: "
            f"{', '.join(_STREAMS_CONFIG_FIELDS)}); got {len(layout)} and {len(layout_config)}"
        )
    streams = BitmapStreams(*layout, shape, *layout_config[:3])
    streams.validate_layout()
    if streams.values.dtype != values.dtype or streams.values.device != values.device:
        raise ValueError(
            f"streams values ({streams.values.dtype}, {streams.values.device}) must have the "
            f"bitmap values' dtype and device ({values.dtype}, {values.device})"
        )
    return streams


@bitmap_streams_linear.register_fake
def _bitmap_streams_linear_fake(
    x, bits, values, offsets, n, k, tile_n, tile_k, nnz, layout, layout_config, bias, forced
):
    """y [M, n] for x [M, k], nothing run (devices checked)."""
    tensors = {"bits": bits, "values": values, "offsets": offsets, "bias": bias}
    tensors |= {f"streams {name}": t for name, t in zip(LAYOUT_FIELDS, layout, strict=False)}
    _check_fake_devices("bitmap_streams_linear", x, **tensors)
    return x.new_empty((x.shape[0], n))


def _check_fake_devices(op: str, x: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Raise a ValueError unless each of `tensors` (None: absent) is on the device of x
    [M, K]. The fakes run not only under torch.compile but wherever one argument is on
    the meta device: a call mixing meta tensors with others would otherwise return
    uninitialised memory on x's device, as if computed."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"lcc_kernels.{op}: {name} on {tensor.device} but x on {x.device}")


for _name, _op in [
    ("sparse24_linear", sparse24_linear),
    ("bitmap_linear", bitmap_linear),
    ("dense_linear", dense_linear),
    ("bitmap_streams_linear", bitmap_streams_linear),
]:
    _refuse_backward(_op, _name)
