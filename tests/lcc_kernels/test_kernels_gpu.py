"""GPU-only checks: bf16, larger shapes, torch semi-structured interop, CUDA graphs, streams.

Skipped without CUDA (the `gpu` marker, see tests/conftest.py). Timing lives in
benchmarks/, not here.
"""

import pytest
import torch
from _kernels_helpers import assert_matches_oracle, random_24, random_unstructured

from lcc_kernels import (
    Plan,
    from_torch_semi_structured,
    linear,
    pack,
    reference_linear,
    sparse_linear,
    to_torch_semi_structured,
    unpack,
)

pytestmark = pytest.mark.gpu
N, K = 1536, 2048


def _weight(fmt, dtype, n=N, k=K):
    dense = (
        random_24(n, k, dtype, "cuda")
        if fmt == "2:4"
        else random_unstructured(n, k, 0.3, dtype, "cuda")
    )
    return dense, pack(dense, fmt)


# Sizes that fill the kernels' tiles, at every M bucket, and odd ones at the issue's M
# values (masked edges: the interpreter runs those on the CPU, the compiler's masking only
# here). Fewer odd cases keep the GPU run's compile time inside its budget.
SIZES_AND_M = [((N, K), m) for m in (1, 2, 3, 5, 16, 17, 300)] + [
    ((72, 136), m) for m in (1, 3, 17)
]


