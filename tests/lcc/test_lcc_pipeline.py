import copy
import json
import warnings

import numpy as np
import pytest
import torch
from lcc_helpers import pruned_copy

from restorelcc.errors import DataError, RestoreLCCError, UnsupportedModelError
from restorelcc.lcc import (
    AdapterMismatchError,
    RestoreConfig,
    TrainConfig,
    plan_heads,
    restore,
    select_heads,
    train_heads,
)
from restorelcc.lcc.tokens import encode_pair, encode_prompt
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


def test_plan_then_train_is_restore_and_holds_no_model(models, tokenizer, pairs):
    """The two steps the CLI takes to let the dense model go before training."""
    import gc
    import weakref

    dense, pruned = models
    whole = restore(dense, pruned, tokenizer, pairs, config())
    scratch = copy.deepcopy(dense)
    plan = plan_heads(scratch, pruned, tokenizer, iter(pairs), config())  # any iterable
    gone = weakref.ref(scratch)
    del scratch
    gc.collect()
    assert gone() is None  # the plan does not hold the dense model
    report, seconds = copy.deepcopy(plan.report), dict(plan.seconds)
    first, second = train_heads(plan, pruned, tokenizer), train_heads(plan, pruned, tokenizer)
    assert plan.report == report and plan.seconds == seconds  # a plan trains again the same
    for steps in (first, second):
        assert torch.equal(steps.heads, whole.heads) and torch.equal(steps.b, whole.b)
        assert torch.equal(steps.beta, whole.beta) and torch.equal(steps.scores, whole.scores)
        assert set(steps.report["seconds"]) == STAGES
        assert steps.report["train"]["final_loss"] == whole.report["train"]["final_loss"]
    with pytest.raises(AdapterMismatchError, match="the plan is for .* the model has"):
        train_heads(plan, tiny_model("qwen2-gqa"), tokenizer)
    with pytest.raises(
        AdapterMismatchError, match="the plan was made for a different pruned model"
    ):
        train_heads(plan, dense, tokenizer)  # same heads, other weights


def test_random_heads_skip_probing(models, tokenizer, pairs):
    dense, pruned = models
    restoration = restore(dense, pruned, tokenizer, pairs, config(selection="random", heads=0.4))
    assert restoration.method == "restorelcc-random-heads"
    assert restoration.heads.shape == (6, 2) and restoration.scores is None
    assert set(restoration.report["seconds"]) == STAGES - {"negatives", "probing"}


def test_probes_at_chance_are_warned_of_with_the_best_score(models, tokenizer, pairs):
    """Nothing told the user that probing had found nothing. 16 probe pairs hold 5 out (10
    examples); on the tiny random model no head beats 5 of 10, which the best of 15 heads
    guessing at random reaches more than 99.9% of the time. Random selection scores no
    heads."""
    dense, pruned = models
    message = (
        "probing found no head above chance: the best held-out probe accuracy, 0.500 (5 of "
        "10 held-out examples), is reached by the best of 15 heads guessing at random 99.9% "
        "of the time, so the heads selected may be no better than random ones; more probe "
        "pairs may tell heads apart (16 given; the probes are scored on 5 of them, a positive "
        "and a negative example each)"
    )
    with pytest.warns(UserWarning) as caught:
        plan = plan_heads(dense, pruned, tokenizer, pairs, config())
    assert [str(w.message) for w in caught] == [message]
    assert float(plan.scores.max()) == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_heads(dense, pruned, tokenizer, pairs, config(selection="random"))


class CaptureSeen(Exception):
    """Raised by a spied capture with the prompts it was given: the run stops there."""


