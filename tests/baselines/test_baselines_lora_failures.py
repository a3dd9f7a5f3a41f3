"""LoRA/DoRA on models they cannot train: DoRA refuses all-zero q/k/v/o output rows before
training (its row norms would be 0 / 0), and a non-finite loss is reported as LoFiT's is."""

import math

import peft
import pytest
import torch

import restorelcc.baselines as baselines
from restorelcc.baselines import lofit_baseline, lora_baseline
from restorelcc.errors import NonFiniteError, UnsupportedModelError
from restorelcc.lcc import RestoreConfig, TrainConfig
from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model

ONE_STEP = TrainConfig(max_steps=1, batch_size=4, progress=False)


def zeroed_rows():
    """``llama-3x5`` (q_proj ``[80, 60]``, o_proj ``[60, 80]``) with one all-zero q_proj
    output row in layer 1 and one all-zero o_proj row in layers 0 and 2."""
    model = tiny_model("llama-3x5")
    layers = model.model.layers
    with torch.no_grad():
        layers[1].self_attn.q_proj.weight[3].zero_()
        layers[0].self_attn.o_proj.weight[7].zero_()
        layers[2].self_attn.o_proj.weight[11].zero_()
    return model


def test_dora_refuses_all_zero_attention_rows_before_training_and_lora_trains(monkeypatch):
    model, tokenizer, pairs = zeroed_rows(), byte_tokenizer(), synthetic_pairs(8)

    def never(*args, **kwargs):
        raise AssertionError("DoRA went on to build or train its adapters")

    with monkeypatch.context() as patched:
        patched.setattr(peft, "get_peft_model", never)
        patched.setattr(baselines, "train_response_lm", never)
        with pytest.raises(UnsupportedModelError) as caught:
            lora_baseline(model, tokenizer, pairs, ONE_STEP, rank=2, dora=True)
    message = str(caught.value)
    assert message.startswith(
        "DoRA cannot train this model: 3 all-zero output rows in its q/k/v/o weights "
        "(self_attn.q_proj: 1 row (layer 1); self_attn.o_proj: 2 rows (layers 0, 2)); "
    )
    assert "use LoRA instead, or prune per row (Wanda, or a 2:4 pattern)" in message
    result = lora_baseline(model, tokenizer, pairs, ONE_STEP, rank=2)  # the same model
    assert result.train.steps == 1 and math.isfinite(result.train.final_loss)


def with_inf_mlp_weight():
    model = tiny_model("llama-3x5")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    return model


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_a_non_finite_loss_names_its_step_and_first_bad_layer_as_lofit_does(dora):
    # layer 0's MLP output turns inf/NaN: layer 1's attention (every head) is the first
    # o_proj input it reaches; LoRA/DoRA's o_proj is peft's wrapper around the nn.Linear
    model, tokenizer, pairs = with_inf_mlp_weight(), byte_tokenizer(), synthetic_pairs(8)
    with pytest.raises(NonFiniteError) as lofit:
        lofit_baseline(model, tokenizer, pairs, RestoreConfig(heads=3, train=ONE_STEP))
    with pytest.raises(NonFiniteError) as caught:
        lora_baseline(model, tokenizer, pairs, ONE_STEP, rank=2, dora=dora)
    assert str(caught.value).startswith(
        "non-finite response loss (nan) at training step 1 of 1; the trained (pruned) "
        "model's o_proj input is first non-finite at layer 1, heads [0, 1, 2, 3, 4]. "
    )
    assert str(caught.value) == str(lofit.value)
