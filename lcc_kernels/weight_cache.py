"""Copies of a packed weight that some backends run on, built on first use and kept in
`weight.cache`: the dense tensor ("dense"), torch's semi-structured tensor
("semi_structured") and the bitmap value streams ("streams", streams.BitmapStreams).

A copy is never first built under CUDA-graph capture (its data would exist only once the
graph replays). The last streams layout built is also recorded under `LAST_STREAMS`, for
compiled calls, which cannot build one.

A copy is of the weight's tensors as they were when it was built: a new container
(`.to()`, `dataclasses.replace`, a pickle or deepcopy) starts with an empty cache, but
after changing the tensors of one in place (which the containers forbid),
`weight.validate()` checks them again and empties `weight.cache`.
"""

from __future__ import annotations

from . import dispatch
from .dispatch import TRITON_BACKENDS, Plan, choose_plan
from .formats import BitmapWeight, unpack
from .interop import to_torch_semi_structured
from .streams import build_streams

# weight.cache key of (plan, layout) of the last streams layout built (or prepared):
# compiled calls find their layout there without formatting its key (traced ints may be
# symbolic). Eager calls on an existing layout (with other launch settings, say) leave the
# record as it is: a compiled graph guards on the plan it read there.
LAST_STREAMS = "streams:last"


def derived_copy(weight, plan: Plan):
    """The copy of the packed [N, K] `weight` that `plan` runs on, built now if missing
    (dense [N, K] tensor, torch semi-structured tensor or streams.BitmapStreams); None
    for plans on the weight itself. The last streams layout built is remembered with its
    plan: compiled calls run on it."""
    if plan.backend == "dense":
        return _cached(weight, plan, lambda: unpack(weight).contiguous())
    if plan.backend == "semi_structured":
        return _cached(weight, plan, lambda: to_torch_semi_structured(weight, plan.semi_structured))
    if plan.backend == "streams":
        fresh = copy_missing(weight, plan)
        layout = _cached(weight, plan, lambda: build_streams(weight, plan.block_n, plan.split_k))
        if fresh:
            weight.cache[LAST_STREAMS] = (plan, layout)
        return layout
    return None


def copy_missing(weight, plan: Plan) -> bool:
    """Whether `plan` runs on a copy of the packed [N, K] weight not built yet."""
    key = _cache_key(plan)
    return key is not None and key not in weight.cache


def prepare_streams(weight: BitmapWeight, plan: Plan | None = None):
    """Build (or find) the streams layout of the bitmap [N, K] `weight` now and make it the one
    that compiled calls run on; returns it (streams.BitmapStreams). Do this before torch.compile
    or CUDA-graph capture, which cannot build it. plan: a "streams" Plan; by default the one a
    one-row call with decode_streams picks on the weight's device (the same layout serves up to
    dispatch.STREAMS_MAX_M rows)."""
    if not isinstance(weight, BitmapWeight):
        raise ValueError(
            f"streams layouts are built for bitmap weights, got {type(weight).__name__}"
        )
    check_holds_data("streams", weight.device, "the weight is")
    if plan is None:
        plan = choose_plan(1, weight, weight.dtype, weight.device, "auto", True)
        if plan.backend != "streams":  # a measured entry (or the CPU) says otherwise
            plan = choose_plan(1, weight, weight.dtype, weight.device, "streams")
    elif plan.backend != "streams":
        raise ValueError(f"prepare_streams needs a streams plan, got {plan.backend!r}")
    layout = derived_copy(weight, plan)
    # .get: a first call building this layout on another thread records it just after.
    if weight.cache.get(LAST_STREAMS, (None, None))[1] is not layout:
        weight.cache[LAST_STREAMS] = (plan, layout)
    return layout


def check_holds_data(backend: str, device, what: str = "x and the weight are") -> None:
    """Raise a ValueError where `backend`, a Triton or streams one, would run on tensors
    on the meta device (`what`: which), which hold shapes and no data."""
    if device.type == "meta" and backend in (*TRITON_BACKENDS, "streams"):
        raise ValueError(
            f"{what} on the meta device (shapes, no data): the {backend} backend runs its "
            "kernels on data; 'auto', 'reference' and 'dense' give the output's shape there"
        )


def _cache_key(plan: Plan) -> str | None:
    """Where `plan`'s derived copy of the weight is kept in weight.cache (None: no copy)."""
    if plan.backend == "dense":
        return "dense"
    if plan.backend == "semi_structured":
        return f"semi_structured:{plan.semi_structured}"
    if plan.backend == "streams":
        return f"streams:{plan.block_n}:{plan.split_k}"
    return None


def _cached(weight, plan: Plan, build):
    """The derived copy of the packed [N, K] weight (dense [N, K], torch-converted,
    streams) that `plan` runs on, built once and kept on the weight."""
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
