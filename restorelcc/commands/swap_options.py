"""Options of the commands that swap a model's pruned attention (and, with ``--mlp``,
MLP) projections for the packed sparse modules (``eval --swap``, ``inspect --swap``,
``bench``): ``--mlp``, and the swap with its errors named after the option."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from restorelcc.errors import RestoreLCCError


class NothingToSwapError(RestoreLCCError, ValueError):
    """A model whose attention projections hold no pruned matrix."""


def add_mlp_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mlp",
        action="store_true",
        help="swap the pruned MLP projections (gate/up/down_proj) too: most of a block's "
        "weight bytes, hence most of a decode step's",
    )


def check_mlp_needs_swap(args: argparse.Namespace) -> None:
    """``--mlp`` without ``--swap`` (``eval``, ``inspect``) would be ignored: refuse it."""
    if args.mlp and not args.swap:
        raise ValueError("--mlp swaps the MLP projections too: it needs --swap FORMAT")


def nothing_to_swap(mlp: bool, min_sparsity: float, structured: bool = False) -> str:
    """Why a swap found nothing to pack; ``structured``: it was pruned by removing heads."""
    what = "attention or MLP" if mlp else "attention"
    why = f"no {what} projection is pruned (none has {min_sparsity:.0%} zeros or more)"
    if structured:
        return f"{why}; structured pruning (--pattern heads) leaves dense matrices: none to pack"
    return f"{why}; prune it first (unstructured or N:M: --pattern heads leaves dense matrices)"


def pruned_structurally(model: str) -> bool:
    """Whether the checkpoint folder ``model`` has a prune report of ``--pattern heads``."""
    from restorelcc.prune.checkpoint import read_prune_report

    with contextlib.suppress(RestoreLCCError):  # an unreadable report: inspect names it
        report = read_prune_report(Path(model)) if Path(model).is_dir() else None
        return bool(report) and report.get("pattern") == "heads"
    return False


@contextlib.contextmanager
def swap_errors_named(option: str, format: str):
    """A ``SwapError`` inside again, after ``option`` and ``format``; for a weight that
    does not fit 2:4, with the formats that take it."""
    from restorelcc.hf.swap_plan import SwapError

    try:
        yield
    except SwapError as error:
        hint = ""
        if "does not fit the 2:4 format" in str(error):
            hint = f"; use {option} auto (2:4 where a layer fits, else bitmap) or {option} bitmap"
        raise SwapError(f"{option} {format}: {error}{hint}") from error


def swap_pruned_attention(
    model,
    option: str,
    name: str,
    format: str,
    min_sparsity: float,
    decode_streams: bool = False,
    mlp: bool = False,
    dry_run: bool = False,
):
    """``swap_attention(model, format, min_sparsity=..., decode_streams=..., mlp=...,
    dry_run=...)``; its ``SwapReport``. Raises ``NothingToSwapError`` (naming ``option``
    and the model ``name``) if nothing was pruned, so nothing was (or would be) swapped."""
    from restorelcc.hf.swap import swap_attention

    report = swap_attention(
        model,
        format,
        min_sparsity=min_sparsity,
        decode_streams=decode_streams,
        mlp=mlp,
        dry_run=dry_run,
    )
    if not report.swapped_layers:
        what = "attention or MLP" if mlp else "attention"
        why = nothing_to_swap(mlp, min_sparsity, pruned_structurally(name))
        raise NothingToSwapError(f"{option}: {name} has no pruned {what} layer to swap: {why}")
    return report
