import copy
import dataclasses

import pytest
import torch

from restorelcc.baselines import (
    block_sparsity,
    dora_baseline,
    lofit_baseline,
    lora_baseline,
    merged_sparsity,
    random_heads_restore,
    training_free,
)
from restorelcc.data import InstructionPair
from restorelcc.lcc import RestoreConfig, TrainConfig, capture_last_token
from restorelcc.lcc.tokens import encode_pair
from restorelcc.lcc.train import heldout_loss
from restorelcc.prune import prune_model
from restorelcc.testing import byte_tokenizer, tiny_model


@pytest.fixture
def setup():
    dense = tiny_model("llama-3x5")
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.5)
    pairs = [
        InstructionPair(
            f"### Instruction:\nCount to {i}.\n\n### Response:", f"\n{' '.join('x' * i)}"
        )
        for i in range(1, 13)
    ]
    return dense, pruned, byte_tokenizer(), pairs


TRAIN = TrainConfig(max_steps=4, batch_size=4, progress=False)


def test_lora_trains_only_its_adapters_with_the_same_loop(setup):
    _, pruned, tokenizer, pairs = setup
    before = copy.deepcopy(pruned.state_dict())
    result = lora_baseline(pruned, tokenizer, pairs, TRAIN, rank=2)
    # q: 60->80, k/v: 60->16, o: 80->60 per layer; LoRA adds r * (in + out) per matrix
    per_layer = 2 * ((60 + 80) + 2 * (60 + 16) + (80 + 60))
    assert result.trainable_parameters == 3 * per_layer
    assert result.train.steps == 4 and len(result.train.losses) == 4
    assert all(torch.equal(v, before[k]) for k, v in pruned.state_dict().items())  # copy
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)  # B starts at zero: training moved it
    # unmerged, the pruned weights keep their sparsity; merged, they do not
    assert block_sparsity(result.model.get_base_model()) == pytest.approx(block_sparsity(pruned))
    # merged, q/k/v/o turn dense (B @ A has no zeros); only the MLPs (3 x 128 x 60) stay sparse
    attention, mlp = 80 * 60 + 2 * 16 * 60 + 60 * 80, 3 * 128 * 60
    assert merged_sparsity(result) == pytest.approx(0.5 * mlp / (attention + mlp), abs=1e-3)


def test_lora_scores_held_out_pairs_like_restorelcc(setup):
    _, pruned, tokenizer, pairs = setup
    config = TrainConfig(max_steps=4, batch_size=4, progress=False, validation_pairs=3)
    result = lora_baseline(pruned, tokenizer, pairs, config, rank=2)
    # B starts at zero: before training the adapted model is the pruned one
    assert result.train.validation["before"] == pytest.approx(
        heldout_loss(pruned, tokenizer, pairs[-3:], batch_size=4), rel=1e-6
    )
    assert result.train.validation["after"] == pytest.approx(
        heldout_loss(result.model, tokenizer, pairs[-3:], batch_size=4), rel=1e-6
    )


@pytest.mark.parametrize("dora", [False, True])
def test_lora_runs_are_fixed_by_the_seed(setup, dora):
    _, pruned, tokenizer, pairs = setup
    runs = [
        lora_baseline(pruned, tokenizer, pairs, TRAIN, rank=2, dora=dora).train.losses
        for _ in range(2)
    ]
    torch.manual_seed(123)  # the global generator's state does not matter
    runs.append(lora_baseline(pruned, tokenizer, pairs, TRAIN, rank=2, dora=dora).train.losses)
    assert runs[0] == runs[1] == runs[2]
    reseeded = dataclasses.replace(TRAIN, seed=1)
    assert lora_baseline(pruned, tokenizer, pairs, reseeded, rank=2).train.losses != runs[0]


def test_dora_adds_magnitude_vectors(setup):
    _, pruned, tokenizer, pairs = setup
    lora = lora_baseline(pruned, tokenizer, pairs, TRAIN, rank=2)
    dora = dora_baseline(pruned, tokenizer, pairs, TRAIN, rank=2)
    assert dora.name == "dora"
    # one magnitude per output row of q, k, v, o in each layer
    assert dora.trainable_parameters - lora.trainable_parameters == 3 * (80 + 16 + 16 + 60)


def test_training_free_is_the_mean_difference_at_the_prompt_end(setup):
    dense, pruned, tokenizer, pairs = setup
    restoration = training_free(dense, pruned, tokenizer, pairs, progress=False)
    assert restoration.method == "training-free" and restoration.heads.shape == (15, 2)
    prompts = [encode_pair(tokenizer, p, 512)[0] for p in pairs]
    diff = capture_last_token(dense, prompts, progress=False) - capture_last_token(
        pruned, prompts, progress=False
    )
    torch.testing.assert_close(
        restoration.per_head(), diff.mean(0).reshape(15, 16), rtol=0, atol=1e-5
    )
    assert restoration.trainable_parameters == 0  # computed b, beta stored as zeros
    # folded, the pruned model's prompt-end head outputs move by exactly that mean
    with restoration.attached(pruned):
        shifted = capture_last_token(pruned, prompts, progress=False)
    zp = capture_last_token(pruned, prompts, progress=False)
    torch.testing.assert_close(
        (shifted - zp)[:, 0], diff.mean(0)[0].expand(len(pairs), -1, -1), rtol=0, atol=1e-5
    )


