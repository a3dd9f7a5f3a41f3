"""Does a short restoration help? RestoreLCC and the baselines on the default model.

Prunes SmolLM2 (``--prune`` / ``--pattern``: magnitude 50% unstructured by default), then
for each method trains on instruction pairs from a training source (``--data``: SQuAD by
default, or ``mix`` of all training sources; disjoint from evaluation) with one budget, and
measures: the response-only loss on held-out pairs of the same source (no evaluation data
is used to choose anything) and the sliding-window perplexity on LAMBADA passages (the
evaluation module's default source). Results are written after every method to
``benchmarks/results/restore_quality_<tag>.json``.

    python benchmarks/bench_restore_quality.py --steps 48 --lrs 1e-3
    python benchmarks/bench_restore_quality.py --methods restorelcc,training-free --steps 8
    python benchmarks/bench_restore_quality.py --prune wanda --pattern 2:4 --data mix \
        --lrs 1e-3,3e-3 --heads 0.25,1.0 --tasks arc_easy,piqa,hellaswag   # a sweep

``--heads`` and ``--lrs`` take lists (RestoreLCC and random heads run every combination,
LoRA every lr); ``--tasks`` adds zero-shot accuracy and its gap closed to each row.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.baselines import (
    lofit_baseline,
    lora_baseline,
    random_heads_restore,
    training_free,
)
from restorelcc.commands.restore import heads_value
from restorelcc.data import instruction_pairs
from restorelcc.demo import gap_closed, headline_accuracy
from restorelcc.evaluate import evaluate_model, perplexity
from restorelcc.io import atomic_write_json, format_table, run_metadata
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.train import heldout_loss
from restorelcc.prune import prune_model

METHODS = ("restorelcc", "random-heads", "training-free", "lora", "lofit")
DEFAULT_METHODS = METHODS[:4]  # LoFiT trains twice as many steps: opt in


def measure(model, tokenizer, heldout, ppl_tokens) -> dict:
    start = time.perf_counter()
    out = {
        "heldout_loss": heldout_loss(model, tokenizer, heldout),
        "lambada_ppl": perplexity(model, tokenizer, tokens=ppl_tokens, progress=False),
    }
    out["eval_seconds"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prune", default="magnitude", help="magnitude, wanda or sparsegpt")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--data", default="squad", help="training source ('squad', 'mix', ...)")
    p.add_argument("--train-pairs", type=int, default=256)
    p.add_argument("--probe-pairs", type=int, default=128)
    p.add_argument("--heldout-pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--lrs", default="1e-3", help="learning rates tried for each trained method")
    p.add_argument(
        "--heads", default="0.25", help="head counts (64) or fractions (0.25, 1.0) tried"
    )
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--ppl-tokens", type=int, default=8192)
    p.add_argument("--tasks", default="", help="zero-shot tasks also scored (e.g. arc_easy,piqa)")
    p.add_argument("--limit", type=int, default=100, help="items per zero-shot task")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"from {METHODS}")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    lrs = [float(x) for x in args.lrs.split(",") if x]
    head_choices = [heads_value(x) for x in args.heads.split(",") if x]
    tasks = [t for t in args.tasks.split(",") if t]
    pattern_tag = "" if args.pattern == "unstructured" else args.pattern.replace(":", "of")
    tag = args.tag or (
        f"{args.data}_{args.prune}{int(args.sparsity * 100)}{pattern_tag}_steps{args.steps}"
    )
    out = Path(f"benchmarks/results/restore_quality_{tag}.json")

    dense, tokenizer = load_model(args.model)
    pruned = copy.deepcopy(dense)
    calibration = None
    if args.prune != "magnitude":
        from restorelcc.data import calibration_batches

        calibration = calibration_batches(tokenizer, nsamples=32, seqlen=256)
    prune_model(pruned, args.prune, args.sparsity, args.pattern, calibration=calibration)
    pool = instruction_pairs(args.data, n=args.train_pairs + args.heldout_pairs, seed=0)
    train, heldout = pool[: args.train_pairs], pool[args.train_pairs :]

    def configs(lr: float, heads=head_choices[0]) -> tuple[TrainConfig, RestoreConfig]:
        train_config = TrainConfig(
            lr=lr, max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length
        )
        return train_config, RestoreConfig(
            heads=heads, probe_pairs=args.probe_pairs, train=train_config
        )

    result: dict = {"args": vars(args), "run_metadata": run_metadata(), "rows": []}

    def record(name, model, seconds, **extra):
        row = {
            "method": name,
            "seconds": seconds,
            **extra,
            **measure(model, tokenizer, heldout, args.ppl_tokens),
        }
        if tasks:
            scores = evaluate_model(
                model, tokenizer, tasks, limit=args.limit, perplexity=False, progress=False
            )
            row["accuracy"] = headline_accuracy(scores)
            row["mean_accuracy"] = statistics.fmean(row["accuracy"].values())
        result["rows"].append(row)
        atomic_write_json(out, result)
        print(format_table([row]), flush=True)

    record("dense", dense, 0.0, trainable=0)
    record("pruned", pruned, 0.0, trainable=0)
    runs = [("training-free", None, None)] if "training-free" in methods else []
    for method in methods:
        if method == "lora":
            runs += [(method, lr, None) for lr in lrs]
        elif method != "training-free":
            runs += [(method, lr, heads) for lr in lrs for heads in head_choices]
    for method, lr, heads in runs:
        name = method if lr is None else f"{method} lr={lr:g}"
        if heads is not None and len(head_choices) > 1:
            name += f" heads={heads:g}"
        start = time.perf_counter()
        if method == "lora":
            res = lora_baseline(pruned, tokenizer, train, configs(lr)[0], rank=args.lora_rank)
            seconds = time.perf_counter() - start
            extra = {"trainable": res.trainable_parameters, "final_loss": res.train.final_loss}
            record(name, res.model, seconds, **extra)
            continue
        if method == "restorelcc":
            restoration = restore(dense, pruned, tokenizer, train, configs(lr, heads)[1])
        elif method == "random-heads":
            restoration = random_heads_restore(
                dense, pruned, tokenizer, train, configs(lr, heads)[1]
            )
        elif method == "lofit":
            restoration = lofit_baseline(pruned, tokenizer, train, configs(lr, heads)[1])
        else:
            restoration = training_free(dense, pruned, tokenizer, train[: args.probe_pairs])
        seconds = time.perf_counter() - start
        folded = restoration.fold(copy.deepcopy(pruned))
        run = restoration.report.get("train", {})
        extra = {"trainable": restoration.trainable_parameters}
        result.setdefault("stages", {})[name] = restoration.report.get("seconds")
        if run:
            extra["final_loss"] = run["final_loss"]
        record(name, folded, seconds, **extra)
        del folded

    dense_ppl, pruned_ppl = result["rows"][0]["lambada_ppl"], result["rows"][1]["lambada_ppl"]
    for row in result["rows"]:
        row["gap_closed"] = gap_closed(pruned_ppl, row["lambada_ppl"], dense_ppl)
        if tasks:
            row["acc_gap_closed"] = gap_closed(
                result["rows"][1]["mean_accuracy"],
                row["mean_accuracy"],
                result["rows"][0]["mean_accuracy"],
            )
    atomic_write_json(out, result)
    columns = ["method", "trainable", "seconds", "heldout_loss", "lambada_ppl", "gap_closed"]
    columns += ["mean_accuracy", "acc_gap_closed"] if tasks else []
    print(format_table(result["rows"], columns))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
