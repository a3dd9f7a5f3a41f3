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

The folder holds ``config.json``, ``generation_config.json``, the tokenizer's files,
``restorelcc_packed.safetensors`` and ``restorelcc_packed.json`` (which modules are
packed, in what format and dtype, with which options; tied weights; the embeddings'
dtype, the model's as ``dtype="auto"`` builds it). In the former, a
swapped module's tensors are its ``lcc_kernels`` state dict under
``<module path>.packed.`` (``info``, ``split_sizes`` and the format's tensors) and its
bias under ``<module path>.bias``; every other tensor is under its usual key. Plain
transformers finds no weights file to read there (rather than loading the config with
random projections): ``unswap_attention`` the loaded model and ``save_pretrained`` it for
a dense checkpoint.

This module is where the names are imported from: ``save_packed`` (written in
``packed_save``), ``load_packed`` (``packed_load``) and the file names (``packed_manifest``,
which also reads and checks the manifest). What a folder is and holds without reading its
weights is answered here: ``is_packed_checkpoint``, ``packed_swap``, ``refuse_packed``;
``packed_modules`` of a loaded model.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from restorelcc.hf import FORMATS
from restorelcc.hf.attention import PackedLinear
from restorelcc.hf.families import family_of
from restorelcc.hf.packed_load import load_packed
from restorelcc.hf.packed_manifest import (
    PACKED_INFO,
    WEIGHTS,
    _check_group_dtype,
    _entry_packing,
    _entry_target,
    _packed_dtypes,
    _read_manifest,
    _stored_dtype,
)
from restorelcc.hf.packed_save import save_packed
from restorelcc.hf.swap_plan import projection_groups

__all__ = [
    "PACKED_INFO",
    "WEIGHTS",
    "is_packed_checkpoint",
    "load_packed",
    "packed_modules",
    "packed_swap",
    "save_packed",
]


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
    """How the packed checkpoint ``directory`` was swapped, from its
    ``restorelcc_packed.json`` (no weights read: of the weights file, only the dtypes of
    the packed weights, checked against their entries as ``load_packed`` checks them):
    ``format``, ``mlp`` and ``decode_streams``, the options of the swap that ``restorelcc
    pack`` records (its report under ``info``; ``recorded`` True), or, where ``info`` holds
    no such report (``recorded`` False: a ``save_packed`` folder), as the groups show them
    (their one format, or "auto" where they mix; whether an MLP group is packed; whether a
    group runs decode streams); ``mlp_packed``: whether an MLP group is packed, as the
    groups show it whatever was recorded (``pack --mlp`` of a checkpoint whose MLP is not
    pruned records ``mlp`` True and packs none); ``dtype``: the name of the dtype its
    embeddings are stored in (the model's, unless parts of it were cast otherwise); and
    ``groups``: each packed group's (layer, group name) -> (format, backend,
    decode_streams). Raises
    ``ModelNotFoundError`` for a missing folder or one without config.json,
    ``CheckpointError`` for a folder that is not a packed checkpoint, a group entry that
    names no group of the model or records no valid format, backend, decode_streams and
    has_bias, an unknown dtype or a packed weight of another dtype than its entry records,
    and ``CorruptCacheError`` for a weights file that cannot be read."""
    from restorelcc.assets import resolve_model
    from restorelcc.loading import read_config

    folder = resolve_model(directory)
    manifest = _read_manifest(folder)
    dtype = str(_stored_dtype(manifest["dtype"], folder)).removeprefix("torch.")
    config, where = read_config(folder), folder / PACKED_INFO
    family = family_of(config)
    known = {group.name: group for group in projection_groups(family, mlp=True)}
    groups, targets = {}, []
    for entry in manifest["groups"]:
        layer, group = _entry_target(entry, known, config.num_hidden_layers, where)
        groups[(layer, group.name)] = _entry_packing(entry, group, where)[:3]
        targets.append((entry, layer, group))
    stored = _packed_dtypes(folder, [entry.get("module") for entry, _, _ in targets])
    for entry, layer, group in targets:
        _check_group_dtype(entry, layer, group, stored.get(entry.get("module")), manifest, folder)
    attention = {g.name for g in projection_groups(family, mlp=False)}
    formats = {format for format, _, _ in groups.values()}
    mlp_packed = any(group not in attention for _, group in groups)
    options = {
        "format": formats.pop() if len(formats) == 1 else "auto",
        "mlp": mlp_packed,
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
    return {
        **options,
        "recorded": recorded,
        "mlp_packed": mlp_packed,
        "dtype": dtype,
        "groups": groups,
    }


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
