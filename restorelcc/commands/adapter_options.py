"""The ``--adapter`` option of ``eval`` and ``bench``: its argument, the ``Restoration``
it names (read before any model loads), its refusal for a packed checkpoint, its folder
as an input that an output must not replace, and its entry in a report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_adapter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        default=None,
        help="a restore --out directory, or its adapter.json or adapter.safetensors: fold "
        "that restoration into the model first (the pruned model it was made for)",
    )


def read_adapter(directory: str | None):
    """The ``Restoration`` saved in ``directory`` (read before any model loads, so a bad
    path fails at once), or None without ``--adapter``; fold it with ``.fold(model)``."""
    if directory is None:
        return None
    from restorelcc.lcc import Restoration

    return Restoration.load(directory)


def refuse_adapter_on_packed(args: argparse.Namespace) -> None:
    """``--adapter`` refused for a packed checkpoint ``--model``: its o_proj biases are
    packed with it, so a restoration is folded in before packing."""
    if args.adapter is not None:
        raise ValueError(
            f"--adapter: {args.model} is a packed checkpoint; fold the restoration before "
            "packing (restorelcc restore --merged, then restorelcc pack)"
        )


def adapter_input(path: str | None):
    """``--adapter`` as ``check_spares_inputs`` takes it: the adapter folder, also where
    one of its files was given (a report must not replace the other)."""
    from restorelcc.lcc.adapter import adapter_directory

    return None if path is None else adapter_directory(path)


def adapter_summary(directory: str | None, restoration) -> dict | None:
    """The report's ``adapter`` entry: its path as typed, its ``origin`` (the absolute
    path, as ``model_origin`` records a model folder) and ``Restoration.summary()``; None
    without ``--adapter``."""
    if restoration is None:
        return None
    origin = {"path": str(Path(directory).expanduser().resolve())}
    return {"path": str(directory), "origin": origin, **restoration.summary()}