def test_every_path_captures_zd_and_zp_at_the_same_prompts(models, tokenizer, pairs, monkeypatch):
    import restorelcc.baselines as baselines
    import restorelcc.lcc.pipeline as pipeline

    def seen(prompts):
        raise CaptureSeen(prompts)

    monkeypatch.setattr(
        pipeline, "capture_probe_activations", lambda d, p, seqs, *a: seen(seqs.prompts)
    )
    monkeypatch.setattr(pipeline, "capture_last_token", lambda model, prompts, *a: seen(prompts))
    monkeypatch.setattr(baselines, "capture_last_token", lambda model, prompts, *a: seen(prompts))
    dense, pruned = models
    captured = []
    for selection in ("probe", "random"):
        with pytest.raises(CaptureSeen) as stop:
            restore(
                dense, pruned, tokenizer, pairs, config(selection=selection, capture_max_length=48)
            )
        captured.append(stop.value.args[0])
    with pytest.raises(CaptureSeen) as stop:
        baselines.training_free(dense, pruned, tokenizer, pairs[:16], max_length=48, progress=False)
    captured.append(stop.value.args[0])
    want = [encode_prompt(tokenizer, p, 48) for p in pairs[:16]]
    full = [encode_pair(tokenizer, p, 10_000)[0] for p in pairs[:16]]
    assert all(len(w) < len(f) for w, f in zip(want, full, strict=True))  # every one was cut
    assert captured == [want, want, want]


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


def test_an_unpruned_copy_is_refused_in_any_dtype(models):
    from restorelcc.lcc.compat import check_compatible

    dense, pruned = models
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        with pytest.raises(UnsupportedModelError, match="nothing was pruned"):
            check_compatible(dense, copy.deepcopy(dense).to(dtype))
    with pytest.raises(UnsupportedModelError, match="nothing was pruned"):
        check_compatible(copy.deepcopy(dense).to(torch.bfloat16), copy.deepcopy(dense))
    identity = torch.arange(5).expand(3, -1)
    assert torch.equal(check_compatible(dense, copy.deepcopy(pruned).to(torch.bfloat16)), identity)
    assert torch.equal(check_compatible(dense.to(torch.float16), pruned), identity)


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
    with pytest.raises(TypeError, match="train must be a TrainConfig, got dict"):
        RestoreConfig(train={"lr": 1e-3})


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("probe_pairs", 8.0, "probe_pairs must be a positive integer, got 8.0"),
        ("components_k", 0, "components_k must be a positive integer, got 0"),
        ("components_k", True, "components_k must be a positive integer, got True"),
        ("probe_epochs", 0, "probe_epochs must be a positive integer, got 0"),
        ("probe_epochs", 2.5, "probe_epochs must be a positive integer, got 2.5"),
        ("probe_lr", 0.0, "probe_lr must be a positive finite number, got 0.0"),
        ("probe_lr", -1.0, "probe_lr must be a positive finite number"),
        ("probe_lr", float("nan"), "probe_lr must be a positive finite number, got nan"),
        ("probe_test_fraction", 0.0, r"probe_test_fraction must be between 0 and 1 .*got 0.0"),
        ("probe_test_fraction", 1.5, r"probe_test_fraction must be between 0 and 1 .*got 1.5"),
        ("probe_test_fraction", 1, r"probe_test_fraction must be between 0 and 1 .*got 1$"),
        ("capture_max_length", 1, "capture_max_length must be at least 2, got 1"),
        ("capture_max_length", 64.0, "capture_max_length must be a positive integer"),
        ("capture_batch_tokens", 0, "capture_batch_tokens must be a positive integer, got 0"),
        ("init_std", float("nan"), "init_std must be a finite number >= 0, got nan"),
    ],
)
def test_bad_config_values_are_refused_when_the_config_is_made(field, value, match):
    """So they fail before any capture, not minutes later in probing or in the SVD."""
    with pytest.raises(ValueError, match=match):
        RestoreConfig(**{field: value})
    good = {"probe_pairs": 8, "probe_lr": 1e-3, "probe_test_fraction": 0.5, "init_std": 0.0}
    RestoreConfig(**{field: good.get(field, 2)})


