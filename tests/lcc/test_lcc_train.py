import copy
import re

import pytest
import torch
from lcc_helpers import compensation, train

from restorelcc.errors import DataError, NonFiniteError
from restorelcc.lcc.tokens import encode_pair
from restorelcc.lcc.train import TrainConfig, collate, response_loss, train_response_lm
from restorelcc.testing import synthetic_pairs, tiny_model


def test_loss_is_the_response_only_causal_lm_loss(tokenizer):
    model = tiny_model("llama-3x5")
    pairs = synthetic_pairs(5)
    encoded = [encode_pair(tokenizer, p, 500, eos=True) for p in pairs]
    ids, mask, positions, targets = collate(encoded, tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for row, (prompt, response) in enumerate(encoded):
        labels[row, len(prompt) : len(prompt) + len(response)] = torch.tensor(response)
        assert response[-1] == tokenizer.eos_token_id
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = response_loss(model, ids, mask, positions, targets)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(targets) == int((labels != -100).sum())


def test_only_beta_and_b_train_and_the_model_is_untouched(tokenizer):
    model = tiny_model("llama-3x5")
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    comp = compensation(model)
    beta0 = comp.beta.detach().clone()
    result = train(model, tokenizer, synthetic_pairs(8), comp, max_steps=3)
    assert result.steps == 3 and len(result.losses) == 3
    assert result.trainable_parameters == 3 * 2 * 16
    assert not torch.equal(comp.beta, beta0)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in model.model.layers)


def test_deterministic_for_a_seed(tokenizer):
    pairs = synthetic_pairs(10)
    runs = []
    for _ in range(2):
        model = tiny_model("llama-3x5")
        comp = compensation(model, seed=3)
        result = train(model, tokenizer, pairs, comp, max_steps=4, seed=7)
        runs.append((result.losses, comp.beta.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    model = tiny_model("llama-3x5")
    other = train(model, tokenizer, pairs, compensation(model, seed=3), max_steps=4, seed=8)
    assert other.losses != runs[0][0]


def test_a_penalty_regularises_without_entering_the_recorded_losses(tokenizer):
    pairs = synthetic_pairs(8)
    runs = {}
    for name in ("none", "constant", "l2"):
        model = tiny_model("llama-3x5")
        comp = compensation(model, seed=3, std=0.1)
        penalty = {
            "none": None,
            "constant": lambda: torch.tensor(100.0),  # no gradient: the same run
            "l2": lambda comp=comp: 1e3 * (comp.beta.square().sum() + comp.b.square().sum()),
        }[name]
        config = TrainConfig(max_steps=4, batch_size=4, progress=False)
        result = train_response_lm(
            model, tokenizer, pairs, list(comp.parameters()), config,
            lambda comp=comp, model=model: comp.attached(model), penalty=penalty,
        )  # fmt: skip
        runs[name] = (result.losses, comp.b.detach().norm().item())
    assert runs["constant"] == runs["none"]
    assert runs["l2"][0][0] == runs["none"][0][0]  # step 0: same parameters, same loss
    assert runs["l2"][1] < runs["none"][1]


def test_the_gradient_norm_is_recorded_then_clipped(tokenizer):
    pairs = synthetic_pairs(8)
    model = tiny_model("llama-3x5")
    comp = compensation(model, std=0.1)
    free = train(model, tokenizer, pairs, comp, max_steps=3, max_grad_norm=None)
    left = torch.cat([p.grad.flatten() for p in comp.parameters()]).norm().item()
    assert len(free.grad_norms) == 3 and free.grad_norms[-1] == pytest.approx(left, rel=1e-5)
    limit = min(free.grad_norms) / 4
    comp = compensation(model, std=0.1)
    clipped = train(model, tokenizer, pairs, comp, max_steps=3, max_grad_norm=limit)
    assert clipped.grad_norms[0] == pytest.approx(free.grad_norms[0], rel=1e-6)  # before clipping
    left = torch.cat([p.grad.flatten() for p in comp.parameters()]).norm().item()
    assert left == pytest.approx(limit, rel=1e-5)


def test_a_non_finite_gradient_stops_training_before_the_update(tokenizer):
    model = tiny_model("llama-3x5")
    comp = compensation(model, std=0.0)
    config = TrainConfig(max_steps=2, batch_size=4, progress=False)
    # sqrt(|b|) is 0 at b = 0 but its slope is infinite: a finite loss, a non-finite gradient
    with pytest.raises(NonFiniteError, match="non-finite gradient .* at training step 1 of 2"):
        train_response_lm(
            model, tokenizer, synthetic_pairs(4), list(comp.parameters()), config,
            lambda: comp.attached(model), penalty=lambda: comp.b.abs().sqrt().sum(),
        )  # fmt: skip
    assert not comp.b.any()


def test_loss_goes_down(tokenizer):
    model = tiny_model("llama-3x5")
    comp = compensation(model)
    pairs = synthetic_pairs(8)
    result = train(model, tokenizer, pairs, comp, epochs=15, lr=3e-2)
    assert result.final_loss < 0.9 * result.losses[0]


def test_fp32_master_parameters_on_a_bf16_model(tokenizer):
    model = tiny_model("llama-3x5").to(torch.bfloat16)
    comp = compensation(model, std=0.0)
    train(model, tokenizer, synthetic_pairs(4), comp, max_steps=2, lr=1e-3)
    assert comp.beta.dtype == torch.float32 and comp.b.dtype == torch.float32
    # one lr-sized Adam step from zero is far below bf16's resolution near 1, but is kept
    assert 0 < comp.b.abs().max() < 2e-3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 0, "lr must be positive and finite, got 0"),
        ("lr", float("inf"), "lr must be positive and finite, got inf"),  # was: inf > 0
        ("lr", float("nan"), "lr must be positive and finite, got nan"),
        ("epochs", 0, "epochs must be a positive integer, got 0"),
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("max_steps", 0, "max_steps must be a positive integer, got 0"),
        ("max_length", 1, "max_length must be >= 2, got 1"),
        ("max_grad_norm", 0, "max_grad_norm must be a positive finite number, or None, got 0"),
        # was accepted: inf > 0 (None disables clipping)
        (
            "max_grad_norm",
            float("inf"),
            "max_grad_norm must be a positive finite number, or None, got inf",
        ),
        # wrong types had failed later with bare TypeErrors, or not at all (2.5 epochs)
        ("lr", "1e-3", "lr must be positive and finite, got '1e-3'"),
        ("epochs", 2.5, "epochs must be a positive integer, got 2.5"),
        ("batch_size", True, "batch_size must be a positive integer, got True"),
        ("max_steps", 1.0, "max_steps must be a positive integer, got 1.0"),
        ("seed", 0.5, "seed must be an integer, got 0.5"),
        ("validation_pairs", 1.5, "validation_pairs must be an integer >= 0, got 1.5"),
        ("max_grad_norm", "1", "max_grad_norm must be a positive finite number, or None, got '1'"),
    ],
)
def test_bad_config_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainConfig(**{field: value})


def test_bad_data_and_no_trainable_parameters(tokenizer):
    model = tiny_model("llama-3x5")
    comp = compensation(model)
    with pytest.raises(DataError, match="need at least 1"):
        train(model, tokenizer, [], comp)
    with pytest.raises(DataError, match="empty response"):
        train(model, tokenizer, [("### Instruction:\nx\n\n### Response:", "  ")], comp)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_response_lm(model, tokenizer, synthetic_pairs(2), [], TrainConfig(progress=False))
