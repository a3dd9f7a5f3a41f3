import copy

import pytest
import torch
from lcc_helpers import pruned_copy, trained_like

from restorelcc.hf.families import decoder_layers, head_geometry, o_proj_of
from restorelcc.lcc.fold import fold_offsets
from restorelcc.testing import tiny_model


@pytest.mark.parametrize("name", ["llama-3x5", "qwen2-gqa", "mistral-gqa"])
def test_folded_logits_equal_the_hooked_training_time_model(name):
    pruned = pruned_copy(tiny_model(name))
    restoration = trained_like(pruned)
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = pruned(ids).logits
        with restoration.attached(pruned):
            hooked = pruned(ids).logits
        folded_model = restoration.fold(copy.deepcopy(pruned))
        folded = folded_model(ids).logits
    assert (hooked - plain).abs().max() > 1e-2  # the restoration changes the output
    torch.testing.assert_close(folded, hooked, rtol=1e-5, atol=1e-5)


def test_weights_are_bit_identical_and_as_sparse():
    pruned = pruned_copy(tiny_model("llama-3x5"))
    weights = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    trained_like(pruned).fold(pruned)
    for name, before in weights.items():
        after = dict(pruned.named_parameters())[name]
        assert torch.equal(after.view(torch.int32), before.view(torch.int32)), name
    biases = [o_proj_of(pruned, i).bias for i in range(len(decoder_layers(pruned)))]
    assert all(b is not None and b.shape == (60,) for b in biases)


def test_fold_adds_to_an_existing_bias_in_fp32():
    model = tiny_model("llama-3x5")
    g = head_geometry(model)
    o_proj = o_proj_of(model, 0)
    o_proj.bias = torch.nn.Parameter(torch.randn(g.hidden_size))
    bias = o_proj.bias.detach().clone()
    offsets = torch.zeros(g.layers, g.heads * g.head_dim)
    offsets[0] = torch.randn(g.heads * g.head_dim)
    fold_offsets(model, offsets)
    want = (bias.double() + o_proj.weight.double() @ offsets[0].double()).float()
    torch.testing.assert_close(o_proj.bias.detach(), want, rtol=1e-6, atol=1e-6)
    assert (o_proj_of(model, 1).bias == 0).all()
    with pytest.raises(ValueError, match="offsets must be"):
        fold_offsets(model, offsets[:2])


def test_bf16_model_folds_in_fp32_and_stores_in_bf16():
    pruned = pruned_copy(tiny_model("llama-3x5")).to(torch.bfloat16)
    restoration = trained_like(pruned)
    restoration.fold(pruned)
    o_proj = o_proj_of(pruned, 1)
    assert o_proj.bias.dtype == torch.bfloat16
    want = o_proj.weight.float() @ restoration.layer_offsets()[1]
    torch.testing.assert_close(o_proj.bias.float(), want.bfloat16().float())


def test_fp64_model_folds_exactly():
    pruned = pruned_copy(tiny_model("llama-3x5")).double()
    restoration = trained_like(pruned)
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with restoration.attached(pruned):
            hooked = pruned(ids).logits
        with restoration.folded(pruned):
            folded = pruned(ids).logits
    assert folded.dtype == torch.float64
    torch.testing.assert_close(folded, hooked, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("existing_bias", [False, True])
def test_folded_is_fold_for_the_duration_and_gives_the_biases_back(existing_bias):
    pruned = pruned_copy(tiny_model("llama-3x5"))
    if existing_bias:
        o_proj_of(pruned, 1).bias = torch.nn.Parameter(torch.randn(60))
    before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    restoration = trained_like(pruned)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = restoration.fold(copy.deepcopy(pruned))(ids).logits
        with restoration.folded(pruned) as model:
            assert model is pruned
            assert torch.equal(model(ids).logits, want)
        with pytest.raises(KeyError), restoration.folded(pruned):
            raise KeyError("the exit gives the biases back on an error too")
    after = dict(pruned.named_parameters())
    assert set(after) == set(before)  # no bias created where there was none
    for name, value in before.items():
        assert torch.equal(after[name], value), name
