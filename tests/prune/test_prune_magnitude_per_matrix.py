"""Unstructured magnitude pruning compares ``|W|`` across the whole matrix (one threshold
per matrix, as the Wanda and SparseGPT reference baselines), not within each row: rows of
small weights lose more. The count is exact (``sparsity * numel`` rounded half up) and
ties at the cut go by position, first in row-major order."""

import torch

from restorelcc.hf.families import block_linear, decoder_layers, family_of
from restorelcc.prune import prune_model
from restorelcc.prune.magnitude import magnitude_mask
from restorelcc.prune.masks import Pattern, prune_count
from restorelcc.testing import tiny_model

UNSTRUCTURED = Pattern("unstructured")


def lowest_of_matrix(weight: torch.Tensor, count: int) -> set[tuple[int, int]]:
    """The ``count`` smallest ``|W|`` of the matrix by a plain sort, ties by position."""
    rows, cols = weight.shape
    w = weight.abs().tolist()
    ranked = sorted((w[r][c], r, c) for r in range(rows) for c in range(cols))
    return {(r, c) for _, r, c in ranked[:count]}


def pruned(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in mask.nonzero().tolist()}


def test_rows_of_small_weights_lose_more_than_rows_of_large_ones():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 1.0, 100.0, 1.0]).reshape(-1, 1)
    weight = torch.randn(4, 9, generator=generator) * scales
    mask = magnitude_mask(weight, 0.5, UNSTRUCTURED)
    count = prune_count(weight.numel(), 0.5)  # 18 of 36
    assert int(mask.sum()) == count == 18
    assert pruned(mask) == lowest_of_matrix(weight, count)
    per_row = mask.sum(dim=1).tolist()
    assert per_row[0] == 9 and per_row[2] == 0  # the small row goes, the large one stays


def test_the_count_rounds_half_up_and_ties_go_by_position():
    tied = torch.ones(3, 5)  # 15 weights: 0.5 -> 7.5 -> 8, the first 8 in row-major order
    mask = magnitude_mask(tied, 0.5, UNSTRUCTURED)
    assert mask.reshape(-1).tolist() == [True] * 8 + [False] * 7

    weight = torch.tensor([[1.0, -2.0, 2.0], [2.0, 3.0, -2.0]])  # 3 of 6: the 1, then 2 ties
    assert pruned(magnitude_mask(weight, 0.5, UNSTRUCTURED)) == {(0, 0), (0, 1), (0, 2)}
    assert not magnitude_mask(weight, 0.05, UNSTRUCTURED).any()  # 0.3 rounds to none


def test_prune_model_takes_its_share_of_every_matrix():
    dense = tiny_model("llama-3x5")
    model = tiny_model("llama-3x5")
    report = prune_model(model, "magnitude", 0.3, progress=False)
    family = family_of(model)
    rows_differ = False
    for index, (before, after) in enumerate(
        zip(decoder_layers(dense), decoder_layers(model), strict=True)
    ):
        for name in family.block_linears:
            weight = block_linear(before, name).weight.detach()
            count = prune_count(weight.numel(), 0.3)
            zeros = block_linear(after, name).weight.detach() == 0
            assert pruned(zeros) == lowest_of_matrix(weight, count), f"layers.{index}.{name}"
            rows_differ |= len(set(zeros.sum(dim=1).tolist())) > 1
    assert rows_differ  # not the same count per row
    assert all(m.zeros == prune_count(m.shape[0] * m.shape[1], 0.3) for m in report.matrices)
