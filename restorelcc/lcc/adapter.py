"""Restoration adapters on disk, and merged checkpoints.

An adapter is a directory with ``adapter.safetensors`` (``heads [S, 2]`` int64,
``directions [S, d, d]``, ``beta [S, d]``, ``b [S, d]``, optional ``scores [L, H]``; fp32;
``fingerprint_sketches [P, 16, 4]`` fp64) and ``adapter.json`` (format version, method, model
family and geometry, the selected heads, the fingerprint of the pruned model, its masks'
hashes and per-parameter norms, hyper-parameters, the run's report and metadata), written
atomically. Its size is mostly the fp32 directions, ``S * d * d * 4`` bytes: ~1 MB for
SmolLM2-135M's 68 heads, ~17 MB for 256 heads of d = 128 (Llama-2-7B at 25%); a
training-free adapter holds every head.

Format 2 (fingerprint v2: exact masks + value sketches, see ``restorelcc.lcc.fingerprint``)
replaced format 1, whose single hash mixed the masks with bf16-rounded ``o_proj`` values:
it refused fp16-made adapters on fp32 models and missed changes of other weights. A format
1 adapter cannot be checked (the masks cannot be read back out of that hash), so loading it
is an ``AdapterError`` asking to re-create it with ``restorelcc restore``.

A merged checkpoint is the pruned model with the restoration folded into its ``o_proj``
biases, saved with ``save_pretrained`` so that plain ``transformers`` loads it: the family's
config flag that gives ``o_proj`` a bias (``attention_bias`` for Llama) is switched on, and
the q/k/v biases that the flag also creates are saved as zeros. ``export_merged`` writes
it; a model folded in place (``Restoration.fold``) and saved with its own
``save_pretrained`` lacks that flag, so transformers drops the biases on loading.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from restorelcc.errors import NonFiniteError, UnsupportedModelError
from restorelcc.hf.families import HeadGeometry, family_of
from restorelcc.lcc.fingerprint import ModelFingerprint
from restorelcc.lcc.restoration import AdapterError, Restoration
from restorelcc.output_dirs import atomic_directory, check_output_directory
from restorelcc.provenance import run_metadata

ADAPTER_FORMAT = 2
FINGERPRINT_SKETCHES = "fingerprint_sketches"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
MERGED_INFO = "restorelcc.json"


def save_adapter(restoration: Restoration, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``restoration`` into the folder ``directory`` (a leading ``~`` expanded), made
    for it: ``adapter.safetensors`` and ``adapter.json`` (the module docstring), written
    atomically (the folder appears only once complete); returns the directory.

    An existing non-empty ``directory`` is refused (``FileExistsError``) unless
    ``overwrite``, which replaces the whole folder: everything in it is deleted, not only
    a previous adapter's files. So ``overwrite`` replaces only a previous adapter folder
    (one holding ``adapter.json``, a ``restore --out`` included, whose report and merged
    checkpoint go with it); any other non-empty folder is refused even then."""
    from safetensors.torch import save_file

    tensors = {
        "heads": restoration.heads.contiguous(),
        "directions": restoration.directions.contiguous(),
        "beta": restoration.beta.contiguous(),
        "b": restoration.b.contiguous(),
    }
    if restoration.scores is not None:
        tensors["scores"] = restoration.scores.contiguous()
    tensors[FINGERPRINT_SKETCHES] = restoration.fingerprint.sketches().contiguous()
    meta = {
        "format": ADAPTER_FORMAT,
        "method": restoration.method,
        "model_type": restoration.model_type,
        "geometry": dataclasses.asdict(restoration.geometry),
        "fingerprint": restoration.fingerprint.to_json(),
        "selected_heads": restoration.heads.tolist(),
        "trainable_parameters": restoration.trainable_parameters,
        "hyperparameters": restoration.hyperparameters,
        "report": restoration.report,
        "metadata": run_metadata(),
    }
    with atomic_directory(directory, overwrite=overwrite, replaces=ADAPTER_CONFIG) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(directory).expanduser()


def adapter_folder_message(path: Path) -> str | None:
    """Where the folder ``path``, given as a model, is an adapter folder (a ``restore
    --out``: it holds ``adapter.json``), a message saying so and what to give instead (the
    pruned model, or a merged checkpoint inside); else None. Commands name the option and
    what it takes themselves (``restorelcc.commands.model_options``)."""
    if not (path / ADAPTER_CONFIG).is_file():
        return None
    merged = merged_checkpoints(path)
    checkpoints = f", or the merged checkpoint {' or '.join(merged)}" if merged else ""
    return (
        f"{path} is a restoration adapter folder ({ADAPTER_CONFIG}), not a model: give "
        f"the pruned model it was made for{checkpoints}"
    )


def merged_checkpoints(path: Path) -> list[str]:
    """The checkpoint folders (holding ``config.json``) inside the folder ``path``: an
    adapter folder's ``merged``."""
    return [str(sub) for sub in sorted(path.iterdir()) if (sub / "config.json").is_file()]


def adapter_directory(path: str | Path) -> Path:
    """The adapter folder ``path`` (a leading ``~`` expanded) names: itself, or the folder
    of the adapter file (``adapter.json``, ``adapter.safetensors``) it is."""
    path = Path(path).expanduser()
    if path.name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) and path.is_file():
        return path.parent
    return path


