"""Every supported family through the whole path on a tiny random model: prune, restore,
fold, export as a plain checkpoint, structured pruning and reload."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.families import FAMILIES, family_of
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.tokens import encode_pair
from restorelcc.lcc.train import collate, response_loss
from restorelcc.prune import prune_model
from restorelcc.testing import TINY_SHAPES, byte_tokenizer, synthetic_pairs, tiny_model

# one tiny model per family: the first TINY_SHAPES entry of its model_type
TINY_OF_FAMILY = {}
for _name, (_model_type, *_) in TINY_SHAPES.items():
    TINY_OF_FAMILY.setdefault(_model_type, _name)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_every_family_has_a_tiny_model():
    assert sorted(TINY_OF_FAMILY) == sorted(FAMILIES)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_prune_restore_fold_export(model_type, tmp_path):
    dense = tiny_model(TINY_OF_FAMILY[model_type])
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "wanda", 0.5, "2:4", calibration=ids, progress=False)
    train = TrainConfig(epochs=1, batch_size=4, progress=False)
    config = RestoreConfig(heads=3, probe_pairs=16, negatives="tfidf", train=train)
    restoration = restore(dense, pruned, byte_tokenizer(), synthetic_pairs(), config)

    x = ids[:2, :11]
    plain = _logits(pruned, x)
    with restoration.attached(pruned):
        attached = _logits(pruned, x)
    assert (attached - plain).abs().max() > 1e-3  # the compensation reached the heads
    if family_of(pruned).o_proj_bias_flag is None:
        with pytest.raises(UnsupportedModelError, match="o_proj bias"):
            restoration.export_merged(pruned, tmp_path / "merged")
    else:
        restoration.export_merged(pruned, tmp_path / "merged")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(_logits(merged, x), attached, rtol=1e-5, atol=1e-5)
    folded = restoration.fold(pruned)
    torch.testing.assert_close(_logits(folded, x), attached, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_structured_pruning_reloads(model_type, tmp_path):
    overrides = {"use_qk_norm": True} if model_type == "cohere" else {}
    model = tiny_model(TINY_OF_FAMILY[model_type], **overrides)
    kv_heads = model.config.num_key_value_heads
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    prune_model(model, "wanda", 0.3, "heads", calibration=ids, head_fraction=0.5, progress=False)
    assert model.config.num_key_value_heads == kv_heads - kv_heads // 2
    x = ids[:2, :11]
    in_memory = _logits(model, x)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, x), in_memory, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_training_loss_is_the_models_own_loss(model_type):
    # Granite divides its logits by logits_scaling and Cohere multiplies them by
    # logit_scale (0.0625 by default) after the LM head; the training loss must too.
    overrides = {"logits_scaling": 8.0} if model_type == "granite" else {}
    model = tiny_model(TINY_OF_FAMILY[model_type], **overrides)
    tokenizer = byte_tokenizer()
    encoded = [encode_pair(tokenizer, p, 64, eos=True) for p in synthetic_pairs(3)]
    ids, mask, positions, targets = collate(encoded, tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for row, (prompt, response) in enumerate(encoded):
        labels[row, len(prompt) : len(prompt) + len(response)] = torch.tensor(response)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = response_loss(model, ids, mask, positions, targets)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
