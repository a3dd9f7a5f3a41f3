"""Capture + lost components + probing: ours against the research code's protocol.

Both protocols run on the same model, pruned copy, pairs, negatives, token ids, split and
probe initialisation, in the same process:

- research protocol (``restorelcc.lcc.reference``): one sequence per forward, four full
  forwards per pair with the LM head (dense q, pruned q, dense q+r+, dense q+r-), then per
  head an SVD and a separate ``nn.Linear`` probe trained for 200 Adam epochs;
- ours (``restorelcc.lcc``): length-sorted batches, no LM head, one dense forward per
  prompt carrying both continuations as branches (q, q+r+ and q+r- share it), a batched
  fp64 SVD over all heads and all probes in one vectorised problem.

The machine is shared, so the captures are interleaved: the pairs are cut into chunks and
each chunk is captured by both protocols back to back (who goes first alternates), so a
change of load hits both alike. The per-head probe loop is timed with the default threads
and with one thread (ours uses one) and the faster is kept. Reported: seconds per stage,
the ratios, the largest activation and score differences, the overlap of the selected
heads (the research code's K = 10 compensation and raw features on both sides), and, for
the record, how standardised probe features would change the selection. Results go to
``benchmarks/results/capture_probe_<device>.json`` (``--out`` to change); every option is
checked before the model loads.

    python benchmarks/bench_capture_probe.py                 # acceptance: 256 pairs
    python benchmarks/bench_capture_probe.py --pairs 16      # quick look
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.commands.options import model_head_count
from restorelcc.commands.restore import heads_value
from restorelcc.data import instruction_pairs
from restorelcc.io import atomic_write_json, format_table
from restorelcc.lcc.capture import ProbeActivations, capture_probe_activations
from restorelcc.lcc.components import lost_components
from restorelcc.lcc.negatives import mine_negatives
from restorelcc.lcc.probing import score_heads, select_heads
from restorelcc.lcc.reference import capture_one_by_one, components_and_probes_per_head
from restorelcc.lcc.tokens import ProbeSequences, encode_probe_set
from restorelcc.provenance import load_average, run_metadata
from restorelcc.prune import prune_model

RESULTS = Path(__file__).resolve().parent / "results"
RESEARCH_K = 10  # the research code sums 10 singular directions into the compensation
FIELDS = ("dense", "pruned", "positive", "negative")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def chunk(sequences: ProbeSequences, part: slice) -> ProbeSequences:
    return ProbeSequences(
        sequences.prompts[part], sequences.positives[part], sequences.negatives[part]
    )


def concat(parts: list[ProbeActivations]) -> ProbeActivations:
    return ProbeActivations(**{f: torch.cat([getattr(p, f) for p in parts]) for f in FIELDS})


def interleaved_capture(dense, pruned, sequences, chunks, progress):
    """Both protocols' captures, chunk by chunk (``chunks`` >= 1 of them); returns
    activations and seconds of each."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    ours, reference, seconds = [], [], {"ours": 0.0, "research": 0.0}
    size = -(-len(sequences) // chunks)
    for index, start in enumerate(range(0, len(sequences), size)):
        part = chunk(sequences, slice(start, start + size))
        runs = [
            (
                "ours",
                ours,
                lambda p=part: capture_probe_activations(dense, pruned, p, progress=progress),
            ),
            ("research", reference, lambda p=part: capture_one_by_one(dense, pruned, p, progress)),
        ]
        for name, store, fn in runs if index % 2 == 0 else runs[::-1]:
            acts, elapsed = timed(fn)
            store.append(acts)
            seconds[name] += elapsed
        print(f"chunk {index}: {seconds}", flush=True)
    return concat(ours), concat(reference), seconds


def per_head_reference(acts, progress):
    """The research code's per-head SVD + probes, timed with default threads and one."""
    (scores, _, _), default_threads = timed(
        lambda: components_and_probes_per_head(acts, k=RESEARCH_K, progress=progress)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, one_thread = timed(
            lambda: components_and_probes_per_head(acts, k=RESEARCH_K, progress=progress)
        )
    finally:
        torch.set_num_threads(threads)
    return scores, {"default_threads": default_threads, "one_thread": one_thread}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, each checked (the head count against the model's config) before any
    model loads; a bad one ends the run with a usage error naming it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--chunks", type=int, default=4, help="interleaving chunks of the capture")
    p.add_argument("--data", default="squad")
    p.add_argument("--sparsity", type=float, default=0.5, help="magnitude, unstructured")
    p.add_argument(
        "--heads",
        type=heads_value,
        default=0.25,
        help="heads selected for the overlap: a count (64) or a fraction of all (0.25)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--out", default=None, help="default: benchmarks/results/capture_probe_<device>.json"
    )
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("pairs", "chunks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.sparsity < 1:
        p.error(f"--sparsity must lie strictly between 0 and 1, got {args.sparsity}")
    try:
        args.head_count = model_head_count(args.model, args.heads)
    except ValueError as error:
        p.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or RESULTS / f"capture_probe_{args.device}.json")
    dense, tokenizer = load_model(args.model, device=args.device)
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", args.sparsity)
    pairs = instruction_pairs(args.data, n=args.pairs, seed=0)
    (negatives, negatives_method), negatives_seconds = timed(
        lambda: mine_negatives([p.response for p in pairs])
    )
    sequences = encode_probe_set(tokenizer, pairs, negatives, max_length=512)
    count = args.head_count
    load_before = load_average()

    acts, ref_acts, capture = interleaved_capture(
        dense, pruned, sequences, args.chunks, args.progress
    )
    comps, components = timed(lambda: lost_components(acts.dense, acts.pruned, RESEARCH_K))
    scores, probing = timed(lambda: score_heads(acts, comps.compensation))
    ref_scores, ref_probe_seconds = per_head_reference(ref_acts, args.progress)
    ours = {"capture": capture["ours"], "components": components, "probing": probing}
    reference = {
        "capture": capture["research"],
        "components+probing": min(ref_probe_seconds.values()),
    }

    ours_sel = {tuple(h) for h in select_heads(scores, count).tolist()}
    ref_sel = {tuple(h) for h in select_heads(ref_scores, count).tolist()}
    standardized = score_heads(acts, comps.compensation, standardize=True)
    std_sel = {tuple(h) for h in select_heads(standardized, count).tolist()}
    result = {
        "model": args.model,
        "pairs": len(pairs),
        "chunks": args.chunks,
        "data": args.data,
        "pruning": f"magnitude {args.sparsity} unstructured",
        "negatives": {"method": negatives_method, "seconds": negatives_seconds},
        "tokens": {
            "prompt_mean": sum(map(len, sequences.prompts)) / len(sequences),
            "response_mean": sum(map(len, sequences.positives)) / len(sequences),
        },
        "ours_seconds": {**ours, "total": sum(ours.values())},
        "reference_seconds": {**reference, "total": sum(reference.values())},
        "reference_probe_seconds": ref_probe_seconds,
        "speedup": {
            "capture": reference["capture"] / ours["capture"],
            "components+probing": reference["components+probing"] / (components + probing),
            "total": sum(reference.values()) / sum(ours.values()),
        },
        "max_abs_activation_difference": max(
            float((getattr(acts, f) - getattr(ref_acts, f)).abs().max()) for f in FIELDS
        ),
        "scores_identical": bool(torch.equal(scores, ref_scores)),
        "max_abs_score_difference": float((scores - ref_scores).abs().max()),
        "selected_heads": count,
        "selected_overlap": len(ours_sel & ref_sel),
        "score_stats": {
            "raw": {
                "mean": float(scores.mean()),
                "min": float(scores.min()),
                "max": float(scores.max()),
            },
            "standardized": {
                "mean": float(standardized.mean()),
                "min": float(standardized.min()),
                "max": float(standardized.max()),
            },
            "selected_overlap_raw_vs_standardized": len(ours_sel & std_sel),
        },
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_average()},
        "run_metadata": run_metadata(),
    }
    atomic_write_json(out, result)

    rows = [
        {"protocol": "ours", **result["ours_seconds"]},
        {"protocol": "research", **result["reference_seconds"]},
        {"protocol": "speedup", **result["speedup"]},
    ]
    print(format_table(rows))
    print(
        f"selected heads: {result['selected_overlap']}/{count} shared; "
        f"max |activation diff| {result['max_abs_activation_difference']:.2e}; "
        f"max |score diff| {result['max_abs_score_difference']:.3f}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
