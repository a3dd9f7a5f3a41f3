"""Swap a pruned model's attention projections for packed sparse modules, and back.

    report = swap_attention(model)            # in place; "auto": 2:4 where possible
    swap_attention(model, decode_streams=True)  # bitmap weights: streams at decode (GPU)
    swap_attention(model, dry_run=True)       # its report and errors; nothing packed
    print(report.table())                     # per layer: format, density, bytes
    unswap_attention(model)                   # the original nn.Linear modules again

Per decoder block, two groups are packed: q/k/v together (one ``PackedProjections``, one
launch) and ``o_proj`` (one ``SparseLinear``, bias in the fp32 epilogue). With
``mlp=True`` the MLP is swapped too: ``gate_proj`` and ``up_proj`` together, as q/k/v
(both read the same input), and ``down_proj`` alone. In a Llama-shaped block the MLP
holds about four fifths of the weight bytes, so a decode step's end-to-end speed-up
depends mostly on it. Rules, per group:

- A matrix counts as pruned when at least ``min_sparsity`` (default 10%) of it is zero.
  Real checkpoints hold a few exact zeros (SmolLM2: ~0.05%); packing such a matrix would
  cost more bytes and time than leaving it. A group whose matrices are all unpruned is
  left as ``nn.Linear`` and reported with format ``"dense"``, whatever the requested
  format: a partly pruned model swaps what is pruned. A q/k/v group that mixes pruned
  and unpruned matrices is refused (packing the unpruned one would cost more bytes than
  leaving it, and splitting the group would cost the single launch): prune it, or leave
  the layer out with ``layers``.
- ``"2:4"``: every matrix must have at most 2 nonzeros in each group of 4 along K, else a
  ``SwapError`` names the layer, matrix, row and group. ``"bitmap"``: any pattern.
  ``"auto"``: 2:4 if every matrix of the group is 2:4, bitmap otherwise.
- Everything is checked before anything is replaced, and a failure while packing puts back
  the groups already replaced, so a refused or failed call leaves the model as it was (a
  -0.0 weight comes back as +0.0, as with ``unswap_attention``). Groups are packed one at
  a time, so each replaced ``nn.Linear`` is freed as the swap goes.
- Hooks (forward, forward-pre, backward) on a projection would silently stop firing once
  it is replaced, so a projection with hooks is refused (``SwapError`` naming it), and
  ``unswap_attention`` likewise refuses swapped modules with hooks. Remove them first and
  register them again on the new modules (a ``ProjectionView`` runs hooks like any module).
- ``dry_run=True`` runs the same checks (swap_plan.py: same errors) and returns the
  report of the swap, without packing a weight or changing the model; its packed bytes
  are counted from the formats' layouts and equal the real swap's. Only the streams
  layouts of ``decode_streams`` on a GPU are not counted: their ``bytes_streams`` is None.

Works on one model instance (no global state, no patched classes). ``unswap_attention``
rebuilds ``nn.Linear`` modules whose weights equal the swapped ones bit for bit, except
that pruned positions come back as +0.0 (a pruned -0.0 loses its sign), and whose biases
are the stored ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import lcc_kernels
from lcc_kernels.dispatch import BACKENDS, check_backend_format
from lcc_kernels.formats import check_bitmap_tile
from restorelcc.hf import FORMATS, MIN_SPARSITY
from restorelcc.hf.attention import (
    PackedLinear,
    PackedProjections,
    ProjectionView,
    SparseLinear,
    builds_streams,
)
from restorelcc.hf.families import Family, decoder_layers, family_of
from restorelcc.hf.swap_plan import (
    GroupPlan,
    ProjectionGroup,
    SwapError,
    check_layers,
    check_no_hooks,
    plan_layer,
    projection_groups,
)
from restorelcc.io import format_table

__all__ = ["SwapError", "SwapReport", "SwappedGroup", "swap_attention", "unswap_attention"]


@dataclass
class SwappedGroup:
    """One packed (or left dense) group of one layer; bytes are of the weights only."""

    layer: int
    group: str  # "qkv", "o_proj", or with mlp=True "gate_up", "down_proj"
    format: str  # "2:4", "bitmap" or "dense" (left as nn.Linear)
    shape: tuple[int, int]  # [N, K] of the (stacked) weight
    density: float  # nonzeros / positions
    bytes_before: int
    bytes_after: int
    # the streams layout of decode_streams, if built (on a GPU); None: one would be
    # built, but a dry run does not count it
    bytes_streams: int | None = 0


@dataclass
class SwapReport:
    """What ``swap_attention`` did (with ``dry_run``, would do); ``to_dict()`` is its JSON
    form."""

    format: str
    backend: str
    groups: list[SwappedGroup] = field(default_factory=list)
    decode_streams: bool = False
    mlp: bool = False
    dry_run: bool = False

    @property
    def bytes_before(self) -> int:
        return sum(g.bytes_before for g in self.groups)

    @property
    def bytes_after(self) -> int:
        return sum(g.bytes_after for g in self.groups)

    @property
    def scope(self) -> str:
        """What the swap covered: "attention", or "attention and MLP"."""
        return "attention and MLP" if self.mlp else "attention"

    @property
    def packed_formats(self) -> list[str]:
        """The formats the groups were packed in, sorted; not "dense" (groups left as
        ``nn.Linear``)."""
        return sorted({g.format for g in self.groups if g.format != "dense"})

    @property
    def swapped_layers(self) -> list[int]:
        return sorted({g.layer for g in self.groups if g.format != "dense"})

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "backend": self.backend,
            "decode_streams": self.decode_streams,
            "mlp": self.mlp,
            "dry_run": self.dry_run,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_streams": self.bytes_streams,
            "groups": [asdict(g) for g in self.groups],
        }

    @property
    def bytes_streams(self) -> int | None:
        """None if a group's is not counted (a dry run)."""
        counts = [g.bytes_streams for g in self.groups]
        return None if None in counts else sum(counts)

    def table(self) -> str:
        rows = [dict(asdict(g), shape="x".join(map(str, g.shape))) for g in self.groups]
        rows.append(
            {
                "layer": "all",
                "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
                "bytes_streams": self.bytes_streams,
            }
        )
        columns = ["layer", "group", "format", "shape", "density", "bytes_before", "bytes_after"]
        return format_table(rows, columns + ["bytes_streams"] * self.decode_streams)


