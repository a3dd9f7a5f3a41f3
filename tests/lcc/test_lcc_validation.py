"""Held-out pairs: kept out of training and probing, scored before and after training."""

import copy
import dataclasses

import pytest
import torch
from lcc_helpers import compensation, pruned_copy, train

from restorelcc.errors import DataError
from restorelcc.lcc import RestoreConfig, TrainConfig, restore
from restorelcc.lcc.tokens import encode_pair
from restorelcc.lcc.train import heldout_loss
from restorelcc.testing import synthetic_pairs, tiny_model


def test_split_holds_out_the_last_pairs():
    pairs = synthetic_pairs(10)
    assert TrainConfig(validation_pairs=3).split(pairs) == (pairs[:7], pairs[7:])
    assert TrainConfig().split(pairs) == (pairs, [])
    with pytest.raises(DataError, match="validation_pairs 10 leaves no training pair out of 10"):
        TrainConfig(validation_pairs=10).split(pairs)
    with pytest.raises(ValueError, match="validation_pairs must be an integer >= 0"):
        TrainConfig(validation_pairs=-1)


def test_heldout_loss_is_token_weighted_over_batches(tokenizer):
    model = tiny_model("llama-3x5")
    pairs = synthetic_pairs(5)
    one_batch = heldout_loss(model, tokenizer, pairs, batch_size=5)
    assert heldout_loss(model, tokenizer, pairs, batch_size=2) == pytest.approx(one_batch, 1e-6)
    per_pair = [heldout_loss(model, tokenizer, [p]) for p in pairs]
    tokens = [len(encode_pair(tokenizer, p, 500, eos=True)[1]) for p in pairs]
    weighted = sum(loss * n for loss, n in zip(per_pair, tokens, strict=True)) / sum(tokens)
    assert one_batch == pytest.approx(weighted, rel=1e-5)


def test_training_scores_the_held_out_pairs_it_never_sees(tokenizer):
    model = tiny_model("llama-3x5")
    pairs = synthetic_pairs(12)
    comp = compensation(model, std=0.0)
    with torch.no_grad(), comp.attached(model):
        before = heldout_loss(model, tokenizer, pairs[8:], batch_size=4)
    result = train(model, tokenizer, pairs, comp, epochs=2, validation_pairs=4, lr=1e-2)
    trained_tokens = sum(len(encode_pair(tokenizer, p, 500, eos=True)[1]) for p in pairs[:8])
    assert result.steps == 4 and result.response_tokens == 2 * trained_tokens
    with torch.no_grad(), comp.attached(model):
        after = heldout_loss(model, tokenizer, pairs[8:], batch_size=4)
    assert result.validation == {"pairs": 4, "before": before, "after": after}
    assert after != before
    assert result.to_dict()["validation"] == result.validation


def test_restore_keeps_held_out_pairs_out_of_probing(tokenizer):
    dense = tiny_model("llama-3x5")
    pruned = pruned_copy(dense)
    pairs = synthetic_pairs(24)
    train_config = TrainConfig(epochs=1, batch_size=4, progress=False, validation_pairs=8)
    config = RestoreConfig(heads=3, probe_pairs=100, negatives="tfidf", train=train_config)
    restoration = restore(dense, copy.deepcopy(pruned), tokenizer, pairs, config)
    report = restoration.report
    assert report["probe_pairs"] == 16 and report["train_pairs"] == 16
    assert report["train"]["steps"] == 4 and report["train"]["validation"]["pairs"] == 8
    # the same run on the first 16 pairs alone gives the same heads and coefficients
    alone = dataclasses.replace(config, train=dataclasses.replace(train_config, validation_pairs=0))
    same = restore(dense, pruned, tokenizer, pairs[:16], alone)
    assert torch.equal(same.heads, restoration.heads)
    assert torch.equal(same.beta, restoration.beta) and torch.equal(same.b, restoration.b)


def test_too_few_probe_pairs_after_the_held_out_ones_names_validation_pairs(tokenizer):
    """The user gave 8 pairs; "need at least 4, got 3" had pointed the wrong way."""
    dense = tiny_model("llama-3x5")
    config = RestoreConfig(heads=2, train=TrainConfig(validation_pairs=5, progress=False))
    with pytest.raises(DataError, match="after validation_pairs=5, got 3"):
        restore(dense, pruned_copy(dense), tokenizer, synthetic_pairs(8), config)
