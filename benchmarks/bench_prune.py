"""Pruning on the default model: wall time per method and the perplexity ordering.

Runs dense + {magnitude, Wanda, SparseGPT} x {unstructured 50%, 2:4} + structured 20%
(the default split, and one KV group per layer + MLP channels), each from a fresh model,
with one set of calibration tokens from a non-evaluation source, and measures the
sliding-window perplexity on LAMBADA passages. Structured results are saved, reloaded with
``AutoModelForCausalLM.from_pretrained`` and evaluated from the reloaded checkpoint.
Results (written after every run, so a partial run keeps what it measured) go to
``benchmarks/results/prune_<model>.json`` with run metadata.

    python benchmarks/bench_prune.py                      # the acceptance run (CPU, long)
    python benchmarks/bench_prune.py --nsamples 8 --seqlen 128 --ppl-tokens 2048  # quick
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.data import calibration_batches
from restorelcc.evaluate import perplexity_report
from restorelcc.io import atomic_write_json, format_table
from restorelcc.provenance import run_metadata
from restorelcc.prune import prune_model

ELEMENTWISE = [
    (method, pattern)
    for pattern in ("unstructured", "2:4")
    for method in ("magnitude", "wanda", "sparsegpt")
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--calibration", default="mix")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-tokens", type=int, default=8192)
    p.add_argument("--structured-sparsity", type=float, default=0.2)
    p.add_argument("--skip-structured", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--resume", action="store_true", help="keep runs already in --out (same calibration)"
    )
    args = p.parse_args(argv)
    out = Path(args.out or f"benchmarks/results/prune_{Path(str(args.model)).name}.json")
    previous = json.loads(out.read_text()) if args.resume and out.is_file() else None

    model, tokenizer = load_model(args.model)
    start = time.perf_counter()
    tokens = calibration_batches(
        tokenizer, source=args.calibration, nsamples=args.nsamples, seqlen=args.seqlen,
        seed=args.seed,
    )  # fmt: skip
    results: dict = {
        "model": str(args.model),
        "calibration": {
            "source": args.calibration,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "seed": args.seed,
            "seconds": time.perf_counter() - start,
        },
        "perplexity_setup": {"source": "lambada", "tokens": args.ppl_tokens},
        "runs": [],
        "run_metadata": run_metadata(),
    }
    done: dict[tuple[str, str], dict] = {}
    if previous is not None:
        same = {k: previous["calibration"][k] for k in ("source", "nsamples", "seqlen", "seed")}
        if same != {k: results["calibration"][k] for k in same}:
            raise SystemExit(f"--resume: {out} used calibration {same}; not resuming")
        done = {(r["method"], r["pattern"]): r for r in previous["runs"]}
        earlier = previous.get("resumed_from", [])
        results["resumed_from"] = [previous["run_metadata"], *earlier]  # newest first

    def ppl(m, tok) -> float:
        return perplexity_report(m, tok, source="lambada", tokens=args.ppl_tokens).perplexity

    def record(row: dict) -> None:
        results["runs"].append(row)
        results["ordering"] = ordering(results["runs"])
        atomic_write_json(out, results)
        print(format_table([row]), flush=True)

    def reuse(method: str, pattern: str) -> bool:
        if (method, pattern) in done:
            record({**done[(method, pattern)], "resumed": True})
            return True
        return False

    if not reuse("dense", "-"):
        record({"method": "dense", "pattern": "-", "ppl": ppl(model, tokenizer)})
    for method, pattern in ELEMENTWISE:
        if reuse(method, pattern):
            continue
        model, tokenizer = load_model(args.model)
        calibrated = method != "magnitude"  # magnitude takes no data (and refuses it)
        report = prune_model(
            model,
            method,
            0.5,
            pattern,
            tokens if calibrated else None,
            calibration_source=args.calibration if calibrated else None,
        )
        record(
            {
                "method": method,
                "pattern": pattern,
                "sparsity": report.overall_sparsity,
                "prune_s": report.seconds,
                "ppl": ppl(model, tokenizer),
                "count_error": count_error(report),
                "rows_equal": all(m.row_zeros_min == m.row_zeros_max for m in report.matrices),
                "all_2:4": all(m.nm["2:4"] for m in report.matrices),
            }
        )
    if not args.skip_structured:
        for one_group, pattern in ((False, "heads"), (True, "heads (1 KV group)")):
            if not reuse("wanda", pattern):
                record(structured_run(args, tokens, one_group, pattern, ppl))

    print(format_table(results["runs"], ["method", "pattern", "sparsity", "prune_s", "ppl"]))
    print(format_table([{"pattern": k, **v} for k, v in results["ordering"].items()]))
    print(f"wrote {out}")
    return 0


def count_error(report) -> int:
    """Largest ``|zeros - sparsity * elements|`` over the pruned matrices, in elements.

    SmolLM2's 4-bit-grid weights hold a few exact zeros before pruning; they score lowest,
    so they count towards the quota and only show up here if a row holds more than its
    quota.
    """
    return max(
        abs(m.zeros - math.floor(report.sparsity * m.shape[0] * m.shape[1] + 0.5))
        for m in report.matrices
    )


def structured_run(args, tokens, one_group: bool, pattern: str, ppl) -> dict:
    """Structured Wanda: the default split, or exactly one KV group per layer + MLP."""
    from transformers import AutoModelForCausalLM

    from restorelcc.hf.families import head_geometry

    model, tokenizer = load_model(args.model)
    head_fraction = 1 / head_geometry(model).kv_heads if one_group else None
    dense_params = sum(p.numel() for p in model.parameters())
    report = prune_model(
        model, "wanda", args.structured_sparsity, "heads", tokens,
        calibration_source=args.calibration, head_fraction=head_fraction,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        value = ppl(reloaded, tokenizer)
    s = report.structured
    return {
        "method": "wanda",
        "pattern": pattern,
        "kv_groups_removed": s["plan"]["kv_groups_removed"],
        "sparsity": s["removed_fraction_of_blocks"],
        "removed_of_model": s["removed_fraction_of_model"],
        "heads": s["heads"],
        "kv_heads": s["kv_heads"],
        "intermediate_size": s["intermediate_size"],
        "params": [dense_params, sum(p.numel() for p in reloaded.parameters())],
        "checkpoint_bytes": size,
        "prune_s": report.seconds,
        "ppl": value,
    }


def ordering(runs: list[dict]) -> dict:
    """Per element-wise pattern: whether SparseGPT <= Wanda < magnitude in perplexity."""
    out = {}
    for pattern in ("unstructured", "2:4"):
        ppl = {r["method"]: r["ppl"] for r in runs if r["pattern"] == pattern}
        if len(ppl) == 3:
            out[pattern] = {
                "sparsegpt<=wanda": ppl["sparsegpt"] <= ppl["wanda"],
                "wanda<magnitude": ppl["wanda"] < ppl["magnitude"],
            }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
