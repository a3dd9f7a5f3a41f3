import copy

import pytest
import torch
from lcc_helpers import pruned_copy

from restorelcc.errors import DataError, UnsupportedModelError
from restorelcc.lcc import RestoreConfig, TrainConfig, restore, select_heads
from restorelcc.prune import prune_model
from restorelcc.testing import synthetic_pairs, tiny_model

STAGES = {"fingerprint", "negatives", "capture", "components", "probing", "train"}


def config(**kw):
    train = TrainConfig(epochs=2, batch_size=4, progress=False, seed=kw.pop("seed", 0))
    return RestoreConfig(
        heads=kw.pop("heads", 4), probe_pairs=16, negatives="tfidf", train=train, **kw
    )


def test_restore_end_to_end(models, tokenizer, pairs):
    dense, pruned = models
    before = copy.deepcopy(pruned.state_dict())
    restoration = restore(dense, pruned, tokenizer, pairs, config())
    assert restoration.method == "restorelcc"
    assert restoration.heads.shape == (4, 2)
    assert restoration.trainable_parameters == 4 * 2 * 16
    assert restoration.scores.shape == (3, 5)
    selected = restoration.scores[restoration.heads[:, 0], restoration.heads[:, 1]]
    assert torch.equal(selected, restoration.scores.flatten().topk(4).values)  # best first
    report = restoration.report
    assert set(report["seconds"]) == STAGES
    assert report["negatives"] == "tfidf" and report["probe_pairs"] == 16
    assert report["train"]["steps"] == 2 * 6 and report["train_pairs"] == 24
    assert all(torch.equal(v, before[k]) for k, v in pruned.state_dict().items())
    restoration.check_model(pruned)


def test_deterministic(models, tokenizer, pairs):
    dense, pruned = models
    a = restore(dense, pruned, tokenizer, pairs, config())
    b = restore(dense, pruned, tokenizer, pairs, config())
    assert torch.equal(a.heads, b.heads) and torch.equal(a.beta, b.beta) and torch.equal(a.b, b.b)


def test_random_heads_skip_probing(models, tokenizer, pairs):
    dense, pruned = models
    restoration = restore(dense, pruned, tokenizer, pairs, config(selection="random", heads=0.4))
    assert restoration.method == "restorelcc-random-heads"
    assert restoration.heads.shape == (6, 2) and restoration.scores is None
    assert set(restoration.report["seconds"]) == STAGES - {"negatives", "probing"}


def test_mismatched_models_are_refused(models, tokenizer, pairs):
    dense, pruned = models
    with pytest.raises(UnsupportedModelError, match="qwen2 model but the dense one is llama"):
        restore(dense, pruned_copy(tiny_model("qwen2-gqa")), tokenizer, pairs, config())
    with pytest.raises(UnsupportedModelError, match="attention"):
        restore(dense, pruned_copy(tiny_model("llama-gqa")), tokenizer, pairs, config())
    wider = tiny_model("llama-3x5", intermediate_size=dense.config.intermediate_size + 8)
    with pytest.raises(UnsupportedModelError, match="mlp.*must have the dense model's shapes"):
        restore(dense, wider, tokenizer, pairs, config())
    with pytest.raises(ValueError, match="same model object"):
        restore(dense, dense, tokenizer, pairs, config())


@pytest.mark.parametrize(
    "bad,match",
    [
        ([], "need at least 4"),
        (synthetic_pairs(3), "need at least 4"),
        ([("### Instruction:\nq\n\n### Response:", "\nx")] * 3 + [42], r"pairs\[3\] is not"),
        (synthetic_pairs(4) + [("", "\nx")], "empty prompt"),
        ([("p", "\nsame")] * 5, "two distinct responses"),
    ],
    ids=["empty", "too-few", "malformed", "empty-prompt", "no-contrast"],
)
def test_bad_data(models, tokenizer, bad, match):
    dense, pruned = models
    with pytest.raises(DataError, match=match):
        restore(dense, pruned, tokenizer, bad, config())


def test_bad_config():
    with pytest.raises(ValueError, match="selection"):
        RestoreConfig(selection="best")
    with pytest.raises(ValueError, match="probe_pairs"):
        RestoreConfig(probe_pairs=2)


def test_mlp_channel_pruning_restores_and_folds(models, tokenizer, pairs):
    """Structured pruning of MLP channels only keeps every head, so it can be restored."""
    dense = models[0]
    pruned = copy.deepcopy(dense)
    prune_model(pruned, "magnitude", 0.2, "heads", head_fraction=0.0)
    assert pruned.config.intermediate_size < dense.config.intermediate_size
    restoration = restore(dense, pruned, tokenizer, pairs, config())
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad(), restoration.attached(pruned):
        expected = pruned(ids).logits
    restoration.fold(pruned)
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, expected, atol=1e-5)


def test_selection_breaks_accuracy_ties_by_held_out_probe_loss(
    models, tokenizer, pairs, monkeypatch
):
    import restorelcc.lcc.pipeline as pipeline

    real_probe_heads, seen = pipeline.probe_heads, {}

    def probe_heads(*args, **kwargs):
        seen["probes"] = real_probe_heads(*args, **kwargs)
        return seen["probes"]

    monkeypatch.setattr(pipeline, "probe_heads", probe_heads)
    dense, pruned = models
    restoration = restore(dense, pruned, tokenizer, pairs, config(heads=6))
    accuracy, loss = seen["probes"]
    assert torch.equal(restoration.scores, accuracy)
    assert torch.equal(restoration.heads, select_heads(accuracy, 6, tie_break=loss))
    ties = restoration.report["score_ties_at_cut"]
    cut = restoration.report["selected_score_min"]
    assert ties == {
        "heads": int((accuracy == cut).sum()),
        "selected": int((accuracy[restoration.heads[:, 0], restoration.heads[:, 1]] == cut).sum()),
    }
    # With 16 probe pairs (10 held-out examples) accuracies tie: the loss decided something.
    assert ties["heads"] > ties["selected"]
    assert not torch.equal(restoration.heads, select_heads(accuracy, 6))
