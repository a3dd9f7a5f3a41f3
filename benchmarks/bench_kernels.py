"""pytest-benchmark microbenchmarks of the sparse linear kernels (GPU only; skipped on a CPU).

    pytest benchmarks/bench_kernels.py --benchmark-enable \
        --benchmark-json=benchmarks/results/kernels-<gpu>-<YYYYMMDD>.json
    LCC_BENCH_SHAPES=all pytest ...            # every shape of kernels.md, not just Llama-3-8B
    LCC_BENCH_M=1,16,1024 pytest ...           # these M only (default: every M of kernels.md)

Providers side by side for each (shape, M), M by M (a run cut short keeps whole sets of
providers for the M it reached), all in bf16 with a bias: ours (2:4, and
bitmap at 50% and 70% sparsity), the streams backend on the bitmap weights (M <=
STREAMS_MAX_M), dense F.linear (cuBLAS), torch semi-structured (cuSPARSELt and CUTLASS),
and the dense Triton kernel with the tiling our 2:4 plan uses.
Every benchmark round replays a CUDA graph of calls that rotate over weight copies (so L2
never serves the weight) and synchronises; `extra_info` holds the per-call
times of back-to-back replays (`lcc_kernels.bench.time_calls`), the bytes each call must
move and the bandwidth floor from a measured device copy. The JSON that
--benchmark-json writes also carries GPU name, torch/triton versions and the commit
(benchmarks/conftest.py). Ours runs the plan `choose_plan` picks: a measured table named in
LCC_KERNELS_DISPATCH_TABLE if given, else the built-in rules.
"""

import math
import os

import pytest
import torch

from lcc_kernels.bench import (
    M_VALUES,
    SHAPES,
    build_calls,
    copies_for,
    copy_bandwidth,
    cutlass_matmul_supported,
    make_dense,
    pack_kind,
    time_calls,
)
from lcc_kernels.dispatch import SKINNY_MAX_M, STREAMS_MAX_M, TRITON_BACKENDS, choose_plan

pytestmark = pytest.mark.gpu

MAIN_SHAPES = ("llama3-8b-qkv", "llama3-8b-o")
BENCH_SHAPES = tuple(SHAPES) if os.environ.get("LCC_BENCH_SHAPES") == "all" else MAIN_SHAPES
PROVIDERS = (
    "ours-2:4",
    "ours-bitmap50",
    "ours-bitmap70",
    "streams-bitmap50",
    "streams-bitmap70",
    "dense",
    "cusparselt",
    "cutlass",
    "dense_triton",
)
# A benchmark round replays at least this long, so the synchronise ending it costs < 1%.
ROUND_MS = 2.0
ROUNDS = 20


def bench_m(value: str | None) -> tuple[int, ...]:
    """The M values to benchmark: LCC_BENCH_M's comma-separated positive integers, or
    every M of kernels.md (M_VALUES) when it is unset or empty."""
    if not value:
        return M_VALUES
    try:
        ms = tuple(int(part) for part in value.split(","))
    except ValueError:
        ms = ()
    if not ms or min(ms) < 1:
        raise ValueError(f"LCC_BENCH_M must be comma-separated positive integers, got {value!r}")
    return ms


BENCH_M = bench_m(os.environ.get("LCC_BENCH_M"))


@pytest.fixture(scope="module")
def copy_bytes_per_s():
    return copy_bandwidth("cuda")


@pytest.fixture(scope="module")
def weights():
    """Dense and packed bf16 weights per (shape, kind), built once per module."""
    cache = {}

    def get(shape: str, kind: str):
        if (shape, kind) not in cache:
            generator = torch.Generator(device="cuda").manual_seed(0)
            dense = make_dense(*SHAPES[shape], kind, torch.bfloat16, "cuda", generator)
            packed = None if kind == "dense" else pack_kind(dense, kind)
            cache[shape, kind] = dense, packed
        return cache[shape, kind]

    return get


