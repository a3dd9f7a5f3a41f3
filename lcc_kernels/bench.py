"""Benchmark building blocks shared by benchmarks/bench_kernels.py and benchmarks/gpu_suite.py.

- SHAPES / M_VALUES: the problems of kernels.md.
- `make_dense`: a random pruned weight of a given kind ("dense", "2:4", "bitmap50", ...);
  `pack_kind` packs it, a bitmap in the tile a plan runs on (`plan_tile`).
- `build_calls`: one provider (ours, F.linear, torch semi-structured, dense Triton) as a
  list of zero-argument calls, each on its own copy of the weight and input, so that
  consecutive calls never find their weight in L2 (a 4096 x 4096 bf16 matrix fits the
  50-60 MB L2 of an H100/H200).
- `time_calls`: captures the calls in one CUDA graph (no CPU launch overhead in the
  numbers, as in graph-captured decode) and times its replays back to back with CUDA
  events between them (`replay_times`); per-call quantiles. L2 is not flushed between
  replays: the weight copies already keep weights out of L2, and a flush
  (triton.testing.do_bench zeroes 256 MB before each replay) leaves L2 full of dirty
  lines whose write-back the next replay pays (~14 us per replay on an H200 by the
  review's estimate: M = 1 and 16 per-call times ~30% high).
  The device-copy reference (`copy_bandwidth`) is timed the same way.
  With eager=True (and on a CPU, smoke runs) it times the calls issued from Python in a
  loop instead (for rep_ms on a GPU too): what an uncaptured call costs, host overhead
  included.
- `environment`: GPU name, versions and git commit to store with every result.
"""

from __future__ import annotations

import itertools
import math
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .dispatch import Plan, WeightKey
from .formats import DEFAULT_BITMAP_TILE, pack
from .interop import to_torch_semi_structured
from .linear import dense_linear_triton, derived_copy, sparse_linear

# (N, K) = (out_features, in_features) of the attention projections in kernels.md.
SHAPES = {
    "llama3-8b-qkv": (6144, 4096),
    "llama3-8b-o": (4096, 4096),
    # the MLP (swap_attention(mlp=True)): gate_proj and up_proj packed as one, down_proj
    "llama3-8b-gate-up": (28672, 4096),
    "llama3-8b-down": (4096, 14336),
    "llama2-7b-qkv": (12288, 4096),
    "llama3-70b-qkv": (10240, 8192),
    "llama3-70b-o": (8192, 8192),
    "llama3-70b-qkv-tp2": (5120, 8192),
    "llama3-70b-o-tp2": (8192, 4096),
    "llama3-70b-qkv-tp4": (2560, 8192),
    "llama3-70b-o-tp4": (8192, 2048),
    "llama3-70b-qkv-tp8": (1280, 8192),
    "llama3-70b-o-tp8": (8192, 1024),
}
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
# Weight kinds: format and the fraction of weights kept.
KINDS = {
    "dense": ("dense", 1.0),
    "2:4": ("2:4", 0.5),
    "bitmap50": ("bitmap", 0.5),
    "bitmap70": ("bitmap", 0.3),
}
QUANTILES = (0.5, 0.2, 0.8)
# Graph replays (replay_times): a few to estimate one's time, then at most this many to
# warm up and this many timed.
ESTIMATE_CALLS = 5
MAX_TIMED_CALLS = 10_000


def kind_key(kind: str, dtype: str, n: int, k: int) -> WeightKey:
    """What the dispatcher sees of an [n, k] weight of `kind` (a KINDS key) in `dtype`
    (a dtype name): bitmap in the default tile; dense tiled like 2:4, as the dense Triton
    baseline runs."""
    fmt, keep = KINDS[kind]
    if fmt == "bitmap":
        return WeightKey("bitmap", dtype, n, k, DEFAULT_BITMAP_TILE, keep)
    return WeightKey("2:4", dtype, n, k)


# Eager timings: each round issues calls for about EAGER_ROUND_MS (so that the device is
# busy well past the first one), at most EAGER_CALLS_PER_ROUND of them; EAGER_ROUNDS or more.
EAGER_ROUND_MS = 20.0
EAGER_CALLS_PER_ROUND = 200
EAGER_ROUNDS = 7
# Rotate over enough weight copies to cover this many times the L2 size.
ROTATE_L2_MULTIPLE = 3
MAX_COPIES = 32


