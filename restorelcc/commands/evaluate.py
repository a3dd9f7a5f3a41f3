"""``restorelcc eval``: zero-shot multiple choice and perplexity of a model, with a report."""

from __future__ import annotations

import argparse
import statistics
import time

from restorelcc.commands.adapter_options import (
    adapter_input,
    adapter_summary,
    add_adapter_argument,
    read_adapter,
    refuse_adapter_on_packed,
)
from restorelcc.commands.dtypes import add_dtype_argument, resolve_dtype
from restorelcc.commands.model_options import check_adapter_options
from restorelcc.commands.options import (
    PERPLEXITY_WINDOWS,
    add_device_argument,
    add_perplexity_arguments,
    add_quiet_argument,
    check_perplexity_options,
    check_spares_inputs,
    data_input,
    given_options,
    limit_value,
    positive_int,
    refuse_unused,
    remember_defaults,
    resolve_device,
    warn_if_text_ran_out,
)
from restorelcc.commands.reports import DEFAULT_REPORT_HELP, report_path, write_report
from restorelcc.commands.swap_options import (
    add_format_argument,
    add_mlp_argument,
    check_mlp_needs_swap,
    describe_swap,
    swap_errors_named,
    swap_pruned_attention,
)
from restorelcc.data import DEFAULT_PERPLEXITY_SOURCE
from restorelcc.hf import MIN_SPARSITY

DEFAULT_TASKS = "paper"
DEFAULT_LIMIT = 100  # first items per task: the paper's 7 tasks + 8k-token perplexity in a
# few minutes on 2 CPU cores with SmolLM2-135M (see benchmarks/results/bench_eval.json)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="zero-shot multiple-choice accuracy and perplexity of a model",
        description="Score multiple-choice tasks by log-likelihood (lm-evaluation-harness "
        "prompts) and sliding-window perplexity on LAMBADA passages or your own text.",
    )
    p.add_argument("--model", default="smollm2-135m", help="model name or local directory")
    p.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help="comma-separated task names, 'paper' (the paper's 7), 'all' (+ piqa), or "
        "'none' alone (perplexity only)",
    )
    p.add_argument(
        "--limit",
        type=limit_value,
        default=DEFAULT_LIMIT,
        help="first N items of each task ('all' for every item)",
    )
    ppl = p.add_mutually_exclusive_group()
    ppl.add_argument("--no-ppl", action="store_true", help="skip perplexity")
    add_perplexity_arguments(p, tokens_group=ppl)
    p.add_argument(
        "--batch-size", type=positive_int, default=16, help="rows (questions) per forward"
    )
    add_adapter_argument(p)
    add_format_argument(
        p,
        "--swap",
        None,
        "evaluate with the pruned attention swapped for the packed sparse kernels",
    )
    add_mlp_argument(p)
    add_device_argument(p)
    add_dtype_argument(p)
    p.add_argument("--json", default=None, help=DEFAULT_REPORT_HELP.format(command="eval"))
    add_quiet_argument(p)
    p.set_defaults(func=run)
    remember_defaults(p, ("limit", *PERPLEXITY_WINDOWS))


def mean_accuracy(tasks: dict) -> dict | None:
    """Means over the tasks (``tasks``, more than one) of ``acc``, of ``acc_norm`` (None
    unless every task has it: winogrande has not) and of each task's headline metric
    (``evaluate.headline_metric``: the demo's "mean acc"), with their item count; None for
    fewer than two tasks."""
    from restorelcc.evaluate import headline_metric

    if len(tasks) < 2:
        return None
    norms = [metrics.get("acc_norm") for metrics in tasks.values()]
    return {
        "tasks": len(tasks),
        "items": sum(metrics["items"] for metrics in tasks.values()),
        "acc": statistics.fmean(metrics["acc"] for metrics in tasks.values()),
        "acc_norm": None if None in norms else statistics.fmean(norms),
        "headline": statistics.fmean(
            metrics[headline_metric(name)] for name, metrics in tasks.items()
        ),
    }


