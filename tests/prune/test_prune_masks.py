"""Mask selection: per-row counts and N:M groups against loop definitions."""

import pytest
import torch

from restorelcc.prune.masks import (
    Pattern,
    is_nm,
    mask_from_score,
    nm_mask,
    parse_pattern,
    prune_count,
    row_mask,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("unstructured", Pattern("unstructured")),
        ("heads", Pattern("heads")),
        ("2:4", Pattern("nm", 2, 4)),
        (" 4:8 ", Pattern("nm", 4, 8)),
        ("1:3", Pattern("nm", 1, 3)),
    ],
)
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "2-4", "block", ""])
def test_parse_pattern_rejects(text):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(text)


@pytest.mark.parametrize("cols, sparsity, count", [(10, 0.5, 5), (7, 0.5, 4), (63, 0.3, 19)])
def test_prune_count_rounds_half_up(cols, sparsity, count):
    assert prune_count(cols, sparsity) == count


def test_row_mask_prunes_lowest_per_row():
    score = torch.rand(13, 63)
    mask = row_mask(score, 20)
    for r in range(13):
        order = sorted(range(63), key=lambda j: score[r, j].item())
        assert {j for j in range(63) if mask[r, j]} == set(order[:20])


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 3)])
def test_nm_mask_matches_loops(n, m):
    score = torch.rand(7, 6 * m)
    mask = nm_mask(score, n, m)
    for r in range(7):
        for g in range(6):
            cols = range(g * m, (g + 1) * m)
            order = sorted(cols, key=lambda j: score[r, j].item())
            assert {j for j in cols if mask[r, j]} == set(order[: m - n])
    assert is_nm(torch.where(mask, 0.0, 1.0), n, m)


def test_nm_mask_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible by M=4"):
        nm_mask(torch.rand(3, 10), 2, 4)


def test_mask_from_score_counts_ties_exactly():
    score = torch.zeros(5, 16)  # all tied: the count must still be exact
    mask = mask_from_score(score, 0.5, Pattern("unstructured"))
    assert (mask.sum(dim=1) == 8).all()
    mask = mask_from_score(score, 0.5, Pattern("nm", 2, 4))
    assert (mask.reshape(5, 4, 4).sum(dim=2) == 2).all()


def test_is_nm():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]])
    assert is_nm(w, 2, 4)
    assert not is_nm(torch.ones(1, 8), 2, 4)
    assert not is_nm(torch.zeros(1, 6), 2, 4)  # width not divisible
