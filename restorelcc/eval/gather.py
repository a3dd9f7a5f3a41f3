"""Continuation scores of a whole forward batch, read from its logits in one pass.

Reading request by request cost a host-to-device copy of the targets and two device
syncs (``.item()``, ``bool()``) per request: thousands per task on a GPU. Here the row
indices and targets of every request of a batch go to the device in one copy, a constant
number of ops per chunk of rows gather the log-probabilities and greedy matches, and one
copy brings back all the sums and matches.

On the CPU the figures are bit for bit those of the per-request reading: the same
float32 log-softmax of each logits row, and each request's sum is ``.sum()`` over its own
log-probabilities in continuation order. (On CUDA, whose reductions may split a sum by
its memory alignment, a continuation of over 128 tokens may differ in the last bit; none
has been compared there.) (A batched segment sum, whether over zero-padded
rows, ``index_add_``, ``segment_reduce`` or cumulative sums, adds in another order and
differs in the last bits, so the per-request sums stay separate ops: launched without a
sync, and copied back together.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Continuation ids read at a time. A chunk of n ids gathers n logits rows, then their
# float32 copy and log-softmax take 2 x 4 x n x vocab bytes: CHUNK_BYTES bounds that pair
# (682 rows of a 49k vocabulary, 261 of Llama 3's 128k) whatever the batch, where one
# float32 log-softmax of all a batch's rows would take several times its logits.
CHUNK_BYTES = 256 * 2**20

Pick = tuple[Sequence[int], Sequence[int]]  # (logits rows, continuation ids), one row per id


def continuation_scores(logits: torch.Tensor, picks: Sequence[Pick]) -> list[tuple[float, bool]]:
    """``(log-probability, is greedy)`` of each pick ``(rows, continuation ids)``.

    ``logits`` ``[N, vocab]`` (any float dtype and device); ``rows[k]`` indexes the row of
    ``logits`` that predicts continuation id ``k`` (rows may repeat, within a pick and
    across picks; rows no pick names are never read). The log-probability is the float32
    ``log_softmax(logits[rows[k]])[ids[k]]`` summed over ``k``; greedy means every id is
    its row's argmax (the first, on ties). One copy to the device, one back.
    """
    if not picks:
        return []
    if logits.dim() != 2:
        raise ValueError(f"logits must be [rows, vocab], got shape {tuple(logits.shape)}")
    lengths = [len(ids) for _, ids in picks]
    if min(lengths) < 1 or any(len(rows) != len(ids) for rows, ids in picks):
        raise ValueError("each pick needs one logits row per continuation id, and some ids")
    index = torch.tensor(
        [[row for rows, _ in picks for row in rows], [i for _, ids in picks for i in ids]]
    ).to(logits.device)  # [2, tokens]: logits row and target id of every continuation id
    values, hits = [], []
    for start, stop in _chunks(lengths, max(1, CHUNK_BYTES // (8 * logits.shape[1]))):
        rows, targets = index[:, start:stop]
        logprobs = logits[rows].float().log_softmax(-1)  # [stop - start, vocab]
        values.append(logprobs.gather(1, targets[:, None])[:, 0])
        hits.append(logprobs.argmax(-1) == targets)
    token_logprobs = torch.cat(values)  # [tokens], in pick order
    sums = torch.stack([part.sum() for part in token_logprobs.split(lengths)])
    host = torch.cat([sums, torch.cat(hits).float()]).tolist()  # the one copy back
    matched, at = host[len(picks) :], 0
    out = []
    for logprob, n in zip(host[: len(picks)], lengths, strict=True):
        out.append((logprob, all(matched[at : at + n])))
        at += n
    return out


def _chunks(lengths: Sequence[int], rows: int) -> list[tuple[int, int]]:
    """Token spans ``[start, stop)`` of whole consecutive picks, each of at most ``rows``
    tokens unless one pick alone is longer."""
    spans, start, stop = [], 0, 0
    for n in lengths:
        if stop > start and stop + n - start > rows:
            spans.append((start, stop))
            start = stop
        stop += n
    spans.append((start, stop))
    return spans
