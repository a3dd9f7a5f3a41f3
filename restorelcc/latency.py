"""Decode-step and prefill latency of a causal LM, the checks of a swapped model's calls,
and interleaved timing rounds for ratios measured in one run.

    step = decode_step(model, batch=1, context=512, generator=g)   # one new token per row
    run = prefill(model, tokens=512, generator=g)
    timing = time_call(step, device)          # {"median_ms", "p20_ms", "p80_ms", "method"}
    times = interleaved_rounds({"pruned": f, "folded": g}, rounds=20)  # seconds per call
    ratios = median_ratios(times, baseline="pruned")                   # {"folded": 1.01, ...}
    dense = dense_projections(model)          # before swap_attention(model)
    logits, check = check_projections(model, step, dense)              # check["ok"]
    check = check_call(model, step, dense, plain_logits)   # and logits compared, not judged

The error rule of kernels.md (an operation's error against float64 at most 2x plain
PyTorch's at the same precision, plus a small atol) holds for one operation on one input.
``check_projections`` applies it where it holds: to every swapped projection of a call, on
the very input the call gave it. It does not hold for logits after many layers, where
the swapped and the ``nn.Linear`` model round differently from the first layer on and
those differences compound (correct 2:4 swaps of SmolLM2 failed it: a float32 decode
step, about 1 call in 20 in bfloat16); ``check_call`` adds how far the logits are from the
``nn.Linear`` model's as information (non-finite logits fail it); ``logits_check`` (the
rule on logits) is kept for shallow models only.

Both calls run against a ``StaticCache`` that is reset before each run, so a call can be
repeated (and captured in a CUDA graph: on a GPU ``time_call`` replays one, else it falls
back to eager and says so in ``method``). On a CPU it is the median wall time of
``rounds`` calls. Used by ``restorelcc bench`` and ``benchmarks/bench_e2e.py``;
``interleaved_rounds`` by the demo's latency column, ``benchmarks/bench_fold_latency.py``,
``benchmarks/bench_host_overhead.py`` and the latency regression tests (``tests/latency``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restorelcc.hf.cache import cache_kwargs

# Absolute slack of the logits check, per dtype of the model under test.
LOGITS_ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# Float64 temporaries one block of a projection's check holds at most (its input rows,
# weight rows, oracle and differences): a long prefill's oracle is computed block by block.
CHECK_BLOCK_BYTES = 64 * 2**20


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
    consecutive decode steps; with ``eager``, calls issued from Python for ``rep_ms`` too,
    host time included); on a CPU, the wall time of ``rounds`` calls after one warm-up."""
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
    projections and ``oracle`` that model in ``oracle_dtype(dtype)``. For shallow models
    only: over many layers rounding differences compound and a correct swap can fail it
    (``check_projections`` checks each swapped projection instead)."""
    error = (ours.double() - oracle.double()).abs().max().item()
    torch_error = (plain.double() - oracle.double()).abs().max().item()
    limit = 2 * torch_error + LOGITS_ATOL[dtype]
    return {
        "error": error,
        "torch_error": torch_error,
        "limit": limit,
        "ok": bool(error <= limit and ours.isfinite().all().item()),
    }


def dense_projections(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Weight [out, in] and bias [out] (or None) of every ``nn.Linear`` of ``model``, by
    qualified name: references, not copies. Taken before ``swap_attention``, they keep the
    dense weights of the projections it replaces alive (``check_projections`` compares
    with them): as many bytes again as those weights, until the dict is dropped."""
    return {
        name: (module.weight.detach(), None if module.bias is None else module.bias.detach())
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }


def swapped_projections(model: nn.Module) -> dict[str, nn.Module]:
    """The modules ``swap_attention`` put in place of ``nn.Linear`` projections
    (``ProjectionView`` and ``SparseLinear``), by the qualified name of the one each
    replaced."""
    from restorelcc.hf.attention import ProjectionView, SparseLinear

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (ProjectionView, SparseLinear))
    }


