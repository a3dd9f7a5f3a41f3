"""How capture.py runs a batch of prompts with their continuations (``Zd`` at each prompt's
end, ``Z+``/``Z-`` at each continuation's end), each strategy returning ``(prompt acts [B,
L, H*d], continuation acts [B, K, L, H*d])`` fp32 for K continuation sets:

- ``tree``: one row per prompt followed by all its continuations, under a mask that lets
  each continuation see the prompt and itself only, positions restarting after the prompt;
- ``cache``: the prompts' forward fills a key/value cache, on which all continuations run
  in one forward (attention kernels that take no arbitrary mask);
- ``full``: one row per ``prompt + continuation`` (a sliding window could cut the tree).

capture.py batches ``Unit``s (``strategy_units``): a prompt with all its continuation sets
for ``tree`` and ``cache``, a prompt with one set for ``full``, each sized on the row it
adds to a forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from restorelcc.hf.cache import cache_kwargs
from restorelcc.hf.families import model_device
from restorelcc.lcc.capture_taps import capture_rows, pad_right


def _sliding_window(model: nn.Module) -> int | None:
    config = model.config
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return getattr(config, "sliding_window", None)


TREE_ATTENTION = ("sdpa", "eager")  # implementations that take an arbitrary 4D float mask


def continuation_strategy(model: nn.Module, longest_row: int) -> str:
    """``tree`` (one row per prompt with its branches), ``cache`` (branches on the prompt's
    KV cache) or ``full`` (one row per prompt + continuation)."""
    window = _sliding_window(model)
    if window is not None and longest_row > window - 1:
        return "full"  # the padded tree/cache would shift what the window lets through
    if getattr(model.config, "_attn_implementation", None) in TREE_ATTENTION:
        return "tree"
    return "cache"


class Unit(NamedTuple):
    """What a strategy runs in one row of a batch: ``prompt`` (its index) with the
    continuations of ``sets`` (set indices, in order)."""

    prompt: int
    sets: tuple[int, ...]


def strategy_units(strategy: str, prompt: int, sets: int) -> list[Unit]:
    """The units ``strategy`` runs ``prompt`` with its ``sets`` continuations in: the prompt
    with every continuation (``tree``: one row; ``cache``: a prompt row, then a row per
    continuation), or one row per ``prompt + continuation`` (``full``)."""
    if strategy == "full":
        return [Unit(prompt, (k,)) for k in range(sets)]
    return [Unit(prompt, tuple(range(sets)))]


def _tree(model, prompts, conts) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward per batch: row ``i`` = prompt ``i`` then each of its continuations.

    Token ``t`` attends to token ``u <= t`` of its row when ``u`` is in the prompt or in
    the same branch; a branch's positions continue from the prompt's length, so every
    branch computes exactly what ``prompt + branch`` alone would.
    """
    batch = len(prompts)
    rows, segments, positions, reads = [], [], [], []
    for prompt, branches in zip(prompts, conts, strict=True):
        a = len(prompt)
        row, seg, pos, read = list(prompt), [0] * a, list(range(a)), [a - 1]
        for k, branch in enumerate(branches, start=1):
            row += branch
            seg += [k] * len(branch)
            pos += range(a, a + len(branch))
            read.append(len(row) - 1)
        rows.append(row)
        segments.append(seg)
        positions.append(pos)
        reads.append(read)
    ids, pad = pad_right(rows)
    length = ids.shape[1]
    segment = torch.full((batch, length), -1, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    for i, (seg, pos) in enumerate(zip(segments, positions, strict=True)):
        segment[i, : len(seg)] = torch.tensor(seg)
        position_ids[i, : len(pos)] = torch.tensor(pos)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    q_seg, kv_seg = segment[:, :, None], segment[:, None, :]
    allowed = causal & (kv_seg >= 0) & ((kv_seg == 0) | (kv_seg == q_seg))
    allowed |= torch.eye(length, dtype=torch.bool)  # padding rows see themselves: no NaN
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(batch, 1, length, length, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    device = model_device(model)
    acts = capture_rows(model, ids, mask, torch.tensor(reads), position_ids=position_ids.to(device))
    return acts[:, 0], acts[:, 1:]


def _cached(model, prompts, conts) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt forward with a cache, then all continuations of the batch in one forward."""
    from transformers import DynamicCache

    batch, sets = len(prompts), len(conts[0])
    device = model_device(model)
    ids, mask = pad_right(prompts)
    lengths = mask.sum(1)
    cache = DynamicCache(config=model.config)
    cached = cache_kwargs(model, cache)
    p_act = capture_rows(model, ids, mask, (lengths - 1).unsqueeze(1), **cached, use_cache=True)
    cache.batch_repeat_interleave(sets)
    flat = [c for row in conts for c in row]  # row-major: prompt i, set k at i * sets + k
    c_ids, c_mask = pad_right(flat)
    start = lengths.repeat_interleave(sets).unsqueeze(1)
    position_ids = start + torch.arange(c_ids.shape[1]).unsqueeze(0)
    full_mask = torch.cat([mask.repeat_interleave(sets, dim=0), c_mask], dim=1)
    c_last = (c_mask.sum(1) - 1).unsqueeze(1)
    c_act = capture_rows(
        model,
        c_ids,
        full_mask,
        c_last,
        **cached,
        use_cache=True,
        position_ids=position_ids.to(device),
    )
    return p_act[:, 0], c_act[:, 0].reshape(batch, sets, *c_act.shape[2:])


def _full_sequences(model, prompts, conts) -> tuple[torch.Tensor, torch.Tensor]:
    """No cache: one row per ``prompt + continuation``; the prompt's last token is read in
    the row of its first continuation."""
    batch, sets = len(prompts), len(conts[0])
    rows = [list(p) + list(c) for p, row in zip(prompts, conts, strict=True) for c in row]
    ids, mask = pad_right(rows)
    ends = mask.sum(1) - 1
    prompt_ends = torch.tensor([len(p) - 1 for p in prompts]).repeat_interleave(sets)
    acts = capture_rows(model, ids, mask, torch.stack([prompt_ends, ends], dim=1))
    return acts[::sets, 0], acts[:, 1].reshape(batch, sets, *acts.shape[2:])


# continuation_strategy's answer -> the function that runs a batch that way
STRATEGIES = {"tree": _tree, "cache": _cached, "full": _full_sequences}
