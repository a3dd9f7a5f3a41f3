"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||_2``, compared within each row.

``X_j`` is the j-th input feature over all calibration tokens; N:M groups run along the
input dimension of each row.
"""

from __future__ import annotations

import torch

from restorelcc.prune.masks import Pattern, mask_from_score


def wanda_score(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X||_2`` per element: ``weight`` ``[out, in]``, ``input_norms`` ``[in]``."""
    return weight.detach().abs().float() * input_norms.float().reshape(1, -1)


def wanda_mask(
    weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float, pattern: Pattern
) -> torch.Tensor:
    """Bool mask ``[out, in]``, ``True`` where ``weight`` is pruned."""
    return mask_from_score(wanda_score(weight, input_norms), sparsity, pattern)
