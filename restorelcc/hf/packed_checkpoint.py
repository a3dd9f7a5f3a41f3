"""Save a swapped model with its weights packed, and load it back swapped.

    swap_attention(model, mlp=True)
    save_packed(model, "llama-24-packed", tokenizer)    # packed bytes on disk
    model, tokenizer = load_packed("llama-24-packed", device="cuda")

``save_pretrained`` of a swapped model writes a plain (dense, zero-filled) checkpoint, and
loading that means holding every dense weight before the swap packs it. A packed
checkpoint keeps the packed tensors as they are: a 2:4 weight takes 9/16 of its dense
bytes on disk (fp16/bf16), and ``load_packed`` never builds a dense copy of a swapped
projection: the model is made with its parameters on the meta device (its buffers, such
as the rotary frequencies, computed as transformers computes them), the swapped modules
are rebuilt from their packed tensors, and the other weights are assigned as read.

The folder holds ``config.json``, ``generation_config.json``, the tokenizer's files if
one is given, ``restorelcc_packed.safetensors`` and ``restorelcc_packed.json`` (which
modules are packed, in what format, with which options; tied weights). In the former, a
swapped module's tensors are its ``lcc_kernels`` state dict under
``<module path>.packed.`` (``info``, ``split_sizes`` and the format's tensors) and its
bias under ``<module path>.bias``; every other tensor is under its usual key. Plain
transformers finds no weights file to read there (rather than loading the config with
random projections): ``unswap_attention`` the loaded model and ``save_pretrained`` it for
a dense checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

import lcc_kernels
from lcc_kernels.dispatch import BACKENDS, check_backend_format
from lcc_kernels.formats import FORMAT_24, FORMAT_BITMAP, SUPPORTED_DTYPES
from restorelcc.hf import FORMATS
from restorelcc.hf.attention import PackedLinear, PackedProjections, ProjectionView, SparseLinear
from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.hf.swap import install_group
from restorelcc.hf.swap_plan import ProjectionGroup, SwapError, projection_groups
from restorelcc.io import atomic_directory, atomic_write_json, check_output_directory

PACKED_INFO = "restorelcc_packed.json"
WEIGHTS = "restorelcc_packed.safetensors"  # not model.safetensors: transformers refuses it
FORMAT_VERSION = 1

__all__ = [
    "PACKED_INFO",
    "is_packed_checkpoint",
    "load_packed",
    "packed_modules",
    "packed_swap",
    "save_packed",
]


def save_packed(
    model: nn.Module,
    directory: str | os.PathLike,
    tokenizer=None,
    overwrite: bool = False,
    info: dict | None = None,
) -> Path:
    """Write the swapped ``model`` (``swap_attention``) to ``directory`` with its packed
    weights as they are; returns the directory. Written atomically. ``tokenizer``: saved
    beside the weights (``load_packed`` needs one). An existing non-empty ``directory`` is
    refused unless ``overwrite``, which replaces only an earlier packed checkpoint (a
    folder holding ``restorelcc_packed.json``). ``info``: recorded as it is (JSON) under
    ``"info"`` in ``restorelcc_packed.json`` (``restorelcc pack`` puts its swap report
    there). Raises ``SwapError`` for a model with no swapped module."""
    from safetensors.torch import save_file

    target = check_output_directory(directory, overwrite, replaces=PACKED_INFO)
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
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        atomic_write_json(tmp / PACKED_INFO, manifest)
    return target


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
            path = f"{names[id(block.get_submodule(group.owner))]}.{_module_name(group)}"
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
                    "backend": module.backend,
                    "decode_streams": module.decode_streams,
                    "has_bias": list(has_bias),
                }
            )
    return groups, tensors


def _module_name(group: ProjectionGroup) -> str:
    """The owner's attribute holding the group's packed module."""
    return group.packed if group.packed is not None else group.projections[0]


def _swapped_module(block: nn.Module, group: ProjectionGroup) -> PackedLinear | None:
    """The group's packed module in ``block``, or None where it is not swapped."""
    module = block.get_submodule(group.owner)._modules.get(_module_name(group))
    kind = SparseLinear if group.packed is None else PackedProjections
    return module if isinstance(module, kind) else None


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


