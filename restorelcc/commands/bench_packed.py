"""``restorelcc bench --model PACKED``: the checks of a packed checkpoint (``restorelcc
pack``) that bench times as it was packed. Bench reads it packed, unpacks it in place for
the ``nn.Linear`` side and swaps it again with the options it was packed with
(``restorelcc.hf.packed_checkpoint.packed_swap``: those ``pack`` recorded, or those its
groups show); the swap must pack the very groups, in the very formats, that the folder
holds."""

from __future__ import annotations

import argparse

from restorelcc.commands.adapter_options import refuse_adapter_on_packed
from restorelcc.commands.options import refuse_unused
from restorelcc.commands.swap_options import (
    NothingToSwapError,
    check_decode_streams,
    too_few_zeros,
)

# Why bench may fail to time a packed checkpoint as it was packed, and what reads it.
NOT_BENCHED = (
    "Folders saved by save_packed with swap options that restorelcc pack does not record "
    "(layers=, min_sparsity, backend, formats mixed beyond what --format auto gives) can be "
    "evaluated (restorelcc eval --model) but not benched"
)


def _held_formats(folder: dict) -> list[str]:
    """The formats the packed checkpoint (``folder``: its ``packed_swap``) holds, sorted."""
    return sorted({format for format, _, _ in folder["groups"].values()})


def check_packed_options(args: argparse.Namespace, folder: dict) -> None:
    """Refuse a swap option (``--format``, ``--mlp``, ``--decode-streams``) that
    contradicts those the packed checkpoint ``--model`` was packed with (``folder``: its
    ``packed_swap``: the options ``restorelcc pack`` recorded, or those its groups show),
    ``--min-sparsity`` (the folder's packed groups are the ones timed) and ``--adapter``.
    ``--format`` may also name the one format all its groups are packed in."""
    model = args.model
    refuse_adapter_on_packed(args)
    formats = _held_formats(folder)
    accepted = {"auto", folder["format"], *(formats if len(formats) == 1 else ())}
    unrecorded = " (no pack options recorded)"
    if args.format not in accepted:
        held = f"packed with --format {folder['format']} (as {', '.join(formats)})"
        if not folder["recorded"]:
            held = f"holding {' and '.join(formats)} weights{unrecorded}"
        raise ValueError(
            f"--format {args.format}: {model} is a packed checkpoint {held}, timed as it was "
            "packed (leave --format out)"
        )
    lacking = {
        "mlp": ("--mlp", "with no MLP projection packed"),
        "decode_streams": ("--decode-streams", "with no weight running decode streams"),
    }
    for name, (option, without) in lacking.items():
        if getattr(args, name) and not folder[name]:
            held = f"packed without {option}" if folder["recorded"] else f"{without}{unrecorded}"
            raise ValueError(
                f"{option}: {model} is a packed checkpoint {held}, timed as it was packed"
            )
    refuse_unused(
        args,
        ("min_sparsity",),
        f"{model} is a packed checkpoint: the groups it holds packed are the ones timed",
    )


def _swapped_again_with(folder: dict, format: str) -> str:
    """The options the packed checkpoint (``folder``: its ``packed_swap``) is swapped again
    with, as messages name them (``format``: the swap's, the folder's unless ``--format``
    named its one format): those ``restorelcc pack`` recorded, or, where it records none
    (a ``save_packed`` folder), those its groups show."""
    if not folder["recorded"]:
        held = " and ".join(_held_formats(folder))
        return (
            f"format={format!r}, mlp={folder['mlp']}, decode_streams="
            f"{folder['decode_streams']} (as its groups show: it holds {held} weights and "
            "records no pack options)"
        )
    flags = f"{' --mlp' * folder['mlp']}{' --decode-streams' * folder['decode_streams']}"
    recorded = "as it records"
    if format != folder["format"]:  # its one format, given for the "auto" it records
        recorded = f"it records --format {folder['format']}"
    return f"--format {format}{flags} ({recorded})"


def _check_same_packing(report, folder: dict, model: str) -> None:
    """Refuse a swap (``report``) of the packed checkpoint ``model``'s unpacked weights
    that packs another group, or one otherwise (format, backend, decode streams), than
    the folder holds (``folder``: its ``packed_swap``): it would time another model."""
    swapped = {
        (g.layer, g.group): (g.format, report.backend, report.decode_streams)
        for g in report.groups
        if g.format != "dense"
    }
    held = folder["groups"]
    differ = sorted(k for k in swapped.keys() | held.keys() if swapped.get(k) != held.get(k))
    if differ:
        layer, group = differ[0]

        def shown(packing) -> str:
            if packing is None:
                return "dense"
            return "{} (backend {}, decode_streams {})".format(*packing)

        raise ValueError(
            f"--model {model}: swapped again with {_swapped_again_with(folder, report.format)}"
            f", its unpacked weights give layer {layer} {group} as "
            f"{shown(swapped.get((layer, group)))} where the folder holds it as "
            f"{shown(held.get((layer, group)))}: bench cannot time it as it was packed. "
            f"{NOT_BENCHED}"
        )


def swap_as_packed(swap, args: argparse.Namespace, folder: dict):
    """``swap()``'s ``SwapReport``: the swap of the packed checkpoint ``--model``'s unpacked
    weights with the options it was packed with (``folder``: its ``packed_swap``), which
    must pack the groups it holds as it holds them (``_check_same_packing``). Where the
    swap fails (a ``SwapError``, nothing to swap, decode streams without a bitmap weight),
    a ``ValueError`` says that bench cannot time the folder as it was packed, and why (the
    swap's reason, without the options it advises: they would time another packing)."""
    from restorelcc.hf.swap_plan import SwapError

    try:
        report = swap()
    except NothingToSwapError:
        reason = too_few_zeros(args.mlp, args.min_sparsity)
    except SwapError as error:
        reason = str(error)
    else:
        try:
            check_decode_streams(args, report)
        except ValueError:
            formats = ", ".join(report.packed_formats)
            reason = f"it packs no weight as a bitmap ({formats}) for decode streams to lay out"
        else:
            _check_same_packing(report, folder, args.model)
            return report
    raise ValueError(
        f"--model {args.model}: bench cannot time this folder as it was packed: swapping its "
        f"unpacked weights again with {_swapped_again_with(folder, args.format)} fails: "
        f"{reason}. {NOT_BENCHED}"
    )
