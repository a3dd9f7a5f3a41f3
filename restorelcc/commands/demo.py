"""``restorelcc demo``: prune -> restore -> fold -> evaluate on one model, one table."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from restorelcc.commands.options import add_device_argument, resolve_device
from restorelcc.commands.restore import heads_value
from restorelcc.demo import METHODS, DemoConfig, run_demo


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="prune, restore (RestoreLCC vs LoRA vs training-free) and evaluate",
        description=(
            "Prune a model with Wanda (50% unstructured and 2:4 by default), restore it with "
            "RestoreLCC and the baselines on the same data and steps, fold, and evaluate. "
            "Defaults fit ~25-30 minutes on 2 CPU cores; --paper scales to the paper's settings."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = DemoConfig()
    p.add_argument("--model", default=d.model)
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's budget: 2,000 pairs, 3 epochs, the 7 tasks in full",
    )
    p.add_argument(
        "--prune-method", default=d.prune_method, choices=["magnitude", "wanda", "sparsegpt"]
    )
    p.add_argument(
        "--patterns",
        type=_csv,
        default=d.patterns,
        help="comma-separated: unstructured, 2:4, 4:8, heads (structured)",
    )
    p.add_argument("--sparsity", type=float, default=d.sparsity)
    p.add_argument(
        "--structured-sparsity",
        type=float,
        default=d.structured_sparsity,
        help="fraction of the decoder-block parameters removed by the 'heads' pattern",
    )
    p.add_argument("--calibration-samples", type=int, default=d.calibration_samples)
    p.add_argument("--calibration-seqlen", type=int, default=d.calibration_seqlen)
    p.add_argument(
        "--pairs-source",
        default=d.pairs_source,
        help="built-in source (squad, coqa, ..., mix) or an Alpaca JSON/JSONL file",
    )
    p.add_argument("--train-pairs", type=int, default=d.train_pairs)
    p.add_argument("--probe-pairs", type=int, default=d.probe_pairs)
    p.add_argument(
        "--heads",
        type=heads_value,
        default=d.heads,
        help="heads to restore: a count (64) or a fraction of all heads (0.25, 1.0)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="RestoreLCC learning rate")
    p.add_argument("--lora-lr", type=float, default=d.lora_lr)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--tasks", type=_csv, default=d.tasks)
    p.add_argument("--limit", type=int, default=d.limit, help="items per task (0 = all)")
    p.add_argument("--ppl-tokens", type=int, default=d.ppl_tokens)
    p.add_argument(
        "--ppl-source",
        default=d.ppl_source,
        help="perplexity text: 'lambada' or a text file/folder/JSON(L) with a 'text' column",
    )
    p.add_argument("--methods", type=_csv, default=d.methods, help=f"from {','.join(METHODS)}")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="output folder (default runs/demo-<time>)")
    add_device_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    chosen = {
        f.name: getattr(args, f.name)
        for f in fields(DemoConfig)
        if hasattr(args, f.name) and getattr(args, f.name) != f.default
    }
    chosen["progress"] = not args.quiet
    chosen["device"] = str(resolve_device(args.device))
    if args.limit == 0:
        chosen["limit"] = None
    config = DemoConfig.paper(**chosen) if args.paper else DemoConfig(**chosen)
    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    report = run_demo(config, out)
    print(report["table"])
    print(f"\nreport: {out}/report.json  plot: {out}/plot.png  ({report['wall_s']:.0f} s)")
    return 0
