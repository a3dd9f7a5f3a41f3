"""``restorelcc prune``: prune a model and write a Hugging Face checkpoint plus a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from restorelcc.commands.dtypes import add_dtype_argument, resolve_dtype, stored_dtype
from restorelcc.commands.model_options import MODEL_TO_PRUNE, refuse_adapter_folder
from restorelcc.commands.options import (
    add_device_argument,
    add_perplexity_arguments,
    add_quiet_argument,
    check_eval_options,
    check_perplexity_options,
    check_spares_inputs,
    data_input,
    flag,
    given_options,
    name_flags,
    remember_defaults,
    resolve_device,
    warn_if_text_ran_out,
)
from restorelcc.commands.reports import mark_written
from restorelcc.output_dirs import check_output_directory
from restorelcc.prune.checkpoint import PRUNE_REPORT
from restorelcc.prune.validate import METHODS, PruneArgumentError

DEFAULT_CALIBRATION = "mix"
# Options only calibrated methods use, and options only --eval uses: refused when given
# (other than their defaults) where they would be ignored, as restore refuses its own.
CALIBRATION_OPTIONS = ("calibration", "nsamples", "seqlen", "seed", "chunk_size")
EVAL_OPTIONS = ("ppl_tokens", "ppl_source", "ppl_window", "ppl_stride", "dtype")
# Parameters of the pruning checks whose messages name them: written as their flags.
SPEC_FIELDS = ("sparsity", "head_fraction", "channel_multiple", "chunk_size")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prune",
        help="prune a model (magnitude / Wanda / SparseGPT; unstructured, N:M or heads)",
        description="Prune every decoder-block linear layer and save a Hugging Face checkpoint "
        f"with {PRUNE_REPORT}.",
    )
    p.add_argument("--model", default="smollm2-135m", help="model name or local directory")
    p.add_argument(
        "--method",
        choices=METHODS,
        type=str.lower,
        default="wanda",
        help="magnitude: smallest |weight| of each matrix; wanda: smallest |weight| x input "
        "norm of each row (on --calibration); sparsegpt: with second-order weight updates "
        "(on --calibration)",
    )
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction removed, in (0, 1)")
    p.add_argument(
        "--pattern",
        default="unstructured",
        help="unstructured, N:M (e.g. 2:4, 4:8) or heads (structured: removes the KV groups "
        "and MLP channels of least output energy, Wanda's or magnitude's, without updating "
        "the weights kept; not the paper's SlimGPT baseline)",
    )
    p.add_argument(
        "--head-fraction",
        type=float,
        default=None,
        help="heads only: fraction of KV groups removed per layer "
        "(default: floor(sparsity * KV heads) groups)",
    )
    p.add_argument(
        "--channel-multiple",
        type=int,
        default=1,
        help="heads only: keep a multiple of this many MLP channels per layer (8 suits "
        "tensor cores; 4 lets a later 2:4 prune take down_proj)",
    )
    p.add_argument(
        "--calibration",
        default=DEFAULT_CALIBRATION,
        help="calibration source (a training source name, 'mix', or a file/folder). The "
        "Wanda and SparseGPT papers calibrate on 128 x 2048 tokens of C4, which is not "
        "bundled: give a C4 text file to follow them",
    )
    p.add_argument(
        "--nsamples",
        type=int,
        default=64,
        help="calibration sequences, disjoint windows of the shuffled source (papers: 128)",
    )
    p.add_argument(
        "--seqlen", type=int, default=512, help="tokens per calibration sequence (papers: 2048)"
    )
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--chunk-size", type=int, default=8, help="calibration samples per forward")
    p.add_argument("--eval", action="store_true", help="evaluate the pruned model (perplexity)")
    add_perplexity_arguments(p, what="--eval's perplexity")
    add_dtype_argument(p, what="the dtype --eval scores in")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)
    remember_defaults(p, (*CALIBRATION_OPTIONS, *EVAL_OPTIONS))


def _check_unused_options(args: argparse.Namespace, spec) -> None:
    """Refuse options that this run would silently ignore."""
    given = given_options(args, CALIBRATION_OPTIONS)
    if given and not spec.needs_calibration:
        raise PruneArgumentError(
            f"--method {spec.method} uses no calibration data: it does not use {', '.join(given)}"
        )
    check_eval_options(args, EVAL_OPTIONS, PruneArgumentError)


def _with_flags(check, *args):
    """``check(*args)``; a ``PruneArgumentError`` it raises names the flags (``SPEC_FIELDS``),
    not the library's parameter names."""
    try:
        return check(*args)
    except PruneArgumentError as exc:
        raise PruneArgumentError(name_flags(str(exc), SPEC_FIELDS)) from None


