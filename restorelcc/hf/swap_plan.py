"""What ``swap_attention`` will do to each decoder block, worked out without changing it.

``plan_layer`` checks a block's projections (plain ``nn.Linear``, no hooks, not already
swapped, weights with values in fp16/bf16/fp32) and their weights (pruned or not, 2:4 or
not, rules in swap.py's docstring), and gives per group a ``GroupPlan``: its format and
its bytes before and after packing. ``swap_attention`` packs what was planned;
``swap_attention(..., dry_run=True)`` reports it without packing.

The packed bytes are ``lcc_kernels.packed_nbytes`` of the group's weights: the ``nbytes``
that ``pack_many`` would give, counted from the weights without packing (the byte rules
live in lcc_kernels beside each format's layout).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrize, prune

from lcc_kernels.formats import packed_nbytes
from restorelcc.errors import RestoreLCCError
from restorelcc.hf.attention import PACKED_GATE_UP, PACKED_QKV, PackedLinear, ProjectionView
from restorelcc.hf.families import Family


class SwapError(RestoreLCCError, ValueError):
    """A weight or layer that cannot be swapped as asked (names layer and matrix)."""


@dataclass(frozen=True)
class ProjectionGroup:
    """Projections of one block packed as one module: several side by side (one launch,
    a ``PackedProjections`` on the owner under ``packed``, a view per projection) or one
    alone (a ``SparseLinear`` in its place)."""

    name: str  # "qkv", "o_proj", "gate_up", "down_proj"
    owner: str  # path of the module holding the projections, in the block
    projections: tuple[str, ...]  # their attribute names on the owner
    packed: str | None = None  # attribute of the owner's PackedProjections, if several


def projection_groups(family: Family, mlp: bool) -> list[ProjectionGroup]:
    """The groups a swap packs in each block: q/k/v and o_proj; with ``mlp`` also gate/up
    (like q/k/v: two projections of the same input, one launch) and down_proj."""
    attention = (family.q_proj, family.k_proj, family.v_proj)
    groups = [
        ProjectionGroup("qkv", family.attention, attention, PACKED_QKV),
        ProjectionGroup("o_proj", family.attention, (family.o_proj,)),
    ]
    if mlp:
        groups += [
            ProjectionGroup(
                "gate_up", family.mlp, (family.gate_proj, family.up_proj), PACKED_GATE_UP
            ),
            ProjectionGroup("down_proj", family.mlp, (family.down_proj,)),
        ]
    return groups


@dataclass
class GroupPlan:
    """One group of one layer as the swap will leave it; bytes are of the weights only."""

    layer: int
    group: ProjectionGroup
    linears: tuple[nn.Linear, ...]
    format: str  # "2:4", "bitmap" or "dense" (left as nn.Linear)
    shape: tuple[int, int]  # [N, K] of the (stacked) weight
    nonzeros: int
    bytes_before: int
    bytes_after: int  # packed, by the format's layout (bytes_before for "dense")

    @property
    def density(self) -> float:
        return self.nonzeros / (self.shape[0] * self.shape[1])


def check_layers(layers: Iterable[int] | None, count: int) -> list[int]:
    """The chosen decoder layer indices, sorted (all ``count`` of them for None)."""
    if layers is None:
        return list(range(count))
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise ValueError(
            f"layers must be an iterable of decoder layer indices (e.g. [0, 1]), got "
            f"{type(layers).__name__} {layers!r}"
        )
    chosen = []
    for i in layers:
        try:  # any integer type (numpy's, a 0-d tensor's item) but bool
            index = None if isinstance(i, bool) else operator.index(i)
        except TypeError:
            index = None
        if index is None or not 0 <= index < count:
            raise ValueError(f"layer {i!r} is not a decoder layer index in 0..{count - 1}")
        chosen.append(index)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"layers {chosen} name a layer twice")
    return sorted(chosen)


def plan_layer(
    family: Family,
    block: nn.Module,
    layer: int,
    format: str,
    min_sparsity: float,
    mlp: bool,
    tile: tuple[int, int],
) -> list[GroupPlan]:
    """The plans of one block's groups; raises ``SwapError`` for what cannot be swapped.
    Reads the block, changes nothing."""
    # every group, also those this call leaves alone: a second swap would mix with them
    for group in projection_groups(family, mlp=True):
        owner = block.get_submodule(group.owner)
        modules = [getattr(owner, name, None) for name in group.projections]
        if (group.packed is not None and group.packed in owner._modules) or any(
            isinstance(m, (ProjectionView, PackedLinear)) for m in modules
        ):
            raise SwapError(f"layer {layer} is already swapped; unswap_attention(model) first")
    plans = []
    for group in projection_groups(family, mlp):
        owner = block.get_submodule(group.owner)
        linears = []
        for name in group.projections:
            module = getattr(owner, name, None)
            _check_replaceable(module, f"layer {layer} {group.owner}.{name}")
            linears.append(module)
        plans.append(_plan_group(layer, group, tuple(linears), format, min_sparsity, tile))
    return plans


def _check_replaceable(module: nn.Module | None, what: str) -> None:
    """Raise ``SwapError`` unless ``module`` is a plain ``nn.Linear`` without hooks."""
    if module is None:
        raise SwapError(f"{what} is missing")
    if parametrize.is_parametrized(module):
        raise SwapError(
            f"{what} has parametrizations ({', '.join(module.parametrizations)}), which the "
            "packed module would drop: remove them first (torch.nn.utils.parametrize."
            "remove_parametrizations, or a torch.ao sparsifier's squash_mask())"
        )
    # a subclass may compute something else (fake quantization, scaling): refused, not lost
    if type(module) not in (nn.Linear, NonDynamicallyQuantizableLinear):
        cls = type(module)
        hint = ""
        if cls.__module__.split(".")[0] == "peft":
            hint = "; a peft adapter wraps it: merge it first with model.merge_and_unload()"
        elif isinstance(module, nn.Linear):
            hint = " (a subclass, whose forward the packed module would not keep)"
        raise SwapError(
            f"{what} is {cls.__module__}.{cls.__qualname__}, not a plain nn.Linear{hint}"
        )
    check_no_hooks(module, what)


HOOKS = {
    "_forward_pre_hooks": "forward pre-hooks",
    "_forward_hooks": "forward hooks",
    "_backward_pre_hooks": "backward pre-hooks",
    "_backward_hooks": "backward hooks",
}


def hook_kinds(module: nn.Module) -> list[str]:
    """The kinds of hooks ``module`` holds (``HOOKS``' names), none: []."""
    return [kind for attribute, kind in HOOKS.items() if getattr(module, attribute, None)]


def check_no_hooks(module: nn.Module, what: str) -> None:
    """Raise ``SwapError`` if ``module`` has hooks: replacing it would silently drop them."""
    found = hook_kinds(module)
    pruning = [
        hook
        for hook in getattr(module, "_forward_pre_hooks", {}).values()
        if isinstance(hook, prune.BasePruningMethod)
    ]
    if pruning:
        name = pruning[0]._tensor_name
        raise SwapError(
            f"{what} is pruned with torch.nn.utils.prune (its mask is applied by a forward "
            f"pre-hook): make the pruning permanent first with "
            f"torch.nn.utils.prune.remove(module, {name!r})"
        )
    if found:
        raise SwapError(
            f"{what} has {' and '.join(found)}, which would stop firing once the module is "
            "replaced: remove them (handle.remove()) first, and register them again on the "
            "new module afterwards if needed"
        )


def _check_weights(weights: list[torch.Tensor], where: list[str]) -> None:
    """Raise ``SwapError`` for a weight without values to pack or of another dtype."""
    for w, what in zip(weights, where, strict=True):
        if w.device.type == "meta":
            raise SwapError(
                f"{what} has its weight on the meta device: the model's weights are "
                "offloaded (device_map with CPU or disk offload); load the whole model onto "
                "one device before swapping"
            )
        if w.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise SwapError(f"{what} has dtype {w.dtype}; packed weights are fp16/bf16/fp32")
        if w.numel() == 0:
            raise SwapError(f"{what} has an empty weight of shape {tuple(w.shape)}")


def _plan_group(
    layer: int,
    group: ProjectionGroup,
    linears: tuple[nn.Linear, ...],
    format: str,
    min_sparsity: float,
    tile: tuple[int, int],
) -> GroupPlan:
    weights = [m.weight.detach() for m in linears]
    where = [f"layer {layer} {group.owner}.{n}" for n in group.projections]
    _check_weights(weights, where)
    nonzeros = [int((w != 0).sum()) for w in weights]  # NaN counts, -0.0 does not
    sparsities = [(w.numel() - nz) / w.numel() for w, nz in zip(weights, nonzeros, strict=True)]
    before = sum(w.numel() * w.element_size() for w in weights)
    shape = (sum(w.shape[0] for w in weights), weights[0].shape[1])

    def planned(chosen: str, after: int) -> GroupPlan:
        return GroupPlan(layer, group, linears, chosen, shape, sum(nonzeros), before, after)

    dense = [s == 0 or s < min_sparsity for s in sparsities]
    if all(dense):
        return planned("dense", before)
    if any(dense):
        raise SwapError(
            f"{where[dense.index(True)]} is not pruned ({sparsities[dense.index(True)]:.2%} "
            f"zeros, below min_sparsity {min_sparsity:.0%}) while "
            f"{where[dense.index(False)]} is: {'/'.join(group.projections)} are packed "
            "together, so either all or none of them must be sparse (prune it, or leave the "
            "layer out with layers=)"
        )
    for kind in ("dtype", "device"):
        found = [str(getattr(w, kind)) for w in weights]
        if len(set(found)) > 1:
            raise SwapError(
                f"layer {layer} {group.name} matrices have different {kind}s {found}; "
                "they are packed as one"
            )
    chosen = "bitmap"
    if format != "bitmap":
        problems = [(what, _not_24(w)) for w, what in zip(weights, where, strict=True)]
        problems = [(what, why) for what, why in problems if why]
        if not problems:
            chosen = "2:4"
        elif format == "2:4":
            what, why = problems[0]
            raise SwapError(f"{what} does not fit the 2:4 format: {why}")
    try:  # what pack_many would refuse here: a bitmap beyond its int32 tile offsets
        after = packed_nbytes(weights, chosen, tile=tile)
    except ValueError as error:
        raise SwapError(
            f"layer {layer} {group.name} cannot be packed as {chosen}: {error}"
        ) from error
    return planned(chosen, after)


def _not_24(weight: torch.Tensor) -> str | None:
    """Why ``weight`` [N, K] is not 2:4 sparse, or None if it is."""
    n, k = weight.shape
    if k % 4:
        return f"K = {k} is not a multiple of 4"
    counts = (weight.reshape(n, k // 4, 4) != 0).sum(-1)
    bad = counts > 2
    if not bool(bad.any()):
        return None
    row, group = bad.nonzero()[0].tolist()
    return (
        f"row {row}, columns {4 * group}..{4 * group + 3} hold {int(counts[row, group])} "
        f"nonzeros ({int(bad.sum())} groups of 4 have more than 2)"
    )