def _provider_setup(provider: str, shape: str, m: int, weights):
    """(provider name for build_calls, dense weight, packed weight, plan)."""
    if provider.startswith("ours-"):
        kind = provider.removeprefix("ours-")
        dense, packed = weights(shape, kind)
        return "ours", dense, packed, choose_plan(m, packed, torch.bfloat16, torch.device("cuda"))
    if provider.startswith("streams-"):
        if m > STREAMS_MAX_M:
            pytest.skip(f"the streams backend is for M <= {STREAMS_MAX_M}")
        dense, packed = weights(shape, provider.removeprefix("streams-"))
        cuda = torch.device("cuda")
        return "ours", dense, packed, choose_plan(m, packed, torch.bfloat16, cuda, "streams")
    if provider in ("cusparselt", "cutlass"):
        if provider == "cutlass" and not cutlass_matmul_supported("cuda"):
            pytest.skip("torch's CUTLASS 2:4 matmul needs compute capability 8.x")
        dense, packed = weights(shape, "2:4")
        return provider, dense, packed, None
    dense, _ = weights(shape, "dense")
    if provider == "dense_triton":
        _, packed_24 = weights(shape, "2:4")
        plan = choose_plan(m, packed_24, torch.bfloat16, torch.device("cuda"))
        if plan.backend not in TRITON_BACKENDS:  # the table picked cuBLAS or cuSPARSELt
            plan = choose_plan(
                m,
                packed_24,
                torch.bfloat16,
                torch.device("cuda"),
                "skinny" if m <= SKINNY_MAX_M else "tiled",
            )
        return provider, dense, None, plan
    return provider, dense, None, None


def _benchmark(benchmark, calls, nbytes, copy_bytes_per_s, info):
    timing = time_calls(calls)
    repeat = max(1, math.ceil(ROUND_MS / max(timing["median_ms"] * len(calls), 1e-3)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeat):
            for call in calls:
                call()

    def one_round():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.extra_info.update(
        info,
        **timing,
        calls_per_round=repeat * len(calls),
        bytes=nbytes,
        floor_ms=nbytes / copy_bytes_per_s * 1e3,
        copy_bytes_per_s=copy_bytes_per_s,
    )
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=2)


# The decorator nearest the function varies slowest: M, then shape, then provider.
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", BENCH_SHAPES)
@pytest.mark.parametrize("m", BENCH_M)
def test_linear(benchmark, weights, copy_bytes_per_s, provider, shape, m):
    name, dense, packed, plan = _provider_setup(provider, shape, m, weights)
    weight_bytes = packed.nbytes if packed is not None else dense.numel() * dense.element_size()
    try:
        calls, nbytes = build_calls(
            name,
            dense,
            m,
            bias=True,
            plan=plan,
            packed=packed,
            copies=copies_for(weight_bytes, "cuda"),
        )
    except (RuntimeError, NotImplementedError) as error:
        if provider in ("cusparselt", "cutlass"):
            pytest.skip(f"torch semi-structured {provider} unavailable: {error}")
        raise
    info = {
        "provider": provider,
        "shape": shape,
        "n": dense.shape[0],
        "k": dense.shape[1],
        "m": m,
        "plan": plan.to_dict() if plan else None,
    }
    _benchmark(benchmark, calls, nbytes, copy_bytes_per_s, info)


@pytest.mark.parametrize("m", (1, 16))
@pytest.mark.parametrize("with_bias", (False, True), ids=("nobias", "bias"))
@pytest.mark.parametrize("kind", ("2:4", "bitmap50", "bitmap70"))
def test_bias_epilogue(benchmark, weights, copy_bytes_per_s, kind, with_bias, m):
    """Same kernel and plan with and without the fused bias (budget: <= 2% apart)."""
    dense, packed = weights("llama3-8b-o", kind)
    plan = choose_plan(m, packed, torch.bfloat16, torch.device("cuda"))
    calls, nbytes = build_calls(
        "ours",
        dense,
        m,
        bias=with_bias,
        plan=plan,
        packed=packed,
        copies=copies_for(packed.nbytes, "cuda"),
    )
    info = {
        "provider": f"ours-{kind}",
        "shape": "llama3-8b-o",
        "m": m,
        "bias": with_bias,
        "plan": plan.to_dict(),
    }
    _benchmark(benchmark, calls, nbytes, copy_bytes_per_s, info)


def test_device_copy(benchmark, copy_bytes_per_s):
    """The bandwidth floor's reference: a 1 GiB device-to-device copy."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)

    def one_round():
        dst.copy_(src)
        torch.cuda.synchronize()

    benchmark.extra_info.update(bytes=2 * src.numel() * 2, copy_bytes_per_s=copy_bytes_per_s)
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=2)
