"""Lost components: per head, the SVD of dense-minus-pruned activations.

For head ``(l, h)`` with differences ``D = Zd - Zp`` (``N x d``, not centred), ``D = U S V^T``.
The rows of ``V^T`` are the head's directions (``d`` of them; zero rows pad when ``N < d``);
the probing compensation is ``c = sum_{i<K} mean(U[:, i]) * S[i] * V^T[i]`` (the SVD's
sign ambiguity cancels in the product). ``K = 1`` as in the paper; the research code sums
``K = 10``. With ``K = min(N, d)``, ``c`` is exactly the mean of ``D``.

The SVD runs in fp64, batched over heads; directions are returned in fp32 (orthonormal to
fp32 rounding), unlike the research code's fp16 copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from restorelcc.data import positive_count
from restorelcc.errors import NonFiniteError
from restorelcc.lcc.finite import all_finite, check_finite_heads

PAPER_K = 1
SVD_CHUNK_BYTES = 256 * 2**20  # fp64 differences per batched SVD call


@dataclass
class Components:
    """Per-head results, indexed ``[layer, head, ...]``.

    ``directions [L, H, d, d]``: rows of ``V^T`` (orthonormal; zero rows when ``N < d``);
    ``singular_values [L, H, min(N, d)]``; ``compensation [L, H, d]``: the rank-``k``
    probing compensation; ``mean_difference [L, H, d]``: mean of ``Zd - Zp``. All fp32.
    ``k``: the singular directions summed into ``compensation``, ``min(k asked, N, d)``.
    """

    directions: torch.Tensor
    singular_values: torch.Tensor
    compensation: torch.Tensor
    mean_difference: torch.Tensor
    k: int


def _oriented(u: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """``vh [h, r, d]`` with each SVD pair's arbitrary sign (row order, LAPACK build) fixed,
    so that training, which starts from ``c = V^T beta + b`` with a seeded beta, starts from
    the same ``c``: each direction along the mean shift (its ``u [h, N, r]`` column sums to
    > 0); one orthogonal to it (a sum within rounding of 0) with its largest entry positive.
    Directions of zero singular values are any basis of what is left, whatever the sign."""
    sums = u.sum(dim=1)  # [h, r]
    largest = vh.gather(2, vh.abs().argmax(dim=2, keepdim=True)).squeeze(2)  # [h, r]
    tie = sums.abs() <= 1e-6 * u.shape[1] ** 0.5
    sign = torch.where(tie, largest.sign(), sums.sign())
    return vh * torch.where(sign < 0, -1.0, 1.0).to(vh.dtype)[:, :, None]


def lost_components(dense: torch.Tensor, pruned: torch.Tensor, k: int = PAPER_K) -> Components:
    """SVD of ``dense - pruned`` (both ``[N, L, H, d]``) for every head.

    ``k`` (>= 1): singular directions summed into the probing compensation (capped at
    ``min(N, d)``). Raises ``NonFiniteError`` naming the model, layer and head when an
    activation is inf/NaN (checked on the differences: one sum per chunk of heads).
    """
    if dense.shape != pruned.shape or dense.dim() != 4:
        raise ValueError(
            f"dense and pruned activations must share one [N, L, H, d] shape, got "
            f"{tuple(dense.shape)} and {tuple(pruned.shape)}"
        )
    k = positive_count(k, "k")
    n, layers, heads, d = dense.shape
    rank = min(n, d)
    total = layers * heads
    dense_heads = dense.reshape(n, total, d)
    pruned_heads = pruned.reshape(n, total, d)
    directions = torch.zeros(total, d, d)
    singular = torch.zeros(total, rank)
    compensation = torch.zeros(total, d)
    mean = torch.zeros(total, d)
    top = min(k, rank)
    chunk = max(1, SVD_CHUNK_BYTES // (n * d * 8))
    for start in range(0, total, chunk):
        part = slice(start, start + chunk)
        # [h, N, d] in fp64: one batched SVD problem for this chunk of heads
        diff = (dense_heads[:, part].double() - pruned_heads[:, part].double()).transpose(0, 1)
        if not all_finite(diff):
            _raise_non_finite(dense, pruned)
        u, s, vh = torch.linalg.svd(diff, full_matrices=False)  # [h,N,r], [h,r], [h,r,d]
        weights = u[:, :, :top].mean(dim=1) * s[:, :top]  # [h, top]
        compensation[part] = torch.einsum("hk,hkd->hd", weights, vh[:, :top]).float()
        directions[part, :rank] = _oriented(u, vh).float()
        singular[part] = s.float()
        mean[part] = diff.mean(dim=1).float()
    return Components(
        directions=directions.reshape(layers, heads, d, d),
        singular_values=singular.reshape(layers, heads, rank),
        compensation=compensation.reshape(layers, heads, d),
        mean_difference=mean.reshape(layers, heads, d),
        k=top,
    )


def _raise_non_finite(dense: torch.Tensor, pruned: torch.Tensor) -> None:
    """The difference of finite fp32 values is finite in fp64: one of the inputs is not."""
    check_finite_heads(dense, "the dense model's activations (Zd)")
    check_finite_heads(pruned, "the pruned model's activations (Zp)")
    raise NonFiniteError("dense - pruned activation differences overflow to inf")
