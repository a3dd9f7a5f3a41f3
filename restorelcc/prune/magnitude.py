"""Magnitude pruning: drop the weights of smallest ``|W|``.

Unstructured, ``|W|`` is compared across the whole matrix (one threshold per matrix, as the
magnitude baselines of the Wanda and SparseGPT reference code), not per row as Wanda
compares its scores; N:M compares within each group of ``M`` inputs of a row.
"""

from __future__ import annotations

import torch

from restorelcc.prune.masks import Pattern, mask_from_score, matrix_mask, prune_count


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Bool mask ``[out, in]``, ``True`` where ``weight`` is pruned; needs no calibration.

    Unstructured: the ``prune_count(weight.numel(), sparsity)`` smallest ``|W|`` of the
    matrix, ties broken by position (``matrix_mask``).
    """
    score = weight.detach().abs().float()
    if pattern.kind == "unstructured":
        return matrix_mask(score, prune_count(score.numel(), sparsity))
    return mask_from_score(score, sparsity, pattern)
