"""SparseGPT: exact patterns, reduction to Wanda on a diagonal Hessian, lower layer error."""

import copy
import math

import pytest
import torch

from restorelcc.hf.families import block_linear, decoder_layers
from restorelcc.prune import prune_model
from restorelcc.prune.masks import is_nm, parse_pattern
from restorelcc.prune.sparsegpt import sparsegpt_prune
from restorelcc.prune.wanda import wanda_mask
from restorelcc.testing import tiny_model


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """``[tokens, features]`` with correlated features and uneven scales, like activations."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    scales = torch.exp(torch.randn(features, generator=g))
    return (torch.randn(tokens, features, generator=g) @ mixing + 0.3) * scales


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.double().T @ x.double() / x.shape[0]


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("cols", [96, 296], ids=lambda c: f"in{c}")  # 296: 2 blocks + 40
def test_pattern_is_exact(pattern, cols):
    weight = torch.randn(40, cols)
    x = correlated_inputs(500, cols)
    sparsity = 0.3 if pattern == "unstructured" else 0.5
    out = sparsegpt_prune(weight, hessian_of(x), sparsity, parse_pattern(pattern))
    assert out.isfinite().all()
    zeros = (out == 0).sum(dim=1)
    if pattern == "unstructured":  # the mask spans whole blocks: exact per matrix
        assert zeros.sum() == math.floor(sparsity * 40 * cols + 0.5)  # 1152 or 3552
        assert zeros.min() < zeros.max()  # rows do differ
    else:
        n, m = map(int, pattern.split(":"))
        assert is_nm(out, n, m)
        assert (zeros == cols // 2).all()


def test_per_row_option_is_exact_per_row():
    weight = torch.randn(40, 296)
    out = sparsegpt_prune(weight, hessian_of(correlated_inputs(500, 296)), 0.3,
                          parse_pattern("unstructured"), per_row=True)  # fmt: skip
    assert ((out == 0).sum(dim=1) == 89).all()


def test_model_matrices_each_exact():
    """q, k and v share a Hessian but each gets exactly its own share of zeros."""
    model = tiny_model("llama-gqa")
    report = prune_model(model, "sparsegpt", 0.3, calibration=torch.randint(0, 259, (4, 32)))
    for m in report.matrices:
        assert m.zeros == math.floor(0.3 * m.shape[0] * m.shape[1] + 0.5), m.name


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_diagonal_hessian_reduces_to_wanda(pattern):
    """With uncorrelated inputs OBS has nothing to compensate: Wanda's mask, no updates."""
    cols = 64  # one block, so the per-block quota is the whole row's
    weight = torch.randn(30, cols)
    norms = torch.rand(cols) + 0.1
    hessian = torch.diag(norms.double().square())
    out = sparsegpt_prune(weight, hessian, 0.5, parse_pattern(pattern), dampening=0.0, per_row=True)
    mask = wanda_mask(weight, norms, 0.5, parse_pattern(pattern))
    assert torch.equal(out == 0, mask)
    torch.testing.assert_close(out[~mask], weight[~mask])


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_error_below_wanda(pattern):
    rows, cols = 64, 160
    weight = torch.randn(rows, cols)
    x = correlated_inputs(2000, cols, seed=1)
    spec = parse_pattern(pattern)
    sgpt = sparsegpt_prune(weight, hessian_of(x), 0.5, spec)
    wanda = weight.masked_fill(wanda_mask(weight, x.norm(dim=0), 0.5, spec), 0.0)
    error = lambda w: torch.linalg.norm(x @ (weight - w).T).item()
    assert error(sgpt) < 0.9 * error(wanda)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_model_layer_error_below_wanda(pattern):
    """On a tiny model, every first-block linear reconstructs its dense output better."""
    dense = tiny_model("llama-gqa")
    tokens = torch.randint(0, 259, (8, 32))
    block = decoder_layers(dense)[0]
    inputs = {}
    names = ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"]
    handles = [
        block_linear(block, n).register_forward_hook(
            lambda m, a, o, n=n: inputs.__setitem__(n, a[0].reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        dense(input_ids=tokens, use_cache=False)
    for h in handles:
        h.remove()
    results = {}
    for method in ("wanda", "sparsegpt"):
        model = copy.deepcopy(dense)
        prune_model(model, method, 0.5, pattern, calibration=tokens)
        results[method] = decoder_layers(model)[0]
    for n in names:
        x, w = inputs[n], block_linear(block, n).weight
        err = {
            m: torch.linalg.norm(x @ (w - block_linear(b, n).weight).T).item()
            for m, b in results.items()
        }
        assert err["sparsegpt"] < err["wanda"], n


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_dead_inputs_are_pruned_first(pattern):
    """Inputs that are always zero (a zero Hessian diagonal) multiply nothing: their
    weights are the first pruned, whatever their size, and no kept weight is spent on them.
    Small activations make the live columns' saliencies small, which once kept the dead
    weights instead."""
    x = correlated_inputs(512, 128) * 0.01
    dead = torch.arange(0, 128, 16)
    x[:, dead] = 0
    weight = torch.randn(48, 128)
    weight[:, dead] *= 100
    pruned = sparsegpt_prune(weight, hessian_of(x), 0.5, parse_pattern(pattern))
    assert (pruned[:, dead] == 0).all()
    assert (pruned == 0).sum().item() == 48 * 128 // 2


def test_rejects_mismatched_hessian_and_block_size():
    with pytest.raises(ValueError, match="Hessian"):
        sparsegpt_prune(torch.randn(4, 8), torch.eye(6), 0.5, parse_pattern("unstructured"))
    with pytest.raises(ValueError, match="divisible by M=4"):
        sparsegpt_prune(torch.randn(4, 10), torch.eye(10), 0.5, parse_pattern("2:4"))
    with pytest.raises(ValueError, match="multiple of M=8"):
        sparsegpt_prune(torch.randn(4, 16), torch.eye(16), 0.5, parse_pattern("4:8"), block_size=12)


def test_pruning_runs_with_full_fp32_matmuls_whatever_the_caller_set(monkeypatch):
    """TF32 (set_float32_matmul_precision("high")) would give the Gram matrices and the
    SparseGPT updates a 10-bit mantissa on a GPU: pruning turns it off, then back on."""
    import restorelcc.prune.api as api

    seen, real = [], api.prune_with_factor

    def spied(*args, **kwargs):
        seen.append((torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "prune_with_factor", spied)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        model = tiny_model("llama-gqa")
        prune_model(model, "sparsegpt", 0.5, calibration=torch.randint(0, 259, (2, 16)),
                    progress=False)  # fmt: skip
        assert seen and set(seen) == {("highest", False)}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
