"""Non-finite activations or losses stop the pipeline with an error naming where they are."""

import pytest
import torch
from lcc_helpers import compensation, pruned_copy, train

from restorelcc.errors import NonFiniteError
from restorelcc.hf.families import head_geometry, o_proj_of
from restorelcc.lcc.capture import (
    ProbeActivations,
    capture_last_token,
    capture_probe_activations,
)
from restorelcc.lcc.components import lost_components
from restorelcc.lcc.finite import all_finite, check_finite_heads
from restorelcc.lcc.probing import score_heads
from restorelcc.lcc.tokens import encode_pair, encode_probe_set
from restorelcc.lcc.train import TrainConfig, train_response_lm
from restorelcc.testing import synthetic_pairs, tiny_model


def activations(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(20, 3, 5, 16, generator=g) for _ in range(4)]


def overflow_head(model, layer: int, head: int):
    """Make the o_proj input of ``(layer, head)`` inf, as an fp16 overflow would."""
    d = head_geometry(model).head_dim

    def hook(module, args):
        x = args[0].clone()
        x[..., head * d + 3] = float("inf")
        return (x,)

    return o_proj_of(model, layer).register_forward_pre_hook(hook)


def test_capture_names_the_model_layer_and_head(tokenizer):
    dense = tiny_model("llama-3x5")
    pruned = pruned_copy(dense)
    pairs = synthetic_pairs(6)
    sequences = encode_probe_set(tokenizer, pairs, [1, 2, 3, 4, 5, 0], 64)
    handle = overflow_head(pruned, layer=1, head=3)
    with pytest.raises(NonFiniteError, match=r"pruned model.*layer 1, head 3 .*bfloat16"):
        capture_probe_activations(dense, pruned, sequences, progress=False)
    handle.remove()
    handle = overflow_head(dense, layer=2, head=0)
    with pytest.raises(NonFiniteError, match=r"dense model.*layer 2, head 0 "):
        capture_probe_activations(dense, pruned, sequences, progress=False)
    handle.remove()
    prompts = [encode_pair(tokenizer, p, 64)[0] for p in pairs]
    assert torch.isfinite(capture_last_token(dense, prompts, progress=False)).all()


def test_differences_name_the_model_layer_head_and_sample():
    dense, pruned, _, _ = activations()
    dense[4, 2, 1, 7] = float("inf")
    with pytest.raises(
        NonFiniteError, match=r"\(1 inf, 0 nan\) in the dense model.*layer 2, head 1 \(sample 4\)"
    ):
        lost_components(dense, pruned)
    dense[4, 2, 1, 7] = 0.0
    pruned[7, 0, 4, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"pruned model.*layer 0, head 4 \(sample 7\)"):
        lost_components(dense, pruned)


def test_probe_features_must_be_finite():
    dense, pruned, positive, negative = activations()
    positive[3, 1, 2, 0] = float("nan")
    acts = ProbeActivations(dense, pruned, positive, negative)
    with pytest.raises(NonFiniteError, match=r"\(Z\+\): first at layer 1, head 2 \(sample 3\)"):
        score_heads(acts, torch.zeros(3, 5, 16), epochs=2)
    positive[3, 1, 2, 0] = 0.0
    comp = torch.zeros(3, 5, 16)
    comp[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="compensation: first at layer 0, head 0"):
        score_heads(acts, comp, epochs=2)


def test_a_non_finite_loss_stops_training_before_the_update(tokenizer):
    model = pruned_copy(tiny_model("llama-3x5"))
    comp = compensation(model)  # heads (0, 1), (1, 3), (2, 4)
    comp.directions[1, 3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"loss \(nan\) at training step 1 of 3.*layer 1, "):
        train(model, tokenizer, synthetic_pairs(8), comp, max_steps=3)
    assert torch.isfinite(comp.beta).all() and torch.isfinite(comp.b).all()


def test_a_non_finite_penalty_stops_training(tokenizer):
    model = pruned_copy(tiny_model("llama-3x5"))
    comp = compensation(model)
    config = TrainConfig(max_steps=2, batch_size=4, progress=False)
    with pytest.raises(NonFiniteError, match=r"penalty \(response loss .* at training step 1 of 2"):
        train_response_lm(
            model,
            tokenizer,
            synthetic_pairs(8),
            list(comp.parameters()),
            config,
            lambda: comp.attached(model),
            penalty=lambda: comp.b.sum() * float("inf"),
        )


def test_the_check_is_exact_when_a_sum_of_finite_values_overflows():
    big = torch.full((2, 1, 1, 4), 3e38)
    assert big.sum().isinf() and all_finite(big)
    check_finite_heads(big, "big values")
    big[1, 0, 0, 2] = float("-inf")
    assert not all_finite(big)
    with pytest.raises(NonFiniteError, match=r"\(1 inf, 0 nan\) in big values.*\(sample 1\)"):
        check_finite_heads(big, "big values")
