"""Settings that changed the method's meaning silently or failed only after the captures:
``probe_standardize="false"`` switched standardisation on, a non-integer ``probe_seed``
failed in torch after capture, a probe split with an empty side was found only after
capture, and ``components_k`` beyond the probe pairs was capped with no word."""

import pytest

import restorelcc.lcc.pipeline as pipeline
from restorelcc.errors import DataError
from restorelcc.lcc import RestoreConfig, TrainConfig, plan_heads

TRAIN = TrainConfig(max_steps=1, batch_size=4, progress=False)


@pytest.mark.parametrize("value", ["false", 1, 0, None])
def test_probe_standardize_must_be_a_bool(value):
    with pytest.raises(ValueError, match=f"probe_standardize must be True or False, got {value!r}"):
        RestoreConfig(probe_standardize=value)


@pytest.mark.parametrize("value", [42.5, "42", True])
def test_probe_seed_must_be_an_integer(value):
    with pytest.raises(ValueError, match=f"probe_seed must be an integer, got {value!r}"):
        RestoreConfig(probe_seed=value)


@pytest.fixture
def no_capture(monkeypatch):
    """Fail any capture: the checks must come before it."""

    def refused(*args, **kwargs):
        raise AssertionError("captured before the settings were checked")

    for name in ("capture_probe_activations", "capture_last_token", "mine_negatives"):
        monkeypatch.setattr(pipeline, name, refused)


@pytest.mark.parametrize("fraction", [0.8, 0.9])
def test_a_probe_split_with_an_empty_side_is_refused_before_any_capture(
    models, tokenizer, pairs, no_capture, fraction
):
    dense, pruned = models
    config = RestoreConfig(
        heads=2, probe_pairs=4, probe_test_fraction=fraction, negatives="tfidf", train=TRAIN
    )
    with pytest.raises(DataError, match=r"4 probing pairs cannot be split .*probe_test_fraction"):
        plan_heads(dense, pruned, tokenizer, pairs, config)


def test_components_k_past_the_probe_pairs_is_warned_of_and_reported(models, tokenizer, pairs):
    dense, pruned = models
    config = RestoreConfig(heads=2, probe_pairs=6, components_k=10, negatives="tfidf", train=TRAIN)
    with pytest.warns(UserWarning, match="components_k 10 exceeds the 6 probe pairs: the probing"):
        plan = plan_heads(dense, pruned, tokenizer, pairs, config)
    assert plan.report["components_k_used"] == 6


def test_components_k_used_is_reported_as_asked_where_it_fits(models, tokenizer, pairs):
    dense, pruned = models
    config = RestoreConfig(heads=2, probe_pairs=8, components_k=3, negatives="tfidf", train=TRAIN)
    plan = plan_heads(dense, pruned, tokenizer, pairs, config)
    assert plan.report["components_k_used"] == 3
