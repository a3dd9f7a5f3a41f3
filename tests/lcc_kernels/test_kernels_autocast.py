"""sparse_linear under torch.autocast: every backend returns x's dtype with the values it
gives without autocast (the PyTorch backends run with autocast disabled, as the Triton
kernels ignore it), so an active autocast neither changes the precision nor overflows."""

import pytest
import torch
from _kernels_helpers import needs_triton
from _linear_helpers import packed_weight

from lcc_kernels import pack, sparse_linear

M, N, K = 5, 23, 136  # odd sizes: N and K multiples of no tile


def _on_cpu(backend: str, fmt: str = "2:4"):
    """A (format, backend) parameter, marked where the backend runs interpreted kernels."""
    interpreted = backend in ("skinny", "tiled", "streams")
    return pytest.param(fmt, backend, marks=needs_triton) if interpreted else (fmt, backend)


TORCH_BACKENDS = ("auto", "reference", "dense")
ALL_BACKENDS = (*TORCH_BACKENDS, "skinny", "tiled")
# Every backend that runs on the CPU, on either format (streams: bitmap weights only).
CASES = [_on_cpu(b, fmt) for fmt in ("2:4", "bitmap") for b in ALL_BACKENDS]
CASES.append(_on_cpu("streams", "bitmap"))


@pytest.mark.parametrize(("fmt", "backend"), CASES)
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_changes_no_backend_result(fmt, backend, autocast_dtype):
    """fp32 x and bias: under CPU autocast each backend gives its own no-autocast output,
    bit for bit, in fp32 (the PyTorch backends used to compute in autocast's dtype), and
    so does a call with no rows (nothing launched)."""
    _, packed = packed_weight(fmt, torch.float32, N, K)
    x, bias = torch.randn(M, K), torch.randn(N)
    expected = sparse_linear(x, packed, bias, backend=backend)
    with torch.autocast("cpu", dtype=autocast_dtype):
        y = sparse_linear(x, packed, bias, backend=backend)
        empty = sparse_linear(x[:0], packed, bias, backend=backend)
    assert y.dtype == torch.float32 and torch.equal(y, expected)
    assert empty.dtype == torch.float32 and empty.shape == (0, N)


@pytest.mark.parametrize(("fmt", "backend"), [_on_cpu(b) for b in ALL_BACKENDS])
@pytest.mark.parametrize("wide_bias", [False, True])
def test_a_bf16_activation_beyond_fp16_stays_finite_under_fp16_autocast(fmt, backend, wide_bias):
    """bf16 x holding 1e5 (past fp16's max) under fp16 autocast: every backend gives the
    exact bf16 result (1e5 rounds to 99840; x 0.5 is 49920), as without autocast, not the
    inf of a product computed in fp16. A wide (fp32) bias takes the fp32 reference route
    of the dense backend."""
    weight = torch.zeros(3, 64, dtype=torch.bfloat16)
    weight[:, 0], weight[:, 5] = 0.5, 0.25  # 2:4
    packed = pack(weight, fmt)
    x = torch.zeros(3, 64, dtype=torch.bfloat16)
    x[:, 0] = 1e5
    bias = torch.zeros(3) if wide_bias else None
    with torch.autocast("cpu", dtype=torch.float16):
        y = sparse_linear(x, packed, bias, backend=backend)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, torch.full((3, 3), 49920.0, dtype=torch.bfloat16))
    assert torch.equal(y, sparse_linear(x, packed, bias, backend=backend))
