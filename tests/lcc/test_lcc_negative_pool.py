"""Where probing's negatives come from: the most similar other response among all the
training pairs (as the paper mines its 2,000), not only among the probed ones, and never
a held-out validation pair."""

from dataclasses import replace

import pytest

import restorelcc.lcc.pipeline as pipeline
from restorelcc.data import InstructionPair
from restorelcc.lcc import RestoreConfig, TrainConfig, plan_heads
from restorelcc.lcc.tokens import encode_probe_set


class Captured(Exception):
    """Raised by the spied capture with the sequences it was given: the run stops there."""


@pytest.mark.parametrize("validation_pairs", [0, 2])
def test_a_probe_pairs_negative_may_be_any_training_pair(
    models, tokenizer, pairs, monkeypatch, validation_pairs
):
    probed = 16
    twin = "\nquartz quartz zephyr zephyr"  # pair 0's nearest response is pair 20's only
    pairs[0] = replace(pairs[0], response=twin + " alpha")
    pairs[20] = replace(pairs[20], response=twin)
    if validation_pairs:  # an even nearer one, held out: never a negative
        pairs.append(InstructionPair(pairs[0].prompt, twin + " alpha beta"))
        pairs.append(InstructionPair(pairs[1].prompt, "\nheld out"))

    def stop(dense, pruned, sequences, *args):
        raise Captured(sequences)

    monkeypatch.setattr(pipeline, "capture_probe_activations", stop)
    train = TrainConfig(validation_pairs=validation_pairs, progress=False)
    config = RestoreConfig(heads=4, probe_pairs=probed, negatives="tfidf", train=train)
    with pytest.raises(Captured) as seen:
        plan_heads(*models, tokenizer, pairs, config)
    sequences = seen.value.args[0]
    assert len(sequences.prompts) == probed
    length = config.capture_max_length
    want = encode_probe_set(tokenizer, [pairs[0], pairs[20]], [1, 0], length)
    assert sequences.negatives[0] == want.negatives[0]
