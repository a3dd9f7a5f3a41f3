"""Magnitude pruning: drop the weights of smallest ``|W|``, compared within each row."""

from __future__ import annotations

import torch

from restorelcc.prune.masks import Pattern, mask_from_score


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Bool mask ``[out, in]``, ``True`` where ``weight`` is pruned; needs no calibration."""
    return mask_from_score(weight.detach().abs().float(), sparsity, pattern)