def load_adapter(directory: str | Path) -> Restoration:
    """Read an adapter written by ``save_adapter`` (``directory``, or either of its two
    files); ``AdapterError`` if missing or malformed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = adapter_directory(directory)
    weights, config = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    if not weights.is_file() or not config.is_file():
        raise AdapterError(
            f"{directory} is not a restoration adapter "
            f"(needs {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG})"
        )
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config} is not valid JSON: {exc}") from None
    if isinstance(meta, dict) and meta.get("format") == 1:
        raise AdapterError(
            f"{config} is adapter format 1 (fingerprint v1, which cannot tell a dtype change "
            f"from other weights); this version reads format {ADAPTER_FORMAT}: re-create the "
            "adapter with `restorelcc restore` on the pruned model"
        )
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise AdapterError(
            f"{config} has format {meta.get('format') if isinstance(meta, dict) else None!r}; "
            f"this version reads format {ADAPTER_FORMAT}"
        )
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"{weights} cannot be read: {exc}") from None
    try:
        geometry = HeadGeometry(**{k: int(v) for k, v in meta["geometry"].items()})
        restoration = Restoration(
            model_type=str(meta["model_type"]),
            geometry=geometry,
            heads=tensors["heads"],
            directions=tensors["directions"],
            beta=tensors["beta"],
            b=tensors["b"],
            fingerprint=ModelFingerprint.from_json(
                meta["fingerprint"], tensors[FINGERPRINT_SKETCHES]
            ),
            method=str(meta.get("method", "restorelcc")),
            hyperparameters=meta.get("hyperparameters", {}),
            scores=tensors.get("scores"),
            report=meta.get("report", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(
            f"{directory} is a malformed adapter: {type(exc).__name__}: {exc}"
        ) from None
    except (AdapterError, NonFiniteError) as exc:  # Restoration's own checks
        raise AdapterError(f"{directory} is a malformed adapter: {exc}") from None
    if restoration.heads.tolist() != meta.get("selected_heads"):
        raise AdapterError(f"{directory}: heads in {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} disagree")
    return restoration


def check_mergeable(model_or_config) -> None:
    """Raise ``UnsupportedModelError`` where the family of ``model_or_config`` (a model or
    its config: checked before the weights load) has an ``o_proj`` that cannot hold the
    bias a merged checkpoint needs (its family's ``o_proj_bias_flag`` is None)."""
    family = family_of(model_or_config)
    if family.o_proj_bias_flag is None:
        raise UnsupportedModelError(
            f"a merged checkpoint needs an o_proj bias, which {family.model_type} models cannot "
            "hold in transformers; save the adapter and apply it with restorelcc instead"
        )


def merged_config(model: nn.Module):
    """A copy of ``model.config`` whose family flag gives ``o_proj`` a bias; raises
    ``UnsupportedModelError`` for families whose ``o_proj`` cannot hold one."""
    check_mergeable(model)
    config = copy.deepcopy(model.config)
    setattr(config, family_of(model).o_proj_bias_flag, True)
    return config


def export_merged(
    restoration: Restoration,
    model: nn.Module,
    directory: str | Path,
    tokenizer=None,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Save ``model`` with ``restoration`` folded in as a plain ``transformers`` checkpoint.

    This is how a folded model is saved (``save_pretrained`` after ``Restoration.fold``
    writes ``o_proj`` biases that its config does not enable: transformers drops them).
    ``model`` must be the pruned model the restoration was made for, not yet folded; it is
    left unchanged. Biases the new config implies but the model lacks (q/k/v) are zeros.
    ``check=False`` skips ``check_model`` (a pass over every weight) where the restoration
    was just made from ``model``, as ``fold`` and ``attached`` allow.

    ``directory`` (a leading ``~`` expanded) gets the weights, config, generation config,
    ``restorelcc.json`` (the restoration's summary) and, given ``tokenizer``, its files;
    without one, ``load_model`` refuses the folder until a tokenizer is saved into it
    (``tokenizer.save_pretrained(directory)``). Written atomically; returns the directory.
    An existing non-empty ``directory`` is refused unless ``overwrite``, which replaces
    the whole folder, everything in it deleted: so it replaces only a previous merged
    export (a folder holding ``restorelcc.json``) and refuses any other non-empty folder
    (``FileExistsError``), the pruned checkpoint it was made from included.
    """
    from transformers import AutoModelForCausalLM

    # the folder first: a wrong one is refused before check_model's pass over the weights
    check_output_directory(directory, overwrite, replaces=MERGED_INFO)
    if check:
        restoration.check_model(model)
    config = merged_config(model)
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    with restoration.folded(model, check=False):
        state = model.state_dict()
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(config, dtype=dtype)
        for name, param in shell.state_dict().items():
            if name in state:
                continue
            if not name.endswith(".bias"):
                raise UnsupportedModelError(
                    f"merged {config.model_type} model expects {name}, which the model lacks"
                )
            state[name] = torch.zeros(param.shape, dtype=dtype, device=device)
        shell.load_state_dict(state, strict=True, assign=True)
        shell.generation_config = copy.deepcopy(model.generation_config)
        with atomic_directory(directory, overwrite=overwrite, replaces=MERGED_INFO) as tmp:
            shell.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            info = {"restoration": restoration.summary(), "metadata": run_metadata()}
            (tmp / MERGED_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return Path(directory).expanduser()
