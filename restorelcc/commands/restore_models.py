"""``restorelcc restore``'s models: the restoration ``--method`` asks for, with the dense
model let go as soon as it is not needed (capture is its only use, and ``--eval``'s first
perplexity), and ``--eval``'s perplexities of the dense, pruned and restored models. The
two models are held together for capture (and ``--eval``'s dense perplexity) only:
training and the rest hold the pruned one. First, ``check_model_folders``: what the
folders ``--dense`` and ``--pruned`` name tells before they load."""

from __future__ import annotations

import argparse
from pathlib import Path


def check_model_folders(args: argparse.Namespace, error: type[Exception]) -> None:
    """Raise ``error`` where ``--dense`` or ``--pruned`` is a merged restoration (a folder
    holding ``restorelcc.json``: ``restore --merged``'s ``--out/merged``, ``export_merged``'s
    folder), which restoring would compare with the other model as a pruned or dense one
    (failing on its added biases), or where the two name the same folder;
    ``ModelNotFoundError`` where either is an adapter folder (``restore --out``)."""
    from restorelcc.commands.model_options import (
        DENSE_MODEL,
        PRUNED_MODEL,
        is_merged_restoration,
        refuse_adapter_folder,
    )
    from restorelcc.lcc.adapter import MERGED_INFO

    wanted = {"--dense": DENSE_MODEL, "--pruned": PRUNED_MODEL}
    for option, what in wanted.items():
        given = getattr(args, option.removeprefix("--"))
        refuse_adapter_folder(option, given, what)
        if is_merged_restoration(given):
            raise error(
                f"{option} {given} is a merged restoration ({MERGED_INFO}: restore --merged, "
                f"export_merged), a pruned model with a restoration folded in: give {what}"
            )
    dense, pruned = Path(args.dense).expanduser(), Path(args.pruned).expanduser()
    if dense.is_dir() and pruned.is_dir() and dense.samefile(pruned):
        raise error(
            f"--dense {args.dense} and --pruned {args.pruned} are the same folder: --dense is "
            "the unpruned model, --pruned the checkpoint pruned from it"
        )


def check_pruned_folder(args: argparse.Namespace, error: type[Exception]) -> None:
    """Raise ``error`` where ``--pruned`` names a built-in model (``refuse_builtin_pruned``),
    ``FileNotFoundError`` where it names no directory."""
    from restorelcc.commands.model_options import refuse_builtin_pruned

    refuse_builtin_pruned(args, error)
    if not Path(args.pruned).expanduser().is_dir():
        raise FileNotFoundError(f"--pruned {args.pruned} is not a directory")


def method_restoration(
    args: argparse.Namespace,
    models: dict,
    pruned,
    tokenizer,
    pairs,
    config,
    scored: dict,
    ppl_texts=None,
):
    """The restoration of ``pruned`` that ``--method`` asks for, from the dense model
    ``models["dense"]``, which is dropped from ``models`` before any training (``--eval``
    scores it on ``ppl_texts``, ``--ppl-source``'s documents as read, into
    ``scored["dense"]`` first). Training-free captures as restorelcc does:
    at ``RestoreConfig``'s ``capture_max_length`` (not ``--max-length``, which caps
    training) and ``--capture-dtype``."""
    from restorelcc.baselines import lofit_baseline, training_free
    from restorelcc.commands.evaluate import perplexity_of
    from restorelcc.commands.options import check_perplexity_options
    from restorelcc.lcc import check_compatible, plan_heads, train_heads
    from restorelcc.lcc.train import encode_training_pairs

    if config is not None:  # what training would refuse: before capture and --eval
        encode_training_pairs(tokenizer, pairs, config.train)
    if args.eval:  # --ppl-window against the model's and tokenizer's length: before capture
        check_perplexity_options(args, models["dense"].config, tokenizer=tokenizer)

    def let_go() -> None:
        dense = models.pop("dense")
        if args.eval:
            scored["dense"] = perplexity_of(dense, tokenizer, args, ppl_texts)

    if args.method == "lofit":  # trains on pruned alone: the pair is checked here (swapped?)
        check_compatible(models["dense"], pruned)
        let_go()
        l1 = {} if args.lofit_l1 is None else {"l1": args.lofit_l1}
        return lofit_baseline(pruned, tokenizer, pairs, config, **l1)
    if args.method == "training-free":
        restoration = training_free(
            models["dense"],
            pruned,
            tokenizer,
            pairs,
            progress=not args.quiet,
            capture_dtype=args.capture_dtype,
        )
        let_go()
        return restoration
    plan = plan_heads(models["dense"], pruned, tokenizer, pairs, config)
    let_go()
    return train_heads(plan, pruned, tokenizer, check=False)  # plan made from pruned


def compare_with_dense(scored: dict, pruned, tokenizer, restoration, args, ppl_texts=None) -> dict:
    """``compare_perplexity`` of the dense model (``scored["dense"]``, scored before it was
    let go), the pruned one and the restored one, on ``ppl_texts`` (``--ppl-source``'s
    documents as read, as the dense one): ``pruned`` folded for the duration, not a copy, so
    that no model is held beside ``pruned``."""
    from restorelcc.commands.evaluate import compare_perplexity, perplexity_of
    from restorelcc.commands.options import warn_if_text_ran_out

    results = {
        "dense": scored["dense"],
        "pruned": perplexity_of(pruned, tokenizer, args, ppl_texts),
    }
    with restoration.folded(pruned, check=False):  # made from pruned
        results["restored"] = perplexity_of(pruned, tokenizer, args, ppl_texts)
    warn_if_text_ran_out(results["pruned"].as_dict(), args)  # one text: alike for all
    return compare_perplexity(results)
