"""``restorelcc demo``: prune -> restore -> fold -> evaluate on one model, one table."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from restorelcc.commands.dtypes import add_dtype_argument
from restorelcc.commands.model_options import MODEL_TO_PRUNE, refuse_adapter_folder
from restorelcc.commands.options import (
    PPL_STRIDE_HELP,
    PPL_WINDOW_HELP,
    add_device_argument,
    add_quiet_argument,
    auto_count,
    check_spares_inputs,
    data_input,
    limit_value,
    refuse_unused,
    resolve_device,
)
from restorelcc.commands.reports import mark_written
from restorelcc.commands.restore import heads_value
from restorelcc.data import DEFAULT_PERPLEXITY_SOURCE
from restorelcc.demo import run_demo
from restorelcc.demo_config import (
    DATA_SOURCES,
    DEMO_REPORT,
    METHODS,
    PAPER_SETTINGS,
    DemoArgumentError,
    DemoConfig,
    option,
)
from restorelcc.evaluate import PAPER_TASKS
from restorelcc.output_dirs import check_output_directory
from restorelcc.prune.validate import METHODS as PRUNE_METHODS

DEFAULTS = DemoConfig()
# Every DemoConfig option defaults to "not given" (argparse.SUPPRESS), so that what the
# user typed wins over --paper's preset even where it equals the plain default; the real
# defaults are written into the help text instead.


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _readable(value) -> str:
    """A default as a user would type it: ``unstructured,2:4``, ``paper``, ``all``."""
    if value == PAPER_TASKS:
        return "paper"
    if isinstance(value, tuple):
        return ",".join(value)
    return "all" if value is None else str(value)


def _add(
    parser: argparse.ArgumentParser, name: str, text: str, shown: str | None = None, **kwargs
) -> None:
    """The option of the ``DemoConfig`` field ``name``, its default (and --paper's) in help;
    ``shown``: the default as typed, where ``_readable`` cannot tell (``auto``)."""
    default = f"default: {shown or _readable(getattr(DEFAULTS, name))}"
    if name in PAPER_SETTINGS:
        default += f"; --paper: {_readable(PAPER_SETTINGS[name])}"
    parser.add_argument(
        option(name), dest=name, default=argparse.SUPPRESS, help=f"{text} ({default})", **kwargs
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="prune, restore (RestoreLCC vs LoRA vs training-free; LoFiT, DoRA) and evaluate",
        description=(
            "Prune a model with Wanda (50 percent unstructured and 2:4 by default), restore it "
            "with RestoreLCC and the baselines on the same data and steps, fold, and evaluate. "
            "Defaults fit ~24 minutes on 2 idle CPU cores with smollm2-135m (the stored run, "
            "benchmarks/results/demo_smollm2-135m: 1468 s); --paper scales to the paper's "
            "settings."
        ),
    )
    _add(p, "model", "model name or local directory")
    paper = ", ".join(f"{option(k)} {_readable(v)}" for k, v in PAPER_SETTINGS.items())
    p.add_argument(
        "--paper",
        action="store_true",
        help=f"the paper's budget: {paper}; options given explicitly win",
    )
    _add(p, "prune_method", "pruning method", choices=PRUNE_METHODS, type=str.lower)
    _add(p, "patterns", "comma-separated: unstructured, 2:4, 4:8, heads (structured)", type=_csv)
    _add(p, "sparsity", "fraction of the weights removed (unstructured, N:M)", type=float)
    _add(
        p,
        "structured_sparsity",
        "fraction of the decoder-block parameters removed by the 'heads' pattern",
        type=float,
    )
    _add(
        p,
        "channel_multiple",
        "'heads' pattern: keep a multiple of this many MLP channels per layer, as prune's "
        "--channel-multiple (8 suits tensor cores; 4 lets a later 2:4 prune take down_proj)",
        type=int,
    )
    _add(
        p,
        "calibration_source",
        "pruning calibration text: a training source, 'mix', or a file/folder",
    )
    _add(p, "calibration_samples", "calibration sequences", type=int)
    _add(p, "calibration_seqlen", "tokens per calibration sequence", type=int)
    _add(p, "pairs_source", "built-in source (squad, coqa, ..., mix) or an Alpaca JSON/JSONL file")
    _add(p, "train_pairs", "instruction pairs for training (every method)", type=int)
    _add(
        p,
        "probe_pairs",
        "of those, pairs for capture and probing (restorelcc, training-free); a preset is "
        "lowered to --train-pairs",
        type=int,
    )
    _add(
        p,
        "heads",
        "heads to restore: a count (64) or a fraction of all heads (0.25, 1.0)",
        type=heads_value,
    )
    _add(p, "lr", "RestoreLCC (and LoFiT) learning rate", type=float)
    _add(p, "lora_lr", "LoRA's and DoRA's learning rate", type=float)
    _add(p, "lora_rank", "LoRA's and DoRA's rank", type=int)
    _add(p, "epochs", "training epochs", type=int)
    _add(p, "batch_size", "training pairs per step", type=int)
    _add(p, "max_length", "tokens per training pair", type=int)
    _add(p, "tasks", "comma-separated task names, or 'paper' (the paper's 7)", type=_csv)
    _add(p, "limit", "first N items of each task ('all' for every item)", type=limit_value)
    _add(p, "ppl_tokens", "perplexity token budget", type=int)
    _add(
        p,
        "ppl_source",
        f"perplexity text: '{DEFAULT_PERPLEXITY_SOURCE}' or a text file/folder/JSON(L) with a "
        "'text' column",
    )
    _add(p, "ppl_window", f"perplexity: {PPL_WINDOW_HELP}", "auto", type=auto_count, metavar="N")
    _add(p, "ppl_stride", f"perplexity: {PPL_STRIDE_HELP}", "auto", type=auto_count, metavar="N")
    _add(p, "methods", f"comma-separated, from {','.join(METHODS)}", type=_csv)
    _add(p, "latency_rounds", "interleaved rounds of the forward-latency measurement", type=int)
    _add(p, "seed", "data sampling, initialisation and order", type=int)
    p.add_argument("--out", default=None, help="output folder (default: runs/demo-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_device_argument(p)
    add_dtype_argument(p, "every model's dtype; pruning computes in float32 (default: auto)")
    add_quiet_argument(p)
    p.set_defaults(func=run)


def refuse_unused_options(args: argparse.Namespace, config: DemoConfig) -> None:
    """Refuse the options typed that ``config``'s run would ignore
    (``DemoConfig.unused_options``); the others' defaults (or --paper's) are fine. An
    option not typed is "not given" (argparse.SUPPRESS) on ``args``: ``refuse_unused``
    reads it so, on a namespace where that is every option's default."""
    names = [f.name for f in fields(DemoConfig)]
    typed = argparse.Namespace(
        **{name: getattr(args, name, argparse.SUPPRESS) for name in names},
        option_defaults=dict.fromkeys(names, argparse.SUPPRESS),
    )
    for unused, why in config.unused_options():
        refuse_unused(typed, unused, why, DemoArgumentError)


def run(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if hasattr(args, f.name)}
    given["progress"] = not args.quiet
    given["device"] = str(resolve_device(args.device))
    config = DemoConfig.paper(**given) if args.paper else DemoConfig(**given)
    refuse_unused_options(args, config)
    refuse_adapter_folder(option("model"), config.model, MODEL_TO_PRUNE)
    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    inputs = {option("model"): config.model} | {
        option(name): data_input(getattr(config, name)) for name in DATA_SOURCES
    }
    check_spares_inputs("--out", out, inputs, folder=True)
    check_output_directory(out, args.overwrite, option="--out", replaces=DEMO_REPORT)
    report = run_demo(config, out, overwrite=args.overwrite)
    mark_written(args, out)
    print(report["table"])
    print(f"\nreport: {out}/report.json  plot: {out}/plot.png  ({report['wall_s']:.0f} s)")
    return 0
