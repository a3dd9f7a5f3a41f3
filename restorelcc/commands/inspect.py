"""``restorelcc inspect DIR`` (or a built-in model name): per-matrix sparsity, N:M
validity, structured shape changes, and (``--swap``) what ``swap_attention`` would pack."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from restorelcc.commands.options import add_quiet_argument, check_spares_inputs
from restorelcc.commands.reports import check_json_path, mark_written
from restorelcc.commands.swap_options import (
    add_format_argument,
    add_mlp_argument,
    check_mlp_needs_swap,
    nothing_to_swap,
    swap_errors_named,
)
from restorelcc.hf import MIN_SPARSITY


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="check a checkpoint's sparsity pattern",
        description="Report per-matrix sparsity of the decoder-block linears, whether they are "
        "exactly 2:4 / 4:8 (and the N:M pattern they were pruned to), and structured shape "
        "changes.",
    )
    p.add_argument(
        "directory",
        help="a Hugging Face checkpoint directory, or a built-in model name (smollm2-135m: "
        "its converted checkpoint in the model cache)",
    )
    p.add_argument("--json", default=None, help="also write the full report to this file")
    p.add_argument("--per-matrix", action="store_true", help="one table row per matrix")
    add_format_argument(
        p,
        "--swap",
        None,
        "also load the model and show what swap_attention would pack, per layer, in the "
        "dtype the checkpoint is stored in (as pack --dtype auto)",
    )
    add_mlp_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _swap_preview(directory: str, format: str, mlp: bool):
    """``(SwapReport, dtype name)`` of a dry run of the swap on the model loaded in the
    dtype ``pack --dtype auto`` packs it in (``auto_dtype``: its bytes are pack's), printed
    by ``_print_swap``: the real swap's checks and figures, its packed bytes counted from
    the formats' layouts, no weight packed. Made before anything is printed, so that
    weights the format does not fit fail first."""
    from restorelcc.assets import load_config, load_model
    from restorelcc.commands.pack import auto_dtype
    from restorelcc.hf.swap import swap_attention

    dtype = auto_dtype(load_config(directory))
    model, _ = load_model(directory, dtype=dtype)
    with swap_errors_named("--swap", format):
        report = swap_attention(model, format, mlp=mlp, dry_run=True)
    return report, str(dtype).removeprefix("torch.")


def _print_swap(report, dtype: str, mlp: bool, structured: bool) -> None:
    print(f"swap preview in {dtype}: the dtype pack --dtype auto packs this checkpoint in")
    print(report.table())
    if not report.swapped_layers:
        print(f"nothing to swap: {nothing_to_swap(mlp, MIN_SPARSITY, structured)}")


def run(args: argparse.Namespace) -> int:
    from restorelcc.io import atomic_write_json, format_table
    from restorelcc.provenance import run_metadata
    from restorelcc.prune.checkpoint import (
        STRUCTURED_COUNTS,
        STRUCTURED_FRACTION,
        inspect_checkpoint,
        refuse_packed_checkpoint,
    )
    from restorelcc.prune.report import overall_sparsity, summarize

    refuse_packed_checkpoint(args.directory)  # before --mlp's check: no detour via --swap
    check_mlp_needs_swap(args)
    if args.json is not None:
        check_json_path(args.json)
        check_spares_inputs("--json", args.json, {"the checkpoint": args.directory})
    result = inspect_checkpoint(args.directory, progress=not args.quiet)
    swap = dtype = None
    if args.swap:
        swap, dtype = _swap_preview(result["directory"], args.swap, args.mlp)
    matrices = result["matrices"]
    if args.json is not None:  # before the tables: a reader that stops early (| head)
        swapped = {**swap.to_dict(), "dtype": dtype} if swap is not None else None
        payload = {**result, "matrices": [asdict(m) for m in matrices], "swap": swapped}
        atomic_write_json(args.json, {**payload, "run_metadata": run_metadata()})
        mark_written(args, args.json)
    if args.per_matrix:
        rows = [
            {
                "matrix": m.name,
                "shape": "x".join(map(str, m.shape)),
                "sparsity": m.sparsity,
                "row_zeros": f"{m.row_zeros_min}-{m.row_zeros_max}",
                **m.nm,
            }
            for m in matrices
        ]
    else:
        rows = summarize(matrices)
    print(format_table(rows))
    geometry = dict(result["geometry"])
    structured = result["structured"]
    if structured:
        for key in STRUCTURED_COUNTS:  # checked by read_prune_report
            before, after = structured[key]
            geometry[key] = f"{before}->{after}"
        geometry["removed_of_block_params"] = structured[STRUCTURED_FRACTION]
    geometry["sparsity"] = overall_sparsity(matrices)
    geometry["shapes_match_config"] = not result["shape_mismatches"]
    print(format_table([geometry]))
    for line in result["shape_mismatches"]:
        print(f"shape mismatch: {line}")
    if swap is not None:
        _print_swap(swap, dtype, args.mlp, bool(structured))
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0 if not result["shape_mismatches"] else 1