def _check_arguments(args: argparse.Namespace):
    from restorelcc.prune.sparsegpt import BLOCK_SIZE, DAMPENING
    from restorelcc.prune.validate import check_options, check_spec

    spec = _with_flags(
        check_spec,
        args.method,
        args.sparsity,
        args.pattern,
        args.head_fraction,
        args.channel_multiple,
    )
    _check_unused_options(args, spec)
    for name in ("nsamples", "seqlen", "chunk_size"):
        if getattr(args, name) <= 0:
            raise PruneArgumentError(f"{flag(name)} must be positive")
    check_options(spec, args.chunk_size, BLOCK_SIZE, DAMPENING)  # as prune_model will use them
    refuse_adapter_folder("--model", args.model, MODEL_TO_PRUNE)
    inputs = {
        "--model": args.model,
        "--calibration": None if args.method == "magnitude" else data_input(args.calibration),
        "--ppl-source": data_input(args.ppl_source) if args.eval else None,
    }
    check_spares_inputs("--out", args.out, inputs, folder=True)
    check_output_directory(args.out, args.overwrite, option="--out", replaces=PRUNE_REPORT)
    return spec


def _evaluate_saved(args: argparse.Namespace, device, texts) -> dict:
    """Sliding-window perplexity on ``texts``, ``--ppl-source``'s documents as ``run`` read
    them (``--ppl-tokens``, ``--ppl-window``, ``--ppl-stride``) of the checkpoint written at
    ``--out``, loaded in ``--dtype`` as ``restorelcc eval`` loads it (a cast of the pruned
    model would differ: ``Module.to`` rounds rotary ``inv_freq``, which loading keeps in
    float32)."""
    from restorelcc.assets import load_model
    from restorelcc.commands.evaluate import perplexity_of

    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer = load_model(args.out, dtype=dtype, device=device)
    result = perplexity_of(model, tokenizer, args, texts)
    warn_if_text_ran_out(result.as_dict(), args)
    return {"perplexity": result.as_dict(), "dtype": str(dtype).removeprefix("torch.")}


def _run_summary(report) -> dict:
    """One table row for the run: the sparsity requested and the one reached (the
    report's ``sparsity`` and ``overall_sparsity``). Structured runs shrink the matrices,
    so what they removed (a fraction of the block parameters) and the zeros left in the
    kept weights are two different numbers, each in its own column."""
    summary = {"method": report.method, "pattern": report.pattern}
    if report.structured:
        summary["removed_of_block_params"] = report.structured["removed_fraction_of_blocks"]
        summary["zeros_in_kept_weights"] = report.overall_sparsity
    else:  # --sparsity rounds to whole weights per row, matrix or group: the two may differ
        summary["requested_sparsity"] = report.sparsity
        summary["reached_sparsity"] = report.overall_sparsity
    summary["seconds"] = report.seconds
    if report.evaluation:
        summary["ppl"] = report.evaluation["perplexity"]["perplexity"]
    return summary