def test_random_heads_restore(setup):
    dense, pruned, tokenizer, pairs = setup
    config = RestoreConfig(heads=5, probe_pairs=8, train=TRAIN)
    restoration = random_heads_restore(dense, pruned, tokenizer, pairs, config)
    assert restoration.method == "restorelcc-random-heads"
    assert restoration.heads.shape == (5, 2) and restoration.scores is None
    assert restoration.report["train"]["steps"] == 4


def test_lofit_picks_the_heads_its_scales_grew_most_and_tunes_only_their_biases(setup):
    _, pruned, tokenizer, pairs = setup
    before = copy.deepcopy(pruned.state_dict())
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        plain = pruned(ids).logits
    restoration = lofit_baseline(pruned, tokenizer, pairs, RestoreConfig(heads=4, train=TRAIN))
    assert restoration.method == "lofit" and restoration.heads.shape == (4, 2)
    assert all(torch.equal(v, before[k]) for k, v in pruned.state_dict().items())
    # the picked heads are those of the largest scale norms (scores [L, H])
    assert restoration.scores.shape == (3, 5) and (restoration.scores > 0).all()
    flat = restoration.heads[:, 0] * 5 + restoration.heads[:, 1]
    assert set(flat.tolist()) == set(restoration.scores.flatten().topk(4).indices.tolist())
    # only biases: identity directions, beta zero, b trained
    assert torch.equal(restoration.directions, torch.eye(16).expand(4, -1, -1))
    assert not restoration.beta.any() and restoration.b.abs().min() > 0
    report = restoration.report
    assert report["selection"]["steps"] == report["train"]["steps"] == 4
    assert report["train"]["trainable_parameters"] == restoration.trainable_parameters == 4 * 16
    assert report["selection"]["trainable_parameters"] == 3 * 5 * 16
    # it folds like RestoreLCC's: the folded model equals the hooked one
    with torch.no_grad(), restoration.attached(pruned):
        hooked = pruned(ids).logits
    folded = restoration.fold(copy.deepcopy(pruned))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, hooked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, plain)


def test_lofit_starts_from_small_seeded_noise(setup):
    _, pruned, tokenizer, pairs = setup
    # one step at a negligible rate: the result is (almost) the starting point
    still = TrainConfig(max_steps=1, batch_size=4, progress=False, lr=1e-12)
    runs = [
        lofit_baseline(pruned, tokenizer, pairs, RestoreConfig(heads=4, train=still))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].b, runs[1].b) and torch.equal(runs[0].scores, runs[1].scores)
    assert 0.5e-3 < runs[0].b.std() < 2e-3 and not runs[0].beta.any()
    # heads are ranked by L2 norm (the authors' code): of 16 N(0, 1e-3) scales, about 4e-3
    # (their L1 norm, the ranking before, is about 16 * 0.8e-3 = 12.8e-3)
    assert 0.5 * 4e-3 < runs[0].scores.mean() < 2 * 4e-3
    reseeded = RestoreConfig(heads=4, train=dataclasses.replace(still, seed=1))
    assert not torch.equal(lofit_baseline(pruned, tokenizer, pairs, reseeded).b, runs[0].b)


def test_lofit_l1_penalty_shrinks_the_selection_scales(setup):
    _, pruned, tokenizer, pairs = setup
    config = RestoreConfig(heads=4, train=TRAIN)
    free = lofit_baseline(pruned, tokenizer, pairs, config, l1=0.0)
    sparse = lofit_baseline(pruned, tokenizer, pairs, config, l1=1.0)
    assert sparse.scores.sum() < 0.5 * free.scores.sum()
    with pytest.raises(ValueError, match="l1"):
        lofit_baseline(pruned, tokenizer, pairs, config, l1=-1.0)


def test_bad_rank(setup):
    _, pruned, tokenizer, pairs = setup
    with pytest.raises(ValueError, match="rank"):
        lora_baseline(pruned, tokenizer, pairs, TRAIN, rank=0)


def test_every_baseline_names_a_config_or_tokenizer_of_the_wrong_kind(setup):
    """As restore does: a dict config had failed deep in dataclasses.replace or at its
    first attribute, a None tokenizer as "'NoneType' object is not callable"."""
    from restorelcc.errors import ArgumentError

    dense, pruned, tokenizer, pairs = setup
    fields = {"heads": 2}
    calls = {
        "lora": lambda config, tok: lora_baseline(pruned, tok, pairs, config),
        "random heads": lambda config, tok: random_heads_restore(dense, pruned, tok, pairs, config),
        "lofit": lambda config, tok: lofit_baseline(pruned, tok, pairs, config),
    }
    for name, call in calls.items():
        kind = "TrainConfig" if name == "lora" else "RestoreConfig"
        with pytest.raises(ArgumentError, match=rf"^config must be a {kind} .*got a dict"):
            call(fields, tokenizer)
        with pytest.raises(ArgumentError, match="^tokenizer must be the model's"):
            call(None, None)
    with pytest.raises(ArgumentError, match="^tokenizer must be the model's"):
        training_free(dense, pruned, None, pairs)
