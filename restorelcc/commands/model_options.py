"""What a model option (``--model``, ``--dense``, ``--pruned``) or ``--adapter`` names,
told before anything loads where it is of the wrong kind: a restoration adapter folder
(``restore --out``) given as a model, a merged restoration given with ``--adapter``, a
model given as ``--adapter``, a built-in (dense) model's name given as ``restore
--pruned``. Each message names the option and suggests only options the command has
(``resolve_model``, which knows no option, suggests none)."""

from __future__ import annotations

import argparse
from pathlib import Path

from restorelcc.errors import ModelNotFoundError
from restorelcc.lcc.adapter import (
    ADAPTER_CONFIG,
    MERGED_INFO,
    adapter_directory,
    merged_checkpoints,
)
from restorelcc.lcc.restoration import AdapterError

# What the model options of the commands without --adapter take, as messages say it.
DENSE_MODEL = "the unpruned (dense) model that the pruned checkpoint was pruned from"
PRUNED_MODEL = "the pruned checkpoint it was made from"
MODEL_TO_PRUNE = "the model to prune (a checkpoint folder or a built-in name)"
# What --adapter takes.
ADAPTER_FOLDER = f"a restore --out folder ({ADAPTER_CONFIG} and adapter.safetensors)"


def is_merged_restoration(path: str | Path) -> bool:
    """Whether the folder ``path`` is a merged restoration: it holds ``restorelcc.json``
    (``restore --merged``'s ``--out/merged``, ``export_merged``'s folder)."""
    return (Path(path).expanduser() / MERGED_INFO).is_file()


def refuse_adapter_folder(option: str, given: str, instead: str, merged_as: str | None = None):
    """Raise ``ModelNotFoundError`` where ``given`` (the value of the model option
    ``option``) is a restoration adapter folder (it holds ``adapter.json``, no
    ``config.json``): the message says to give ``instead`` and, where the command takes
    a merged checkpoint (``merged_as``: how, appended to its path), the merged
    checkpoint the folder holds."""
    path = Path(given).expanduser()
    if (path / "config.json").is_file() or not (path / ADAPTER_CONFIG).is_file():
        return
    merged = merged_checkpoints(path)
    if merged and merged_as is not None:
        instead += f", or its merged checkpoint {' or '.join(merged)}{merged_as}"
    raise ModelNotFoundError(
        f"{option} {given} is a restoration adapter folder ({ADAPTER_CONFIG}), not a model: "
        f"give {instead}"
    )


def check_adapter_options(args: argparse.Namespace, verb: str) -> None:
    """``eval``'s and ``bench``'s ``--model`` and ``--adapter`` (``verb``: what the
    command does with a model, "evaluate", "time"), before anything loads: an adapter
    folder as ``--model`` (``refuse_adapter_folder``), a merged restoration with
    ``--adapter`` (its restoration is folded in already), and a model as ``--adapter``
    (``check_adapter_folder``)."""
    refuse_adapter_folder(
        "--model",
        args.model,
        f"the pruned model it was made for as --model with --adapter {args.model}",
        merged_as=" as --model without --adapter",
    )
    if args.adapter is None:
        return
    if is_merged_restoration(args.model):
        raise AdapterError(
            f"--model {args.model} is a merged restoration ({MERGED_INFO}: restore --merged, "
            f"export_merged), a restoration folded in already: {verb} it without --adapter, "
            f"or give the pruned model it was made for as --model with --adapter {args.adapter}"
        )
    check_adapter_folder(args.adapter)


def check_adapter_folder(given: str) -> None:
    """Raise ``AdapterError`` where ``--adapter`` (``given``) names a model folder rather
    than an adapter: a merged restoration (pointing to the adapter folder that holds it,
    where it is in one), a packed checkpoint or a plain checkpoint, each to be given as
    ``--model``. Anything else is left to ``Restoration.load``."""
    from restorelcc.hf.packed_checkpoint import PACKED_INFO, is_packed_checkpoint

    path = adapter_directory(given)
    if (path / ADAPTER_CONFIG).is_file():
        return
    use = f"give it as --model, without --adapter; --adapter takes {ADAPTER_FOLDER}"
    if is_merged_restoration(path):
        what = f"a merged restoration ({MERGED_INFO}), a model with a restoration folded in"
        if (path.parent / ADAPTER_CONFIG).is_file():
            use = f"give its adapter folder (--adapter {path.parent}), or {given} as --model "
            use += "without --adapter"
    elif is_packed_checkpoint(path):
        what = f"a packed checkpoint ({PACKED_INFO}: restorelcc pack), a model"
    elif (path / "config.json").is_file():
        what = "a model checkpoint (config.json)"
    else:
        return
    raise AdapterError(f"--adapter {given} is {what}, not a restoration adapter: {use}")


def refuse_builtin_pruned(args: argparse.Namespace, error: type[Exception]) -> None:
    """Raise ``error`` where ``restore --pruned`` names a built-in model (``smollm2-135m``)
    rather than a folder: a dense model; asking whether the two models were swapped where
    ``--dense`` is a folder."""
    from restorelcc.assets import KNOWN_MODELS

    key = str(args.pruned).lower()
    if Path(args.pruned).expanduser().exists() or key not in KNOWN_MODELS:
        return
    swapped = ""
    if Path(args.dense).expanduser().is_dir():
        swapped = (
            f"; are --dense and --pruned swapped (--dense {args.pruned} --pruned {args.dense})?"
        )
    raise error(
        f"--pruned {args.pruned} names the built-in dense model: --pruned takes a pruned "
        f"checkpoint folder (a restorelcc prune --out){swapped}"
    )
