"""Inference cost of a restoration on the CPU: folded vs pruned, and the alternatives.

Times a forward of the pruned default model (batch x tokens) in four forms, interleaved
round by round so that machine load hits all of them alike:

- ``pruned``: the magnitude-pruned model;
- ``folded``: the same model with a RestoreLCC restoration folded into the ``o_proj``
  biases (the deliverable: one bias add per layer, weights bit-identical);
- ``hooked``: the restoration unfolded, added at ``o_proj``'s input by hooks (what the
  research code does on every forward);
- ``lora``: a rank-8 LoRA on q/k/v/o, unmerged (merging would destroy the sparsity; the
  sparsity after a merge is reported too).

Reports the median time of each and the median of the per-round ratios to ``pruned``.
Results go to ``benchmarks/results/fold_latency_<device>.json``.

    python benchmarks/bench_fold_latency.py --rounds 30
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.baselines import block_sparsity, lora_baseline, merged_sparsity
from restorelcc.data import instruction_pairs
from restorelcc.hf.families import head_geometry
from restorelcc.io import atomic_write_json, format_table, run_metadata
from restorelcc.lcc import HeadCompensation, Restoration, TrainConfig, model_fingerprint
from restorelcc.prune import prune_model


def restoration_for(model, fraction: float, seed: int = 0) -> Restoration:
    """A restoration over ``fraction`` of the heads with trained-sized coefficients
    (latency does not depend on the values)."""
    g = head_geometry(model)
    count = max(1, round(fraction * g.total_heads))
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(g.total_heads, generator=gen)[:count]
    heads = torch.stack([flat // g.heads, flat % g.heads], dim=1)
    directions = torch.linalg.qr(torch.randn(count, g.head_dim, g.head_dim, generator=gen)).Q.mT
    comp = HeadCompensation(g, heads, directions, init_std=0.05, seed=seed)
    return Restoration.from_compensation(comp, model.config.model_type, model_fingerprint(model))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--heads", type=float, default=0.25)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = "cpu"
    out = Path(args.out or f"benchmarks/results/fold_latency_{device}.json")

    model, tokenizer = load_model(args.model)
    prune_model(model, "magnitude", 0.5)
    restoration = restoration_for(model, args.heads)
    folded = restoration.fold(copy.deepcopy(model))
    # LoRA: a couple of real training steps so that B != 0 (the merge then densifies)
    pairs = instruction_pairs("squad", n=8, seed=0)
    lora = lora_baseline(
        model,
        tokenizer,
        pairs,
        TrainConfig(max_steps=2, batch_size=4, max_length=128, progress=False),
    )
    folded_params = dict(folded.named_parameters())
    weights_identical = all(torch.equal(p, folded_params[n]) for n, p in model.named_parameters())

    ids = torch.randint(
        0,
        model.config.vocab_size,
        (args.batch, args.tokens),
        generator=torch.Generator().manual_seed(0),
    )
    variants = {
        "pruned": lambda: model(input_ids=ids),
        "folded": lambda: folded(input_ids=ids),
        "hooked": lambda: _hooked(restoration, model, ids),
        "lora": lambda: lora.model(input_ids=ids),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in variants.values():
                fn()
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
    rows = []
    for name in variants:
        ratios = [t / base for t, base in zip(times[name], times["pruned"], strict=True)]
        rows.append(
            {
                "variant": name,
                "median_ms": 1e3 * statistics.median(times[name]),
                "ratio_to_pruned": statistics.median(ratios),
                "ratio_of_medians": statistics.median(times[name])
                / statistics.median(times["pruned"]),
            }
        )
    result = {
        "model": args.model,
        "input": {"batch": args.batch, "tokens": args.tokens},
        "rounds": args.rounds,
        "restored_heads": int(restoration.heads.shape[0]),
        "sparsity": {
            "pruned": block_sparsity(model),
            "folded": block_sparsity(folded),
            "lora_unmerged_base": block_sparsity(lora.model.get_base_model()),
            "lora_merged": merged_sparsity(lora),
        },
        "folded_weights_identical": weights_identical,
        "rows": rows,
        "times_s": times,
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "run_metadata": run_metadata(),
    }
    atomic_write_json(out, result)
    print(format_table(rows))
    print(format_table([result["sparsity"]]))
    print(f"wrote {out}")
    return 0


def _hooked(restoration, model, ids):
    with restoration.attached(model, check=False):
        return model(input_ids=ids)


if __name__ == "__main__":
    raise SystemExit(main())
