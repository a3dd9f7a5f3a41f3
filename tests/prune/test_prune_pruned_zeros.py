"""``pruned_zeros``: the share of zeros from which a weight reads as pruned already
(``PRUNED_ZEROS``, 25%: 4-bit quantization zeroes 11-16%, pruning 50% or more)."""

import pytest
import torch

from restorelcc.prune.report import pruned_zeros


@pytest.mark.parametrize(
    ("zeros", "expected"),
    [(25, 0.25), (30, pytest.approx(0.3)), (50, 0.5), (24, None), (20, None), (0, None)],
)
def test_a_weight_reads_as_pruned_from_a_quarter_zeros(zeros, expected):
    """A ``[10, 10]`` weight with ``zeros`` of its 100 entries 0: its fraction of zeros
    from exactly 25% on, None below."""
    weight = torch.ones(10, 10)
    weight.view(-1)[:zeros] = 0
    assert pruned_zeros(weight) == expected


def test_an_empty_weight_does_not_read_as_pruned():
    """No entries, no zeros: an empty ``[0, 8]`` weight is not taken for a pruned one."""
    assert pruned_zeros(torch.ones(0, 8)) is None