def is_packed_checkpoint(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a folder written by ``save_packed``."""
    return (Path(name_or_path).expanduser() / PACKED_INFO).is_file()


def packed_modules(model: nn.Module) -> dict:
    """How many packed modules ``model`` holds, and their formats (comma-separated)."""
    modules = [m for m in model.modules() if isinstance(m, PackedLinear)]
    return {
        "modules": len(modules),
        "formats": ", ".join(sorted({m.packed.format for m in modules})),
    }


def packed_swap(directory: str | os.PathLike) -> dict:
    """How the packed checkpoint ``directory`` was swapped, from its ``restorelcc_packed.json``
    (no weights read): ``format``, ``mlp`` and ``decode_streams``, the options of the swap
    that ``restorelcc pack`` records (its report under ``info``; ``recorded`` True), or,
    where ``info`` holds no such report (``recorded`` False: a ``save_packed`` folder), as
    the groups show them (their one format, or "auto" where they mix; whether an MLP group
    is packed; whether a group runs decode streams); ``dtype``: the name of the dtype its
    weights are stored in; and ``groups``: each packed group's (layer, group name) ->
    (format, backend, decode_streams). Raises ``ModelNotFoundError`` for a missing folder
    or one without config.json, ``CheckpointError`` for a folder that is not a packed
    checkpoint, a group entry that names no group of the model or records no valid
    format, backend and decode_streams, or an unknown dtype."""
    from restorelcc.assets import resolve_model
    from restorelcc.loading import read_config

    folder = resolve_model(directory)
    manifest = _read_manifest(folder)
    dtype = str(_stored_dtype(manifest["dtype"], folder)).removeprefix("torch.")
    config, where = read_config(folder), folder / PACKED_INFO
    family = family_of(config)
    known = {group.name: group for group in projection_groups(family, mlp=True)}
    groups = {}
    for entry in manifest["groups"]:
        layer, group = _entry_target(entry, known, config.num_hidden_layers, where)
        groups[(layer, group.name)] = _entry_packing(entry, where)
    attention = {g.name for g in projection_groups(family, mlp=False)}
    formats = {format for format, _, _ in groups.values()}
    options = {
        "format": formats.pop() if len(formats) == 1 else "auto",
        "mlp": any(group not in attention for _, group in groups),
        "decode_streams": any(streams is True for _, _, streams in groups.values()),
    }
    info = manifest.get("info")
    swap = info.get("swap") if isinstance(info, dict) else None
    recorded = (
        isinstance(swap, dict)
        and swap.get("format") in FORMATS
        and isinstance(swap.get("mlp"), bool)
        and isinstance(swap.get("decode_streams"), bool)
    )
    if recorded:
        options = {key: swap[key] for key in options}
    return {**options, "recorded": recorded, "dtype": dtype, "groups": groups}


def refuse_packed(directory: str | os.PathLike, remedy: str, option: str | None = None) -> None:
    """``CheckpointError`` naming ``remedy`` where ``directory`` is a packed checkpoint,
    which readers of dense checkpoints would take for a damaged one; ``option``: the
    command-line option that named it, put first."""
    from restorelcc.loading import CheckpointError

    if is_packed_checkpoint(directory):
        named = f"{option} {directory}" if option else str(directory)
        raise CheckpointError(
            f"{named} is a packed checkpoint ({PACKED_INFO}, written by save_packed or "
            f"restorelcc pack): {remedy}"
        )


def load_packed(
    directory: str | os.PathLike,
    device: str | int | torch.device = "cpu",
    dtype: torch.dtype | str = "auto",
):
    """Load ``(model, tokenizer)`` written by ``save_packed``: the model swapped as it was
    saved (each packed module's format, backend and decode_streams), in eval mode, on
    ``device``; the tokenizer pads on the right. ``dtype``: "auto" (the dtypes it was saved
    in), or float32, bfloat16 or float16 (or their names), its floating-point tensors cast
    as ``load_model`` casts a dense checkpoint (buffers such as rotary ``inv_freq`` kept as
    transformers makes them). No dense copy of a packed weight is made. Raises
    ``ModelNotFoundError`` for a missing folder, ``CheckpointError`` for one that is not a
    packed checkpoint or whose files disagree (a tensor missing, unexpected or of the wrong
    shape, a malformed packed weight), ``CorruptCacheError`` for an unreadable file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    from restorelcc.assets import resolve_model
    from restorelcc.errors import CorruptCacheError
    from restorelcc.loading import check_load_arguments, load_tokenizer, read_config

    dtype, device = check_load_arguments(dtype, device)
    if dtype != "auto" and dtype not in SUPPORTED_DTYPES:
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"dtype: packed weights hold float32, bfloat16 or float16, not {name}")
    folder = resolve_model(directory)
    manifest = _read_manifest(folder)
    config = read_config(folder)
    tokenizer = load_tokenizer(folder)
    try:
        tensors = load_file(folder / WEIGHTS, device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CorruptCacheError(f"cannot read {folder / WEIGHTS}: {exc}") from exc
    stored = _stored_dtype(manifest["dtype"], folder)
    dtype = stored if dtype == "auto" else dtype
    model = _empty_model(config, dtype)
    _fill(model, manifest, tensors, (stored, dtype), folder)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def _read_manifest(folder: Path) -> dict:
    """``restorelcc_packed.json``, its keys checked (``CheckpointError``)."""
    from restorelcc.loading import CheckpointError

    path = folder / PACKED_INFO
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a packed checkpoint (no {PACKED_INFO}): load it with load_model"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CheckpointError(
            f"{path} has format_version {version!r}; this restorelcc reads {FORMAT_VERSION}"
        )
    for key, kind in (("dtype", str), ("groups", list), ("tied", dict)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"{path}: {key!r} must be a {kind.__name__}")
    return manifest


def _stored_dtype(name: str, folder: Path) -> torch.dtype:
    """The dtype the manifest names (``CheckpointError`` for another name)."""
    from restorelcc.loading import CheckpointError

    dtypes = {str(dtype).removeprefix("torch."): dtype for dtype in SUPPORTED_DTYPES}
    if name not in dtypes:
        raise CheckpointError(f"{folder / PACKED_INFO}: unknown dtype {name!r}")
    return dtypes[name]


def _empty_model(config, dtype: torch.dtype) -> nn.Module:
    """The model of ``config`` with its parameters on the meta device and its buffers
    computed (on the CPU), as from_pretrained builds it in ``dtype``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _fill(
    model: nn.Module, manifest: dict, tensors: dict[str, torch.Tensor], dtypes, folder: Path
) -> None:
    """Install the packed modules the manifest lists and assign every other tensor;
    ``dtypes``: (the manifest's, the one to load in) for the floating-point ones."""
    from restorelcc.loading import CheckpointError

    where = folder / PACKED_INFO
    stored, dtype = dtypes
    blocks = decoder_layers(model)
    names = {id(module): name for name, module in model.named_modules()}
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
        module = _packed_module(entry, linears, tensors, path, where)
        if module.packed.dtype != stored:
            raise CheckpointError(
                f"{where}: {path} holds {module.packed.dtype}, not the {stored} it names"
            )
        module.to(dtype)
        modules.append((blocks[layer], group, module))
        replaced |= {f"{owner_path}.{n}.{w}" for n in group.projections for w in ("weight", "bias")}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            tensors[key] = tensor.to(dtype)
    _assign_plain_tensors(model, tensors, manifest["tied"], replaced, folder)
    for block, group, module in modules:
        install_group(block, group, module)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{folder / WEIGHTS} lacks {len(left)} tensor(s): {left[:3]}")


def _entry_target(entry, groups: dict, layers: int, where: Path) -> tuple[int, ProjectionGroup]:
    """The (layer, group) a manifest entry names, checked."""
    from restorelcc.loading import CheckpointError

    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: a group entry must be an object, got {entry!r}")
    layer, group = entry.get("layer"), groups.get(entry.get("group"))
    if not isinstance(layer, int) or not 0 <= layer < layers or group is None:
        raise CheckpointError(
            f"{where}: entry {entry} names no group of this model ({layers} layers; groups "
            f"{', '.join(groups)})"
        )
    return layer, group


def _entry_packing(entry: dict, where) -> tuple[str, str, bool]:
    """The (format, backend, decode_streams) a manifest entry records, checked
    (``CheckpointError`` naming ``where``)."""
    from restorelcc.loading import CheckpointError

    format, backend, streams = (entry.get(k) for k in ("format", "backend", "decode_streams"))
    try:
        if format not in (FORMAT_24, FORMAT_BITMAP):
            raise ValueError(f"unknown format {format!r}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        check_backend_format(backend, format)
        if not isinstance(streams, bool):
            raise ValueError(f"decode_streams must be true or false, got {streams!r}")
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return format, backend, streams


def _packed_module(
    entry: dict, linears: list[nn.Linear], tensors: dict[str, torch.Tensor], path: str, where
) -> PackedLinear:
    """The packed module of ``entry`` from its tensors (taken out of ``tensors``), checked
    against the ``nn.Linear`` modules it replaces."""
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
    has_bias = tuple(bool(b) for b in entry.get("has_bias", ()))
    if (
        packed.format != entry.get("format")
        or len(has_bias) != len(linears)
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
    _, backend, streams = _entry_packing(entry, f"{where}: {path}")
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