def make_dense(
    n: int, k: int, kind: str, dtype: torch.dtype, device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random [n, k] weight pruned to `kind` (a KINDS key), values ~ N(0, 1/k)."""
    fmt, keep = KINDS[kind]
    weight = torch.randn(n, k, device=device, generator=generator) / math.sqrt(k)
    if fmt == "2:4":
        scores = torch.rand(n, k // 4, 4, device=device, generator=generator)
        kept = scores.argsort(-1)[..., :2]
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, kept, True)
        weight = weight * mask.reshape(n, k)
    elif fmt == "bitmap":
        weight = weight * (torch.rand(n, k, device=device, generator=generator) < keep)
    return weight.to(dtype)


def packed_kind(kind: str) -> str:
    """The format a weight of `kind` (a KINDS key) is packed in: "2:4" or "bitmap" ("dense"
    for the unpruned kind, which is never packed)."""
    return KINDS[kind][0]


def plan_tile(kind: str, plan: Plan | dict | None) -> tuple[int, int] | None:
    """The bitmap tile a Triton plan for a weight of `kind` runs on (its block_n x
    block_k: bitmap kernels work on stored tiles), or None (not bitmap, or not Triton)."""
    if plan is None or KINDS[kind][0] != "bitmap":
        return None
    plan = plan.to_dict() if isinstance(plan, Plan) else plan
    if plan["backend"] not in ("skinny", "tiled"):
        return None
    return plan["block_n"], plan["block_k"]


def pack_kind(dense: torch.Tensor, kind: str, tile: tuple[int, int] | None = None):
    """`dense` [N, K] (from make_dense) packed in the format of `kind`; bitmap in `tile`
    if given, else in the default tile."""
    options = {"tile": tile} if tile is not None and packed_kind(kind) == "bitmap" else {}
    return pack(dense, packed_kind(kind), **options)


def cutlass_matmul_supported(device) -> bool:
    """Whether torch's CUTLASS 2:4 matmul runs on `device`: compute capability 8.x only (an
    H100/H200 is 9.0, where its F.linear raises after the weight was converted). True on
    a CPU, where every torch semi-structured call fails alike (smoke runs record that)."""
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] == 8


def copies_for(weight_bytes: int, device) -> int:
    """Weight copies so that one round of calls streams ROTATE_L2_MULTIPLE x L2."""
    if torch.device(device).type != "cuda":
        return 2
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(2, min(MAX_COPIES, math.ceil(ROTATE_L2_MULTIPLE * l2 / max(weight_bytes, 1))))


def clone_packed(packed):
    """An independent copy of a packed weight (no data re-validation, unlike a state dict)."""
    if packed.format == "2:4":
        return type(packed)(
            packed.values.clone(), packed.meta.clone(), packed.shape, packed.split_sizes
        )
    return type(packed)(
        packed.bits.clone(),
        packed.values.clone(),
        packed.offsets.clone(),
        packed.shape,
        packed.tile,
        packed.nnz,
        packed.split_sizes,
    )


def build_calls(
    provider: str,
    dense: torch.Tensor,
    m: int,
    *,
    bias: bool,
    copies: int,
    plan: Plan | None = None,
    packed=None,
    generator: torch.Generator | None = None,
) -> tuple[list[Callable], int]:
    """`copies` zero-argument calls of one provider on x [m, K] (and a bias [N] where
    `bias`) for the weight `dense` [N, K], and the bytes one call must move.

    provider: "dense" (F.linear + bias, cuBLAS), "ours" (sparse_linear on `packed` with
    `plan`), "dense_triton" (our kernels reading `dense`, with `plan`), "cusparselt" or
    "cutlass" (torch semi-structured F.linear; `dense` must be 2:4).
    """
    n, k = dense.shape
    device, dtype = dense.device, dense.dtype
    xs = [torch.randn(m, k, device=device, dtype=dtype, generator=generator) for _ in range(copies)]
    b = torch.randn(n, device=device, generator=generator) if bias else None
    io_bytes = (m * k + m * n) * dense.element_size() + (n * 4 if bias else 0)
    calls: list[Callable] = []
    if provider == "dense":
        weights = [dense.clone() for _ in range(copies)]
        b16 = None if b is None else b.to(dtype)
        for x, w in zip(xs, weights, strict=True):
            calls.append(lambda x=x, w=w: F.linear(x, w, b16))
        return calls, io_bytes + dense.numel() * dense.element_size()
    if provider == "dense_triton":
        weights = [dense.clone() for _ in range(copies)]
        for x, w in zip(xs, weights, strict=True):
            calls.append(lambda x=x, w=w: dense_linear_triton(x, w, b, plan))
        return calls, io_bytes + dense.numel() * dense.element_size()
    if provider == "ours":
        instances = [clone_packed(packed) for _ in range(copies)]
        for x, p in zip(xs, instances, strict=True):
            calls.append(lambda x=x, p=p: sparse_linear(x, p, b, plan=plan))
        weight_bytes = packed.nbytes
        if plan is not None and plan.backend == "streams":
            # The plan reads its re-layout of the weight, built here once per copy.
            layouts = [derived_copy(p, plan) for p in instances]
            weight_bytes = layouts[0].nbytes
        return calls, io_bytes + weight_bytes
    if provider in ("cusparselt", "cutlass"):
        source = pack(dense, "2:4") if packed is None else packed
        converted = [to_torch_semi_structured(source, provider) for _ in range(copies)]
        b16 = None if b is None else b.to(dtype)
        for x, w in zip(xs, converted, strict=True):
            calls.append(lambda x=x, w=w: F.linear(x, w, b16))
        return calls, io_bytes + source.nbytes
    raise ValueError(f"unknown provider {provider!r}")


def time_calls(
    calls: list[Callable], *, rep_ms: int = 100, warmup_ms: int = 25, eager: bool = False
) -> dict:
    """Per-call time quantiles (ms) of running `calls` back to back; see the module doc.
    On a GPU, ~warmup_ms untimed then ~rep_ms timed, graph replays or (eager) calls."""
    for call in calls:  # compile, allocate, initialise library handles
        call()
    if not torch.cuda.is_available():
        return _wall_clock(calls)
    if eager:
        return _wall_clock(
            calls, rounds=EAGER_ROUNDS, repeat=None, rep_ms=rep_ms, warmup_ms=warmup_ms
        )
    torch.cuda.synchronize()
    run, method = _graph_of(calls)
    times = torch.tensor(replay_times(run, warmup_ms=warmup_ms, rep_ms=rep_ms), dtype=torch.float64)
    per_call = (times.quantile(torch.tensor(QUANTILES, dtype=times.dtype)) / len(calls)).tolist()
    return {
        "median_ms": per_call[0],
        "p20_ms": per_call[1],
        "p80_ms": per_call[2],
        "method": method,
        "copies": len(calls),
    }


def replay_times(run: Callable[[], object], *, warmup_ms: float, rep_ms: float) -> list[float]:
    """Milliseconds of each of `run`'s timed calls: ESTIMATE_CALLS calls to size the rest,
    ~warmup_ms of untimed calls, then as many as fill ~rep_ms (each at most MAX_TIMED_CALLS),
    back to back with a CUDA event recorded on the current stream between consecutive
    calls and one synchronisation after the last (none between: the queue stays full)."""
    torch.cuda.synchronize()
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    marks[0].record()
    for _ in range(ESTIMATE_CALLS):
        run()
    marks[1].record()
    torch.cuda.synchronize()
    estimate = max(marks[0].elapsed_time(marks[1]) / ESTIMATE_CALLS, 1e-6)
    for _ in range(min(MAX_TIMED_CALLS, math.ceil(warmup_ms / estimate))):
        run()
    count = min(MAX_TIMED_CALLS, math.ceil(rep_ms / estimate))
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
    marks[0].record()
    for mark in marks[1:]:
        run()
        mark.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in itertools.pairwise(marks)]


def _graph_of(calls):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for call in calls:
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        torch.cuda.synchronize()
        return graph.replay, "cuda_graph"
    except Exception as error:  # a library that cannot be captured: time it eagerly
        torch.cuda.synchronize()
        return (lambda: [call() for call in calls]), f"eager ({type(error).__name__})"


def _wall_clock(
    calls, rounds: int = 2, repeat: int | None = 1, *, rep_ms: float = 0.0, warmup_ms: float = 0.0
) -> dict:
    """Rounds of `repeat` passes over the calls issued from Python, each round from an idle
    device to its end (synchronised): per-call quantiles over the rounds. repeat None: as
    many passes as fill EAGER_ROUND_MS (one timed pass decides), at most
    EAGER_CALLS_PER_ROUND calls. warmup_ms: untimed passes for about that long first;
    rep_ms: more rounds where `rounds` would time less (at most MAX_TIMED_CALLS rounds)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed_passes(passes: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(passes):
            for call in calls:
                call()
        sync()
        return (time.perf_counter() - start) * 1e3

    pass_ms = max(timed_passes(1), 1e-3) if repeat is None or rep_ms or warmup_ms else None
    if repeat is None:
        most = max(1, EAGER_CALLS_PER_ROUND // len(calls))
        repeat = min(most, max(1, math.ceil(EAGER_ROUND_MS / pass_ms)))
    if warmup_ms:
        timed_passes(min(MAX_TIMED_CALLS, math.ceil(warmup_ms / pass_ms)))
    if rep_ms:
        rounds = max(rounds, min(MAX_TIMED_CALLS, math.ceil(rep_ms / (pass_ms * repeat))))
    samples = []
    for _ in range(rounds):
        samples.append(timed_passes(repeat) / (len(calls) * repeat))
    samples.sort()
    return {
        "median_ms": samples[len(samples) // 2],
        "p20_ms": samples[int(0.2 * (rounds - 1))],
        "p80_ms": samples[round(0.8 * (rounds - 1))],
        "method": "eager_loop" if torch.cuda.is_available() else "wall_clock_cpu",
        "copies": len(calls),
    }


def copy_bandwidth(device, nbytes: int = 2**30) -> float | None:
    """Bytes per second of a device-to-device copy, counting bytes read plus written
    (None on a CPU)."""
    if torch.device(device).type != "cuda":
        return None
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    return copy_rate(src, torch.empty_like(src))


def copy_rate(src: torch.Tensor, dst: torch.Tensor) -> float:
    """Bytes per second (read + written) of dst.copy_(src), timed as `time_calls` times a
    call (the median), so that a call's fraction of it compares like with like."""
    ms = time_calls([lambda: dst.copy_(src)], rep_ms=200, warmup_ms=25)["median_ms"]
    return 2 * src.nbytes / (ms * 1e-3)


# Added to twice PyTorch's own error: covers the rounding of an output that PyTorch's
# matmul happens to round the other way (the tests' outputs reach |y| ~ 30: fp32 ulp 1.9e-6).
ORACLE_ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check_against_oracle(
    y: torch.Tensor, x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None
) -> dict:
    """The test suite's error rule for y [..., N] = x [..., K] @ dense [N, K]^T (+ bias [N]):
    max |y - fp64| <= 2 x the error of PyTorch at x's dtype + ORACLE_ATOL[x's dtype]."""
    atol = ORACLE_ATOL[x.dtype]
    oracle = F.linear(x.double(), dense.double(), None if bias is None else bias.double())
    torch_bias = None if bias is None else bias.to(x.dtype)
    torch_y = F.linear(x, dense.to(x.dtype), torch_bias)
    torch_error = (torch_y.double() - oracle).abs().max().item()
    error = (y.double() - oracle).abs().max().item()
    nan = bool(torch.isnan(y).any())
    limit = 2 * torch_error + atol
    return {
        "error": error,
        "torch_error": torch_error,
        "limit": limit,
        "ok": (not nan) and error <= limit,
        "nan": nan,
    }


def environment(device, commit: str | None = None) -> dict:
    """Where a result was measured: device, versions, commit (`commit` overrides git, for
    copies of the tree without .git: `dirty` then comes from its "-dirty" suffix)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit or _git("rev-parse", "HEAD"),
        "dirty": dirty_from_commit(commit) if status is None else bool(status),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            l2_bytes=props.L2_cache_size,
            memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            capability=list(torch.cuda.get_device_capability(device)),
        )
    else:
        info.update(gpu="cpu", sm_count=0, l2_bytes=0, cuda=None)
    return info


def dirty_from_commit(commit: str | None) -> bool | None:
    """True for a commit named with a "-dirty" suffix (gpu_run.sh's callers append it to
    `git rev-parse HEAD` for uncommitted edits), else None: a bare sha says nothing."""
    return True if commit and commit.endswith("-dirty") else None


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
