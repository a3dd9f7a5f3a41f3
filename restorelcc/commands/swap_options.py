"""Options of the commands that swap a model's pruned attention (and, with ``--mlp``,
MLP) projections for the packed sparse modules (``eval --swap``, ``inspect --swap``,
``bench``): ``--mlp``, the swap with its errors named after the option, and the line
that describes a swap."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from restorelcc.errors import RestoreLCCError, layer_ranges
from restorelcc.hf import FORMATS, MIN_SPARSITY


class NothingToSwapError(RestoreLCCError, ValueError):
    """A model whose attention projections hold no pruned matrix."""


def add_format_argument(
    p: argparse.ArgumentParser, option: str, default: str | None, help: str
) -> None:
    """``option`` taking one of the swap's formats (``restorelcc.hf.FORMATS``)."""
    p.add_argument(option, choices=FORMATS, type=str.lower, default=default, help=help)


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


def _scope(mlp: bool) -> str:
    """The projections a swap covers, as its messages name them."""
    return "attention or MLP" if mlp else "attention"


def too_few_zeros(mlp: bool, min_sparsity: float) -> str:
    """Why no projection was packed: none has ``min_sparsity`` zeros."""
    return f"no {_scope(mlp)} projection has {min_sparsity:.0%} zeros or more"


def nothing_to_swap(
    mlp: bool, min_sparsity: float, structured: bool = False, most_zeros: float = 0.0
) -> str:
    """Why a swap found nothing to pack; ``structured``: it was pruned by removing heads;
    ``most_zeros``: the largest fraction of zeros of a group of projections (``SwapReport``
    densities). Groups that the default ``MIN_SPARSITY`` counts as pruned, left dense by a
    higher one (``bench --min-sparsity``, the one option that raises it), are told to lower
    it instead of "prune it first"; not to a value, as the swap compares each matrix of a
    group with it, and a group's figure is of its matrices together."""
    if MIN_SPARSITY <= most_zeros < min_sparsity and not structured:
        return (
            f"{too_few_zeros(mlp, min_sparsity)} (--min-sparsity "
            f"{min_sparsity:g}); the most pruned group has {most_zeros:.1%}: lower "
            "--min-sparsity to at most the sparsity of each matrix to pack (restorelcc "
            "inspect --per-matrix lists them)"
        )
    why = f"no {_scope(mlp)} projection is pruned (none has {min_sparsity:.0%} zeros or more)"
    if structured:
        return f"{why}; structured pruning (--pattern heads) leaves dense matrices: none to pack"
    return f"{why}; prune it first (unstructured or N:M: --pattern heads leaves dense matrices)"


def most_zeros_of(report) -> float:
    """The largest fraction of zeros of a group of projections in ``report`` (a
    ``SwapReport``: packed and dense groups alike); 0 for none."""
    return max((1 - g.density for g in report.groups), default=0.0)


def check_decode_streams(args: argparse.Namespace, report) -> None:
    """Refuse ``--decode-streams`` (``bench``, ``pack``) where the swap of ``report``
    packed (or, in a dry run, would pack) no weight as a bitmap."""
    if args.decode_streams and not any(g.format == "bitmap" for g in report.groups):
        formats = ", ".join(report.packed_formats)
        raise ValueError(
            f"--decode-streams: {args.model} has no weight packed as a bitmap (formats: "
            f"{formats}); it lays out bitmap weights only"
        )


def describe_swap(report) -> str:
    """One line: the swapped layers (as runs, ``0..9, 20..29``), the formats packed, how
    many groups were left dense (where any were) and the bytes of what was swapped."""
    formats = ", ".join(report.packed_formats)
    dense = sum(g.format == "dense" for g in report.groups)
    if dense:
        formats += f"; {dense} of {len(report.groups)} groups left dense"
    return (
        f"swapped layers {layer_ranges(report.swapped_layers)} ({formats}); {report.scope} "
        f"weights {report.bytes_before / 2**20:.1f} -> {report.bytes_after / 2**20:.1f} MiB"
    )


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
    and the model ``name``, and why: ``nothing_to_swap``) if nothing was pruned, so nothing
    was (or would be) swapped."""
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
        why = nothing_to_swap(mlp, min_sparsity, pruned_structurally(name), most_zeros_of(report))
        raise NothingToSwapError(f"{option}: {name} has no pruned {what} layer to swap: {why}")
    return report
