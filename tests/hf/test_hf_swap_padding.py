"""Swapped models against their unswapped selves on the inputs of batched generation: a
left-padded batch with its attention_mask and explicit position_ids at prefill, then
one-token decode steps with a DynamicCache and with a StaticCache.

Families: llama (GQA), mistral with a sliding window shorter than the batch, qwen3 (q/k
norms), qwen2 with non-zero q/k/v biases, gemma2 under eager with a binding attention
softcap (and a window: sliding and full layers in one cache). The rule is
``assert_matches``'s: max |swapped - fp64| <= 2 x max |unswapped fp32 - fp64| + ATOL, over
the real (unpadded) positions, the fp64 logits coming from an uncached forward of each
row without its pads. ``test_the_batch_exercises_what_it_claims`` checks that each input
a broken swap could drop (the mask, the positions, the window, the softcap) moves the
logits far more than that.
"""

import copy

import pytest
import torch
from _hf_swap_helpers import ATOL, PATTERNS, add_o_bias, attention, prune_attention
from transformers import DynamicCache, StaticCache

from lcc_kernels.kernels import INTERPRETED
from restorelcc import swap_attention
from restorelcc.hf.cache import cache_kwargs
from restorelcc.hf.families import decoder_layers
from restorelcc.testing import tiny_model

# tiny model name -> config overrides
CASES = {
    "llama-gqa": {},
    "mistral-gqa": {"sliding_window": 4},
    "qwen3-gqa": {"attn_implementation": "eager"},
    "qwen2-gqa": {},
    # sdpa has no softcap (transformers 5.17 drops it silently, 5.24 refuses it); at
    # gemma2's default of 50 it barely binds on the tiny model's scores
    "gemma2-gqa": {"attn_implementation": "eager", "attn_logit_softcapping": 2.0,
                   "sliding_window": 4},
}  # fmt: skip
# Overrides that take a feature of a case away: the logits must move when they are applied.
FEATURES_OFF = {
    "window": {"sliding_window": 4096},  # the families' default window
    "softcap": {"attn_logit_softcapping": None},
}
PADS = (0, 3, 5)  # left pads per row: the batch is [3, LENGTH]
LENGTH, PREFILL = 10, 7  # then LENGTH - PREFILL one-token steps
# How far a changed input must move the logits: thousands of times the rule's fp32 limit.
MOVES = 1e-2
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@torch.no_grad()
def _random_qkv_biases(model, seed: int = 11):
    """Give every existing q/k/v bias random values (transformers initialises them to 0)."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(len(decoder_layers(model))):
        for name in ("q_proj", "k_proj", "v_proj"):
            bias = getattr(attention(model, i), name).bias
            if bias is not None:
                bias.copy_(0.5 * torch.randn(bias.shape, generator=generator))
    return model


def _model(name: str, pattern: str | None = None, **overrides):
    model = _random_qkv_biases(add_o_bias(tiny_model(name, **{**CASES[name], **overrides})))
    return model if pattern is None else prune_attention(model, pattern)


def _batch(device=DEVICE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, attention_mask and position_ids, each [3, LENGTH]. Pads sit on the left and take
    position 0; row 0 skips 3 positions after its 4th token (as a prompt with tokens taken
    out would), so positions are no shift of ``arange``: RoPE sees the difference."""
    ids = torch.randint(0, 256, (len(PADS), LENGTH))
    mask = torch.ones(len(PADS), LENGTH, dtype=torch.long)
    for row, pads in enumerate(PADS):
        mask[row, :pads] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    positions[0, 4:] += 3
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def _uncached(model, ids, mask, positions) -> torch.Tensor:
    """Logits [3, LENGTH, vocab] of one forward of the whole batch, no cache."""
    return model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits


def _unpadded(model, ids, positions) -> torch.Tensor:
    """Logits [real tokens, vocab], as ``logits[mask.bool()]`` orders them, from one
    forward per row without its pads. (Eager attention in float64 turns the fully masked
    rows of pads into NaN, as it takes the softmax in float32, and they spread.)"""
    rows = []
    for row, pads in enumerate(PADS):
        row_ids = ids[row : row + 1, pads:]
        # A mask, even all ones: with none, transformers reads row 0's gap in positions as
        # the start of a second packed sequence and masks across it.
        mask = torch.ones_like(row_ids)
        rows.append(_uncached(model, row_ids, mask, positions[row : row + 1, pads:])[0])
    return torch.cat(rows)


