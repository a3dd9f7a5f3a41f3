"""Options shared by the subcommands: ``--device``, ``--adapter``, positive integers, the
``--json`` report path, options a run would ignore, and the swap of a model's pruned
attention (and, with ``--mlp``, MLP) projections."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from restorelcc.errors import RestoreLCCError

if TYPE_CHECKING:
    import torch


def positive_int(text: str) -> int:
    """An argparse ``type`` for values that must be integers >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def limit_value(text: str) -> int | None:
    """An argparse ``type`` for ``--limit``: a positive count, or ``all``/``none`` (None:
    every item)."""
    return None if text.lower() in ("none", "all") else positive_int(text)


def remember_defaults(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Keep the defaults of the options ``names`` on the parsed namespace, for
    ``given_options``."""
    parser.set_defaults(option_defaults={name: parser.get_default(name) for name in names})


def given_options(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (remembered by ``remember_defaults``) set to other than their
    default, as flags (``--max-steps``)."""
    return [
        "--" + name.replace("_", "-")
        for name in names
        if getattr(args, name) != args.option_defaults[name]
    ]


class ReportPathError(RestoreLCCError, ValueError):
    """A ``--json`` report path whose folder cannot be made or written."""


def check_json_path(path: str | Path) -> Path:
    """``path`` as a Path where the report can be written after the work (checked before
    it): ``FileExistsError`` if it is a directory; ``ReportPathError`` if its nearest
    existing parent is not a directory (the missing ones are made when writing) or not
    writable (the report is written to a temporary file there, then renamed)."""
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"--json {path} is a directory")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ReportPathError(f"--json {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportPathError(f"--json {path}: directory {parent} is not writable")
    return path


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if there is one)"
    )


def resolve_device(text: str | None) -> torch.device:
    """The ``--device`` value as a ``torch.device``: CUDA when none is given and one is
    available, else the CPU. Raises ``ValueError`` for a malformed or unavailable device."""
    import torch  # here, so that parsing the command line stays fast

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type != "cpu":
        raise ValueError(f"--device {text}: only cpu and cuda devices are supported")
    return device


def add_adapter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        default=None,
        help="a restore --out directory (or its adapter files): fold that restoration into "
        "the model first; it must be the pruned model the adapter was made for",
    )


def read_adapter(directory: str | None):
    """The ``Restoration`` saved in ``directory`` (read before any model loads, so a bad
    path fails at once), or None without ``--adapter``; fold it with ``.fold(model)``."""
    if directory is None:
        return None
    from restorelcc.lcc import Restoration

    return Restoration.load(directory)


class NothingToSwapError(RestoreLCCError, ValueError):
    """A model whose attention projections hold no pruned matrix."""


def add_mlp_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mlp",
        action="store_true",
        help="swap the pruned MLP projections (gate/up/down_proj) too: most of a block's "
        "weight bytes, hence most of a decode step's",
    )


def swap_pruned_attention(
    model,
    option: str,
    name: str,
    format: str,
    min_sparsity: float,
    decode_streams: bool = False,
    mlp: bool = False,
):
    """``swap_attention(model, format, min_sparsity=..., decode_streams=..., mlp=...)``;
    its ``SwapReport``. Raises ``NothingToSwapError`` (naming ``option`` and the model
    ``name``) if nothing was pruned, so nothing was swapped."""
    from restorelcc.hf.swap import swap_attention

    report = swap_attention(
        model, format, min_sparsity=min_sparsity, decode_streams=decode_streams, mlp=mlp
    )
    if not report.swapped_layers:
        what = "attention or MLP" if mlp else "attention"
        raise NothingToSwapError(
            f"{option}: {name} has no pruned {what} layer to swap (no {what} projection is "
            f"pruned: none has {min_sparsity:.0%} zeros or more); prune the model first"
        )
    return report


def describe_swap(report) -> str:
    """One line: the swapped layers, their formats and the bytes of what was swapped."""
    return (
        f"swapped layers {report.swapped_layers[0]}..{report.swapped_layers[-1]} "
        f"({', '.join(sorted({g.format for g in report.groups}))}); {report.scope} weights "
        f"{report.bytes_before / 2**20:.1f} -> {report.bytes_after / 2**20:.1f} MiB"
    )