NOT_A_COUNT = r"heads must be a count \(an integer >= 1\) or a fraction in \(0, 1\], got "


@pytest.mark.parametrize(
    "heads,match",
    [
        (0, r"heads must be at least 1, got 0$"),
        (-3, r"heads must be at least 1, got -3$"),
        (np.int64(0), r"heads must be at least 1, got 0$"),
        (-0.5, NOT_A_COUNT + "-0.5$"),
        (0.0, NOT_A_COUNT + "0.0$"),
        (1.5, NOT_A_COUNT + "1.5$"),
        (float("nan"), NOT_A_COUNT + "nan$"),
        ("4", NOT_A_COUNT + "'4'$"),
        (True, r"heads must be a count or a fraction, got True$"),
    ],
)
def test_heads_of_the_wrong_kind_or_sign_are_refused_when_the_config_is_made(heads, match):
    """They had been taken (heads=0, -0.5, True) and failed only once the model was known."""
    with pytest.raises(RestoreLCCError, match=f"^{match}"):
        RestoreConfig(heads=heads)


def test_a_numpy_heads_count_is_a_count(models, tokenizer, pairs):
    """np.int64(3) had been refused at restore as 'must be a count ..., got np.int64(3)'."""
    made = RestoreConfig(heads=np.int64(3))
    assert made.heads == 3 and type(made.heads) is int
    assert json.loads(json.dumps(made.to_dict()))["heads"] == 3  # stored in the adapter
    assert type(RestoreConfig(heads=np.float64(0.5)).heads) is float
    plan = plan_heads(*models, tokenizer, pairs, config(heads=np.int64(3), selection="random"))
    assert plan.heads.shape == (3, 2)


def test_a_count_over_the_models_heads_is_refused_before_capture(models, tokenizer, pairs):
    dense, pruned = models
    with pytest.raises(RestoreLCCError, match=r"^heads must be between 1 and 15 \(all heads\)"):
        restore(dense, pruned, tokenizer, pairs, config(heads=16))


def test_a_config_or_tokenizer_of_the_wrong_kind_is_named(models, tokenizer, pairs):
    """A dict config had failed as an AttributeError, a None tokenizer as "'NoneType'
    object is not callable"."""
    dense, pruned = models
    with pytest.raises(
        RestoreLCCError, match=r"^config must be a RestoreConfig .*got a dict: RestoreConfig\(\*\*"
    ):
        restore(dense, pruned, tokenizer, pairs, {"heads": 2})
    with pytest.raises(
        RestoreLCCError, match="^config must be a RestoreConfig .*got a TrainConfig$"
    ):
        restore(dense, pruned, tokenizer, pairs, TrainConfig())
    no_tokenizer = r"^tokenizer must be the model's Hugging Face tokenizer .*got None$"
    with pytest.raises(RestoreLCCError, match=no_tokenizer):
        restore(dense, pruned, None, pairs, config())
    plan = plan_heads(dense, pruned, tokenizer, pairs, config(selection="random"))
    with pytest.raises(RestoreLCCError, match=no_tokenizer):
        train_heads(plan, pruned, None)


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


def test_components_k_beyond_head_dim_is_refused_before_capture(
    models, tokenizer, pairs, monkeypatch
):
    """A head of head_dim 16 has at most 16 singular directions: components_k 17 used to
    run with 16 while the config recorded 17."""
    import restorelcc.lcc.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("restore went on past its checks")

    for stage in ("model_fingerprint", "mine_negatives", "capture_probe_activations"):
        monkeypatch.setattr(pipeline, stage, never)
    dense, pruned = models
    with pytest.raises(ValueError, match=r"components_k must be at most the head_dim, 16: .*17"):
        restore(dense, pruned, tokenizer, pairs, config(components_k=17))
    with pytest.raises(AssertionError, match="went on past its checks"):  # 16 is allowed
        restore(dense, pruned, tokenizer, pairs, config(components_k=16))
