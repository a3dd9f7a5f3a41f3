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

Each capture runs its model in the dtype it is in (``capture_dtype="model"``) or, with
``capture_dtype="float32"``, a bf16/fp16 model cast to fp32 for the capture and back after
it (capture_precision.py; ``RestoreConfig``'s default): the two models one at a time.

This module holds the captures themselves; capture_taps.py the ``o_proj`` hooks, the
batching and one forward's reads; capture_strategies.py the three ways (tree, cache, full)
of running prompts with their continuations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.data import positive_count
from restorelcc.hf.families import eval_mode, head_geometry
from restorelcc.lcc.capture_precision import (
    capture_precision,
    check_capture_attention,
    check_capture_dtype,
)
from restorelcc.lcc.capture_strategies import (
    STRATEGIES,
    Unit,
    continuation_strategy,
    strategy_units,
)
from restorelcc.lcc.capture_taps import (
    MAX_BATCH_ROWS,
    capture_rows,
    default_batch_tokens,
    length_batches,
    pad_right,
)
from restorelcc.lcc.compat import to_pruned_heads
from restorelcc.lcc.finite import check_finite_heads
from restorelcc.lcc.tokens import ProbeSequences


def _batch_tokens(model: nn.Module, batch_tokens: int | None) -> int:
    """``batch_tokens``, a positive integer, or the device's default for ``None``."""
    if batch_tokens is None:
        return default_batch_tokens(model)
    return positive_count(batch_tokens, "batch_tokens")


def _check_sequences(sequences: Sequence[Sequence[int]], what: str) -> None:
    if len(sequences) == 0:
        raise ValueError(f"no {what} to capture")
    empty = [i for i, s in enumerate(sequences) if len(s) == 0]
    if empty:
        raise ValueError(f"{what}[{empty[0]}] is empty")


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


@torch.no_grad()  # not inference_mode: callers may edit the results or train on them
def capture_last_token(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "capture",
    model_name: str | None = None,
    capture_dtype: str = "model",
) -> torch.Tensor:
    """Per-head ``o_proj`` inputs at the last token of each sequence.

    ``sequences``: token id lists (no padding). Returns ``[N, layers, heads, head_dim]``
    fp32, in the order of ``sequences``. Raises ``NonFiniteError`` naming the model
    (``model_name``, default from ``desc``), layer, head and sequence on an inf/NaN. The
    model runs in eval mode (no dropout), in the dtype it is in or, with ``capture_dtype=
    "float32"``, cast to fp32 (``capture_precision``); its training flag and weights are
    restored afterwards.
    """
    _check_sequences(sequences, "sequences")
    check_capture_dtype(capture_dtype)
    batch_tokens = _batch_tokens(model, batch_tokens)
    label = _model_label(model_name, desc)
    what = f"the {label} model's o_proj input"
    g = head_geometry(model)
    result = torch.zeros(len(sequences), g.layers, g.heads * g.head_dim)
    lengths = [len(s) for s in sequences]
    # counted in prompts, as capture_with_continuations counts: a sequence is one here
    bar = tqdm(total=len(sequences), desc=desc, unit="prompt", disable=not progress)
    with capture_precision(model, capture_dtype, label), eval_mode(model), bar:
        for batch in length_batches(lengths, batch_tokens, MAX_BATCH_ROWS):
            ids, mask = pad_right([sequences[i] for i in batch])
            last = torch.tensor([lengths[i] - 1 for i in batch]).unsqueeze(1)
            acts = capture_rows(model, ids, mask, last)[:, 0]
            _check_batch(acts, model, what, batch)
            result[batch] = acts
            bar.update(len(batch))
    return _reshape(result, model)


@torch.no_grad()  # not inference_mode: callers may edit the results or train on them
def capture_with_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    batch_tokens: int | None = None,
    progress: bool = True,
    desc: str = "capture",
    model_name: str | None = None,
    capture_dtype: str = "model",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-head ``o_proj`` inputs at the last token of each prompt, and of each
    ``prompt + continuation`` for every continuation set.

    ``continuations[k][i]`` continues ``prompts[i]``. Each prompt is run once, with all its
    continuations as branches of one row, or, where a sliding window could cut that row,
    once per continuation (see the module docstring). ``batch_tokens`` (default: per
    device) bounds the padded tokens (rows x longest row) of each forward; a row longer
    than it runs alone.

    Returns ``(prompt_acts, [continuation_acts per set])``, each ``[N, L, H, d]`` fp32.
    Raises ``NonFiniteError`` naming the model (``model_name``, default from ``desc``),
    the input, layer, head and prompt on an inf/NaN. The model runs in eval mode (no
    dropout), at ``capture_dtype`` as ``capture_last_token`` runs it; its training flag
    and weights are restored afterwards.
    """
    _check_sequences(prompts, "prompts")
    check_capture_dtype(capture_dtype)
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
    label = _model_label(model_name, desc)
    what = f"the {label} model's o_proj input"

    def row(unit: Unit, strategy: str = "tree") -> int:
        """Tokens the unit adds to a forward's rows: its prompt, then its continuations; for
        ``cache``, the longer of its prompt and its continuations' rows (one per set, as
        long as the longest), which run in two forwards."""
        i = unit.prompt
        lengths = [len(continuations[k][i]) for k in unit.sets]
        if strategy == "cache":
            return max(len(prompts[i]), len(lengths) * max(lengths, default=0))
        return len(prompts[i]) + sum(lengths)

    units: dict[str, list[Unit]] = {}  # strategy -> the units it runs
    for i in range(len(prompts)):
        strategy = continuation_strategy(model, row(Unit(i, tuple(range(sets)))))
        units.setdefault(strategy, []).extend(strategy_units(strategy, i, sets))

    def check(acts: torch.Tensor, where: str, samples: list[int]) -> None:
        _check_batch(acts, model, f"{what} {where}", samples)

    # counted in prompts, as capture_last_token counts: one is done with its last unit
    units_left = Counter(u.prompt for todo in units.values() for u in todo)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    with capture_precision(model, capture_dtype, label), eval_mode(model), bar:
        for strategy, todo in units.items():
            rows = [row(u, strategy) for u in todo]
            for batch in length_batches(rows, batch_tokens, MAX_BATCH_ROWS):
                batch_units = [todo[b] for b in batch]
                p_act, c_act = STRATEGIES[strategy](
                    model,
                    [prompts[u.prompt] for u in batch_units],
                    [[continuations[k][u.prompt] for k in u.sets] for u in batch_units],
                )
                _store(batch_units, p_act, c_act, prompt_acts, cont_acts, check)
                units_left.subtract(u.prompt for u in batch_units)
                bar.update(len({u.prompt for u in batch_units if units_left[u.prompt] == 0}))
    return _reshape(prompt_acts, model), [_reshape(c, model) for c in cont_acts]


def _store(
    units: list[Unit],
    p_act: torch.Tensor,
    c_act: torch.Tensor,
    prompt_acts: torch.Tensor,
    cont_acts: list[torch.Tensor],
    check: Callable[[torch.Tensor, str, list[int]], None],
) -> None:
    """Write a batch's reads into the results, each part passing ``check(acts, where,
    prompt indices)`` first: ``p_act [U, L, H*d]`` into ``prompt_acts [N, L, H*d]`` (read in
    the unit holding set 0), ``c_act [U, S, L, H*d]`` (``S`` sets per unit) into
    ``cont_acts[k] [N, L, H*d]``."""
    first = [r for r, unit in enumerate(units) if unit.sets[0] == 0]
    if first:
        samples = [units[r].prompt for r in first]
        check(p_act[first], "at the prompts' end", samples)
        prompt_acts[samples] = p_act[first]
    for k, target in enumerate(cont_acts):
        hits = [(r, unit.sets.index(k)) for r, unit in enumerate(units) if k in unit.sets]
        if hits:
            rows, columns = (list(column) for column in zip(*hits, strict=True))
            samples = [units[r].prompt for r in rows]
            check(c_act[rows, columns], f"after continuation set {k}", samples)
            target[samples] = c_act[rows, columns]


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
    capture_dtype: str = "model",
) -> ProbeActivations:
    """``Zd``, ``Zp``, ``Z+``, ``Z-`` for every pair, on the pruned model's heads: with
    ``head_map`` (``[layers, pruned heads]``, see ``compat.check_compatible``) the dense
    reads keep the heads the pruned model kept.

    Two forwards over the prompt tokens (the dense one, shared by the three dense reads, and
    the pruned one) plus one over both continuations, none of them computing the LM head;
    the research code's protocol runs four full forwards per pair, one pair at a time.
    ``capture_dtype="float32"`` casts a bf16/fp16 model to fp32 for its capture: the dense
    one for all its reads, back, then the pruned one (one model in fp32 at a time).
    """
    for model, name in ((dense, "dense"), (pruned, "pruned")):  # both before any capture
        check_capture_attention(model, capture_dtype, name)
    zd, (zpos, zneg) = capture_with_continuations(
        dense,
        sequences.prompts,
        [sequences.positives, sequences.negatives],
        batch_tokens,
        progress,
        desc="capture dense",
        model_name="dense",
        capture_dtype=capture_dtype,
    )
    zp = capture_last_token(
        pruned,
        sequences.prompts,
        batch_tokens,
        progress,
        "capture pruned",
        "pruned",
        capture_dtype,
    )
    if head_map is not None:
        zd, zpos, zneg = (to_pruned_heads(z, head_map) for z in (zd, zpos, zneg))
    return ProbeActivations(dense=zd, pruned=zp, positive=zpos, negative=zneg)
