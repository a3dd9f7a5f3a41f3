"""Mask selection from a score, shared by every pruning method.

A mask is a bool tensor shaped like the weight, ``True`` where the weight is pruned. Scores
are compared within each output row (``row_mask``: Wanda, as its paper does), within the
whole matrix (``matrix_mask``: magnitude, as the Wanda and SparseGPT reference baselines
do, so rows of small weights lose more) or within each group of ``M`` consecutive input
columns of a row (N:M). A row or matrix of ``size`` weights loses ``prune_count(size,
sparsity)``: ``sparsity * size`` rounded half up, the one rounding rule of every method.
Selection is by count, not by threshold, so ties cannot change the sparsity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pattern:
    """What to prune: ``unstructured``, ``N:M`` (keep ``n`` of every ``m``) or ``heads``."""

    kind: str  # "unstructured" | "nm" | "heads"
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @property
    def prune_per_group(self) -> int:
        """Weights zeroed in every group of ``m`` (N:M only)."""
        return self.m - self.n


def parse_pattern(pattern: str | Pattern) -> Pattern:
    """``"unstructured"``, ``"heads"`` or ``"N:M"`` with ``0 < N < M`` -> ``Pattern``."""
    if isinstance(pattern, Pattern):
        return pattern
    text = str(pattern).strip().lower()
    if text in ("unstructured", "heads"):
        return Pattern(text)
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return Pattern("nm", n, m)
    raise ValueError(
        f"unknown sparsity pattern {pattern!r}: use 'unstructured', 'heads' or 'N:M' with 0 < N < M"
    )


def prune_count(size: int, sparsity: float) -> int:
    """Weights pruned of a row or matrix of ``size``: ``sparsity * size`` rounded half up."""
    return int(math.floor(sparsity * size + 0.5))


def row_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    """Prune the ``count`` lowest-scoring entries of every row of ``score`` ``[rows, cols]``."""
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if count > 0:
        lowest = torch.topk(score, count, dim=1, largest=False).indices
        mask.scatter_(1, lowest, True)
    return mask


def matrix_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    """Prune the ``count`` lowest-scoring entries of the whole of ``score`` (any shape).

    Ties at the cut are broken by position, the first in row-major order pruned first, so
    the mask is the same on every device (``torch.topk`` leaves the choice among ties
    unspecified) and holds exactly ``count`` entries.
    """
    if count <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    flat = score.reshape(-1)
    cut = flat.kthvalue(count).values  # the count-th lowest score
    mask = flat < cut
    tied = (flat == cut).nonzero().squeeze(1)  # in row-major order
    mask[tied[: count - int(mask.sum())]] = True
    return mask.reshape(score.shape)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``m - n`` lowest of every ``m`` consecutive columns of each row.

    ``score`` is ``[rows, cols]`` with ``cols % m == 0``.
    """
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M needs the input dimension {cols} to be divisible by M={m}")
    groups = score.reshape(rows, cols // m, m)
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=score.device)
    lowest = torch.topk(groups, m - n, dim=2, largest=False).indices
    mask.scatter_(2, lowest, True)
    return mask.reshape(rows, cols)


def mask_from_score(score: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """The pruning mask for ``score`` ``[out, in]`` under ``pattern``: per row (unstructured)
    or per group (N:M)."""
    if pattern.kind == "unstructured":
        return row_mask(score, prune_count(score.shape[1], sparsity))
    if pattern.kind == "nm":
        return nm_mask(score, pattern.n, pattern.m)
    raise ValueError(f"pattern {pattern} is not an element-wise pattern")


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of each row has at most ``n`` nonzeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    nonzeros = (weight != 0).reshape(rows, cols // m, m).sum(dim=2)
    return bool((nonzeros <= n).all())
