"""Does a short restoration help? RestoreLCC and the baselines on the default model.

Prunes SmolLM2 (``--prune`` / ``--pattern``: magnitude 50% unstructured by default), then
for each method trains on instruction pairs from a training source (``--data``: SQuAD by
default, or ``mix`` of all training sources; disjoint from evaluation) with one budget, and
measures: the response-only loss on held-out pairs of the same source (no evaluation data
is used to choose anything) and the sliding-window perplexity on LAMBADA passages (the
evaluation module's default source). Results go to
``benchmarks/results/restore_quality_<tag>.json`` (``--out`` to change) when the run has
finished, with ``"status": "complete"``; while it runs, each method's row is added to
``restore_quality_<tag>.partial.json`` beside it (``"status": "running"``, or
``"failed: ..."`` when the run stops on an error), which a complete run removes. A stored
complete result is never replaced by a partial one. Every option is checked, and every
configuration built, before the model loads.

    python benchmarks/bench_restore_quality.py --steps 48 --lrs 1e-3
    python benchmarks/bench_restore_quality.py --methods restorelcc,training-free --steps 8
    python benchmarks/bench_restore_quality.py --prune wanda --pattern 2:4 --data mix \
        --lrs 1e-3,3e-3 --heads 0.25,1.0 --tasks arc_easy,piqa,hellaswag   # a sweep

``--heads`` and ``--lrs`` take lists (RestoreLCC and random heads run every combination,
LoRA and DoRA every lr, at ``--lora-rank``); ``--tasks`` adds zero-shot accuracy and its gap
closed to each row. Training-free captures at 512 tokens, as RestoreLCC does
(``RestoreConfig.capture_max_length``), whatever ``--max-length``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from restorelcc.assets import DEFAULT_MODEL, load_config, load_model
from restorelcc.baselines import (
    lofit_baseline,
    lora_baseline,
    random_heads_restore,
    training_free,
)
from restorelcc.commands.restore import heads_value
from restorelcc.data import instruction_pairs
from restorelcc.demo_table import UNMERGED_METHODS, gap_closed, headline_accuracy
from restorelcc.errors import RestoreLCCError
from restorelcc.eval.tasks import resolve_tasks
from restorelcc.evaluate import evaluate_model, perplexity
from restorelcc.hf.families import head_geometry
from restorelcc.io import atomic_write_json, format_table
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.probing import head_count
from restorelcc.lcc.train import heldout_loss
from restorelcc.provenance import load_average, run_metadata
from restorelcc.prune import prune_model
from restorelcc.prune.validate import check_spec

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("restorelcc", "random-heads", "training-free", "lora", "lofit", "dora")
DEFAULT_METHODS = METHODS[:4]  # LoFiT trains twice as many steps, DoRA is LoRA's variant
COUNTS = (  # options that must be >= 1
    "train_pairs",
    "probe_pairs",
    "heldout_pairs",
    "steps",
    "batch_size",
    "max_length",
    "lora_rank",
    "ppl_tokens",
    "limit",
)


@dataclass
class Plan:
    """What the options ask for, checked: the runs' configurations and the output path."""

    methods: list[str]
    lrs: list[float]
    heads: list[int | float]
    tasks: list[str]
    configs: dict[tuple[float, int | float], tuple[TrainConfig, RestoreConfig]]
    out: Path

    @property
    def partial(self) -> Path:
        """Where the rows go while the run lasts (``<out stem>.partial.json``)."""
        return self.out.with_name(f"{self.out.stem}.partial.json")


def measure(model, tokenizer, heldout, ppl_tokens) -> dict:
    start = time.perf_counter()
    out = {
        "heldout_loss": heldout_loss(model, tokenizer, heldout),
        "lambada_ppl": perplexity(model, tokenizer, tokens=ppl_tokens, progress=False),
    }
    out["eval_seconds"] = time.perf_counter() - start
    return out


def parser() -> argparse.ArgumentParser:
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
    p.add_argument("--tag", default=None, help="names the default output file")
    p.add_argument(
        "--out", default=None, help="output JSON (default: results/restore_quality_<tag>.json)"
    )
    return p


