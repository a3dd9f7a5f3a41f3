"""Pairs given directly (not through the data loaders, which drop exact repeats) may
repeat: a repeat can sit on both sides of the held-out and probe splits, scoring a pair
the model or the probes trained on. Training (and so RestoreLCC, LoRA, LoFiT) warns of
them; it had said nothing."""

import warnings

import pytest

from restorelcc.data import InstructionPair
from restorelcc.lcc.train import TrainConfig, encode_training_pairs
from restorelcc.testing import byte_tokenizer, synthetic_pairs

CONFIG = TrainConfig(max_steps=1, batch_size=4, validation_pairs=4, progress=False)


def test_repeated_pairs_are_warned_of_and_kept():
    pairs = synthetic_pairs(12)
    given = [*pairs, InstructionPair(pairs[0].prompt, pairs[0].response), pairs[3]]
    with pytest.warns(UserWarning, match="2 of 14 training pairs repeat an earlier pair"):
        training = encode_training_pairs(byte_tokenizer(), given, CONFIG)
    assert len(training.encoded) + len(training.held_out) == 14  # the caller's list, as given


def test_distinct_pairs_are_not_warned_of():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_training_pairs(byte_tokenizer(), synthetic_pairs(12), CONFIG)
