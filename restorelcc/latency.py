"""Decode-step and prefill latency of a causal LM, the logits check of a swapped model,
and interleaved timing rounds for ratios measured in one run.

    step = decode_step(model, batch=1, context=512, generator=g)   # one new token per row
    run = prefill(model, tokens=512, generator=g)
    timing = time_call(step, device)          # {"median_ms", "p20_ms", "p80_ms", "method"}
    times = interleaved_rounds({"pruned": f, "folded": g}, rounds=20)  # seconds per call
    ratios = median_ratios(times, baseline="pruned")                   # {"folded": 1.01, ...}

Both calls run against a ``StaticCache`` that is reset before each run, so a call can be
repeated (and captured in a CUDA graph: on a GPU ``time_call`` replays one, else it falls
back to eager and says so in ``method``). On a CPU it is the median wall time of
``rounds`` calls. Used by ``restorelcc bench`` and ``benchmarks/bench_e2e.py``;
``interleaved_rounds`` by the demo's latency column, ``benchmarks/bench_fold_latency.py``,
``benchmarks/bench_host_overhead.py`` and the latency regression tests (``tests/latency``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from restorelcc.hf.cache import cache_kwargs

# Absolute slack of the logits check, per dtype of the model under test.
LOGITS_ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _reset_cache(cache, length: int) -> None:
    """Make a static cache hold ``length`` tokens again (captured into a graph too)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(length)
        if hasattr(layer, "cumulative_length_int"):  # sliding-window layers (Mistral) branch on it
            layer.cumulative_length_int = length


def _random_ids(model: nn.Module, shape: tuple[int, int], generator) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.randint(0, model.config.vocab_size, shape, device=device, generator=generator)


def decode_step(
    model: nn.Module, batch: int, context: int, generator: torch.Generator | None = None
) -> Callable[[], torch.Tensor]:
    """A call that runs one decode step: ``batch`` new tokens after ``context`` random
    tokens already in a static KV cache; returns logits [batch, 1, vocab]."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + 1)
    cached = cache_kwargs(model, cache)
    model(_random_ids(model, (batch, context), generator), **cached, use_cache=True,
          logits_to_keep=1)  # fmt: skip
    token = _random_ids(model, (batch, 1), generator)

    def step() -> torch.Tensor:
        _reset_cache(cache, context)
        return model(token, **cached, use_cache=True, logits_to_keep=1).logits

    return step


def prefill(
    model: nn.Module, tokens: int, generator: torch.Generator | None = None
) -> Callable[[], torch.Tensor]:
    """A call that prefills ``tokens`` random tokens (batch 1); returns logits [1, 1, vocab].

    A static cache of exactly that length keeps every step on the device (without a cache
    transformers' mask code synchronises with the host)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=tokens)
    cached = cache_kwargs(model, cache)
    ids = _random_ids(model, (1, tokens), generator)

    def run() -> torch.Tensor:
        _reset_cache(cache, 0)
        return model(ids, **cached, use_cache=True, logits_to_keep=1).logits

    return run


def time_call(
    call: Callable[[], object],
    device: torch.device,
    *,
    rounds: int = 10,
    rep_ms: int = 100,
    eager: bool = False,
) -> dict:
    """Time quantiles (ms) of ``call``: on a GPU, CUDA-graph replays timed back to back for
    ``rep_ms`` (``lcc_kernels.bench.time_calls``; L2 not flushed between them, as between
    consecutive decode steps; with ``eager``, calls issued from Python, host time
    included); on a CPU, the wall time of ``rounds`` calls after one warm-up."""
    if device.type == "cuda":
        from lcc_kernels.bench import time_calls

        with torch.cuda.device(device):
            timing = time_calls([call], rep_ms=rep_ms, warmup_ms=max(rep_ms // 4, 1), eager=eager)
            torch.cuda.synchronize()
        return timing
    samples = sorted(1e3 * t for t in interleaved_rounds({"call": call}, rounds)["call"])

    def quantile(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    return {
        "median_ms": statistics.median(samples),
        "p20_ms": quantile(0.2),
        "p80_ms": quantile(0.8),
        "method": f"wall clock, {rounds} rounds",
    }


def interleaved_rounds(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    number: int = 1,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each entry of ``calls``, one value per round (name -> [rounds]).

    A round times ``number`` calls of every entry back to back, entry after entry, and
    starts one entry further along than the round before (who goes first rotates; with
    two entries they alternate), so that a change of machine load hits them all alike.
    ``warmup`` untimed calls of each entry come first. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before and after each timing."""
    for name, value, least in (("rounds", rounds, 1), ("number", number, 1), ("warmup", warmup, 0)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if not calls:
        raise ValueError("no calls to time")
    sync = sync or (lambda: None)
    names = list(calls)
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            sync()
            start = time.perf_counter()
            for _ in range(number):
                call()
            sync()
            times[name].append((time.perf_counter() - start) / number)
    return times


def median_ratios(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, float]:
    """Per name of ``times`` (as ``interleaved_rounds`` returns them), the median over
    rounds of its time / ``baseline``'s time in the same round (``baseline`` itself: 1.0)."""
    if baseline not in times:
        raise KeyError(f"baseline {baseline!r} is not among the timed calls {sorted(times)}")
    base = times[baseline]
    return {
        name: statistics.median(t / b for t, b in zip(values, base, strict=True))
        for name, values in times.items()
    }


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights a decode step reads: every parameter and buffer except the input
    embedding (of which a step reads only a few rows) unless the lm_head shares it."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    skipped = embedding if output is None or output.weight is not embedding else None
    tensors = (*model.parameters(), *model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t is not skipped)


def oracle_dtype(dtype: torch.dtype) -> torch.dtype:
    """The wider dtype a model in ``dtype`` is checked against."""
    return torch.float64 if dtype == torch.float32 else torch.float32


def logits_check(
    ours: torch.Tensor, plain: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype
) -> dict:
    """The kernels.md rule on logits [..., vocab]: max |ours - oracle| <= 2 x max
    |plain - oracle| + atol, where ``plain`` is the same model with ``nn.Linear``
    projections and ``oracle`` that model in ``oracle_dtype(dtype)``."""
    error = (ours.double() - oracle.double()).abs().max().item()
    torch_error = (plain.double() - oracle.double()).abs().max().item()
    limit = 2 * torch_error + LOGITS_ATOL[dtype]
    return {
        "error": error,
        "torch_error": torch_error,
        "limit": limit,
        "ok": bool(error <= limit and ours.isfinite().all().item()),
    }
