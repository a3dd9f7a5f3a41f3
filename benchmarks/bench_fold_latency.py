"""Inference cost of a restoration on the CPU: folded vs pruned, and the alternatives.

Times a forward of the pruned default model (batch x tokens) in four forms, interleaved
round by round (``restorelcc.latency.interleaved_rounds``: who goes first rotates) so
that machine load hits all of them alike:

- ``pruned``: the magnitude-pruned model;
- ``folded``: the same model with a RestoreLCC restoration folded into the ``o_proj``
  biases (the deliverable: one bias add per layer, weights bit-identical);
- ``hooked``: the restoration unfolded, added at ``o_proj``'s input by hooks (what the
  research code does on every forward);
- ``lora``: a rank-8 LoRA on q/k/v/o, unmerged (merging would destroy the sparsity; the
  sparsity after a merge is reported too).

Reports the median time of each and the median of the per-round ratios to ``pruned``.
Results go to ``benchmarks/results/fold_latency_<device>.json`` (``--out`` to change).
``tests/latency`` re-measures the ratios of a stored result with its own settings.

    python benchmarks/bench_fold_latency.py --rounds 20
    python benchmarks/bench_fold_latency.py --tokens 32 --threads 1 --rounds 30 \\
        --variants pruned,folded,hooked --out benchmarks/results/fold_latency_cpu_t32_1thread.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.baselines import block_sparsity, lora_baseline, merged_sparsity
from restorelcc.commands.options import model_head_count
from restorelcc.commands.restore import heads_value
from restorelcc.data import instruction_pairs
from restorelcc.hf.families import head_geometry
from restorelcc.io import atomic_write_json, format_table
from restorelcc.latency import interleaved_rounds, median_ratios
from restorelcc.lcc import HeadCompensation, Restoration, TrainConfig, model_fingerprint
from restorelcc.lcc.probing import head_count
from restorelcc.provenance import load_average, run_metadata
from restorelcc.prune import prune_model

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("pruned", "folded", "hooked", "lora")  # "pruned" is the baseline of the ratios


def restoration_for(model, heads: int | float, seed: int = 0) -> Restoration:
    """A restoration over ``heads`` heads (a count, or a fraction of all) with trained-sized
    coefficients (latency does not depend on the values)."""
    g = head_geometry(model)
    count = head_count(g, heads)
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randperm(g.total_heads, generator=gen)[:count]
    heads_index = torch.stack([flat // g.heads, flat % g.heads], dim=1)
    directions = torch.linalg.qr(torch.randn(count, g.head_dim, g.head_dim, generator=gen)).Q.mT
    comp = HeadCompensation(g, heads_index, directions, init_std=0.05, seed=seed)
    return Restoration.from_compensation(comp, model.config.model_type, model_fingerprint(model))


def pruned_and_folded(model_name: str, heads: int | float):
    """(pruned model, its folded copy, the restoration, tokenizer): the default model
    magnitude-pruned to 50%, and a restoration over ``heads`` folded into a copy."""
    model, tokenizer = load_model(model_name)
    prune_model(model, "magnitude", 0.5)
    restoration = restoration_for(model, heads)
    folded = restoration.fold(copy.deepcopy(model))
    return model, folded, restoration, tokenizer


def forward_calls(
    pruned, folded, restoration: Restoration, ids: torch.Tensor, lora_model=None
) -> dict[str, Callable[[], object]]:
    """The timed forwards of ``ids [batch, tokens]``, by variant name (``lora`` only when
    ``lora_model`` is given)."""
    calls = {
        "pruned": lambda: pruned(input_ids=ids),
        "folded": lambda: folded(input_ids=ids),
        "hooked": lambda: _hooked(restoration, pruned, ids),
    }
    if lora_model is not None:
        calls["lora"] = lambda: lora_model(input_ids=ids)
    return calls


def measure(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> tuple[list[dict], dict[str, list[float]]]:
    """Interleaved rounds of ``calls`` (``pruned`` among them) under inference mode:
    one row per variant (median ms, median per-round ratio to ``pruned``, ratio of
    medians) and the seconds of every call, by variant."""
    with torch.inference_mode():
        times = interleaved_rounds(calls, rounds, warmup=warmup)
    ratios = median_ratios(times, "pruned")
    base = statistics.median(times["pruned"])
    rows = [
        {
            "variant": name,
            "median_ms": 1e3 * statistics.median(seconds),
            "ratio_to_pruned": ratios[name],
            "ratio_of_medians": statistics.median(seconds) / base,
        }
        for name, seconds in times.items()
    ]
    return rows, times


def random_ids(vocab: int, batch: int, tokens: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, each checked (and the head count against the model's config) before
    any model loads; a bad one ends the run with a usage error naming it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each variant")
    p.add_argument(
        "--heads",
        type=heads_value,
        default=0.25,
        help="restored heads: a count (64) or a fraction of all heads (0.25)",
    )
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {','.join(VARIANTS)} (pruned is always timed)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="default: results/fold_latency_cpu.json")
    args = p.parse_args(argv)
    for name, least in (("batch", 1), ("tokens", 1), ("rounds", 1), ("warmup", 0)):
        if getattr(args, name) < least:
            p.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    if args.lora_rank < 1:
        p.error(f"--lora-rank must be >= 1, got {args.lora_rank}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v in variants or v == "pruned"]
    try:
        args.head_count = model_head_count(args.model, args.heads)
    except ValueError as error:
        p.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or RESULTS / "fold_latency_cpu.json")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, folded, restoration, tokenizer = pruned_and_folded(args.model, args.head_count)
    lora = None
    if "lora" in args.variants:
        # a couple of real training steps so that B != 0 (the merge then densifies)
        pairs = instruction_pairs("squad", n=8, seed=0)
        config = TrainConfig(max_steps=2, batch_size=4, max_length=128, progress=False)
        lora = lora_baseline(model, tokenizer, pairs, config, rank=args.lora_rank)
    folded_params = dict(folded.named_parameters())
    weights_identical = all(torch.equal(p, folded_params[n]) for n, p in model.named_parameters())

    ids = random_ids(model.config.vocab_size, args.batch, args.tokens)
    calls = forward_calls(model, folded, restoration, ids, lora.model if lora else None)
    calls = {name: calls[name] for name in args.variants}
    load_before = load_average()
    rows, times = measure(calls, args.rounds, args.warmup)
    sparsity = {
        "pruned": block_sparsity(model),
        "folded": block_sparsity(folded),
    }
    if lora is not None:
        sparsity["lora_unmerged_base"] = block_sparsity(lora.model.get_base_model())
        sparsity["lora_merged"] = merged_sparsity(lora)
    result = {
        "model": args.model,
        "input": {"batch": args.batch, "tokens": args.tokens},
        "rounds": args.rounds,
        "warmup": args.warmup,
        "heads": args.heads,
        "restored_heads": int(restoration.heads.shape[0]),
        "variants": args.variants,
        "sparsity": sparsity,
        "folded_weights_identical": weights_identical,
        "rows": rows,
        "times_s": times,
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_average()},
        "run_metadata": run_metadata(),
    }
    atomic_write_json(out, result)
    print(format_table(rows))
    print(format_table([sparsity]))
    print(f"wrote {out}")
    return 0


def _hooked(restoration, model, ids):
    with restoration.attached(model, check=False):
        return model(input_ids=ids)


if __name__ == "__main__":
    raise SystemExit(main())
