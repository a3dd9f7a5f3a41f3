"""Evaluation throughput on the default model (CPU): items/s and tokens/s.

A small fixed set: the first items of three tasks with different shapes (ARC-Easy: short
contexts, four choices; HellaSwag: longer four-way continuations; BoolQ: long passages
with one-token answers, whose two requests share one row) and 2,048 tokens of LAMBADA
perplexity. "tokens" counts the input ids the model actually runs, padding included (after
context sharing and shared rows; each perplexity window in full); for perplexity "items"
is the number of scored tokens.

    pytest benchmarks/bench_eval.py --benchmark-enable   # pytest-benchmark statistics
    python benchmarks/bench_eval.py                      # writes benchmarks/results/bench_eval.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from restorelcc.assets import DEFAULT_MODEL, load_model
from restorelcc.evaluate import evaluate_task, perplexity_report

CASES = {"arc_easy": 32, "hellaswag": 16, "boolq": 16}  # task -> first N items
UNSHARED = "arc_easy"  # also measured without context sharing, for the speed-up
PPL_TOKENS = 2048
BATCH_SIZE = 16
RESULTS = Path(__file__).parent / "results" / "bench_eval.json"


class CountInputIds:
    """Counts the input ids (padding included: that is the compute) of every forward."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(ids.numel())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def measure_task(model, tokenizer, task: str, limit: int, share_context: bool = True) -> dict:
    with CountInputIds(model) as counter:
        start = time.perf_counter()
        metrics = evaluate_task(
            model, tokenizer, task, limit, BATCH_SIZE, progress=False, share_context=share_context
        )
        seconds = time.perf_counter() - start
    return {
        "case": task if share_context else f"{task} (unshared)",
        "items": metrics["items"],
        "requests": metrics["requests"],
        "tokens": counter.tokens,
        "seconds": round(seconds, 3),
        "items_per_s": round(metrics["items"] / seconds, 3),
        "tokens_per_s": round(counter.tokens / seconds, 1),
    }


def measure_perplexity(model, tokenizer) -> dict:
    with CountInputIds(model) as counter:
        start = time.perf_counter()
        result = perplexity_report(model, tokenizer, tokens=PPL_TOKENS, progress=False)
        seconds = time.perf_counter() - start
    return {
        "case": "perplexity",
        "items": result.tokens,
        "requests": None,
        "tokens": counter.tokens,
        "seconds": round(seconds, 3),
        "items_per_s": None,
        "tokens_per_s": round(counter.tokens / seconds, 1),
        "scored_tokens_per_s": round(result.tokens / seconds, 1),
    }


def warm_up(model) -> None:
    """One small forward first: the first call pays one-time allocation and dispatch costs."""
    import torch

    with torch.inference_mode():
        model(input_ids=torch.ones(2, 16, dtype=torch.long, device=model.device))


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model(DEFAULT_MODEL)
    warm_up(model)
    return model, tokenizer


@pytest.mark.parametrize("task", list(CASES))
def test_task_throughput(benchmark, smollm2, task):
    model, tokenizer = smollm2
    row = benchmark.pedantic(
        measure_task, args=(model, tokenizer, task, CASES[task]), rounds=1, iterations=1
    )
    benchmark.extra_info.update(row)
    assert row["items"] == CASES[task]


def test_unshared_throughput(benchmark, smollm2):
    model, tokenizer = smollm2
    args = (model, tokenizer, UNSHARED, CASES[UNSHARED], False)
    row = benchmark.pedantic(measure_task, args=args, rounds=1, iterations=1)
    benchmark.extra_info.update(row)


def test_perplexity_throughput(benchmark, smollm2):
    model, tokenizer = smollm2
    row = benchmark.pedantic(measure_perplexity, args=(model, tokenizer), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    assert row["items"] == PPL_TOKENS


def main(argv: list[str] | None = None) -> int:
    import torch

    from restorelcc.io import atomic_write_json, format_table
    from restorelcc.provenance import load_average, run_metadata

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    model, tokenizer = load_model(args.model)
    warm_up(model)
    load_before = load_average()
    rows = [measure_task(model, tokenizer, task, limit) for task, limit in CASES.items()]
    rows.append(measure_task(model, tokenizer, UNSHARED, CASES[UNSHARED], share_context=False))
    rows.append(measure_perplexity(model, tokenizer))
    print(format_table(rows, ["case", "items", "tokens", "seconds", "items_per_s", "tokens_per_s"]))
    atomic_write_json(
        args.out,
        {
            "model": args.model,
            "batch_size": BATCH_SIZE,
            "cases": CASES,
            "ppl_tokens": PPL_TOKENS,
            "results": rows,
            "torch_threads": torch.get_num_threads(),
            # other jobs on a shared machine slow every figure down
            "load_average": {"before": load_before, "after": load_average()},
            "run_metadata": run_metadata(),
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
