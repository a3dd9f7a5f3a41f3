"""RestoreLCC on the real default model, cut to 4 layers to stay within seconds."""

import copy

import pytest
import torch

from restorelcc.data import instruction_pairs
from restorelcc.hf.families import decoder_layers
from restorelcc.lcc import RestoreConfig, TrainConfig, capture_probe_activations, restore
from restorelcc.lcc.negatives import mine_negatives
from restorelcc.lcc.reference import capture_one_by_one
from restorelcc.lcc.tokens import encode_probe_set
from restorelcc.prune import prune_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from restorelcc.assets import load_model

    dense, tokenizer = load_model("smollm2-135m")
    del decoder_layers(dense)[4:]
    dense.config.num_hidden_layers = 4
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5)
    return dense, pruned, tokenizer


def test_capture_matches_one_by_one_on_smollm2(smollm2):
    dense, pruned, tokenizer = smollm2
    pairs = instruction_pairs("squad", n=4, seed=0)
    negatives, _ = mine_negatives([p.response for p in pairs], "tfidf")
    sequences = encode_probe_set(tokenizer, pairs, negatives, max_length=96)
    ours = capture_probe_activations(dense, pruned, sequences, progress=False)
    reference = capture_one_by_one(dense, pruned, sequences, progress=False)
    assert ours.dense.shape == (4, 4, 9, 64)  # 9 query heads (3 KV heads), head_dim 64
    for field in ("dense", "pruned", "positive", "negative"):
        torch.testing.assert_close(
            getattr(ours, field), getattr(reference, field), rtol=1e-4, atol=1e-4
        )


def test_restore_and_fold_on_smollm2(smollm2):
    dense, pruned, tokenizer = smollm2
    pairs = instruction_pairs("squad", n=6, seed=1)
    train = TrainConfig(max_steps=2, batch_size=3, max_length=96, progress=False)
    config = RestoreConfig(
        heads=6, probe_pairs=6, capture_max_length=96, negatives="tfidf", train=train
    )
    restoration = restore(dense, pruned, tokenizer, pairs, config)
    assert restoration.trainable_parameters == 6 * 2 * 64
    ids = torch.tensor([tokenizer("### Instruction:\nSay hi.\n\n### Response:\nhi")["input_ids"]])
    with torch.no_grad():
        with restoration.attached(pruned):
            hooked = pruned(ids).logits
        folded = restoration.fold(copy.deepcopy(pruned))(ids).logits
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-4)
