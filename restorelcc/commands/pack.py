"""``restorelcc pack``: a pruned checkpoint swapped for the packed sparse modules and saved
with its weights packed (``restorelcc.hf.save_packed``), for ``eval``, ``bench`` and
``load_packed``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from restorelcc.commands.dtypes import add_dtype_argument
from restorelcc.commands.model_options import refuse_adapter_folder
from restorelcc.commands.options import add_quiet_argument, check_spares_inputs
from restorelcc.commands.reports import mark_written, mib
from restorelcc.commands.swap_options import (
    add_format_argument,
    add_mlp_argument,
    check_decode_streams,
    swap_errors_named,
    swap_pruned_attention,
)
from restorelcc.hf import MIN_SPARSITY

if TYPE_CHECKING:
    import torch

PHASES = ("swap", "save")  # pack's progress bar: the swap packs the weights, then the save


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pack",
        help="save a pruned checkpoint with its weights packed (2:4 or bitmap)",
        description="Swap a pruned checkpoint's attention (and, with --mlp, MLP) projections "
        "for the packed sparse modules and save it with the packed weights as they are: a "
        "smaller folder that 'restorelcc eval --model', 'restorelcc bench --model' and "
        "restorelcc.hf.load_packed load swapped, without a dense copy of the packed weights.",
    )
    p.add_argument("--model", required=True, help="a pruned (or restored and merged) checkpoint")
    p.add_argument("--out", required=True, help="folder to write")
    add_format_argument(p, "--format", "auto", "auto: 2:4 where a layer fits, else bitmap")
    add_mlp_argument(p)
    add_dtype_argument(p, "dtype of the packed weights", auto="the one the checkpoint is stored in")
    p.add_argument(
        "--decode-streams",
        action="store_true",
        help="record that bitmap weights run decode on a streams layout (built when loaded "
        "on a GPU: ~1.1x the bitmap's bytes more memory)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier pack --out")
    add_quiet_argument(p)
    p.set_defaults(func=run)


def auto_dtype(config) -> torch.dtype:
    """The dtype ``pack --dtype auto`` packs a checkpoint of ``config`` in: the one it is
    stored in (float32 where its config records none); ``inspect --swap`` previews in it."""
    import torch

    from restorelcc.commands.dtypes import stored_dtype

    return stored_dtype(config) or torch.float32


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from restorelcc.assets import load_model
    from restorelcc.hf.families import family_of
    from restorelcc.hf.packed_checkpoint import PACKED_INFO, WEIGHTS, refuse_packed, save_packed
    from restorelcc.io import format_table
    from restorelcc.loading import load_config
    from restorelcc.output_dirs import check_output_directory
    from restorelcc.provenance import run_metadata

    refuse_adapter_folder(
        "--model",
        args.model,
        "the pruned model it was made for",
        merged_as=" to pack the restored model",
    )
    refuse_packed(
        args.model,
        "it is already packed (restorelcc eval --model and bench --model read it); to pack "
        "it otherwise, pack the dense checkpoint it was packed from",
        option="--model",
    )
    check_spares_inputs("--out", args.out, {"--model": args.model}, folder=True)
    check_output_directory(args.out, args.overwrite, option="--out", replaces=PACKED_INFO)
    config = load_config(args.model)
    family_of(config)  # an unsupported family fails before the weights load
    dtype = auto_dtype(config) if args.dtype == "auto" else getattr(torch, args.dtype)
    model, tokenizer = load_model(args.model, dtype=dtype)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # the two phases that take a while on a real model (seconds to a minute each)
    with tqdm(total=len(PHASES), desc="pack", unit="phase", disable=args.quiet) as bar:
        bar.set_postfix_str(PHASES[0])
        with swap_errors_named("--format", args.format):
            report = swap_pruned_attention(
                model,
                "--model",
                args.model,
                args.format,
                MIN_SPARSITY,
                args.decode_streams,
                args.mlp,
            )
        check_decode_streams(args, report)
        bar.update()
        bar.set_postfix_str(PHASES[1])
        info = {"model": str(args.model), "swap": report.to_dict(), "run_metadata": run_metadata()}
        out = save_packed(model, args.out, tokenizer, overwrite=args.overwrite, info=info)
        bar.update()
    mark_written(args, args.out)
    print(report.table())
    weights = (out / WEIGHTS).stat().st_size
    summary = {
        "dtype": str(dtype).removeprefix("torch."),
        "dense": mib(dense_bytes),
        "packed_file": mib(weights),
        "ratio": weights / dense_bytes,
    }
    print(format_table([summary]))
    print(f"wrote {args.out} ({PACKED_INFO})")
    return 0
