"""Swap a pruned model's attention projections for packed sparse modules, and back.

    report = swap_attention(model)            # in place; "auto": 2:4 where possible
    swap_attention(model, decode_streams=True)  # bitmap weights: streams at decode (GPU)
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

Works on one model instance (no global state, no patched classes). ``unswap_attention``
rebuilds ``nn.Linear`` modules whose weights equal the swapped ones bit for bit, except
that pruned positions come back as +0.0 (a pruned -0.0 loses its sign), and whose biases
are the stored ones.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import lcc_kernels
from lcc_kernels.dispatch import BACKENDS
from lcc_kernels.formats import check_bitmap_tile
from restorelcc.errors import RestoreLCCError
from restorelcc.hf import FORMATS, MIN_SPARSITY
from restorelcc.hf.attention import (
    PACKED_GATE_UP,
    PACKED_QKV,
    PackedLinear,
    PackedProjections,
    ProjectionView,
    SparseLinear,
)
from restorelcc.hf.families import Family, decoder_layers, family_of
from restorelcc.io import format_table


class SwapError(RestoreLCCError, ValueError):
    """A weight or layer that cannot be swapped as asked (names layer and matrix)."""


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
    bytes_streams: int = 0  # the streams layout of decode_streams, if built (on a GPU)


@dataclass
class SwapReport:
    """What ``swap_attention`` did; ``to_dict()`` is its JSON form."""

    format: str
    backend: str
    groups: list[SwappedGroup] = field(default_factory=list)
    decode_streams: bool = False
    mlp: bool = False

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
    def swapped_layers(self) -> list[int]:
        return sorted({g.layer for g in self.groups if g.format != "dense"})

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "backend": self.backend,
            "decode_streams": self.decode_streams,
            "mlp": self.mlp,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_streams": self.bytes_streams,
            "groups": [asdict(g) for g in self.groups],
        }

    @property
    def bytes_streams(self) -> int:
        return sum(g.bytes_streams for g in self.groups)

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


@dataclass(frozen=True)
class _Group:
    """Projections of one block packed as one module: several side by side (one launch,
    a ``PackedProjections`` on the owner under ``packed``, a view per projection) or one
    alone (a ``SparseLinear`` in its place)."""

    name: str  # "qkv", "o_proj", "gate_up", "down_proj"
    owner: str  # path of the module holding the projections, in the block
    projections: tuple[str, ...]  # their attribute names on the owner
    packed: str | None = None  # attribute of the owner's PackedProjections, if several


def _groups(family: Family, mlp: bool) -> list[_Group]:
    """The groups a swap packs in each block: q/k/v and o_proj; with ``mlp`` also gate/up
    (like q/k/v: two projections of the same input, one launch) and down_proj."""
    attention = (family.q_proj, family.k_proj, family.v_proj)
    groups = [
        _Group("qkv", family.attention, attention, PACKED_QKV),
        _Group("o_proj", family.attention, (family.o_proj,)),
    ]
    if mlp:
        groups += [
            _Group("gate_up", family.mlp, (family.gate_proj, family.up_proj), PACKED_GATE_UP),
            _Group("down_proj", family.mlp, (family.down_proj,)),
        ]
    return groups


@dataclass
class _Plan:
    """One group of one layer to pack: its matrices and the format chosen."""

    layer: int
    group: _Group
    linears: tuple[nn.Linear, ...]
    format: str  # "2:4", "bitmap" or "dense"


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
) -> SwapReport:
    """Replace q/k/v and o_proj (with ``mlp``, also gate/up/down_proj) of the chosen
    decoder layers (default all) in place.

    format: "auto", "2:4" or "bitmap" (rules in the module docstring). backend: "auto" or
    one of ``lcc_kernels.dispatch.BACKENDS``, passed to every ``sparse_linear`` call.
    decode_streams: bitmap groups run their decode calls (up to
    ``lcc_kernels.dispatch.STREAMS_MAX_M`` rows) on a streams layout of their weight,
    built when they are on a GPU (at the swap, or when moved there). It costs ~1.1x the
    bitmap's bytes more (not counted in the report's bytes) for the faster decode path
    (``lcc_kernels.streams``); prefill still runs on the bitmap tiles.
    min_sparsity: the fraction of zeros from which a matrix counts as pruned (0 packs any
    matrix with a zero). Raises ``SwapError`` for weights that do not fit and projections
    that are not plain ``nn.Linear`` modules (peft-wrapped, with hooks, offloaded to the
    meta device), ``ValueError`` for bad arguments, ``UnsupportedModelError`` for unknown
    families (and for a peft ``PeftModel``: merge or unwrap it first).
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
    chosen = _check_layers(layers, len(blocks))
    plans = [
        plan
        for i in chosen
        for plan in _plan_layer(family, blocks[i], i, format, min_sparsity, mlp)
    ]
    report = SwapReport(format, backend, decode_streams=decode_streams, mlp=mlp)
    installed: set[int] = set()
    plans.reverse()
    try:
        while plans:  # popped, so each replaced nn.Linear is freed as the swap goes
            plan = plans.pop()
            result, module = _build_group(plan, backend, bitmap_tile, decode_streams)
            if module is not None:
                _install_group(blocks[plan.layer], plan.group, module)
                installed.add(plan.layer)
            report.groups.append(result)
    except BaseException:
        for i in sorted(installed):  # a failure the checks could not foresee: put back
            _unswap_block(family, blocks[i])
        raise
    return report


