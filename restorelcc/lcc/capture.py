"""Activation capture at the input of every layer's output projection, per query head.

The input of ``o_proj`` is the concatenation of the attention heads' outputs, ``heads x
head_dim`` features (query heads, whatever the number of key/value heads). Capture reads it
at chosen positions of each sequence and returns ``[samples, layers, heads, head_dim]`` in
fp32.

Where the time goes, and how it is saved (see ``capture_probe_activations``):
- sequences are batched by length (longest first, right padding, a token budget per
  batch), so padding is small and every forward carries several rows;
- the forward stops as soon as the last layer's ``o_proj`` input is captured: no last MLP,
  no final norm, no LM head;
- the dense prompt is run once for ``q``, ``q + r+`` and ``q + r-``: each row holds the
  prompt followed by both continuations, and an attention mask lets each continuation see
  the prompt and itself only (a two-branch tree), with positions restarting after the
  prompt; ``Zd`` is read at the prompt's last token, ``Z+``/``Z-`` at each branch's end.
  Where such a mask cannot be used (attention kernels without arbitrary masks), the
  continuations run on the prompt's key/value cache instead; where a sliding window could
  cut the tree, the full sequences are run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.data import positive_count
from restorelcc.hf.cache import cache_kwargs
from restorelcc.hf.families import eval_mode, head_geometry, model_device, o_proj_of
from restorelcc.lcc.compat import to_pruned_heads
from restorelcc.lcc.finite import check_finite_heads
from restorelcc.lcc.tokens import ProbeSequences

# Padded tokens per forward. On a CPU, ~1k tokens is the measured sweet spot (SmolLM2 on 2
# cores, 32 SQuAD prompts: 256 -> 14.3 s, 1024 -> 10.9 s, 4096 -> 13.9 s; one at a time
# 13.3 s): bigger batches spill the activations out of cache. A GPU wants large batches.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384
MAX_BATCH_ROWS = 64  # short sequences: cap the rows so the cache copy stays small


class _StopForward(Exception):
    """Raised by the last layer's tap: everything needed has been captured."""


