"""``save_packed``: a swapped model written as a packed checkpoint (the folder's layout:
``restorelcc.hf.packed_checkpoint``), each swapped module's packed tensors as they are and
every other tensor stored once (the names tied to it recorded in the manifest)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.attention import PackedLinear, PackedProjections, ProjectionView, SparseLinear
from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.hf.packed_manifest import FORMAT_VERSION, PACKED_INFO, WEIGHTS, _module_name
from restorelcc.hf.swap_plan import ProjectionGroup, SwapError, hook_kinds, projection_groups
from restorelcc.io import atomic_write_json
from restorelcc.output_dirs import atomic_directory, check_output_directory


def save_packed(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer=None,
    overwrite: bool = False,
    info: dict | None = None,
) -> Path:
    """Write the swapped ``model`` (``swap_attention``) to ``directory`` with its packed
    weights as they are; returns the directory. Written atomically. ``tokenizer``: saved
    beside the weights; required (``load_packed`` needs one). An existing non-empty
    ``directory`` is refused unless ``overwrite``, which replaces only an earlier packed
    checkpoint (a folder holding ``restorelcc_packed.json``). ``info``: recorded as it is
    (JSON) under ``"info"`` in ``restorelcc_packed.json`` (``restorelcc pack`` puts its
    swap report there). A ``torch.compile`` wrapper is saved as the model it wraps. Raises
    ``ValueError`` without a tokenizer, ``UnsupportedModelError`` for a model other than
    a causal LM (``AutoModelForCausalLM``'s class for its config, which ``load_packed``
    builds) and ``SwapError`` for a model with no swapped module or with a swapped module
    that has hooks (which the folder cannot hold), each before anything is written."""
    from safetensors.torch import save_file
    from torch._dynamo.eval_frame import OptimizedModule

    target = check_output_directory(directory, overwrite, replaces=PACKED_INFO)
    if not callable(getattr(tokenizer, "save_pretrained", None)):
        got = "none" if tokenizer is None else f"a {type(tokenizer).__name__}"
        raise ValueError(
            f"save_packed needs the model's tokenizer, got {got}: load_packed reads it from "
            "the folder; pass it as save_packed(model, folder, tokenizer)"
        )
    while isinstance(model, OptimizedModule):  # its names all start with "_orig_mod."
        model = model._orig_mod
    _check_causal_lm(model)
    groups, tensors = _packed_groups(model)
    if not groups:
        raise SwapError(
            f"{type(model).__name__} has no swapped projection: call swap_attention(model) "
            "first (a model that is not swapped saves with save_pretrained)"
        )
    tied = _add_plain_tensors(model, tensors)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
        "groups": groups,
        "tied": tied,
        "info": info,
    }
    with atomic_directory(directory, overwrite, replaces=PACKED_INFO) as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        atomic_write_json(tmp / PACKED_INFO, manifest)
    return target


def _check_causal_lm(model: nn.Module) -> None:
    """``UnsupportedModelError`` unless ``model`` is of a known family and a causal LM: an
    instance of the class ``AutoModelForCausalLM`` makes for its config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    family_of(model)
    causal = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(model.config), None)
    if causal is None or not isinstance(model, causal):
        named = f" ({causal.__name__} for this config)" if causal is not None else ""
        raise UnsupportedModelError(
            f"save_packed: {type(model).__name__} is not a causal language model; packed "
            f"folders hold causal LMs, which load_packed builds with AutoModelForCausalLM"
            f"{named}: unswap_attention(model) and save it with save_pretrained instead"
        )


def _packed_groups(model: nn.Module) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The manifest entry of every swapped group, and their tensors (on the CPU) by key."""
    family = family_of(model)
    names = {id(module): name for name, module in model.named_modules()}
    groups, tensors = [], {}
    for layer, block in enumerate(decoder_layers(model)):
        for group in projection_groups(family, mlp=True):
            module = _swapped_module(block, group)
            if module is None:
                continue
            owner = block.get_submodule(group.owner)
            _refuse_hooks(owner, names[id(owner)], group)
            path = f"{names[id(owner)]}.{_module_name(group)}"
            for key, tensor in module.packed.to_state_dict().items():
                tensors[f"{path}.packed.{key}"] = tensor.detach().to("cpu").contiguous()
            if module.bias is not None:
                tensors[f"{path}.bias"] = module.bias.detach().to("cpu").contiguous()
            has_bias = getattr(module, "has_bias", (module.bias is not None,))
            groups.append(
                {
                    "layer": layer,
                    "group": group.name,
                    "module": path,
                    "format": module.packed.format,
                    "dtype": str(module.packed.dtype).removeprefix("torch."),
                    "backend": module.backend,
                    "decode_streams": module.decode_streams,
                    "has_bias": list(has_bias),
                }
            )
    return groups, tensors


def _swapped_module(block: nn.Module, group: ProjectionGroup) -> PackedLinear | None:
    """The group's packed module in ``block``, or None where it is not swapped."""
    module = block.get_submodule(group.owner)._modules.get(_module_name(group))
    kind = SparseLinear if group.packed is None else PackedProjections
    return module if isinstance(module, kind) else None


def _refuse_hooks(owner: nn.Module, owner_path: str, group: ProjectionGroup) -> None:
    """``SwapError`` naming the module where a swapped module of ``group`` in ``owner``
    (the packed module or a projection's view, as ``unswap_attention`` checks them) has
    hooks: the saved folder would silently lack them (a restoration's unfolded
    compensation, say), and ``load_packed`` would give a model that runs otherwise."""
    for name in (*group.projections, group.packed):
        module = owner._modules.get(name) if name else None
        if not isinstance(module, (PackedLinear, ProjectionView)):
            continue
        found = hook_kinds(module)
        if found:
            raise SwapError(
                f"save_packed: {owner_path}.{name} has {' and '.join(found)}, which a packed "
                "checkpoint cannot hold (load_packed would give the model without them): "
                "remove them (handle.remove()) before saving, and register them again on "
                "the loaded model if needed"
            )


def _add_plain_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Add the model's tensors other than the swapped modules' (parameters and persistent
    buffers, as ``state_dict`` names them) to ``tensors``; returns the tied names (a
    tensor met again under another name -> its first name), each stored once."""
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (PackedLinear, ProjectionView)):
            continue
        persistent = [
            (name, buffer)
            for name, buffer in module._buffers.items()
            if name not in module._non_persistent_buffers_set
        ]
        for name, tensor in [*module._parameters.items(), *persistent]:
            if tensor is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if id(tensor) in seen:
                tied[key] = seen[id(tensor)]
                continue
            seen[id(tensor)] = key
            tensors[key] = tensor.detach().to("cpu").contiguous()
    return tied