def summary_rows(tasks: dict, mean: dict | None) -> list[dict]:
    """The printed table's rows: one per task of ``tasks`` (a report's metrics by task
    name), then ``mean`` (``mean_accuracy(tasks)``, computed once for the report and the
    table) unless it is None."""
    rows = [
        {
            "task": name,
            "items": metrics["items"],
            "acc": metrics.get("acc"),
            "acc_stderr": metrics.get("acc_stderr"),
            "acc_norm": metrics.get("acc_norm"),
            "seconds": metrics.get("wall_s"),
        }
        for name, metrics in tasks.items()
    ]
    if mean:
        rows.append(
            {
                "task": "mean",
                "items": mean["items"],
                "acc": mean["acc"],
                "acc_norm": mean["acc_norm"],
            }
        )
    return rows


# Perplexities from here up print in scientific notation: in fixed point a pruned model's
# 1.373e+46 was 47 digits, all but the first few noise.
FIXED_POINT_BELOW = 1e6


def perplexity_line(ppl: dict) -> str:
    """The perplexity summary of a report (``PerplexityResult.as_dict``): 3 decimals, or 4
    significant digits from ``FIXED_POINT_BELOW`` up (``1.373e+46``); its ``None``
    perplexity (a mean NLL whose exp overflows a float) reads as inf, with the mean NLL."""
    figure = ppl["perplexity"]
    if figure is None:
        shown = f"inf (mean NLL {ppl['nll'] / ppl['tokens']:.1f} nats per token)"
    elif figure < FIXED_POINT_BELOW:
        shown = f"{figure:.3f}"
    else:
        shown = f"{figure:.3e}"
    from restorelcc.evaluate import perplexity_protocol

    return f"perplexity ({perplexity_protocol(ppl)}): {shown}"


def perplexity_of(model, tokenizer, args: argparse.Namespace, texts=None):
    """``perplexity_report`` of ``model`` as the perplexity options say: ``--ppl-source``,
    ``--ppl-tokens``, ``--ppl-window``, ``--ppl-stride``; a bar unless ``--quiet``.
    ``texts``: ``--ppl-source``'s documents as the caller read them (``perplexity_texts``,
    whose ``origin`` its report records), or None to read them here."""
    from restorelcc.evaluate import perplexity_report

    return perplexity_report(
        model,
        tokenizer,
        texts=texts,
        source=args.ppl_source,
        tokens=args.ppl_tokens,
        window=args.ppl_window,
        stride=args.ppl_stride,
        progress=not args.quiet,
    )


def compare_perplexity(results: dict) -> dict:
    """The report of several models' perplexities on one text: ``results`` maps each name
    to its ``PerplexityResult`` (same tokenizer, source and tokens). A perplexity whose
    ``exp`` overflows a float is written as ``null`` (JSON has no infinity), and ``exp(nll /
    tokens)`` is what is left of it (as in ``PerplexityResult.as_dict``)."""
    from restorelcc.evaluate import perplexity_settings

    return {
        "perplexity": {name: result.perplexity for name, result in results.items()},
        "nll": {name: result.nll for name, result in results.items()},
        **perplexity_settings(next(iter(results.values())).as_dict()),
    }


def _check_packed_options(args: argparse.Namespace) -> None:
    """A packed checkpoint (``restorelcc pack``) loads swapped as it was packed, its MLP
    packed or not as the pack chose: ``--swap`` and ``--mlp`` have nothing to choose."""
    given = [flag for flag, value in (("--swap", args.swap), ("--mlp", args.mlp)) if value]
    if given:
        raise ValueError(
            f"{' and '.join(given)}: {args.model} is a packed checkpoint, loaded swapped as it "
            "was packed (its MLP packed or not as restorelcc pack --mlp chose then); to swap "
            "it otherwise, evaluate the checkpoint it was packed from with --swap FORMAT [--mlp]"
        )
    refuse_adapter_on_packed(args)