def plan_for(p: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """Every option checked and every configuration built, before any model loads; a bad
    option ends the run with a usage error naming it (``p.error``)."""
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {METHODS}")
    for name in COUNTS:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        lrs = [float(x) for x in args.lrs.split(",") if x]
    except ValueError:
        p.error(f"--lrs {args.lrs!r}: give comma-separated numbers, e.g. 1e-3,3e-3")
    try:
        heads = [heads_value(x) for x in args.heads.split(",") if x]
    except argparse.ArgumentTypeError as error:
        p.error(f"--heads: {error}")
    if not lrs or not heads:
        p.error("--lrs and --heads each need at least one value")
    try:
        check_spec(args.prune, args.sparsity, args.pattern)
    except RestoreLCCError as error:
        p.error(f"--prune/--sparsity/--pattern: {error}")
    try:
        tasks = resolve_tasks(args.tasks) if args.tasks else []
    except RestoreLCCError as error:
        p.error(f"--tasks: {error}")
    try:
        geometry = head_geometry(load_config(args.model))
    except RestoreLCCError as error:
        p.error(f"--model {args.model}: {error}")
    configs = {}
    for lr in lrs:
        for choice in heads:
            try:
                head_count(geometry, choice)
                train = TrainConfig(
                    lr=lr,
                    max_steps=args.steps,
                    batch_size=args.batch_size,
                    max_length=args.max_length,
                )
                configs[lr, choice] = (
                    train,
                    RestoreConfig(heads=choice, probe_pairs=args.probe_pairs, train=train),
                )
            except ValueError as error:
                p.error(f"--lrs/--heads (lr {lr:g}, heads {choice:g}): {error}")
    pattern_tag = args.pattern.replace(":", "of")  # 2of4, unstructured
    tag = args.tag or (
        f"{args.data}_{args.prune}{int(args.sparsity * 100)}_{pattern_tag}_steps{args.steps}"
    )
    out = Path(args.out) if args.out else RESULTS / f"restore_quality_{tag}.json"
    return Plan(methods, lrs, heads, tasks, configs, out)


def runs(plan: Plan) -> list[tuple[str, float | None, int | float | None]]:
    """(method, lr, heads) of every trained or training-free run, in order."""
    out = [("training-free", None, None)] if "training-free" in plan.methods else []
    for method in plan.methods:
        if method in UNMERGED_METHODS:  # lora, dora: one run per lr, no head count
            out += [(method, lr, None) for lr in plan.lrs]
        elif method != "training-free":
            out += [(method, lr, heads) for lr in plan.lrs for heads in plan.heads]
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    plan = plan_for(p, args)
    try:
        pool = instruction_pairs(args.data, n=args.train_pairs + args.heldout_pairs, seed=0)
    except RestoreLCCError as error:
        p.error(f"--data {args.data}: {error}")
    train, heldout = pool[: args.train_pairs], pool[args.train_pairs :]
    result: dict = {
        "args": vars(args),
        "status": "running",
        "load_average": {"before": load_average()},
        "run_metadata": run_metadata(),
        "rows": [],
    }
    try:
        run_all(args, plan, train, heldout, result)
    except BaseException as error:
        result["status"] = f"failed: {type(error).__name__}: {error}"[:600]
        atomic_write_json(plan.partial, result)
        raise
    result["status"] = "complete"
    result["load_average"]["after"] = load_average()
    result["run_metadata"] = run_metadata()
    atomic_write_json(plan.out, result)
    plan.partial.unlink(missing_ok=True)
    columns = ["method", "trainable", "seconds", "heldout_loss", "lambada_ppl", "gap_closed"]
    columns += ["mean_accuracy", "acc_gap_closed"] if plan.tasks else []
    print(format_table(result["rows"], columns))
    print(f"wrote {plan.out}")
    return 0


def run_all(args, plan: Plan, train, heldout, result: dict) -> None:
    """Every method's row into ``result["rows"]`` (each also written to ``plan.partial``),
    then the gap-closed fractions."""
    dense, tokenizer = load_model(args.model)
    pruned = copy.deepcopy(dense)
    calibration = None
    if args.prune != "magnitude":
        from restorelcc.data import calibration_batches

        calibration = calibration_batches(tokenizer, nsamples=32, seqlen=256)
    prune_model(pruned, args.prune, args.sparsity, args.pattern, calibration=calibration)
    if "dora" in args.methods.split(","):  # a model DoRA cannot train: refused before scoring
        from restorelcc.baselines import check_dora_rows

        check_dora_rows(pruned)

    def record(name, model, seconds, **extra):
        row = {
            "method": name,
            "seconds": seconds,
            **extra,
            **measure(model, tokenizer, heldout, args.ppl_tokens),
        }
        if plan.tasks:
            scores = evaluate_model(
                model, tokenizer, plan.tasks, limit=args.limit, perplexity=False, progress=False
            )
            row["accuracy"] = headline_accuracy(scores)
            row["mean_accuracy"] = statistics.fmean(row["accuracy"].values())
        result["rows"].append(row)
        atomic_write_json(plan.partial, result)
        print(format_table([row]), flush=True)

    record("dense", dense, 0.0, trainable=0)
    record("pruned", pruned, 0.0, trainable=0)
    for method, lr, heads in runs(plan):
        name = method if lr is None else f"{method} lr={lr:g}"
        if heads is not None and len(plan.heads) > 1:
            name += f" heads={heads:g}"
        start = time.perf_counter()
        if method in UNMERGED_METHODS:
            train_config = plan.configs[lr, plan.heads[0]][0]
            res = lora_baseline(
                pruned, tokenizer, train, train_config, args.lora_rank, dora=method == "dora"
            )
            seconds = time.perf_counter() - start
            extra = {"trainable": res.trainable_parameters, "final_loss": res.train.final_loss}
            record(name, res.model, seconds, **extra)
            continue
        config = None if lr is None else plan.configs[lr, heads][1]
        if method == "restorelcc":
            restoration = restore(dense, pruned, tokenizer, train, config)
        elif method == "random-heads":
            restoration = random_heads_restore(dense, pruned, tokenizer, train, config)
        elif method == "lofit":
            restoration = lofit_baseline(pruned, tokenizer, train, config)
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

    dense_row, pruned_row = result["rows"][0], result["rows"][1]
    for row in result["rows"]:
        row["gap_closed"] = gap_closed(
            pruned_row["lambada_ppl"],
            row["lambada_ppl"],
            dense_row["lambada_ppl"],
            higher_is_better=False,
        )
        if plan.tasks:
            row["acc_gap_closed"] = gap_closed(
                pruned_row["mean_accuracy"],
                row["mean_accuracy"],
                dense_row["mean_accuracy"],
                higher_is_better=True,
            )


if __name__ == "__main__":
    raise SystemExit(main())
