"""The error rules every kernel test (and the GPU suite) leans on, tested on their own: no
kernel runs here.

lcc_kernels.bench.check_against_oracle: max |y - fp64| <= 2 x PyTorch's error at x's dtype
+ a floor per dtype. _kernels_helpers.assert_kernel_matches_oracle: for interpreted bf16
outputs, a truncation of an fp32 sum near the fp64 result.
"""

import pytest
import torch
import torch.nn.functional as F
from _kernels_helpers import assert_kernel_matches_oracle, round_toward_zero_to_bf16

from lcc_kernels.bench import check_against_oracle

# The documented floors (lcc_kernels.bench.ORACLE_ATOL), restated: raising one loosens
# every kernel test, so it must fail here first.
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _problem(dtype):
    """x [5, 64] and weight [24, 64] in dtype, an fp32 bias [24], the fp64 result [5, 24]."""
    x, weight, bias = torch.randn(5, 64).to(dtype), torch.randn(24, 64).to(dtype), torch.randn(24)
    return x, weight, bias, F.linear(x.double(), weight.double(), bias.double())


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
def test_oracle_rule_allows_twice_torchs_error_plus_the_dtype_floor_and_no_more(dtype):
    x, weight, bias, exact = _problem(dtype)
    torch_y = F.linear(x, weight, bias.to(dtype))
    torch_error = (torch_y.double() - exact).abs().max().item()
    assert torch_error > 0
    check = check_against_oracle(torch_y, x, weight, bias)
    assert check["torch_error"] == torch_error
    assert check["limit"] == 2 * torch_error + FLOOR[dtype]
    assert check["ok"] and check["error"] == torch_error and not check["nan"]
    assert check_against_oracle(exact.to(dtype), x, weight, bias)["ok"]

    # One output moved to the last value of dtype within the limit passes; the next fails.
    edge = exact[0, 0].item() + check["limit"]
    inside = torch.tensor(edge, dtype=torch.float64).to(dtype)
    if inside.item() > edge:
        inside = torch.nextafter(inside, torch.tensor(-torch.inf, dtype=dtype))
    beyond = torch.nextafter(inside, torch.tensor(torch.inf, dtype=dtype))
    for value, ok in ((inside, True), (beyond, False)):
        y = torch_y.clone()
        y[0, 0] = value
        moved = check_against_oracle(y, x, weight, bias)
        assert moved["ok"] is ok, (value.item(), moved)
    assert moved["error"] == beyond.item() - exact[0, 0].item()

    y = torch_y.clone()
    y[4, 23] = torch.nan
    nan = check_against_oracle(y, x, weight, bias)
    assert nan["nan"] and not nan["ok"]


def test_rounding_toward_zero_to_bf16():
    ulp = 2.0**-7  # bf16's in [1, 2)
    values = torch.tensor(
        [
            1 + ulp - 2.0**-40,  # fp32 rounds this up to 1 + ulp: toward zero it is 1
            -(1 + ulp - 2.0**-40),
            1 + ulp + 2.0**-40,
            1 + ulp * 0.99,
            -(3 + 2 * ulp * 0.99),  # the ulp is 2 x as wide in [2, 4)
            2.0**-20 * (1 + ulp * 0.5),
            0.0,
        ],
        dtype=torch.float64,
    )
    expected = [1.0, -1.0, 1 + ulp, 1.0, -3.0, 2.0**-20, 0.0]
    assert round_toward_zero_to_bf16(values).tolist() == expected
    # bf16 values are left alone; others fall to a neighbour no farther from zero.
    bf16 = torch.randn(1000).to(torch.bfloat16).double()
    assert torch.equal(round_toward_zero_to_bf16(bf16), bf16)
    wide = torch.randn(1000, dtype=torch.float64)
    truncated = round_toward_zero_to_bf16(wide)
    assert (truncated.abs() <= wide.abs()).all()
    assert torch.equal(truncated.to(torch.bfloat16).double(), truncated)
    step = torch.nextafter(truncated.to(torch.bfloat16), wide.sign().to(torch.bfloat16) * torch.inf)
    assert (step.double().abs() > wide.abs()).all()


def test_interpreted_bf16_rule_takes_truncations_only(monkeypatch):
    """Under the interpreter: the truncated fp64 result passes; one output an ulp farther
    from zero where no bf16 boundary lies near the result, a missing bias, or a
    round-to-nearest y (a GPU's rounding) are refused."""
    import _kernels_helpers

    monkeypatch.setattr(_kernels_helpers, "INTERPRETED", True)
    x, weight, bias, exact = _problem(torch.bfloat16)
    truncated = round_toward_zero_to_bf16(exact).to(torch.bfloat16)
    assert_kernel_matches_oracle(truncated, x, weight, bias)

    # An output whose result is over 1% of an ulp from either neighbouring boundary.
    ulp = (torch.nextafter(truncated, truncated.sign() * torch.inf) - truncated).double()
    room = ((exact - truncated.double()) / ulp).abs()
    row, col = ((room > 0.01) & (room < 0.99)).nonzero()[0].tolist()
    y = truncated.clone()
    y[row, col] = torch.nextafter(y[row, col], y[row, col].sign() * torch.inf)
    with pytest.raises(AssertionError, match=r"1 of 120 bf16 outputs"):
        assert_kernel_matches_oracle(y, x, weight, bias)
    without_bias = round_toward_zero_to_bf16(exact - bias.double()).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="no truncation of an fp32 sum"):
        assert_kernel_matches_oracle(without_bias, x, weight, bias)
    nearest = exact.to(torch.bfloat16)
    with pytest.raises(AssertionError, match="no truncation of an fp32 sum"):
        assert_kernel_matches_oracle(nearest, x, weight, bias)