@contextlib.contextmanager
def o_proj_taps(
    model: nn.Module, read: Callable[[int, torch.Tensor], None], stop_after_last: bool = True
) -> Iterator[None]:
    """Call ``read(layer, x)`` with each layer's ``o_proj`` input ``x [batch, seq, H*d]``.

    With ``stop_after_last`` the forward is cut short after the last layer's tap (wrap the
    forward in ``run_until_stopped``). Hooks see the input after hooks registered before
    them (e.g. a compensation added by ``heads.o_proj_input_offsets``); they are removed
    on exit, also on error.
    """
    layers = head_geometry(model).layers
    handles = []

    def tap(layer: int):
        def hook(module, args):
            read(layer, args[0])
            if stop_after_last and layer == layers - 1:
                raise _StopForward

        return hook

    try:
        for layer in range(layers):
            handles.append(o_proj_of(model, layer).register_forward_pre_hook(tap(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(forward: Callable[[], object]) -> None:
    with contextlib.suppress(_StopForward):
        forward()


def length_batches(lengths: Sequence[int], batch_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices grouped longest first so that ``rows * longest <= batch_tokens``.

    A sequence longer than ``batch_tokens`` gets a batch of its own.
    """
    if batch_tokens < 1 or max_rows < 1:
        raise ValueError(f"batch_tokens and max_rows must be positive: {batch_tokens}, {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            longest = lengths[last[0]]
            if len(last) < max_rows and (len(last) + 1) * longest <= batch_tokens:
                last.append(i)
                continue
        batches.append([i])
    return batches


def default_batch_tokens(model: nn.Module) -> int:
    return CPU_BATCH_TOKENS if model_device(model).type == "cpu" else GPU_BATCH_TOKENS


def _batch_tokens(model: nn.Module, batch_tokens: int | None) -> int:
    """``batch_tokens``, a positive integer, or the device's default for ``None``."""
    if batch_tokens is None:
        return default_batch_tokens(model)
    return positive_count(batch_tokens, "batch_tokens")


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, T], attention_mask [B, T])`` right-padded to the longest sequence."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _check_sequences(sequences: Sequence[Sequence[int]], what: str) -> None:
    if len(sequences) == 0:
        raise ValueError(f"no {what} to capture")
    empty = [i for i, s in enumerate(sequences) if len(s) == 0]
    if empty:
        raise ValueError(f"{what}[{empty[0]}] is empty")


def _capture_rows(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    **forward_kwargs,
) -> torch.Tensor:
    """One forward; returns the o_proj inputs at ``positions [B, P]`` -> ``[B, P, L, H*d]``.

    No key/value cache is built unless ``use_cache=True`` is passed (the ``cache``
    strategy): by default a model would keep one for the whole batch (GBs on 7B models).
    """
    forward_kwargs.setdefault("use_cache", False)
    layers = head_geometry(model).layers
    rows = torch.arange(ids.shape[0]).unsqueeze(1)
    out: list[torch.Tensor | None] = [None] * layers

    def read(layer: int, x: torch.Tensor) -> None:
        out[layer] = x[rows, positions].float()

    device = model_device(model)
    with o_proj_taps(model, read):
        run_until_stopped(
            lambda: model(
                input_ids=ids.to(device), attention_mask=mask.to(device), **forward_kwargs
            )
        )
    return torch.stack(out, dim=2).cpu()


def _reshape(acts: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``[N, L, H*d]`` -> ``[N, L, H, d]``."""
    g = head_geometry(model)
    return acts.reshape(acts.shape[0], g.layers, g.heads, g.head_dim)


def _model_label(model_name: str | None, desc: str) -> str:
    """The model's name in error messages: ``model_name``, else ``desc``'s words after
    ``capture`` (``"capture dense"`` -> ``dense``)."""
    return model_name or desc.removeprefix("capture").strip() or "captured"


def _check_batch(acts: torch.Tensor, model: nn.Module, what: str, batch: list[int]) -> None:
    """Captured ``[B, L, H*d]`` (on the CPU: no device sync) must be finite."""
    check_finite_heads(_reshape(acts, model), what, samples=batch)


@torch.inference_mode()
def capture_last_token(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "capture",
    model_name: str | None = None,
) -> torch.Tensor:
    """Per-head ``o_proj`` inputs at the last token of each sequence.

    ``sequences``: token id lists (no padding). Returns ``[N, layers, heads, head_dim]``
    fp32, in the order of ``sequences``. Raises ``NonFiniteError`` naming the model
    (``model_name``, default from ``desc``), layer, head and sequence on an inf/NaN. The
    model runs in eval mode (no dropout); its training flag is restored afterwards.
    """
    _check_sequences(sequences, "sequences")
    batch_tokens = _batch_tokens(model, batch_tokens)
    what = f"the {_model_label(model_name, desc)} model's o_proj input"
    g = head_geometry(model)
    result = torch.zeros(len(sequences), g.layers, g.heads * g.head_dim)
    lengths = [len(s) for s in sequences]
    bar = tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress)
    with eval_mode(model), bar:
        for batch in length_batches(lengths, batch_tokens, MAX_BATCH_ROWS):
            ids, mask = pad_right([sequences[i] for i in batch])
            last = torch.tensor([lengths[i] - 1 for i in batch]).unsqueeze(1)
            acts = _capture_rows(model, ids, mask, last)[:, 0]
            _check_batch(acts, model, what, batch)
            result[batch] = acts
            bar.update(len(batch))
    return _reshape(result, model)


def _sliding_window(model: nn.Module) -> int | None:
    config = model.config
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return getattr(config, "sliding_window", None)


@torch.inference_mode()
def capture_with_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "capture",
    model_name: str | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-head ``o_proj`` inputs at the last token of each prompt, and of each
    ``prompt + continuation`` for every continuation set.

    ``continuations[k][i]`` continues ``prompts[i]``. Each prompt is run once, with all its
    continuations as branches of one row (see the module docstring); ``batch_tokens``
    (default: per device) bounds the padded tokens of a forward.

    Returns ``(prompt_acts, [continuation_acts per set])``, each ``[N, L, H, d]`` fp32.
    Raises ``NonFiniteError`` naming the model (``model_name``, default from ``desc``),
    the input, layer, head and prompt on an inf/NaN. The model runs in eval mode (no
    dropout); its training flag is restored afterwards.
    """
    _check_sequences(prompts, "prompts")
    if len(continuations) == 0:
        raise ValueError("no continuation sets given (use capture_last_token for prompts alone)")
    for k, conts in enumerate(continuations):
        if len(conts) != len(prompts):
            raise ValueError(
                f"continuation set {k} has {len(conts)} items for {len(prompts)} prompts"
            )
        _check_sequences(conts, f"continuations[{k}]")
    batch_tokens = _batch_tokens(model, batch_tokens)
    g = head_geometry(model)
    sets = len(continuations)
    features = g.heads * g.head_dim
    prompt_acts = torch.zeros(len(prompts), g.layers, features)
    cont_acts = [torch.zeros(len(prompts), g.layers, features) for _ in range(sets)]
    rows = [len(p) + sum(len(c[i]) for c in continuations) for i, p in enumerate(prompts)]
    what = f"the {_model_label(model_name, desc)} model's o_proj input"

    bar = tqdm(total=len(prompts), desc=desc, unit="pair", disable=not progress)
    with eval_mode(model), bar:
        for batch in length_batches(rows, batch_tokens, MAX_BATCH_ROWS):
            conts = [[continuations[k][i] for k in range(sets)] for i in batch]  # [B][K]
            batch_prompts = [prompts[i] for i in batch]
            strategy = continuation_strategy(model, max(rows[i] for i in batch))
            p_act, c_act = _STRATEGIES[strategy](model, batch_prompts, conts)
            _check_batch(p_act, model, f"{what} at the prompts' end", batch)
            prompt_acts[batch] = p_act
            for k in range(sets):
                _check_batch(c_act[:, k], model, f"{what} after continuation set {k}", batch)
                cont_acts[k][batch] = c_act[:, k]
            bar.update(len(batch))
    return _reshape(prompt_acts, model), [_reshape(c, model) for c in cont_acts]


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
    acts = _capture_rows(
        model, ids, mask, torch.tensor(reads), position_ids=position_ids.to(device)
    )
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
    p_act = _capture_rows(model, ids, mask, (lengths - 1).unsqueeze(1), **cached, use_cache=True)
    cache.batch_repeat_interleave(sets)
    flat = [c for row in conts for c in row]  # row-major: prompt i, set k at i * sets + k
    c_ids, c_mask = pad_right(flat)
    start = lengths.repeat_interleave(sets).unsqueeze(1)
    position_ids = start + torch.arange(c_ids.shape[1]).unsqueeze(0)
    full_mask = torch.cat([mask.repeat_interleave(sets, dim=0), c_mask], dim=1)
    c_last = (c_mask.sum(1) - 1).unsqueeze(1)
    c_act = _capture_rows(
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
    acts = _capture_rows(model, ids, mask, torch.stack([prompt_ends, ends], dim=1))
    return acts[::sets, 0], acts[:, 1].reshape(batch, sets, *acts.shape[2:])


@dataclass
class ProbeActivations:
    """Last-token per-head activations for probing, each ``[N, layers, heads, head_dim]``.

    ``dense``/``pruned``: the models on the prompt ``q`` (``Zd``, ``Zp``); ``positive`` and
    ``negative``: the dense model on ``q + r+`` and ``q + r-`` (``Z+``, ``Z-``).
    """

    dense: torch.Tensor
    pruned: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {t.shape for t in (self.dense, self.pruned, self.positive, self.negative)}
        if len(shapes) != 1 or self.dense.dim() != 4:
            raise ValueError(f"activations must share one [N, L, H, d] shape, got {shapes}")


def capture_probe_activations(
    dense: nn.Module,
    pruned: nn.Module,
    sequences: ProbeSequences,
    batch_tokens: int | None = None,
    progress: bool = True,
    head_map: torch.Tensor | None = None,
) -> ProbeActivations:
    """``Zd``, ``Zp``, ``Z+``, ``Z-`` for every pair, on the pruned model's heads: with
    ``head_map`` (``[layers, pruned heads]``, see ``compat.check_compatible``) the dense
    reads keep the heads the pruned model kept.

    Two forwards over the prompt tokens (the dense one, shared by the three dense reads, and
    the pruned one) plus one over both continuations, none of them computing the LM head;
    the research code's protocol runs four full forwards per pair, one pair at a time.
    """
    zd, (zpos, zneg) = capture_with_continuations(
        dense,
        sequences.prompts,
        [sequences.positives, sequences.negatives],
        batch_tokens,
        progress,
        desc="capture dense",
        model_name="dense",
    )
    zp = capture_last_token(
        pruned, sequences.prompts, batch_tokens, progress, "capture pruned", "pruned"
    )
    if head_map is not None:
        zd, zpos, zneg = (to_pruned_heads(z, head_map) for z in (zd, zpos, zneg))
    return ProbeActivations(dense=zd, pruned=zp, positive=zpos, negative=zneg)


_STRATEGIES = {"tree": _tree, "cache": _cached, "full": _full_sequences}