def unswap_attention(model: nn.Module) -> list[int]:
    """Put back ``nn.Linear`` modules for every swapped projection (q/k/v/o and, if they
    were swapped, the MLP's) in every swapped layer; returns those layers. Raises
    ``SwapError``, changing nothing, if a swapped module has hooks (they would be dropped)."""
    family = family_of(model)
    blocks = decoder_layers(model)
    for index, block in enumerate(blocks):
        for group in _groups(family, mlp=True):
            owner = block.get_submodule(group.owner)
            for name in (*group.projections, group.packed):
                module = owner._modules.get(name) if name else None
                if isinstance(module, (PackedLinear, ProjectionView)):
                    _check_no_hooks(module, f"layer {index} {group.owner}.{name}")
    restored = [index for index, block in enumerate(blocks) if _unswap_block(family, block)]
    if not restored:
        raise ValueError(f"{type(model).__name__} has no swapped attention layer to unswap")
    return restored


def _unswap_block(family: Family, block: nn.Module) -> bool:
    """Put back ``nn.Linear`` modules for the swapped groups of one decoder block; returns
    whether there were any."""
    changed = False
    for group in _groups(family, mlp=True):
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


# ---------------------------------------------------------------------------- checks


def _check_layers(layers: Iterable[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
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


def _plan_layer(
    family: Family, block: nn.Module, layer: int, format: str, min_sparsity: float, mlp: bool
) -> list[_Plan]:
    every = _groups(family, mlp=True)
    for group in every:  # also what this call leaves alone: a second swap would mix them
        owner = block.get_submodule(group.owner)
        modules = [getattr(owner, name, None) for name in group.projections]
        if (group.packed is not None and group.packed in owner._modules) or any(
            isinstance(m, (ProjectionView, PackedLinear)) for m in modules
        ):
            raise SwapError(f"layer {layer} is already swapped; unswap_attention(model) first")
    plans = []
    for group in _groups(family, mlp):
        owner = block.get_submodule(group.owner)
        linears = []
        for name in group.projections:
            module = getattr(owner, name, None)
            _check_replaceable(module, f"layer {layer} {group.owner}.{name}")
            linears.append(module)
        plans.append(_plan_group(layer, group, tuple(linears), format, min_sparsity))
    return plans


def _check_replaceable(module: nn.Module | None, what: str) -> None:
    """Raise ``SwapError`` unless ``module`` is a plain ``nn.Linear`` without hooks."""
    if module is None:
        raise SwapError(f"{what} is missing")
    if not isinstance(module, nn.Linear):
        cls = type(module)
        hint = ""
        if cls.__module__.split(".")[0] == "peft":
            hint = "; a peft adapter wraps it: merge it first with model.merge_and_unload()"
        raise SwapError(f"{what} is {cls.__module__}.{cls.__qualname__}, not an nn.Linear{hint}")
    _check_no_hooks(module, what)


HOOKS = {
    "_forward_pre_hooks": "forward pre-hooks",
    "_forward_hooks": "forward hooks",
    "_backward_pre_hooks": "backward pre-hooks",
    "_backward_hooks": "backward hooks",
}


def _check_no_hooks(module: nn.Module, what: str) -> None:
    """Raise ``SwapError`` if ``module`` has hooks: replacing it would silently drop them."""
    found = [kind for attribute, kind in HOOKS.items() if getattr(module, attribute, None)]
    if found:
        raise SwapError(
            f"{what} has {' and '.join(found)}, which would stop firing once the module is "
            "replaced: remove them (handle.remove()) first, and register them again on the "
            "new module afterwards if needed"
        )


def _plan_group(
    layer: int,
    group: _Group,
    linears: tuple[nn.Linear, ...],
    format: str,
    min_sparsity: float,
) -> _Plan:
    weights = [m.weight.detach() for m in linears]
    where = [f"layer {layer} {group.owner}.{n}" for n in group.projections]
    for w, what in zip(weights, where, strict=True):
        if w.device.type == "meta":
            raise SwapError(
                f"{what} has its weight on the meta device: the model's weights are "
                "offloaded (device_map with CPU or disk offload); load the whole model onto "
                "one device before swapping"
            )
        if w.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise SwapError(f"{what} has dtype {w.dtype}; packed weights are fp16/bf16/fp32")
    sparsities = [float((w == 0).sum()) / w.numel() for w in weights]
    dense = [s == 0 or s < min_sparsity for s in sparsities]
    if all(dense):
        return _Plan(layer, group, linears, "dense")
    if any(dense):
        raise SwapError(
            f"{where[dense.index(True)]} is not pruned ({sparsities[dense.index(True)]:.2%} "
            f"zeros, below min_sparsity {min_sparsity:.0%}) while "
            f"{where[dense.index(False)]} is: {'/'.join(group.projections)} are packed "
            "together, so either all or none of them must be sparse (prune it, or leave the "
            "layer out with layers=)"
        )
    if len({w.dtype for w in weights}) > 1:
        raise SwapError(
            f"layer {layer} {group.name} matrices have different dtypes "
            f"{[str(w.dtype) for w in weights]}"
        )
    if format == "bitmap":
        return _Plan(layer, group, linears, "bitmap")
    problems = [(what, _not_24(w)) for w, what in zip(weights, where, strict=True)]
    problems = [(what, why) for what, why in problems if why]
    if not problems:
        return _Plan(layer, group, linears, "2:4")
    if format == "2:4":
        what, why = problems[0]
        raise SwapError(f"{what} does not fit the 2:4 format: {why}")
    return _Plan(layer, group, linears, "bitmap")


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


# ---------------------------------------------------------------------------- swap


def _build_group(
    plan: _Plan,
    backend: str,
    tile: tuple[int, int],
    decode_streams: bool,
) -> tuple[SwappedGroup, PackedLinear | None]:
    """The group's report row and its packed module (None for a "dense" group), built
    without touching the model."""
    weights = [m.weight.detach() for m in plan.linears]
    shape = (sum(w.shape[0] for w in weights), weights[0].shape[1])
    nonzeros = sum(int((w != 0).sum()) for w in weights)
    before = sum(w.numel() * w.element_size() for w in weights)
    group = plan.group
    density = nonzeros / (shape[0] * shape[1])
    result = SwappedGroup(plan.layer, group.name, plan.format, shape, density, before, before)
    if plan.format == "dense":
        return result, None
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


def _install_group(block: nn.Module, group: _Group, module: PackedLinear) -> None:
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
