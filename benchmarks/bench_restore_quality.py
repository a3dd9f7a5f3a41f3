"""Does a short restoration help? RestoreLCC and the baselines on the default model.

Prunes SmolLM2 (magnitude 50% unstructured by default), then for each method trains on
instruction pairs from a training source (``--data``: SQuAD by default, or ``mix`` of all
training sources; disjoint from evaluation) with one budget, and measures: the
response-only loss on held-out pairs of the same source (no evaluation data is used to
choose anything) and the sliding-window perplexity on LAMBADA passages (the evaluation
module's default source). Results are written after every method to
``benchmarks/results/restore_quality_<tag>.json``.

    python benchmarks/bench_restore_quality.py --steps 48 --lr 1e-3
    python benchmarks/bench_restore_quality.py --methods restorelcc,training-free --steps 8
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.baselines import lora_baseline, random_heads_restore, training_free
from restorelcc.data import instruction_pairs
from restorelcc.evaluate import perplexity
from restorelcc.io import atomic_write_json, format_table, run_metadata
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.tokens import encode_pair
from restorelcc.lcc.train import collate, response_loss
from restorelcc.prune import prune_model

METHODS = ("restorelcc", "random-heads", "training-free", "lora")


@torch.no_grad()
def heldout_loss(model, tokenizer, pairs, batch_size: int = 8) -> float:
    """Token-weighted response-only cross-entropy on ``pairs``."""
    encoded = [encode_pair(tokenizer, p, 500, eos=True) for p in pairs]
    total = count = 0.0
    for start in range(0, len(encoded), batch_size):
        ids, mask, positions, targets = collate(encoded[start : start + batch_size], 0)
        loss = response_loss(model, ids, mask, positions, targets)
        total += float(loss) * len(targets)
        count += len(targets)
    return total / count


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
    p.add_argument("--prune", default="magnitude", help="magnitude or wanda (unstructured)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--data", default="squad", help="training source ('squad', 'mix', ...)")
    p.add_argument("--train-pairs", type=int, default=256)
    p.add_argument("--probe-pairs", type=int, default=128)
    p.add_argument("--heldout-pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--lrs", default="1e-3", help="learning rates tried for each trained method")
    p.add_argument("--heads", type=float, default=0.25)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--ppl-tokens", type=int, default=8192)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    lrs = [float(x) for x in args.lrs.split(",") if x]
    tag = args.tag or f"{args.data}_{args.prune}{int(args.sparsity * 100)}_steps{args.steps}"
    out = Path(f"benchmarks/results/restore_quality_{tag}.json")

    dense, tokenizer = load_model(args.model)
    pruned = copy.deepcopy(dense)
    calibration = None
    if args.prune != "magnitude":
        from restorelcc.data import calibration_batches

        calibration = calibration_batches(tokenizer, nsamples=32, seqlen=256)
    prune_model(pruned, args.prune, args.sparsity, calibration=calibration)
    pool = instruction_pairs(args.data, n=args.train_pairs + args.heldout_pairs, seed=0)
    train, heldout = pool[: args.train_pairs], pool[args.train_pairs :]

    def configs(lr: float) -> tuple[TrainConfig, RestoreConfig]:
        train_config = TrainConfig(
            lr=lr, max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length
        )
        return train_config, RestoreConfig(
            heads=args.heads, probe_pairs=args.probe_pairs, train=train_config
        )

    result: dict = {"args": vars(args), "run_metadata": run_metadata(), "rows": []}

    def record(name, model, seconds, **extra):
        row = {
            "method": name,
            "seconds": seconds,
            **extra,
            **measure(model, tokenizer, heldout, args.ppl_tokens),
        }
        result["rows"].append(row)
        atomic_write_json(out, result)
        print(format_table([row]), flush=True)

    record("dense", dense, 0.0, trainable=0)
    record("pruned", pruned, 0.0, trainable=0)
    runs = [("training-free", None)] if "training-free" in methods else []
    runs += [(m, lr) for m in methods if m != "training-free" for lr in lrs]
    for method, lr in runs:
        name = method if lr is None else f"{method} lr={lr:g}"
        start = time.perf_counter()
        if method == "lora":
            res = lora_baseline(pruned, tokenizer, train, configs(lr)[0], rank=args.lora_rank)
            seconds = time.perf_counter() - start
            extra = {"trainable": res.trainable_parameters, "final_loss": res.train.final_loss}
            record(name, res.model, seconds, **extra)
            continue
        if method == "restorelcc":
            restoration = restore(dense, pruned, tokenizer, train, configs(lr)[1])
        elif method == "random-heads":
            restoration = random_heads_restore(dense, pruned, tokenizer, train, configs(lr)[1])
        else:
            restoration = training_free(dense, pruned, tokenizer, train[: args.probe_pairs])
        seconds = time.perf_counter() - start
        folded = restoration.fold(copy.deepcopy(pruned))
        extra = {"trainable": restoration.trainable_parameters}
        result.setdefault("stages", {})[name] = restoration.report.get("seconds")
        if "train" in restoration.report:
            extra["final_loss"] = restoration.report["train"]["final_loss"]
        record(name, folded, seconds, **extra)
        del folded

    dense_ppl, pruned_ppl = result["rows"][0]["lambada_ppl"], result["rows"][1]["lambada_ppl"]
    for row in result["rows"]:
        row["gap_closed"] = (pruned_ppl - row["lambada_ppl"]) / (pruned_ppl - dense_ppl)
    atomic_write_json(out, result)
    columns = ["method", "trainable", "seconds", "heldout_loss", "lambada_ppl", "gap_closed"]
    print(format_table(result["rows"], columns))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