@pytest.mark.parametrize(
    "shape, m", SIZES_AND_M, ids=[f"{n}x{k}-m{m}" for (n, k), m in SIZES_AND_M]
)
@pytest.mark.parametrize("backend", ["auto", "skinny", "tiled"])
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_kernels_match_oracle_on_gpu(with_bias, fmt, dtype, backend, shape, m):
    """The compiled kernels against the fp64 oracle, every path, dtype and format."""
    n, k = shape
    dense, packed = _weight(fmt, dtype, n, k)
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    bias = torch.randn(n, device="cuda") if with_bias else None
    y = sparse_linear(x, packed, bias, backend=backend)
    assert_matches_oracle(y, x, dense, bias)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 9])
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
def test_streams_match_oracle_on_gpu(dtype, m):
    dense, packed = _weight("bitmap", dtype)
    dense[7, 100:1900] = 0  # escape entries
    packed = pack(dense, "bitmap")
    x = torch.randn(m, K, dtype=dtype, device="cuda")
    bias = torch.randn(N, device="cuda")
    y = sparse_linear(x, packed, bias, backend="streams")
    assert_matches_oracle(y, x, dense, bias)
    assert_matches_oracle(
        sparse_linear(x, packed, bias, plan=Plan("streams", 4, 256, split_k=5, num_warps=8)),
        x,
        dense,
        bias,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_an_fp32_bias_is_added_before_the_one_rounding_on_gpu(dtype):
    """A bias x's dtype cannot hold: the dense backend adds it to cuBLAS's fp32 product
    (torch.mm with out_dtype), the Triton kernels in their epilogue; both within half an
    ulp of the fp64 result (plus fp32 accumulation). With x requiring grad, the dense
    backend computes through the reference instead (mm with out_dtype has no derivative)."""
    dense, packed = _weight("2:4", dtype)
    x = torch.randn(300, K, dtype=dtype, device="cuda") * 0.01
    ulp = 512 * torch.finfo(dtype).eps  # of outputs in [512, 1024)
    bias = 1000 - 8 * ulp + torch.rand(N, device="cuda") * 8 * ulp
    exact = torch.nn.functional.linear(x.double(), dense.double(), bias.double())
    for backend in ("dense", "tiled"):
        y = sparse_linear(x, packed, bias, backend=backend)
        error = (y.double() - exact).abs().max().item()
        assert error <= ulp / 2 + ulp / 64, (backend, error, ulp)
    x.requires_grad_()
    y = sparse_linear(x, packed, bias, backend="dense")
    assert (y.double() - exact).abs().max().item() <= ulp / 2 + ulp / 64
    y.float().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_an_fp32_bias_on_torch_without_mm_out_dtype_goes_through_the_reference(monkeypatch):
    """torch < 2.8 has no torch.mm out_dtype: the dense backend computes in fp32 instead,
    with the same single rounding."""
    calls = []

    def reference(*args):
        calls.append(args)
        return reference_linear(*args)

    monkeypatch.setattr(linear, "_MM_WRITES_FP32", False)
    monkeypatch.setattr(linear, "reference_linear", reference)
    dense, packed = _weight("2:4", torch.bfloat16)
    x = torch.randn(3, K, dtype=torch.bfloat16, device="cuda")
    bias = torch.randn(N, device="cuda")
    assert_matches_oracle(sparse_linear(x, packed, bias, backend="dense"), x, dense, bias)
    assert len(calls) == 1


def test_serial_split_k_is_deterministic_on_gpu():
    dense, packed = _weight("2:4", torch.bfloat16, n=512, k=8192)
    x = torch.randn(4, 8192, dtype=torch.bfloat16, device="cuda")
    plan = Plan("skinny", block_m=16, block_n=64, block_k=64, split_k=32)
    first = sparse_linear(x, packed, plan=plan)
    for _ in range(20):
        assert torch.equal(sparse_linear(x, packed, plan=plan), first)
    two_pass = sparse_linear(
        x,
        packed,
        plan=Plan("skinny", block_m=16, block_n=64, block_k=64, split_k=32, serial_reduction=False),
    )
    assert torch.equal(two_pass, first)
    assert_matches_oracle(first, x, dense)


def test_cuda_graph_replay_with_split_k():
    dense, packed = _weight("bitmap", torch.bfloat16)
    bias = torch.randn(N, device="cuda")
    static_x = torch.randn(1, K, dtype=torch.bfloat16, device="cuda")
    plan = Plan("skinny", block_m=1, block_n=64, block_k=64, split_k=8)
    sparse_linear(static_x, packed, bias, plan=plan)  # compile and allocate outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = sparse_linear(static_x, packed, bias, plan=plan)
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        assert_matches_oracle(static_y, static_x, dense, bias)


def test_cuda_graphs_replay_in_any_order_and_concurrently_with_split_k():
    # Each captured split-K launch owns its counters: graphs replayed out of capture order,
    # or at once on two streams, must not see each other's tickets.
    dense, packed = _weight("2:4", torch.bfloat16)
    plan = Plan("skinny", block_m=1, block_n=64, block_k=64, split_k=16)
    xs = [torch.randn(1, K, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    for x in xs:
        sparse_linear(x, packed, plan=plan)
    torch.cuda.synchronize()
    graphs, ys = [torch.cuda.CUDAGraph() for _ in xs], []
    for graph, x in zip(graphs, xs, strict=True):
        with torch.cuda.graph(graph):
            ys.append(sparse_linear(x, packed, plan=plan))
    graphs[1].replay()
    torch.cuda.synchronize()
    assert_matches_oracle(ys[1], xs[1], dense)
    streams = [torch.cuda.Stream() for _ in graphs]
    for _ in range(50):
        for graph, stream in zip(graphs, streams, strict=True):
            with torch.cuda.stream(stream):
                graph.replay()
    torch.cuda.synchronize()
    for x, y in zip(xs, ys, strict=True):
        assert_matches_oracle(y, x, dense)


def test_eager_split_k_launches_on_two_streams_keep_their_own_counters():
    # Eager launches take the counter block of the stream they run on (the raw handle
    # Triton launches on): two streams at once must not share one, one stream reuses its.
    from lcc_kernels.counters import split_k_counters

    device = torch.device("cuda", torch.cuda.current_device())
    streams = [torch.cuda.Stream() for _ in range(2)]
    blocks = []
    for stream in streams:
        with torch.cuda.stream(stream):
            blocks.append(split_k_counters(device, 64).data_ptr())
            assert split_k_counters(device, 64).data_ptr() == blocks[-1]
    assert blocks[0] != blocks[1]
    assert split_k_counters(device, 64).data_ptr() not in blocks  # the current stream's
    dense, packed = _weight("2:4", torch.bfloat16)
    plan = Plan("skinny", block_m=1, block_n=64, block_k=64, split_k=16)
    xs = [torch.randn(1, K, dtype=torch.bfloat16, device="cuda") for _ in streams]
    torch.cuda.synchronize()
    ys = [[] for _ in streams]
    for _ in range(20):
        for stream, x, outs in zip(streams, xs, ys, strict=True):
            with torch.cuda.stream(stream):
                outs.append(sparse_linear(x, packed, plan=plan))
    torch.cuda.synchronize()
    for x, outs in zip(xs, ys, strict=True):
        for y in outs:
            assert_matches_oracle(y, x, dense)


def test_compiled_with_cuda_graphs_across_runs_and_shapes():
    # torch.compile's CUDA graphs ("reduce-overhead") warm up and record in a private pool
    # whose memory each new run hands out again: split-K counters made on the first call
    # must live outside it. Several M values make several recordings.
    from torch._dynamo.utils import counters

    dense, packed = _weight("2:4", torch.bfloat16)
    bias = torch.randn(N, device="cuda")
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, backend="skinny"), mode="reduce-overhead"
    )
    skips = counters["inductor"]["cudagraph_skips"]
    for _ in range(4):
        for m in (1, 3, 1, 2):
            x = torch.randn(m, K, dtype=torch.bfloat16, device="cuda")
            y = compiled(x).clone()
            assert_matches_oracle(y, x, dense, bias)
    assert counters["inductor"]["cudagraph_skips"] == skips  # the graphs were used


def test_compiled_decode_streams_with_cuda_graphs():
    """decode_streams under torch.compile + CUDA graphs: the prepared layout goes into the
    streams op, which picks streams (M <= 4) or the bitmap kernels (M = 17) per replay."""
    from torch._dynamo.utils import counters

    from lcc_kernels import prepare_streams

    dense, packed = _weight("bitmap", torch.bfloat16)
    bias = torch.randn(N, device="cuda")
    prepare_streams(packed)
    compiled = torch.compile(
        lambda x: sparse_linear(x, packed, bias, decode_streams=True), mode="reduce-overhead"
    )
    skips = counters["inductor"]["cudagraph_skips"]
    for _ in range(3):
        for m in (1, 3, 17, 1):
            x = torch.randn(m, K, dtype=torch.bfloat16, device="cuda")
            y = compiled(x).clone()
            assert_matches_oracle(y, x, dense, bias)
    assert counters["inductor"]["cudagraph_skips"] == skips


def test_swapped_modules_on_a_gpu_prepare_their_streams():
    from restorelcc.hf.attention import SparseLinear

    dense = random_unstructured(N, K, 0.3, torch.bfloat16)  # on the CPU: nothing built
    module = SparseLinear(pack(dense, "bitmap"), torch.randn(N), decode_streams=True)
    assert "streams:last" not in module.packed.cache and module.streams_bytes == 0
    module.cuda()
    plan, layout = module.packed.cache["streams:last"]
    assert module.streams_bytes == layout.nbytes
    assert plan.backend == "streams" and torch.equal(layout.to_dense().cpu(), dense)
    x = torch.randn(2, K, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        assert_matches_oracle(module(x), x, dense.cuda(), module.bias)


def test_concurrent_streams_do_not_share_counters():
    dense, packed = _weight("2:4", torch.bfloat16)
    plan = Plan("skinny", block_m=1, block_n=64, block_k=64, split_k=16)
    xs = [torch.randn(1, K, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    streams = [torch.cuda.Stream() for _ in range(2)]
    outputs = [[], []]
    torch.cuda.synchronize()
    for _ in range(50):
        for i, stream in enumerate(streams):
            with torch.cuda.stream(stream):
                outputs[i].append(sparse_linear(xs[i], packed, plan=plan))
    torch.cuda.synchronize()
    for i in range(2):
        for y in outputs[i]:
            assert_matches_oracle(y, xs[i], dense)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_weights_on_another_device_than_the_current_one():
    # Triton launches on the current device; a model spread over GPUs calls with x elsewhere.
    dense, packed = _weight("bitmap", torch.bfloat16)
    dense, packed = dense.to("cuda:1"), pack(dense.to("cuda:1"), "bitmap")
    x = torch.randn(3, K, dtype=torch.bfloat16, device="cuda:1")
    bias = torch.randn(N, device="cuda:1")
    with torch.cuda.device(0):
        for backend in ("skinny", "tiled"):
            y = sparse_linear(x, packed, bias, backend=backend)
            assert y.device == x.device
            assert_matches_oracle(y, x, dense, bias)


def _why_torch_cannot_convert(backend: str) -> str | None:
    """Why torch cannot build `backend`'s semi-structured tensors on this GPU, or None.
    Decided before converting, so that any error of the conversion (our unpack, torch's
    from_dense on a setup it supports) fails the test. CUTLASS's from_dense and to_dense
    are torch's own Python, on any CUDA device; cuSPARSELt's compress and matmul need a
    torch built with it and compute capability 8.0 or newer."""
    if backend != "cusparselt":
        return None
    if not torch.backends.cusparselt.is_available():
        return "this torch build has no cuSPARSELt"
    if torch.cuda.get_device_capability() < (8, 0):
        return "cuSPARSELt needs compute capability 8.0 or newer"
    return None


@pytest.mark.parametrize("backend", ["cusparselt", "cutlass"])
def test_torch_semi_structured_round_trip_and_backend(backend):
    why_not = _why_torch_cannot_convert(backend)
    if why_not:
        pytest.skip(f"torch semi-structured {backend} unavailable: {why_not}")
    dense, packed = _weight("2:4", torch.float16, n=512, k=1024)
    converted = to_torch_semi_structured(packed, backend)
    assert torch.equal(unpack(from_torch_semi_structured(converted)), dense)
    if backend == "cutlass" and torch.cuda.get_device_capability()[0] != 8:
        # torch's CUTLASS 2:4 matmul (sparse_semi_structured_mad_op) checks for sm_8x.
        pytest.skip("torch's CUTLASS 2:4 matmul runs on compute capability 8.x only")
    x = torch.randn(64, 1024, dtype=torch.float16, device="cuda")
    y = sparse_linear(x, packed, plan=Plan("semi_structured", semi_structured=backend))
    assert_matches_oracle(y, x, dense)