def projection_error(
    y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> dict:
    """kernels.md's rule (as ``lcc_kernels.bench.check_against_oracle`` states it) for
    y [..., N], a projection's output on x [..., K], whose dense weight is ``weight``
    [N, K] (bias [N] or None): max |y - fp64| <= 2 x max |nn.Linear's - fp64| +
    ORACLE_ATOL[x's dtype], maxima over all of y; {"error", "torch_error", "limit", "ok"}.

    nn.Linear's output is ``F.linear`` at x's dtype on the whole of x, the weight at a
    64-byte aligned address (a copy where it is not): as the swapped modules' CPU path
    unpacks it and the ``nn.Linear`` side of ``restorelcc bench`` holds it after
    ``unswap_attention``. On a CPU, BLAS sums a weight at an unaligned address (one loaded
    from safetensors) in another order: on outputs of ~100 its error differed 13x from
    the aligned copy's, both valid float32 results. The float64 oracle is computed in
    blocks of rows and output features whose temporaries fit ``CHECK_BLOCK_BYTES``."""
    from lcc_kernels.bench import ORACLE_ATOL
    from lcc_kernels.reference import oracle_linear

    n, k = weight.shape
    aligned = weight if weight.data_ptr() % 64 == 0 else weight.clone()
    plain = F.linear(x, aligned.to(x.dtype), None if bias is None else bias.to(x.dtype))
    del aligned
    x2, y2, plain2 = x.reshape(-1, k), y.reshape(-1, n), plain.reshape(-1, n)
    half = CHECK_BLOCK_BYTES // 2  # weight rows in one half, input rows and outputs in the other
    cols = max(1, half // (8 * k))
    rows = max(1, half // (8 * (k + 4 * min(cols, n))))
    error = torch_error = 0.0
    for c in range(0, n, cols):
        w, b = weight[c : c + cols], None if bias is None else bias[c : c + cols]
        for r in range(0, x2.shape[0], rows):
            oracle = oracle_linear(x2[r : r + rows], w, b)
            ours = (y2[r : r + rows, c : c + cols].double() - oracle).abs().max().item()
            # a NaN or inf output anywhere fails the projection (max() would skip a NaN)
            error = max(error, ours) if math.isfinite(ours) else math.inf
            theirs = (plain2[r : r + rows, c : c + cols].double() - oracle).abs().max().item()
            torch_error = max(torch_error, theirs)
    limit = 2 * torch_error + ORACLE_ATOL[x.dtype]
    return {"error": error, "torch_error": torch_error, "limit": limit, "ok": error <= limit}


def check_projections(
    model: nn.Module,
    call: Callable[[], torch.Tensor],
    dense: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
) -> tuple[torch.Tensor, dict]:
    """Run ``call()`` once on the swapped ``model``, checking the output of each of its
    swapped projections on the input the call gave it (forward hooks, removed after) with
    ``projection_error`` against the dense weight and bias it stands for (``dense``, from
    ``dense_projections`` before the swap), one projection at a time. Returns the call's
    result and {"ok", "projections": how many, "failed": their names, "module": the one
    furthest from its limit, with its "error", "torch_error" and "limit"}."""
    modules = swapped_projections(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no swapped projection to check")
    missing = sorted(set(modules) - set(dense))
    if missing:
        raise ValueError(
            f"no dense weight for the swapped {missing[0]}: take dense_projections(model) "
            "before the swap"
        )
    results: dict[str, dict] = {}

    def hook(name: str):
        def record(module, args, output) -> None:
            seen = projection_error(output, args[0], *dense[name])
            if name in results:  # called twice in one call: the worse of the two
                seen = max(results[name], seen, key=over_limit)
            results[name] = seen

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        result = call()
    finally:
        for handle in handles:
            handle.remove()
    unseen = sorted(set(modules) - set(results))
    if unseen:
        raise ValueError(f"the call did not run the swapped {unseen[0]}: nothing to check it on")
    worst = max(results, key=lambda name: over_limit(results[name]))
    check = {
        "ok": all(r["ok"] for r in results.values()),
        "projections": len(results),
        "failed": [name for name, r in results.items() if not r["ok"]],
        "module": worst,
        **{key: results[worst][key] for key in ("error", "torch_error", "limit")},
    }
    return result, check


def check_call(
    model: nn.Module,
    call: Callable[[], torch.Tensor],
    dense: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
    plain: torch.Tensor,
) -> dict:
    """``check_projections``' result for ``call`` on the swapped ``model``, failed also
    where the call's logits are not finite while ``plain`` (the same call's logits
    [..., vocab] on the ``nn.Linear`` model) are; with ``logits_finite`` and
    ``logits_difference``, max |logits - plain|: information, not judged."""
    logits, check = check_projections(model, call, dense)
    difference = (logits.double() - plain.double()).abs().max().item()
    finite = bool(logits.isfinite().all()) or not bool(plain.isfinite().all())
    return {
        **check,
        "ok": check["ok"] and finite,
        "logits_finite": finite,
        "logits_difference": difference,
    }


def over_limit(check: dict) -> float:
    """How far a check's error (a dict with "error" and "limit") is from its limit:
    error / limit, inf for a non-finite error."""
    return check["error"] / check["limit"] if math.isfinite(check["error"]) else math.inf
