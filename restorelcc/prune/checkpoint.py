"""Check a saved checkpoint's sparsity pattern without building the model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from restorelcc.errors import CorruptCacheError, ModelNotFoundError
from restorelcc.hf.families import family_of, head_geometry
from restorelcc.prune.masks import parse_pattern
from restorelcc.prune.report import MatrixReport, checked_patterns, matrix_report

PRUNE_REPORT = "prune_report.json"  # written next to a pruned checkpoint by ``restorelcc prune``


def _tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (single file or sharded index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: directory / file for name, file in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCacheError(f"{index} is not a safetensors index ({exc!r})") from None
    single = directory / "model.safetensors"
    if not single.is_file():
        raise ModelNotFoundError(f"{directory} holds no model.safetensors (or sharded index)")
    with _open_safetensors(single) as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def _open_safetensors(path: Path):
    """``safe_open(path)``; a missing, truncated or garbled file raises ``CorruptCacheError``."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CorruptCacheError(f"cannot read {path}: {exc}") from None


def expected_shapes(config, family) -> dict[str, tuple[int, int]]:
    """Shape of each block linear implied by ``config`` (``[out, in]``)."""
    g = head_geometry(config)
    hidden, inter = config.hidden_size, config.intermediate_size
    a, m = family.attention, family.mlp
    return {
        f"{a}.{family.q_proj}": (g.heads * g.head_dim, hidden),
        f"{a}.{family.k_proj}": (g.kv_heads * g.head_dim, hidden),
        f"{a}.{family.v_proj}": (g.kv_heads * g.head_dim, hidden),
        f"{a}.{family.o_proj}": (hidden, g.heads * g.head_dim),
        f"{m}.{family.gate_proj}": (inter, hidden),
        f"{m}.{family.up_proj}": (inter, hidden),
        f"{m}.{family.down_proj}": (hidden, inter),
    }


def read_prune_report(directory: Path) -> dict | None:
    """The checkpoint's ``prune_report.json`` as a dict, or None if it has none.

    A file that is not a JSON object, or whose ``structured`` part lacks what ``inspect``
    reads from it (``_check_structured``), raises ``CorruptCacheError`` naming it.
    """
    path = directory / PRUNE_REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:  # JSON and UTF-8 decoding errors alike
        raise CorruptCacheError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(report, dict):
        raise CorruptCacheError(f"{path} holds a {type(report).__name__}, not a prune report")
    _check_structured(report.get("structured"), path)
    return report


# What a structured prune report holds as [before, after] counts, and as a fraction.
STRUCTURED_COUNTS = ("heads", "kv_heads", "intermediate_size")
STRUCTURED_FRACTION = "removed_fraction_of_blocks"


def _check_structured(structured, path: Path) -> None:
    """Raise ``CorruptCacheError`` naming ``path`` and the key unless ``structured`` is
    None or a dict with ``STRUCTURED_COUNTS`` as ``[before, after]`` non-negative integers
    and ``STRUCTURED_FRACTION`` as a number in [0, 1]."""
    if structured is None:
        return
    if not isinstance(structured, dict):
        raise CorruptCacheError(
            f"{path}: 'structured' holds a {type(structured).__name__}, not a dict"
        )
    is_count = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0
    for key in (*STRUCTURED_COUNTS, STRUCTURED_FRACTION):
        if key not in structured:
            raise CorruptCacheError(f"{path}: 'structured' lacks {key!r}")
        value = structured[key]
        if key == STRUCTURED_FRACTION:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
            fits = fits and 0 <= value <= 1
            wanted = "a number in [0, 1]"
        else:
            fits = isinstance(value, list) and len(value) == 2 and all(map(is_count, value))
            wanted = "[before, after] counts"
        if not fits:
            raise CorruptCacheError(
                f"{path}: 'structured' {key!r} should be {wanted}, got {value!r}"
            )


def _requested_patterns(prune_report: dict | None) -> tuple[tuple[int, int], ...]:
    """The N:M patterns to check: the usual ones plus the one the report says was pruned."""
    try:
        requested = parse_pattern(prune_report["pattern"]) if prune_report else None
    except (KeyError, TypeError, ValueError):
        requested = None  # no or an unreadable pattern: check the usual ones only
    return checked_patterns(requested)


