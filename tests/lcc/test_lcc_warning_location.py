"""The probes-at-chance warning names the user's call, whichever entry point it came through
(``plan_heads`` directly, or ``restore``, which calls it), not a line of the package."""

import inspect
import warnings

import pytest

from restorelcc.lcc import RestoreConfig, TrainConfig, plan_heads, restore

# on the tiny random model, 16 probe pairs find no head above chance (test_lcc_pipeline.py)
CONFIG = RestoreConfig(
    heads=4,
    probe_pairs=16,
    negatives="tfidf",
    train=TrainConfig(epochs=1, batch_size=4, progress=False),
)


@pytest.mark.parametrize("entry_point", [plan_heads, restore], ids=lambda f: f.__name__)
def test_the_at_chance_warning_points_at_the_callers_line(entry_point, models, tokenizer, pairs):
    dense, pruned = models
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        entry_point(dense, pruned, tokenizer, pairs, CONFIG)
    at_chance = [w for w in caught if "no head above chance" in str(w.message)]
    assert len(at_chance) == 1, [str(w.message) for w in caught]
    assert (at_chance[0].filename, at_chance[0].lineno) == (__file__, line)
