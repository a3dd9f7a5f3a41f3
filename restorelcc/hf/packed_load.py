"""``load_packed``: a packed checkpoint (the folder's layout:
``restorelcc.hf.packed_checkpoint``) loaded swapped, without a dense copy of a packed
weight: the model is made with its parameters on the meta device, each packed module is
rebuilt from its tensors and checked against the projections it replaces, every other
tensor is assigned as read, and the tied names are tied."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import lcc_kernels
from lcc_kernels.formats import SUPPORTED_DTYPES
from restorelcc.hf.attention import PackedLinear, PackedProjections, SparseLinear
from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.hf.packed_manifest import (
    PACKED_INFO,
    WEIGHTS,
    _check_dtype,
    _check_group_dtype,
    _entry_packing,
    _entry_target,
    _module_name,
    _read_manifest,
    _stored_dtype,
)
from restorelcc.hf.swap import install_group
from restorelcc.hf.swap_plan import projection_groups


def load_packed(
    directory: str | os.PathLike,
    device: str | int | torch.device = "cpu",
    dtype: torch.dtype | str = "auto",
):
    """Load ``(model, tokenizer)`` written by ``save_packed``: the model swapped as it was
    saved (each packed module's format, backend and decode_streams), in eval mode, on
    ``device``; the tokenizer pads on the right. ``dtype``: "auto" (each tensor in the
    dtype it was saved in: a bf16 model's fp32 bias stays fp32; the buffers the model
    computes, such as rotary ``inv_freq``, made as for its embeddings' dtype), or float32,
    bfloat16 or float16 (or their names), every floating-point tensor cast to it as
    ``load_model`` casts a dense checkpoint (buffers kept as transformers makes them). No
    dense copy of a packed weight is made. Raises
    ``ModelNotFoundError`` for a missing folder, ``CheckpointError`` for one that is not a
    packed checkpoint or whose files disagree (a tensor missing, unexpected or of the wrong
    shape, a malformed packed weight), ``CorruptCacheError`` for an unreadable file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    from restorelcc.assets import resolve_model
    from restorelcc.errors import CorruptCacheError
    from restorelcc.loading import check_load_arguments, load_tokenizer, read_config

    dtype, device = check_load_arguments(dtype, device, SUPPORTED_DTYPES)
    folder = resolve_model(directory)
    manifest = _read_manifest(folder)
    config = read_config(folder)
    tokenizer = load_tokenizer(folder)
    try:
        tensors = load_file(folder / WEIGHTS, device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CorruptCacheError(f"cannot read {folder / WEIGHTS}: {exc}") from exc
    stored = _stored_dtype(manifest["dtype"], folder)
    model = _empty_model(config, stored if dtype == "auto" else dtype)
    _fill(model, manifest, tensors, dtype, folder)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def _empty_model(config, dtype: torch.dtype) -> nn.Module:
    """The model of ``config`` with its parameters on the meta device and its buffers
    computed (on the CPU), as from_pretrained builds it in ``dtype``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _fill(
    model: nn.Module, manifest: dict, tensors: dict[str, torch.Tensor], dtype, folder: Path
) -> None:
    """Install the packed modules the manifest lists and assign every other tensor, the
    embeddings and each packed module checked to hold the dtype the manifest names for
    them (the manifest's, which is the embeddings'; a group's own where it names one);
    ``dtype``: "auto" (each tensor as stored), or the one to cast the floating-point ones
    to."""
    from restorelcc.loading import CheckpointError

    where = folder / PACKED_INFO
    blocks = decoder_layers(model)
    names = {id(module): name for name, module in model.named_modules()}
    embeddings = f"{names[id(model.get_input_embeddings())]}.weight"
    stored = getattr(tensors.get(embeddings), "dtype", None)  # None: not stored
    _check_dtype(stored, manifest["dtype"], embeddings, folder)
    groups = {group.name: group for group in projection_groups(family_of(model), mlp=True)}
    modules, replaced = [], set()
    for entry in manifest["groups"]:
        layer, group = _entry_target(entry, groups, len(blocks), where)
        owner = blocks[layer].get_submodule(group.owner)
        owner_path = names[id(owner)]
        path = f"{owner_path}.{_module_name(group)}"
        if entry.get("module") != path:
            raise CheckpointError(f"{where}: layer {layer} {group.name} is at {path}, not {entry}")
        linears = [owner._modules.get(name) for name in group.projections]
        if not all(isinstance(linear, nn.Linear) for linear in linears):
            raise CheckpointError(f"{where}: {owner_path} has no {group.projections} to replace")
        packing = _entry_packing(entry, group, f"{where}: {path}")
        module = _packed_module(entry, packing, linears, tensors, path, where)
        _check_group_dtype(entry, layer, group, module.packed.dtype, manifest, folder)
        if dtype != "auto":
            module.to(dtype)
        modules.append((blocks[layer], group, module))
        replaced |= {f"{owner_path}.{n}.{w}" for n in group.projections for w in ("weight", "bias")}
    for key, tensor in tensors.items():
        if dtype != "auto" and tensor.is_floating_point():
            tensors[key] = tensor.to(dtype)
    _assign_plain_tensors(model, tensors, manifest["tied"], replaced, folder)
    for block, group, module in modules:
        install_group(block, group, module)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{folder / WEIGHTS} lacks {len(left)} tensor(s): {left[:3]}")


def _packed_module(
    entry: dict,
    packing: tuple,
    linears: list[nn.Linear],
    tensors: dict[str, torch.Tensor],
    path: str,
    where,
) -> PackedLinear:
    """The packed module of ``entry`` (``packing``: its checked ``_entry_packing``) from its
    tensors (taken out of ``tensors``), checked against the ``nn.Linear`` modules it
    replaces."""
    from restorelcc.loading import CheckpointError

    prefix = f"{path}.packed."
    state = {key[len(prefix) :]: tensors.pop(key) for key in [*tensors] if key.startswith(prefix)}
    bias = tensors.pop(f"{path}.bias", None)
    try:
        packed = lcc_kernels.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: no valid packed weight in {WEIGHTS}: {exc}") from exc
    sizes = [linear.out_features for linear in linears]
    shape = (sum(sizes), linears[0].in_features)
    if packed.shape != shape or list(packed.split_sizes) != sizes:
        raise CheckpointError(
            f"{path}: the packed weight is {packed.shape} split {list(packed.split_sizes)}; "
            f"this model's config makes {shape} split {sizes}"
        )
    format, backend, streams, has_bias = packing
    if (
        packed.format != format
        or any(has_bias) != (bias is not None)
        or (bias is not None and tuple(bias.shape) != shape[:1])
    ):
        biases = None if bias is None else tuple(bias.shape)
        raise CheckpointError(
            f"{where}: {path} does not match its tensors (format {packed.format!r}, bias "
            f"{biases}): {entry}"
        )
    for index, (size, flag) in enumerate(zip(sizes, has_bias, strict=True)):
        start = sum(sizes[:index])
        if not flag and bias is not None and bias[start : start + size].any():
            raise CheckpointError(
                f"{where}: {path}: projection {index} has a nonzero bias but has_bias false"
            )
    if len(linears) == 1:
        return SparseLinear(packed, bias, backend, decode_streams=streams)
    return PackedProjections(packed, bias, has_bias, backend, decode_streams=streams)


def _assign_plain_tensors(model, tensors, tied: dict, replaced: set[str], folder: Path) -> None:
    """Assign ``tensors`` (every one but the packed modules') to ``model``'s parameters
    and buffers, then tie the names in ``tied`` to the tensors they name. A bias of an
    ``nn.Linear`` that the config makes without one (a restoration folded into a layer
    left unswapped) is added to it, as the saved model had it."""
    from restorelcc.loading import CheckpointError, _one_line

    modules = dict(model.named_modules())
    for key, tensor in tensors.items():  # a folded compensation on an unswapped o_proj
        owner, name = _slot(modules, key)
        if name == "bias" and isinstance(owner, nn.Linear) and owner.bias is None:
            size = owner.out_features  # a bias of another size fails the load's shape check
            owner.bias = nn.Parameter(torch.empty(size, dtype=tensor.dtype, device="meta"))
    _check_tied(modules, tensors, tied, folder / PACKED_INFO)
    try:
        result = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{folder / WEIGHTS} does not fit the config: {_one_line(exc)}"
        ) from exc
    missing = [key for key in result.missing_keys if key not in replaced and key not in tied]
    if result.unexpected_keys or missing:
        raise CheckpointError(
            f"{folder / WEIGHTS} does not fit the config: unexpected "
            f"{result.unexpected_keys[:3] or 'none'}, missing {missing[:3] or 'none'}"
        )
    for key, source in tied.items():  # checked: both name slots of this model
        owner, name = _slot(modules, key)
        source_owner, source_name = _slot(modules, source)
        kind = "_parameters" if source_name in source_owner._parameters else "_buffers"
        getattr(owner, kind)[name] = getattr(source_owner, kind)[source_name]


def _slot(modules: dict, key: str) -> tuple[nn.Module | None, str]:
    """The module (None for no such module) and attribute that the state-dict ``key``
    names."""
    owner_name, _, name = key.rpartition(".")
    return modules.get(owner_name), name


def _check_tied(modules: dict, tensors: dict, tied: dict, where: Path) -> None:
    """Each tied name: a parameter or buffer of the model that is not stored, of the shape
    of the stored tensor it is tied to (``CheckpointError`` otherwise)."""
    from restorelcc.loading import CheckpointError

    for key, source in tied.items():
        owner, name = _slot(modules, key)
        slot = None if owner is None else owner._parameters.get(name, owner._buffers.get(name))
        tensor = tensors.get(source) if isinstance(source, str) else None
        if key in tensors or slot is None or tensor is None or slot.shape != tensor.shape:
            raise CheckpointError(
                f"{where}: cannot tie {key} to {source} (a tied name is not stored, and has "
                "the shape of a stored tensor of this model)"
            )