@torch.no_grad()
def _prefill_and_decode(model, cache, ids, mask, positions) -> torch.Tensor:
    """Logits [3, LENGTH, vocab]: those of a PREFILL-token prefill into ``cache``, then one
    step per remaining token, each with the mask so far and its own position."""
    kwargs = cache_kwargs(model, cache)
    out = model(
        ids[:, :PREFILL],
        attention_mask=mask[:, :PREFILL],
        position_ids=positions[:, :PREFILL],
        use_cache=True,
        **kwargs,
    )
    steps = [out.logits]
    for t in range(PREFILL, LENGTH):
        out = model(
            ids[:, t : t + 1],
            attention_mask=mask[:, : t + 1],
            position_ids=positions[:, t : t + 1],
            use_cache=True,
            **kwargs,
        )
        steps.append(out.logits)
    return torch.cat(steps, 1)


def _caches(model) -> dict:
    return {
        "dynamic": DynamicCache(config=model.config),
        "static": StaticCache(config=model.config, max_cache_len=LENGTH),
    }


def _assert_swap_matches(pruned, swapped) -> None:
    """Uncached, and prefill + decode with each cache: swapped (fp32) against the rule."""
    ids, mask, positions = _batch(next(swapped.parameters()).device)
    real = mask.bool()
    oracle = _unpadded(copy.deepcopy(pruned).double(), ids, positions)
    runs = {"uncached": (_uncached(swapped, ids, mask, positions),
                         _uncached(pruned, ids, mask, positions))}  # fmt: skip
    for kind in ("dynamic", "static"):
        ours = _prefill_and_decode(swapped, _caches(swapped)[kind], ids, mask, positions)
        plain = _prefill_and_decode(pruned, _caches(pruned)[kind], ids, mask, positions)
        runs[kind] = (ours, plain)
    for kind, (ours, plain) in runs.items():
        ours, plain = ours[real], plain[real]
        assert ours.dtype == torch.float32 and ours.isfinite().all(), kind
        torch_error = (plain.double() - oracle).abs().max().item()
        error = (ours.double() - oracle).abs().max().item()
        assert torch_error < MOVES / 100, f"{kind}: the unswapped model is {torch_error:.3g} off"
        limit = 2 * torch_error + ATOL[torch.float32]
        assert error <= limit, (
            f"{kind}: max error {error:.3g} > {limit:.3g} (PyTorch's: {torch_error:.3g})"
        )


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", list(CASES))
def test_padded_batch_and_cached_decode_match_the_unswapped_model(name, pattern):
    pruned = _model(name, pattern)
    swapped = copy.deepcopy(pruned)
    report = swap_attention(swapped, backend="reference")
    assert {g.format for g in report.groups} == {PATTERNS[pattern]}
    _assert_swap_matches(pruned, swapped)


@pytest.mark.triton
@pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 set before lcc_kernels is imported",
)
@pytest.mark.parametrize(("pattern", "backend"), [("2:4", "skinny"), ("unstructured", "tiled")])
def test_triton_kernels_on_a_padded_sliding_window_batch(monkeypatch, pattern, backend):
    import lcc_kernels.linear

    rows, real = [], lcc_kernels.linear._run_triton
    monkeypatch.setattr(
        lcc_kernels.linear,
        "_run_triton",
        lambda x2d, *args: rows.append(x2d.shape[0]) or real(x2d, *args),
    )
    pruned = _model("mistral-gqa", pattern).to(DEVICE)
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, PATTERNS[pattern], backend=backend)
    _assert_swap_matches(pruned, swapped)
    batch = len(PADS)  # rows of the uncached forward, the prefills and the decode steps
    assert set(rows) == {batch * LENGTH, batch * PREFILL, batch}


def _moved(name: str, change: str) -> float:
    """max |logits - logits with ``change``| over the real positions of the unswapped
    model: the mask made all ones, the positions left out, or a feature off."""
    ids, mask, positions = _batch("cpu")
    wanted = _uncached(_model(name), ids, mask, positions)
    if change in FEATURES_OFF:
        changed = _uncached(_model(name, **FEATURES_OFF[change]), ids, mask, positions)
    elif change == "mask":
        changed = _uncached(_model(name), ids, torch.ones_like(mask), positions)
    else:  # "positions"
        changed = _uncached(_model(name), ids, mask, None)
    real = mask.bool()
    return (wanted[real] - changed[real]).abs().max().item()


@pytest.mark.parametrize(
    ("name", "change"),
    [(name, "mask") for name in CASES]
    + [(name, "positions") for name in CASES]
    + [("mistral-gqa", "window"), ("gemma2-gqa", "window"), ("gemma2-gqa", "softcap")],
)
def test_the_batch_exercises_what_it_claims(name, change):
    assert _moved(name, change) > MOVES


def test_the_cases_hold_what_they_claim():
    biased, normed = attention(_model("qwen2-gqa"), 0), attention(_model("qwen3-gqa"), 0)
    assert all(getattr(biased, n).bias.abs().min() > 0 for n in ("q_proj", "k_proj", "v_proj"))
    assert hasattr(normed, "q_norm") and hasattr(normed, "k_norm")
    assert _model("gemma2-gqa").config._attn_implementation == "eager"
