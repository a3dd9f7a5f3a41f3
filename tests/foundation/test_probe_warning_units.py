"""The warning that probing found no head above chance counts the probe pairs given and
the held-out examples the probes are scored on, each in its own unit, and says how they
relate: each held-out pair gives a positive and a negative example. (It had said "10
held-out examples" and then "5 of them held out": pairs and examples alike "held out".)"""

import re

import pytest
import torch

from restorelcc.lcc.probing import held_out_pairs, warn_if_at_chance


def _warning(accuracy: torch.Tensor, pairs: int, **options) -> str:
    with pytest.warns(UserWarning) as caught:
        warn_if_at_chance(accuracy, pairs, **options)
    assert len(caught) == 1
    return str(caught[0].message)


def test_the_warning_names_pairs_and_examples_apart():
    """16 pairs hold 5 out: 10 examples; no head of 15 beats 5 of them."""
    assert _warning(torch.full((3, 5), 0.5), 16) == (
        "probing found no head above chance: the best held-out probe accuracy, 0.500 (5 of "
        "10 held-out examples), is reached by the best of 15 heads guessing at random 99.9% "
        "of the time, so the heads selected may be no better than random ones; more probe "
        "pairs may tell heads apart (16 given; the probes are scored on 5 of them, a positive "
        "and a negative example each)"
    )


@pytest.mark.parametrize("pairs, fraction", [(7, 0.3), (40, 0.5), (3, 0.34)])
def test_the_examples_are_twice_the_pairs_scored(pairs, fraction):
    message = _warning(torch.full((2, 2), 0.5), pairs, test_fraction=fraction)
    examples = int(re.search(r"of (\d+) held-out examples", message)[1])
    scored = int(re.search(r"scored on (\d+) of them, a positive and a negative", message)[1])
    assert scored == held_out_pairs(pairs, fraction) and examples == 2 * scored
    assert f"({pairs} given;" in message
    assert "held out to score" not in message  # pairs are no longer "held out" too