def _not_a_checkpoint(directory: Path) -> str:
    """What ``directory``, which exists and holds no ``config.json``, is instead: a file,
    an adapter folder (``adapter_folder_message``, as ``resolve_model`` says: no option
    to suggest), or a folder of something else."""
    from restorelcc.assets import is_a_file
    from restorelcc.lcc.adapter import adapter_folder_message

    if not directory.is_dir():
        return is_a_file(directory)
    adapter = adapter_folder_message(directory)
    return adapter or f"{directory} is not a checkpoint directory (no config.json)"


def refuse_packed_checkpoint(directory: str | Path) -> None:
    """``CheckpointError`` where ``directory`` is a packed checkpoint, which ``inspect``
    cannot read (``refuse_packed``); a file check, made before anything else is."""
    from restorelcc.hf.packed_checkpoint import refuse_packed

    refuse_packed(
        directory,
        "inspect reads dense checkpoints (inspect the one it was packed from; its "
        "restorelcc_packed.json lists the packed modules)",
    )


def checkpoint_directory(directory: str | Path) -> Path:
    """The checkpoint folder ``directory`` names: itself, or for a built-in model name
    (``smollm2-135m``) that is no path, its converted checkpoint in the model cache
    (``resolve_model``: converted on first use, as every command that loads it does).
    Otherwise ``ModelNotFoundError`` saying what ``directory`` is instead."""
    from restorelcc.assets import resolve_model

    path = Path(directory)
    if (path / "config.json").is_file():
        return path
    if not path.exists():  # a built-in name, else resolve_model's error, as --model's
        return resolve_model(directory)
    raise ModelNotFoundError(_not_a_checkpoint(path))


def inspect_checkpoint(directory: str | Path, progress: bool = True) -> dict:
    """Per-matrix sparsity, N:M validity and shape consistency of a saved checkpoint
    (a folder, or a built-in model name: ``checkpoint_directory``); ``progress``: a bar
    over layers (each reads its block linears' tensors: minutes for an 8B model).

    Returns ``{"directory": the folder read, "matrices": [MatrixReport...], "geometry":
    {...}, "shape_mismatches": [...], "structured": {...} | None}`` (``structured`` from
    the checkpoint's prune report). N:M validity covers 2:4, 4:8 and the pattern the prune
    report names.
    """
    from safetensors import SafetensorError
    from tqdm.auto import tqdm

    from restorelcc.assets import load_config

    directory = checkpoint_directory(directory)
    refuse_packed_checkpoint(directory)
    config = load_config(directory)
    family = family_of(config)
    files = _tensor_files(directory)
    expected = expected_shapes(config, family)
    prune_report = read_prune_report(directory)
    patterns = _requested_patterns(prune_report)
    matrices: list[MatrixReport] = []
    mismatches: list[str] = []
    handles: dict[Path, object] = {}
    try:
        layers = range(config.num_hidden_layers)
        for layer in tqdm(layers, desc="inspect", unit="layer", disable=not progress):
            for name, shape in expected.items():
                key = f"{family.layers_path}.{layer}.{name}.weight"
                if key not in files:
                    raise CorruptCacheError(f"{directory} lacks tensor {key}")
                path = files[key]
                if path not in handles:
                    handles[path] = _open_safetensors(path)
                try:
                    weight = handles[path].get_tensor(key)
                except SafetensorError as exc:
                    raise CorruptCacheError(f"cannot read {key} from {path}: {exc}") from None
                report = matrix_report(f"layers.{layer}.{name}", weight, patterns)
                if report.shape != shape:
                    mismatches.append(f"{key}: {report.shape} but config implies {shape}")
                matrices.append(report)
    finally:
        handles.clear()
    g = head_geometry(config)
    structured = prune_report.get("structured") if prune_report else None
    return {
        "directory": str(directory),
        "model_type": config.model_type,
        "geometry": {**dataclasses.asdict(g), "intermediate_size": config.intermediate_size},
        "matrices": matrices,
        "shape_mismatches": mismatches,
        "structured": structured,
    }
