import math
import re
import warnings

import numpy as np
import pytest
import torch

from restorelcc.errors import DataError, RestoreLCCError
from restorelcc.hf.families import HeadGeometry
from restorelcc.lcc.capture import ProbeActivations
from restorelcc.lcc.probing import (
    chance_of_best,
    head_count,
    probe_features,
    probe_heads,
    probe_init,
    random_heads,
    score_heads,
    select_heads,
    split_pairs,
    train_probes,
    warn_if_at_chance,
)
from restorelcc.lcc.reference import _probe_one_head, components_and_probes_per_head

GEOMETRY = HeadGeometry(layers=3, heads=5, kv_heads=1, head_dim=8, hidden_size=60)


def planted(n=60, seed=0, shift=3.0):
    """Activations where only head (2, 1) separates r+ from r- (none with ``shift`` 0)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, 5, 8)
    dense = torch.randn(shape, generator=g)
    pruned = dense + 0.1 * torch.randn(shape, generator=g)
    positive = torch.randn(shape, generator=g)
    negative = torch.randn(shape, generator=g)
    positive[:, 2, 1, 0] += shift
    negative[:, 2, 1, 0] -= shift
    return ProbeActivations(dense, pruned, positive, negative)


def test_vectorised_probes_equal_one_probe_per_head():
    acts = planted(40)
    compensation = torch.zeros(3, 5, 8)
    pos, neg = probe_features(acts, compensation)
    train_idx, test_idx = split_pairs(40)
    init = probe_init(15, 16, seed=3)
    ours = train_probes(pos, neg, train_idx, test_idx, epochs=50, init=init)
    for h in range(15):
        want = _probe_one_head(
            pos[h], neg[h], train_idx, test_idx, init[0][h], init[1][h], epochs=50, lr=0.01
        )
        assert ours.accuracy[h].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("standardize", [False, True])
def test_probing_recovers_a_planted_separable_head(standardize):
    acts = planted()
    scores = score_heads(acts, torch.zeros(3, 5, 8), standardize=standardize)
    assert scores.shape == (3, 5)
    assert scores[2, 1] >= 0.95
    others = torch.cat([scores.flatten()[:11], scores.flatten()[12:]])
    assert others.max() < 0.9
    assert select_heads(scores, 1).tolist() == [[2, 1]]


def test_chance_of_best_is_the_binomial_tail_of_the_best_of_the_heads():
    """A guessing probe gets each of n held-out examples right with probability 1/2."""
    assert chance_of_best(1.0, 10, 1) == pytest.approx(1 / 1024)
    assert chance_of_best(0.9, 10, 1) == pytest.approx(11 / 1024)  # 9 or 10 right
    assert chance_of_best(0.9, 10, 15) == pytest.approx(1 - (1 - 11 / 1024) ** 15)
    assert chance_of_best(0.0, 10, 15) == 1.0
    assert chance_of_best(0.5, 600, 1) == pytest.approx(0.5 + math.comb(600, 300) / 2**601)
    assert chance_of_best(1.0, 600, 1024) == pytest.approx(1024 / 2**600)


def test_probes_at_chance_are_warned_of_and_a_separable_head_is_not():
    """60 pairs hold 18 out: 36 examples per head. Without the planted head the best of 15
    scores what 15 guessing probes reach; with it, head (2, 1) scores far above."""
    compensation = torch.zeros(3, 5, 8)
    noise = score_heads(planted(shift=0.0), compensation)
    best = float(noise.max())
    message = (
        f"probing found no head above chance: the best held-out probe accuracy, {best:.3f} "
        f"({round(best * 36)} of 36 held-out examples), is reached by the best of 15 heads "
        "guessing at random"
    )
    with pytest.warns(UserWarning, match=f"^{re.escape(message)} [0-9.]+% of the time, so the"):
        warn_if_at_chance(noise, 60)
    separable = score_heads(planted(), compensation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_at_chance(separable, 60)


def test_matches_the_research_protocol_per_head():
    acts = planted(30, seed=1)
    ref_scores, ref_dirs, ref_comp = components_and_probes_per_head(acts, k=10, progress=False)
    from restorelcc.lcc.components import lost_components

    comps = lost_components(acts.dense, acts.pruned, k=10)
    torch.testing.assert_close(comps.compensation, ref_comp, rtol=1e-4, atol=1e-5)
    scores = score_heads(acts, comps.compensation)
    assert torch.equal(select_heads(scores, 3), select_heads(ref_scores, 3))


def test_split_is_by_pair_and_seeded():
    train, test = split_pairs(10)
    assert len(test) == 3 and len(train) == 7
    assert sorted(torch.cat([train, test]).tolist()) == list(range(10))
    again = split_pairs(10)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    with pytest.raises(DataError, match="cannot be split"):
        split_pairs(1)


def test_select_heads_best_first_ties_to_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.7, 0.9, 0.1], [0.9, 0.2, 0.2, 0.2, 0.2], [0] * 5])
    assert select_heads(scores, 4).tolist() == [[0, 1], [0, 3], [1, 0], [0, 2]]


def test_head_count_and_random_heads():
    assert head_count(GEOMETRY, 4) == 4
    assert head_count(GEOMETRY, 0.25) == 4  # round(0.25 * 15)
    assert head_count(GEOMETRY, 1.0) == 15
    for bad, message in [
        (0, "heads must be between 1 and 15 (all heads), got 0"),
        (16, "heads must be between 1 and 15 (all heads), got 16"),
        (0.0, "heads must be a count in [1, 15] or a fraction in (0, 1], got 0.0"),
        (1.5, "heads must be a count in [1, 15] or a fraction in (0, 1], got 1.5"),
        (True, "heads must be a count or a fraction, got True"),
        ("3", "heads must be a count in [1, 15] or a fraction in (0, 1], got '3'"),
    ]:
        with pytest.raises(RestoreLCCError, match=f"^{re.escape(message)}$"):
            head_count(GEOMETRY, bad)
        with pytest.raises(ValueError):  # as before: the CLI's wrappers catch ValueError
            head_count(GEOMETRY, bad)
    heads = random_heads(GEOMETRY, 6, seed=0)
    assert heads.shape == (6, 2)
    flat = heads[:, 0] * 5 + heads[:, 1]
    assert flat.unique().numel() == 6 and (heads[:, 0] < 3).all() and (heads[:, 1] < 5).all()
    assert torch.equal(heads, random_heads(GEOMETRY, 6, seed=0))


def test_numpy_numbers_are_counts_and_fractions_like_python_ones():
    """np.int64(3) had been refused as 'must be a count in [1, 15] ..., got np.int64(3)'."""
    for count in (np.int64(4), np.int32(4), np.uint8(4)):
        assert head_count(GEOMETRY, count) == 4 and type(head_count(GEOMETRY, count)) is int
    assert head_count(GEOMETRY, np.float32(0.25)) == head_count(GEOMETRY, 0.25) == 4
    with pytest.raises(RestoreLCCError, match=r"^heads must be between 1 and 15 .*got 16$"):
        head_count(GEOMETRY, np.int64(16))
    with pytest.raises(RestoreLCCError, match="^heads must be a count .*got np.True_$"):
        head_count(GEOMETRY, np.bool_(True))  # not a count of 1


@pytest.mark.parametrize("count", [0, -2, 16, 2.0, True])
def test_select_and_random_heads_refuse_a_count_out_of_range(count):
    """A negative count had been a slice end (-2: all heads but the two worst), a count over
    the heads had returned all of them."""
    with pytest.raises(ValueError, match="count must be"):
        select_heads(torch.rand(3, 5), count)
    with pytest.raises(ValueError, match="count must be"):
        random_heads(GEOMETRY, count, seed=0)


def test_accuracy_ties_go_to_the_lower_tie_break_then_the_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.7, 0.9, 0.1], [0.9, 0.2, 0.2, 0.2, 0.2], [0] * 5])
    loss = torch.tensor([[0.1, 0.6, 0.1, 0.5, 0.1], [0.4, 0.1, 0.1, 0.1, 0.1], [0.0] * 5])
    # accuracy first (0.9 > 0.7 whatever the losses), then the lower loss among the 0.9s
    assert select_heads(scores, 4, tie_break=loss).tolist() == [[1, 0], [0, 3], [0, 1], [0, 2]]
    even = torch.full((3, 5), 0.3)
    assert torch.equal(select_heads(scores, 4, tie_break=even), select_heads(scores, 4))
    with pytest.raises(ValueError, match="tie_break shape"):
        select_heads(scores, 4, tie_break=loss[:2])


def test_held_out_loss_is_the_mean_bce_of_the_probe_on_the_test_pairs():
    acts = planted(20)
    pos, neg = probe_features(acts, torch.zeros(3, 5, 8))
    train_idx, test_idx = split_pairs(20)
    weights, bias = probe_init(15, 16, seed=5)
    # No epoch: the probe is its initialisation, so its held-out BCE can be computed here.
    got = train_probes(pos, neg, train_idx, test_idx, epochs=0, init=(weights, bias))
    for h in range(15):
        x = torch.cat([pos[h, test_idx], neg[h, test_idx]])
        y = torch.cat([torch.ones(len(test_idx)), torch.zeros(len(test_idx))])
        p = torch.sigmoid(x @ weights[h] + bias[h])
        want = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        assert got.loss[h].item() == pytest.approx(want.item(), rel=1e-5)
        assert got.accuracy[h].item() == pytest.approx(((p >= 0.5).float() == y).float().mean())


def test_tied_heads_are_chosen_by_probe_confidence_not_by_layer():
    """Two heads separate r+ from r- perfectly; the later one by a wider margin. Their
    accuracies tie at 1.0 and the lower held-out loss must pick the later, clearer head."""
    g = torch.Generator().manual_seed(0)
    dense, pruned, positive, negative = (
        0.1 * torch.randn(40, 3, 5, 8, generator=g) for _ in "1234"
    )
    for (layer, head), margin in (((0, 2), 0.5), ((2, 1), 3.0)):
        positive[:, layer, head, 0] += margin
        negative[:, layer, head, 0] -= margin
    acts = ProbeActivations(dense, pruned, positive, negative)
    probes = probe_heads(acts, torch.zeros(3, 5, 8))
    assert probes.accuracy[0, 2] == probes.accuracy[2, 1] == 1.0
    assert probes.loss[2, 1] < probes.loss[0, 2]
    assert torch.equal(probes.accuracy, score_heads(acts, torch.zeros(3, 5, 8)))
    assert select_heads(probes.accuracy, 1).tolist() == [[0, 2]]  # by index: the early head
    assert select_heads(probes.accuracy, 1, tie_break=probes.loss).tolist() == [[2, 1]]
