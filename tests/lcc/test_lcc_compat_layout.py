"""check_compatible, the first check of restore and training_free, refuses a model whose
decoder linears cannot be read (swapped for packed modules, wrapped by peft, not a model)
with the remedy, naming which of the two models it is, instead of a parameter missing from
one model."""

import copy
import re

import pytest
import torch

from restorelcc.baselines import training_free
from restorelcc.errors import NotAModelError, UnsupportedModelError
from restorelcc.hf.families import NOT_A_MODEL
from restorelcc.hf.swap import swap_attention, unswap_attention
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.compat import check_compatible
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model


@pytest.fixture
def models_24():
    """(dense, pruned): llama-gqa and a 2:4 magnitude-pruned copy, which swap_attention packs."""
    dense = tiny_model("llama-gqa")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5, "2:4", progress=False)
    return dense, pruned


def _refused_on_both_paths(dense, pruned, tokenizer, pairs, match):
    train = TrainConfig(max_steps=1, progress=False)
    config = RestoreConfig(heads=2, probe_pairs=16, negatives="tfidf", train=train)
    with pytest.raises(UnsupportedModelError, match=match):
        restore(dense, pruned, tokenizer, pairs, config)
    with pytest.raises(UnsupportedModelError, match=match):
        training_free(dense, pruned, tokenizer, pairs, progress=False)


def test_a_swapped_model_is_refused_with_unswap_attention(models_24, tokenizer, pairs):
    dense, pruned = models_24
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped)
    remedy = r"self_attn\.q_proj is swapped .*call unswap_attention\(model\) first"
    _refused_on_both_paths(dense, swapped, tokenizer, pairs, f"^the pruned model: {remedy}")
    with pytest.raises(UnsupportedModelError, match=f"^the dense model: {remedy}"):
        check_compatible(swapped, pruned)
    unswap_attention(swapped)  # the remedy named
    assert torch.equal(check_compatible(dense, swapped), check_compatible(dense, pruned))


def test_a_peft_model_is_refused_with_merge_and_unload(models_24, tokenizer, pairs):
    peft = pytest.importorskip("peft")
    dense, pruned = models_24
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    wrapped = peft.get_peft_model(copy.deepcopy(pruned), lora)
    remedy = r"PeftModel is a peft model .*model\.merge_and_unload\(\) first"
    _refused_on_both_paths(dense, wrapped, tokenizer, pairs, f"^the pruned model: {remedy}")
    # its base model still holds the adapters' wrappers: named, not a parameter missing
    with pytest.raises(
        UnsupportedModelError, match=r"^the pruned model: self_attn\.q_proj is a peft\..*Linear"
    ):
        check_compatible(dense, wrapped.get_base_model())
    merged = wrapped.merge_and_unload()  # the remedy named
    assert torch.equal(check_compatible(dense, merged), check_compatible(dense, pruned))


@pytest.mark.parametrize("role", ["dense", "pruned"])
def test_a_name_or_a_load_model_pair_is_named_with_the_argument(models_24, tokenizer, role):
    dense, pruned = models_24
    given = {"dense": dense, "pruned": pruned}
    for wrong, hint in [
        ("smollm2-135m", r"got str; 'smollm2-135m' is a name or path: load it first"),
        ((pruned, tokenizer), r"got tuple; load_model returns \(model, tokenizer\)"),
    ]:
        models = {**given, role: wrong}
        with pytest.raises(
            NotAModelError, match=f"^the {role} model: {re.escape(NOT_A_MODEL)}, {hint}"
        ):
            check_compatible(models["dense"], models["pruned"])
