"""One row per question: the shared context once, then every choice's continuation.

Multiple-choice requests repeat the same context for each choice. A packed row holds the
context ids followed by each continuation's ids but its last (a target only). A 4-D
attention mask lets the context attend causally to itself and each continuation segment to
the context and causally to itself (never to another choice); position ids restart after
the context for every segment. Each choice then sees exactly the ids it would see alone, so
its log-likelihood equals the unpacked one up to float rounding, while the context runs
once instead of once per choice (about 2x fewer ids on ARC and HellaSwag).

The caller verifies the first packed batch against unpacked scoring, because a model with
custom attention may ignore 4-D masks or position ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedRow:
    """A shared context and the (request index, continuation ids) scored after it."""

    context: tuple[int, ...]
    members: tuple[tuple[int, tuple[int, ...]], ...]

    @property
    def segments(self) -> list[tuple[int, ...]]:
        return [cont[:-1] for _, cont in self.members]

    def __len__(self) -> int:
        return len(self.context) + sum(len(s) for s in self.segments)


def pack_requests(
    requests: Sequence[tuple[Sequence[int], Sequence[int]]], indices: Sequence[int]
) -> list[PackedRow]:
    """Group requests ``indices`` by identical context ids into packed rows."""
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for i in indices:
        ctx, cont = requests[i]
        groups.setdefault(tuple(ctx), []).append((i, tuple(cont)))
    return [PackedRow(ctx, tuple(members)) for ctx, members in groups.items()]


def float_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def packed_inputs(rows: Sequence[PackedRow], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs for ``rows``: ``input_ids``/``position_ids`` ``[B, W]``, the additive
    ``attention_mask`` ``[B, 1, W, W]`` and ``segment`` ``[B, W]`` (0 context, i + 1 for
    choice i, -1 padding)."""
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.context)
        input_ids[b, :n] = torch.tensor(row.context)
        positions[b, :n] = torch.arange(n)
        segment[b, :n] = 0
        at = n
        for s, seg in enumerate(row.segments, start=1):
            if seg:
                input_ids[b, at : at + len(seg)] = torch.tensor(seg)
                positions[b, at : at + len(seg)] = torch.arange(n, n + len(seg))
                segment[b, at : at + len(seg)] = s
            at += len(seg)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q_seg, k_seg = segment[:, :, None], segment[:, None, :]
    allowed = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding queries attend to themselves
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": input_ids,
        "position_ids": positions,
        "attention_mask": mask[:, None],
        "segment": segment,
    }


def logit_positions(row: PackedRow) -> list[list[int]]:
    """Per member, the row positions whose logits predict its continuation ids."""
    last_context = len(row.context) - 1
    out, at = [], len(row.context)
    for seg in row.segments:
        out.append([last_context, *range(at, at + len(seg))])
        at += len(seg)
    return out
