"""Check that a pruned model can be restored against a dense one, and pair up their heads."""

from __future__ import annotations

import torch
from torch import nn

from restorelcc.errors import UnsupportedModelError, warn_user
from restorelcc.hf.families import (
    HeadGeometry,
    block_linear,
    decoder_layers,
    family_of,
    head_geometry,
    o_proj_of,
)
from restorelcc.io import counted
from restorelcc.prune.report import first_pruned_weight, model_folder, pruned_zeros

# A pruned head is the dense head whose o_proj columns point the same way; structured
# pruning copies those columns unchanged (cosine 1), and unstructured pruning on top keeps
# most of their energy (50% magnitude: ~0.9), while other heads are near 0.
MIN_HEAD_COSINE = 0.5


def describe_geometry(geometry: HeadGeometry) -> str:
    """``geometry`` as messages print it: ``2 layers x 6 heads (2 KV heads) of head_dim 16,
    hidden size 96``."""
    g = geometry
    return (
        f"{counted(g.layers, 'layer')} x {counted(g.heads, 'head')} "
        f"({counted(g.kv_heads, 'KV head')}) of head_dim {g.head_dim}, hidden size {g.hidden_size}"
    )


def check_compatible(dense: nn.Module, pruned: nn.Module) -> torch.Tensor:
    """Raise ``UnsupportedModelError`` unless ``pruned`` is ``dense`` pruned; return the
    head map, ``[layers, pruned heads]`` int64: the dense head each pruned head came from.

    Compatible: same family, layers, head_dim, hidden size, vocabulary and parameter names;
    every shape equal except that MLP intermediate channels may be fewer and, with
    structured pruning that removed whole heads, the attention projections (and q/k norms
    that span the heads) narrower. The
    heads are then paired by their ``o_proj`` columns (``match_heads``); otherwise the map
    is the identity, and ``pruned`` must differ from ``dense`` by added zeros: an unpruned
    copy, or the two models swapped, is refused (``_check_pruned_direction``). First, each
    model must be one whose decoder linears can be read (``_check_linears``).
    """
    if dense is pruned:
        raise ValueError("dense and pruned are the same model object; pass two models")
    _check_linears(dense, "dense")
    _check_linears(pruned, "pruned")
    heads_removed = check_compatible_configs(dense, pruned)
    family = family_of(dense)
    narrowable = family.mlp_linears
    if heads_removed:
        narrowable += family.attention_linears
        if family.qk_norm in ("heads", "projection"):  # norms spanning the heads lose theirs
            narrowable += (family.q_norm, family.k_norm)
    narrowable = tuple(f".{module}." for module in narrowable)
    dense_shapes = {n: tuple(p.shape) for n, p in dense.named_parameters()}
    pruned_shapes = {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    for name in sorted(dense_shapes.keys() | pruned_shapes.keys()):
        a, b = dense_shapes.get(name), pruned_shapes.get(name)
        if a != b and not (a and b and any(m in name for m in narrowable) and _narrower(a, b)):
            raise UnsupportedModelError(
                f"parameter {name} is {b or 'missing'} in the pruned model but {a or 'missing'} "
                "in the dense model; the pruned model must have the dense model's shapes"
            )
    if not heads_removed:
        _check_pruned_direction(dense, pruned)
        geometry = head_geometry(pruned)
        return torch.arange(geometry.heads).expand(geometry.layers, -1).clone()
    return match_heads(dense, pruned)


def _check_linears(model: nn.Module, role: str) -> None:
    """Raise what ``decoder_layers`` and ``block_linear`` raise for ``model`` (something
    other than a model, a peft model, a projection swapped for a packed module), the
    message prefixed with ``the {role} model``: otherwise these surface later as parameter
    names missing from one model."""
    try:
        family = family_of(model)
        for block in decoder_layers(model):
            for name in family.block_linears:
                block_linear(block, name)
    except UnsupportedModelError as error:
        raise type(error)(f"the {role} model: {error}") from None


def check_compatible_configs(dense, pruned) -> bool:
    """What the configs alone tell of ``check_compatible`` (``dense`` and ``pruned``: models
    or their configs, so that it can run before the weights load): raise
    ``UnsupportedModelError`` unless both are of one supported family with the same
    attention, or the pruned one with heads removed (same layers, head_dim and hidden
    size, fewer heads). Returns whether heads were removed."""
    dense_family, pruned_family = family_of(dense).model_type, family_of(pruned).model_type
    if dense_family != pruned_family:
        raise UnsupportedModelError(
            f"the pruned model is a {pruned_family} model but the dense one is {dense_family}"
        )
    dense_geo, pruned_geo = head_geometry(dense), head_geometry(pruned)
    heads_removed = dense_geo != pruned_geo
    if heads_removed and not _fewer_heads(dense_geo, pruned_geo):
        raise UnsupportedModelError(
            f"the pruned model's attention ({describe_geometry(pruned_geo)}) differs from the "
            f"dense model's ({describe_geometry(dense_geo)}) by more than removed heads"
        )
    return heads_removed


@torch.no_grad()
def _check_pruned_direction(dense: nn.Module, pruned: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` unless ``pruned`` holds ``dense`` pruned, judged by
    the decoder-block linear weights, each pair compared in the coarser of their two dtypes
    (so an unpruned copy cast to bf16 counts as equal). All equal: refused, as unpruned
    or as a dense model that is pruned itself (``_equal_weights_message``).
    Otherwise the first pair that differs decides, and the check stops there (for a
    pruned model, at its first weight, so it costs one weight's read): a zero where the
    dense weight has none is pruning; none of those but values where the dense weight has
    zeros means the models were given the other way round (SparseGPT may also turn a few of
    a dense model's exact zeros into values, but it adds zeros of its own). Values changed
    at the same zeros: undecided, the next pair is read. A narrower pruned weight (MLP
    channels removed) is pruned."""
    family = family_of(dense)
    differ = False
    for layer, (dense_block, pruned_block) in enumerate(
        zip(decoder_layers(dense), decoder_layers(pruned), strict=True)
    ):
        for name in family.block_linears:
            a = block_linear(dense_block, name).weight
            b = block_linear(pruned_block, name).weight
            if a.shape != b.shape:
                return  # check_compatible let only a narrower pruned weight through
            dtype = _coarser(a.dtype, b.dtype)
            a, b = a.to(dtype), b.to(a.device, dtype)
            if torch.equal(a, b):
                continue
            differ = True
            added = int(((b == 0) & (a != 0)).sum())  # zeros where the dense weight has none
            if added:
                _warn_if_pruned_already(a, layer, name, dense)
                return
            removed = int(((a == 0) & (b != 0)).sum())
            if removed:
                dense_name, pruned_name = _folder_names(dense, pruned)
                raise UnsupportedModelError(
                    f"layer {layer} {name}: the pruned model{pruned_name} has no zero the dense "
                    f"model{dense_name} lacks, but {removed} values where the dense one has "
                    "zeros; pruning only adds zeros: are the dense and pruned models "
                    "(--dense/--pruned, dense=/pruned= in the API) swapped?"
                )
    if not differ:
        raise UnsupportedModelError(_equal_weights_message(dense))


def _equal_weights_message(dense: nn.Module) -> str:
    """Why a pruned model whose decoder weights equal the dense model's is refused: the
    dense model is itself pruned (a weight of it ``first_pruned_weight`` reads as pruned:
    the same checkpoint given twice, or pruned again to the pattern it has), or nothing
    was pruned."""
    sparse = first_pruned_weight(dense)
    if sparse is None:
        return (
            "the pruned model's decoder weights equal the dense model's: nothing was "
            "pruned, so nothing was lost to restore (prune it first)"
        )
    layer, name, zeros = sparse
    return (
        f"the pruned model's decoder weights equal the dense model's, and the dense "
        f"model{model_folder(dense)} has {zeros:.0%} zeros in layer {layer} {name}: it looks "
        "pruned already (the same pruned checkpoint given as both?); give the unpruned model "
        "it was pruned from as the dense one (restore --dense, demo --model, dense= in the API)"
    )


def _warn_if_pruned_already(weight: torch.Tensor, layer: int, name: str, dense: nn.Module):
    """Warn where the dense model's ``weight`` is as sparse as a pruned one
    (``pruned_zeros``): a pruned checkpoint given as the dense model gets restored towards
    what its own pruning lost, not the original model's."""
    zeros = pruned_zeros(weight)
    if zeros is not None:
        warn_user(
            f"the dense model{model_folder(dense)} has {zeros:.0%} zeros in layer {layer} "
            f"{name}: is it a pruned checkpoint (or a dequantized model of 3 bits or fewer)? "
            "RestoreLCC restores towards the dense model given"
        )


def _folder_names(dense: nn.Module, pruned: nn.Module) -> tuple[str, str]:
    """`` (folder)`` for each model, from the ``name_or_path`` that loading from a folder
    sets; ``("", "")`` unless both have one and they differ (a model pruned in memory
    keeps the name of the folder its dense copy came from)."""
    names = [str(getattr(model, "name_or_path", "") or "") for model in (dense, pruned)]
    if not all(names) or names[0] == names[1]:
        return "", ""
    return f" ({names[0]})", f" ({names[1]})"


def _coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """Of two dtypes, the one with fewer mantissa bits (``a`` if not both floating)."""
    if not (a.is_floating_point and b.is_floating_point):
        return a
    return b if torch.finfo(b).eps > torch.finfo(a).eps else a


def match_heads(dense: nn.Module, pruned: nn.Module) -> torch.Tensor:
    """``[layers, pruned heads]``: for each pruned head, the dense head whose ``o_proj``
    columns (``hidden x head_dim``) have the largest cosine similarity with its own. Raises
    ``UnsupportedModelError`` if a head matches none (cosine < ``MIN_HEAD_COSINE``) or two
    pruned heads match the same dense head."""
    dense_geo, pruned_geo = head_geometry(dense), head_geometry(pruned)
    head_map = torch.empty(pruned_geo.layers, pruned_geo.heads, dtype=torch.int64)
    for layer in range(pruned_geo.layers):
        d = _unit_head_columns(o_proj_of(dense, layer).weight, dense_geo)
        p = _unit_head_columns(o_proj_of(pruned, layer).weight, pruned_geo)
        cosine, best = (p @ d.T).max(dim=1)
        for head in range(pruned_geo.heads):
            if cosine[head] < MIN_HEAD_COSINE:
                raise UnsupportedModelError(
                    f"layer {layer}: pruned head {head} matches no dense head (best o_proj "
                    f"cosine {float(cosine[head]):.2f}, with head {int(best[head])}); is the "
                    "pruned model really this dense model with heads removed?"
                )
        taken = best.tolist()
        twice = next((h for h in set(taken) if taken.count(h) > 1), None)
        if twice is not None:
            raise UnsupportedModelError(
                f"layer {layer}: pruned heads {[i for i, h in enumerate(taken) if h == twice]} "
                f"all match dense head {twice}; heads cannot be paired one to one"
            )
        head_map[layer] = best
    return head_map


def to_pruned_heads(acts: torch.Tensor, head_map: torch.Tensor) -> torch.Tensor:
    """Dense per-head activations ``[N, layers, dense heads, head_dim]`` -> the pruned
    model's heads, ``[N, layers, pruned heads, head_dim]`` (``acts`` itself if the map is
    the identity)."""
    layers, heads = head_map.shape
    if heads == acts.shape[2] and torch.equal(head_map, torch.arange(heads).expand(layers, -1)):
        return acts
    return acts[:, torch.arange(layers)[:, None], head_map]


def _unit_head_columns(o_weight: torch.Tensor, geometry: HeadGeometry) -> torch.Tensor:
    """o_proj weight [hidden, heads * head_dim] -> [heads, hidden * head_dim], unit rows."""
    w = o_weight.detach().to("cpu", torch.float64)
    w = w.reshape(w.shape[0], geometry.heads, geometry.head_dim).transpose(0, 1)
    return nn.functional.normalize(w.reshape(geometry.heads, -1), dim=1)


def _fewer_heads(dense: HeadGeometry, pruned: HeadGeometry) -> bool:
    return (
        (dense.layers, dense.head_dim, dense.hidden_size)
        == (pruned.layers, pruned.head_dim, pruned.hidden_size)
        and 0 < pruned.heads < dense.heads
        and 0 < pruned.kv_heads <= dense.kv_heads
    )


def _narrower(dense_shape: tuple[int, ...], pruned_shape: tuple[int, ...]) -> bool:
    """One dimension (intermediate channels, or heads x head_dim) smaller, every other equal."""
    if len(dense_shape) != len(pruned_shape):
        return False
    differ = [(a, b) for a, b in zip(dense_shape, pruned_shape, strict=True) if a != b]
    return len(differ) == 1 and 0 < differ[0][1] < differ[0][0]
