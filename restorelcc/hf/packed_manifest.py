"""The manifest of a packed checkpoint, ``restorelcc_packed.json`` (the folder's layout:
``restorelcc.hf.packed_checkpoint``): the names of the folder's files and the manifest's
format version, where a group's packed module sits in its owner, and the reading and checks
of the manifest and of its group entries (``CheckpointError`` naming the file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lcc_kernels.dispatch import BACKENDS, check_backend_format
from lcc_kernels.formats import FORMAT_24, FORMAT_BITMAP, SUPPORTED_DTYPES
from restorelcc.hf.swap_plan import ProjectionGroup

PACKED_INFO = "restorelcc_packed.json"
WEIGHTS = "restorelcc_packed.safetensors"  # not model.safetensors: transformers refuses it
FORMAT_VERSION = 1


def _module_name(group: ProjectionGroup) -> str:
    """The owner's attribute holding the group's packed module."""
    return group.packed if group.packed is not None else group.projections[0]


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


def _check_dtype(dtype: torch.dtype | None, name, what: str, folder: Path) -> None:
    """``CheckpointError`` where ``dtype`` (that of the tensor stored for ``what``; None:
    none stored, which the load reports) is not the dtype ``name`` that the manifest gives
    ``what``, or where ``name`` is not a dtype name."""
    from restorelcc.loading import CheckpointError

    named = _stored_dtype(name, folder)
    if dtype is not None and dtype != named:
        raise CheckpointError(
            f"{folder / PACKED_INFO}: {what} holds {dtype}, not the {named} it names"
        )


def _check_group_dtype(
    entry: dict, layer: int, group: ProjectionGroup, dtype, manifest: dict, folder: Path
) -> None:
    """``_check_dtype`` of a group's packed weight: ``dtype`` (as stored; None: not stored)
    against the dtype its entry records (an entry without one, from before entries recorded
    theirs: the manifest's)."""
    what = f"the layer {layer} {group.name} group at {entry.get('module')}"
    _check_dtype(dtype, entry.get("dtype", manifest["dtype"]), what, folder)


def _packed_dtypes(folder: Path, modules: list) -> dict:
    """The dtype of the packed weight stored for each of ``modules`` (entries' ``module``
    paths) in the folder's weights file: its values' (``<module>.packed.values``), read
    from the file's header with an empty slice (no weights read); a module with none
    stored is left out. ``CorruptCacheError`` for a file that cannot be read."""
    from restorelcc.prune.checkpoint import _open_safetensors

    with _open_safetensors(folder / WEIGHTS) as file:
        keys, dtypes = set(file.keys()), {}
        for module in modules:
            key = f"{module}.packed.values"
            if key in keys:
                part = file.get_slice(key)  # a 0-d tensor has no slice: one number read
                dtypes[module] = (part[:0] if part.get_shape() else file.get_tensor(key)).dtype
    return dtypes


def _entry_target(entry, groups: dict, layers: int, where: Path) -> tuple[int, ProjectionGroup]:
    """The (layer, group) a manifest entry names, checked."""
    from restorelcc.loading import CheckpointError

    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: a group entry must be an object, got {entry!r}")
    name = entry.get("group")
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: entry {entry}: group must be a string, got {name!r}")
    layer, group = entry.get("layer"), groups.get(name)
    if not isinstance(layer, int) or not 0 <= layer < layers or group is None:
        raise CheckpointError(
            f"{where}: entry {entry} names no group of this model ({layers} layers; groups "
            f"{', '.join(groups)})"
        )
    return layer, group


def _entry_packing(
    entry: dict, group: ProjectionGroup, where
) -> tuple[str, str, bool, tuple[bool, ...]]:
    """The (format, backend, decode_streams, has_bias) a manifest entry of ``group``
    records, checked (``CheckpointError`` naming ``where`` and the entry); ``has_bias``:
    whether each of the group's projections had a bias, one flag per projection."""
    from restorelcc.loading import CheckpointError

    format, backend, streams = (entry.get(k) for k in ("format", "backend", "decode_streams"))
    has_bias = entry.get("has_bias")
    count = len(group.projections)
    try:
        if format not in (FORMAT_24, FORMAT_BITMAP):
            raise ValueError(f"unknown format {format!r}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        check_backend_format(backend, format)
        if not isinstance(streams, bool):
            raise ValueError(f"decode_streams must be true or false, got {streams!r}")
        flags = isinstance(has_bias, list) and all(isinstance(b, bool) for b in has_bias)
        if not flags or len(has_bias) != count:
            raise ValueError(
                f"has_bias must be a list of {count} true/false flags (one per projection "
                f"of {', '.join(group.projections)}), got {has_bias!r}"
            )
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc} (entry {entry})") from exc
    return format, backend, streams, tuple(has_bias)