def run(args: argparse.Namespace) -> int:
    from restorelcc.assets import load_config, load_model, model_origin
    from restorelcc.data import perplexity_texts
    from restorelcc.evaluate import evaluate_model, resolve_tasks
    from restorelcc.hf.packed_checkpoint import (
        is_packed_checkpoint,
        load_packed,
        packed_modules,
        packed_swap,
    )
    from restorelcc.io import format_table
    from restorelcc.provenance import run_metadata

    start = time.perf_counter()
    tasks = resolve_tasks(args.tasks)  # unknown names fail before the model loads
    check_adapter_options(args, "evaluate")
    # a packed checkpoint's manifest, checked before it loads, then what it holds: the report's
    held = packed_swap(args.model) if is_packed_checkpoint(args.model) else None
    if held:
        _check_packed_options(args)
    check_mlp_needs_swap(args)
    if not tasks and args.no_ppl:
        raise ValueError("nothing to evaluate: --tasks none with --no-ppl")
    if not tasks:
        refuse_unused(args, ("limit",), "--tasks none runs no task for it to limit")
    if args.no_ppl and args.ppl_source != DEFAULT_PERPLEXITY_SOURCE:
        raise ValueError("--ppl-source is the perplexity text: it has no use with --no-ppl")
    ppl_texts = None  # read once: what is checked here is what is scored and recorded
    if args.no_ppl:
        refuse_unused(args, PERPLEXITY_WINDOWS, "--no-ppl scores no perplexity for them to set")
    else:
        ppl_texts = perplexity_texts(args.ppl_source)  # a missing or empty source fails here
        if given_options(args, PERPLEXITY_WINDOWS):  # against the model's length, unloaded
            check_perplexity_options(args, load_config(args.model))
    out = report_path(args, "eval")
    ppl_source = None if args.no_ppl else data_input(args.ppl_source)
    adapter = adapter_input(args.adapter)
    inputs = {"--model": args.model, "--adapter": adapter, "--ppl-source": ppl_source}
    check_spares_inputs("--json", out, inputs)
    device = resolve_device(args.device)
    restoration = read_adapter(args.adapter)
    dtype = resolve_dtype(args.dtype, device)
    packed = None
    if held:
        model, tokenizer = load_packed(args.model, device=device, dtype=dtype)
        mlp = held["mlp_packed"]  # what it holds, not the --mlp that pack recorded
        packed = {**packed_modules(model), "stored_dtype": held["dtype"], "mlp": mlp}
    else:
        model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    if not args.no_ppl:  # and against its tokenizer's length, named as flags
        check_perplexity_options(args, model.config, tokenizer=tokenizer)
    if restoration is not None:
        restoration.fold(model)
    swap = None
    if args.swap:
        with swap_errors_named("--swap", args.swap):
            swap = swap_pruned_attention(
                model, "--swap", args.model, args.swap, MIN_SPARSITY, mlp=args.mlp
            )
    report = evaluate_model(
        model,
        tokenizer,
        tasks=tasks,
        limit=args.limit,
        perplexity=not args.no_ppl,
        ppl_tokens=args.ppl_tokens,
        ppl_source=args.ppl_source,
        batch_size=args.batch_size,
        progress=not args.quiet,
        ppl_window=args.ppl_window,
        ppl_stride=args.ppl_stride,
        ppl_texts=ppl_texts,
    )
    payload = {
        "model": str(args.model),
        "model_origin": model_origin(args.model),
        "tasks": report["tasks"],
        "mean": mean_accuracy(report["tasks"]),
        "limit": args.limit if tasks else None,  # it limits nothing else
        "batch_size": args.batch_size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "adapter": adapter_summary(args.adapter, restoration),
        "swap": swap.to_dict() if swap else None,
        "packed_checkpoint": packed,
        "perplexity": report["perplexity"],
        "ppl_source_origin": None if ppl_texts is None else ppl_texts.origin,
        "eval_wall_s": report["wall_s"],
        "wall_s": round(time.perf_counter() - start, 2),
        "run_metadata": run_metadata(),
    }
    out = write_report(args, "eval", out, payload)  # before any print: see cli.main
    if packed:
        print(f"packed checkpoint: {packed['modules']} packed modules ({packed['formats']})")
    if swap:
        print(describe_swap(swap))
    if report["tasks"]:
        columns = ["task", "items", "acc", "acc_stderr", "acc_norm", "seconds"]
        mean = payload["mean"]
        print(format_table(summary_rows(report["tasks"], mean), columns))
        if mean and mean["headline"] != mean["acc"]:
            print(
                "mean of each task's headline metric (the demo's mean acc; the paper's mean is "
                f"the mean row's acc): {mean['headline']:.4f}"
            )
    if report["perplexity"]:
        print(perplexity_line(report["perplexity"]))
        warn_if_text_ran_out(report["perplexity"], args)
    print(f"report: {out}  ({payload['wall_s']:.1f} s)")
    return 0
