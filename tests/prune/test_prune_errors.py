"""Bad input: clear errors raised before any weight changes."""

import copy
import re

import pytest
import torch

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import decoder_layers
from restorelcc.prune import PruneArgumentError, prune_model
from restorelcc.testing import tiny_model

TOKENS = torch.randint(0, 259, (4, 16))


def assert_unchanged(model, before):
    for (name, a), (_, b) in zip(
        model.state_dict().items(), before.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=0.0), "strictly between 0 and 1"),
        (dict(sparsity=1.0), "strictly between 0 and 1"),
        (dict(sparsity=-0.2), "strictly between 0 and 1"),
        (dict(sparsity=float("nan")), "strictly between 0 and 1"),
        (dict(sparsity="half"), "must be a number"),
        (dict(method="obs"), "unknown pruning method"),
        (dict(pattern="5:4"), "unknown sparsity pattern"),
        (dict(pattern="rows"), "unknown sparsity pattern"),
        (dict(pattern="2:4", sparsity=0.6), "pass sparsity=0.5"),
        (dict(pattern="1:4", sparsity=0.5), "pass sparsity=0.75"),
        (dict(pattern="4:8", sparsity=0.5), "divisible by 8, but layers.0.self_attn.q_proj has 60"),
        (dict(method="wanda"), "needs calibration tokens"),
        (dict(method="sparsegpt", calibration=TOKENS.float()), "token ids"),
        (dict(method="wanda", calibration=TOKENS[0]), "2-D token tensor"),
        (dict(method="wanda", calibration=TOKENS + 300), "outside the vocabulary"),
        (dict(method="sparsegpt", pattern="heads"), "supports methods"),
        (dict(pattern="heads", head_fraction=1.0), "head_fraction must lie in"),
        (dict(head_fraction=0.5), "only applies to the 'heads' pattern"),
        (dict(pattern="heads", head_fraction="x"), "head_fraction must be a number, got 'x'"),
        (dict(pattern="heads", head_fraction=True), "head_fraction must be a number"),
        (dict(chunk_size=0), "chunk_size must be a positive integer, got 0"),
        (dict(chunk_size=2.5), "chunk_size must be a positive integer, got 2.5"),
        (dict(chunk_size=True), "chunk_size must be a positive integer, got True"),
        (dict(block_size=0), "block_size must be a positive integer"),
        (dict(method="sparsegpt", calibration=TOKENS, dampening=-1.0), "dampening must be"),
        (dict(method="sparsegpt", calibration=TOKENS, dampening=0.0), "dampening must be"),
        (dict(method="sparsegpt", calibration=TOKENS, dampening=float("inf")), "finite and > 0"),
        (dict(method="sparsegpt", calibration=TOKENS, dampening="x"), "dampening must be a num"),
        (
            dict(method="sparsegpt", calibration=TOKENS, pattern="2:4", block_size=6),
            "block_size 6 must be a multiple of M=4",
        ),
        (dict(calibration=TOKENS), "'magnitude' uses no calibration data"),
        (dict(pattern="heads", calibration=TOKENS), "'magnitude' uses no calibration data"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments_raise_and_leave_model_untouched(kwargs, message):
    model = tiny_model("llama-3x5")  # hidden 60: divisible by 4, not by 8
    before = copy.deepcopy(model)
    forwards = []  # refused before any calibration pass
    decoder_layers(model)[0].register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(PruneArgumentError, match=re.escape(message)):
        prune_model(model, **{"method": "magnitude", **kwargs})
    assert_unchanged(model, before)
    assert not forwards


def test_extra_positional_block_arguments_are_refused():
    # a model that hands its blocks more than the hidden states positionally cannot be
    # replayed block by block: refused before anything changes, not silently dropped
    model = tiny_model("llama-gqa")
    before = copy.deepcopy(model)

    def positional_rotary(module, args, kwargs):
        return (*args, kwargs.pop("position_embeddings")), kwargs

    decoder_layers(model)[1].register_forward_pre_hook(positional_rotary, with_kwargs=True)
    with pytest.raises(UnsupportedModelError, match="layers.1 was called with 2 positional"):
        prune_model(model, "wanda", 0.5, calibration=TOKENS, progress=False)
    assert_unchanged(model, before)


def test_prune_argument_error_is_a_value_error():
    with pytest.raises(ValueError):
        prune_model(tiny_model("llama-mha"), sparsity=2.0)


def test_unsupported_family():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        prune_model(model, "magnitude", 0.5)


def test_missing_module_is_reported():
    model = tiny_model("llama-mha")
    del model.model.layers[1].mlp.up_proj
    with pytest.raises(UnsupportedModelError, match="mlp.up_proj"):
        prune_model(model, "magnitude", 0.5)
    assert (model.model.layers[0].mlp.gate_proj.weight != 0).all()