def swap_attention(
    model: nn.Module,
    format: str = "auto",
    layers: Iterable[int] | None = None,
    backend: str = "auto",
    *,
    bitmap_tile: tuple[int, int] = lcc_kernels.DEFAULT_BITMAP_TILE,
    min_sparsity: float = MIN_SPARSITY,
    decode_streams: bool = False,
    mlp: bool = False,
    dry_run: bool = False,
) -> SwapReport:
    """Replace q/k/v and o_proj (with ``mlp``, also gate/up/down_proj) of the chosen
    decoder layers (default all) in place; with ``dry_run``, check and report as the swap
    would, packing nothing and leaving the model as it is.

    format: "auto", "2:4" or "bitmap" (rules in the module docstring). backend: "auto" or
    one of ``lcc_kernels.dispatch.BACKENDS``, passed to every ``sparse_linear`` call.
    decode_streams: bitmap groups run their decode calls (up to
    ``lcc_kernels.dispatch.STREAMS_MAX_M`` rows) on a streams layout of their weight,
    built when they are on a GPU (at the swap, or when moved there). It costs ~1.1x the
    bitmap's bytes more (not counted in the report's bytes) for the faster decode path
    (``lcc_kernels.streams``); prefill still runs on the bitmap tiles.
    min_sparsity: the fraction of zeros from which a matrix counts as pruned (0 packs any
    matrix with a zero). Raises ``SwapError`` for weights that do not fit (their format,
    or for semi_structured a device other than CUDA, that the forced backend cannot run
    included) and projections that are not plain ``nn.Linear`` modules (peft-wrapped,
    with hooks, offloaded to the meta device), ``ValueError`` for bad arguments,
    ``UnsupportedModelError`` for unknown families (and for a peft ``PeftModel``: merge or
    unwrap it first).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not 0 <= min_sparsity < 1:
        raise ValueError(f"min_sparsity must be in [0, 1), got {min_sparsity}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    check_bitmap_tile(bitmap_tile)
    family = family_of(model)
    blocks = decoder_layers(model)
    chosen = check_layers(layers, len(blocks))
    plans = [
        plan
        for i in chosen
        for plan in plan_layer(family, blocks[i], i, format, min_sparsity, mlp, bitmap_tile)
    ]
    _check_backend([plan for plan in plans if plan.format != "dense"], backend)
    report = SwapReport(format, backend, decode_streams=decode_streams, mlp=mlp, dry_run=dry_run)
    if dry_run:
        report.groups = [_planned_row(plan, decode_streams) for plan in plans]
        return report
    installed: set[int] = set()
    plans.reverse()
    try:
        while plans:  # popped, so each replaced nn.Linear is freed as the swap goes
            plan = plans.pop()
            result, module = _build_group(plan, backend, bitmap_tile, decode_streams)
            if module is not None:
                install_group(blocks[plan.layer], plan.group, module)
                installed.add(plan.layer)
            report.groups.append(result)
    except BaseException:
        for i in sorted(installed):  # a failure the checks could not foresee: put back
            _unswap_block(family, blocks[i])
        raise
    return report


def unswap_attention(model: nn.Module) -> list[int]:
    """Put back ``nn.Linear`` modules for every swapped projection (q/k/v/o and, if they
    were swapped, the MLP's) in every swapped layer; returns those layers. Their weights
    and biases get back the ``requires_grad`` flags captured at the swap: a
    ``requires_grad_`` call on the swapped model since does not reach them. Raises
    ``SwapError``, changing nothing, if a swapped module has hooks (they would be
    dropped)."""
    family = family_of(model)
    blocks = decoder_layers(model)
    for index, block in enumerate(blocks):
        for group in projection_groups(family, mlp=True):
            owner = block.get_submodule(group.owner)
            for name in (*group.projections, group.packed):
                module = owner._modules.get(name) if name else None
                if isinstance(module, (PackedLinear, ProjectionView)):
                    check_no_hooks(module, f"layer {index} {group.owner}.{name}")
    restored = [index for index, block in enumerate(blocks) if _unswap_block(family, block)]
    if not restored:
        raise SwapError(f"{type(model).__name__} has no swapped attention layer to unswap")
    return restored


def _unswap_block(family: Family, block: nn.Module) -> bool:
    """Put back ``nn.Linear`` modules for the swapped groups of one decoder block; returns
    whether there were any."""
    changed = False
    for group in projection_groups(family, mlp=True):
        owner = block.get_submodule(group.owner)
        if group.packed is None:
            name = group.projections[0]
            module = getattr(owner, name, None)
            if isinstance(module, SparseLinear):
                weight = lcc_kernels.unpack(module.packed)
                setattr(owner, name, _linear(weight, module.bias, _requires_grad(module, 0)))
                changed = True
            continue
        module = owner._modules.get(group.packed)
        if not isinstance(module, PackedProjections):
            continue
        sizes = module.packed.split_sizes
        weights = torch.split(lcc_kernels.unpack(module.packed), sizes)
        biases = torch.split(module.bias, sizes) if module.bias is not None else None
        for i, name in enumerate(group.projections):
            bias = biases[i] if biases is not None and module.has_bias[i] else None
            setattr(owner, name, _linear(weights[i], bias, _requires_grad(module, i)))
        del owner._modules[group.packed]
        changed = True
    return changed


# ---------------------------------------------------------------------------- swap


def _planned_row(plan: GroupPlan, decode_streams: bool) -> SwappedGroup:
    """The report row of a group as planned, before (or without) packing it: the streams
    layout that decode_streams would build on a GPU is not counted (None)."""
    device = plan.linears[0].weight.device
    streams = None if builds_streams(plan.format, device, decode_streams) else 0
    return SwappedGroup(
        plan.layer,
        plan.group.name,
        plan.format,
        plan.shape,
        plan.density,
        plan.bytes_before,
        plan.bytes_after,
        streams,
    )


def _check_backend(plans: list[GroupPlan], backend: str) -> None:
    """``SwapError`` where the forced ``backend`` cannot run a group planned for packing:
    its format first, then (semi_structured runs on CUDA only) its weights' device."""
    for plan in plans:
        try:
            check_backend_format(backend, plan.format)
        except ValueError as error:
            raise SwapError(
                f"layer {plan.layer} {plan.group.name} packs as {plan.format}: {error} "
                "(pass backend='auto', or a format= this backend runs)"
            ) from error
    for plan in plans:
        device = plan.linears[0].weight.device
        if backend == "semi_structured" and device.type != "cuda":
            raise SwapError(
                f"layer {plan.layer} {plan.group.name}: the semi_structured backend runs on "
                f"CUDA only, and its weights are on {device} (move the model to a GPU before "
                "the swap, or pass backend='auto')"
            )


def _build_group(
    plan: GroupPlan,
    backend: str,
    tile: tuple[int, int],
    decode_streams: bool,
) -> tuple[SwappedGroup, PackedLinear | None]:
    """The group's report row and its packed module (None for a "dense" group), built
    without touching the model."""
    result = _planned_row(plan, decode_streams)
    if plan.format == "dense":
        return result, None
    group = plan.group
    weights = [m.weight.detach() for m in plan.linears]
    packed = lcc_kernels.pack_many(weights, plan.format, tile=tile)
    if group.packed is None:
        module = SparseLinear(packed, plan.linears[0].bias, backend, decode_streams=decode_streams)
    else:
        has_bias = tuple(m.bias is not None for m in plan.linears)
        bias = None
        if any(has_bias):
            bias_dtype = next(m.bias.dtype for m in plan.linears if m.bias is not None)
            bias = torch.cat(
                [
                    m.bias.detach()
                    if m.bias is not None
                    else torch.zeros(m.out_features, dtype=bias_dtype, device=m.weight.device)
                    for m in plan.linears
                ]
            )
        module = PackedProjections(packed, bias, has_bias, backend, decode_streams=decode_streams)
    # unswap gives back Parameters as trainable (or frozen) as the ones replaced
    module.linear_requires_grad = tuple(
        (m.weight.requires_grad, m.bias is not None and m.bias.requires_grad) for m in plan.linears
    )
    result.bytes_after = packed.nbytes
    result.bytes_streams = module.streams_bytes
    return result, module


def install_group(block: nn.Module, group: ProjectionGroup, module: PackedLinear) -> None:
    """Put ``module`` (from ``_build_group``) in place of the group's ``nn.Linear``s."""
    owner = block.get_submodule(group.owner)
    if group.packed is None:
        setattr(owner, group.projections[0], module)
        return
    owner.add_module(group.packed, module)
    for index, name in enumerate(group.projections):
        setattr(owner, name, ProjectionView(module, index, name))


def _requires_grad(module: nn.Module, index: int) -> tuple[bool, bool]:
    """Whether projection ``index``'s weight and bias required grad before the swap."""
    flags = getattr(module, "linear_requires_grad", None)
    return flags[index] if flags is not None else (True, True)


def _linear(
    weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: tuple[bool, bool]
) -> nn.Linear:
    """An ``nn.Linear`` holding exactly ``weight`` [out, in] and ``bias`` [out] (copies),
    with ``requires_grad`` (weight, bias)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad[0])
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone(), requires_grad[1])
    return linear