def run(args: argparse.Namespace) -> int:
    import torch

    from restorelcc.assets import load_config, load_model, model_origin
    from restorelcc.evaluate import perplexity_protocol
    from restorelcc.hf.families import check_length_fits, family_of
    from restorelcc.io import atomic_write_json, format_table
    from restorelcc.output_dirs import atomic_directory
    from restorelcc.provenance import run_metadata
    from restorelcc.prune import prune_model
    from restorelcc.prune.api import check_config

    spec = _check_arguments(args)
    if spec.needs_calibration:  # a bad source fails before a large model loads
        from restorelcc.data import calibration_texts

        calibration_texts(args.calibration, n=1)
    ppl_texts = None  # read once: what fails here is what is scored, and its origin recorded
    if args.eval:
        from restorelcc.data import perplexity_texts

        ppl_texts = perplexity_texts(args.ppl_source)  # a missing or empty text fails here
    config = load_config(args.model)
    family_of(config)  # an unsupported family fails before the weights load
    if args.eval:  # --ppl-window against the model's length, too
        check_perplexity_options(args, config, PruneArgumentError)
    if spec.needs_calibration:
        check_length_fits(args.seqlen, config, f"--seqlen {args.seqlen}")
    _with_flags(check_config, config, spec)  # shapes and the structured plan, weights unread
    device = resolve_device(args.device)
    if spec.needs_calibration:  # a calibration that cannot fit fails before the weights load
        from restorelcc.prune.memory import check_calibration_memory

        check_calibration_memory(
            config, spec.method, args.nsamples, args.seqlen, device, args.chunk_size,
            flags=("--nsamples", "--seqlen"), chunk_flag="--chunk-size",
        )  # fmt: skip
    # Held as the checkpoint is stored (a bf16 model in bf16, not twice its size in
    # float32); pruning computes in float32 one block at a time (prune/precision.py), so
    # the kept weights come back bit for bit and SparseGPT's updated ones rounded once.
    saved_dtype = stored_dtype(config) or torch.float32
    model, tokenizer = load_model(args.model, dtype=saved_dtype, device=device)
    if args.eval:  # and against its tokenizer's, before the pruning
        check_perplexity_options(args, config, PruneArgumentError, tokenizer=tokenizer)
    calibration = None
    if spec.needs_calibration:
        from restorelcc.data import calibration_batches

        calibration = calibration_batches(
            tokenizer, source=args.calibration, nsamples=args.nsamples, seqlen=args.seqlen,
            seed=args.seed, flags=("--nsamples", "--seqlen"),
        )  # fmt: skip
    report = prune_model(
        model,
        spec.method,
        spec.sparsity,
        str(spec.pattern),
        calibration,
        calibration_source=args.calibration if calibration is not None else None,
        calibration_seed=args.seed if calibration is not None else None,
        head_fraction=spec.head_fraction,
        channel_multiple=spec.channel_multiple,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    payload = {
        "model": str(args.model),
        "model_origin": model_origin(args.model),
        **report.to_dict(),
        "saved_dtype": str(saved_dtype).removeprefix("torch."),
        "ppl_source_origin": None if ppl_texts is None else ppl_texts.origin,
        "run_metadata": run_metadata(),
    }
    with atomic_directory(args.out, overwrite=args.overwrite, replaces=PRUNE_REPORT) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / PRUNE_REPORT, payload)
    if args.eval:  # the checkpoint is kept whatever happens to its evaluation
        del model  # one model in memory at a time
        try:
            evaluation = _evaluate_saved(args, device, ppl_texts)
            report.evaluation = payload["evaluation"] = evaluation
        except BaseException:
            print(f"restorelcc prune: wrote {args.out}; its --eval did not finish", file=sys.stderr)
            raise
        atomic_write_json(Path(args.out) / PRUNE_REPORT, payload)
    mark_written(args, args.out)

    print(format_table(report.summary_rows()))
    print(format_table([_run_summary(report)]))
    if report.evaluation:
        scored = {**report.evaluation["perplexity"], "dtype": report.evaluation["dtype"]}
        print(f"perplexity: {perplexity_protocol(scored)}")
    print(f"wrote {args.out} ({PRUNE_REPORT})")
    return 0
