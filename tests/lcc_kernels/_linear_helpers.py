"""Shared by the sparse_linear tests (test_kernels_linear*.py): odd problem sizes, packed
weights and plans with tiles smaller than the problem.

Shapes are odd on purpose: N = 72 and K = 136 are multiples of no tile, M = 17 spills
into a second M tile, and the K splits do not divide the K tiles evenly.
"""

import torch
from _kernels_helpers import random_24, random_unstructured

from lcc_kernels import Plan, pack

N, K = 72, 136
BITMAP_TILE = (16, 32)


def packed_weight(fmt: str, dtype: torch.dtype, n: int = N, k: int = K):
    """A random ``[n, k]`` weight of ``fmt`` ("2:4" or "bitmap", 40% kept) and its packed
    form (bitmap tiles ``BITMAP_TILE``): ``(dense, packed)``."""
    dense = random_24(n, k, dtype) if fmt == "2:4" else random_unstructured(n, k, 0.4, dtype)
    return dense, pack(dense, fmt, tile=BITMAP_TILE)


def small_plan(path: str, m: int) -> Plan:
    """Tiles deliberately smaller than the problem; bitmap plans take the weight tile."""
    if path == "tiled":
        return Plan("tiled", block_m=16, block_n=32, block_k=32, group_m=2)
    if m == 1:
        return Plan("skinny", block_m=1, block_n=32, block_k=64, split_k=2)
    if m <= 4:
        return Plan("skinny", block_m=4, block_n=32, block_k=32, split_k=3)
    return Plan("skinny", block_m=16, block_n=32, block_k=32, split_k=4)
