"""Batched log-likelihood of continuations given contexts, as lm-evaluation-harness does.

A request ``(context, continuation)`` is tokenized as the harness 0.4 tokenizes it for a
causal LM: trailing whitespace of the context moves to the continuation, and ``context +
continuation`` is tokenized whole and split after the context's own tokens, both without
special tokens (``add_special_tokens=False``: no Llama ``<s>`` or ``<|begin_of_text|>``).
The exception, as in the harness (``add_bos_token``, which it sets for Gemma), is the
families whose ``Family.eval_bos`` is set (``context_bos``): they keep the special tokens
the tokenizer puts in front (its BOS) but not those it appends (an EOS would end the
context and be scored as the continuation's first token:
``restorelcc.data.encode_unterminated``). An empty context is replaced by the BOS (else
EOS) token, and so is a whitespace-only one (its whitespace moves to the continuation,
which leaves it empty); that continuation has no special token, Gemma's included (the
harness's would open with a second BOS, scored as text). Inputs longer than the model's
context are cut from the left. A non-finite log-likelihood (a model with NaN or inf
weights, fp16 overflow) raises ``NonFiniteError`` instead of deciding an argmax.

Requests that share their context (the choices of one question) run as one packed row:
the context once, then each choice (``restorelcc.eval.packing``). The others run one
right-padded row per distinct input sequence (one-token answers to the same question share
a row). Rows are sorted by length (longest first) and run in batches; only the
continuation positions reach the output projection and the log-softmax, and each batch's
scores come back from the device in one copy (``restorelcc.eval.gather``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from restorelcc.data import encode_unterminated, positive_count
from restorelcc.errors import NonFiniteError, out_of_memory, warn_user
from restorelcc.eval.gather import Pick, continuation_scores
from restorelcc.eval.packing import float_dtype, logit_positions, pack_requests, packed_inputs
from restorelcc.hf.families import FAMILIES, eval_mode, model_device, model_positions

TokenRequest = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


@dataclass(frozen=True)
class Score:
    """Log-probability of a continuation, and whether greedy decoding would produce it."""

    logprob: float
    is_greedy: bool


def prefix_token_id(tokenizer) -> int:
    """The id that stands in for an empty context: BOS, else EOS."""
    token = tokenizer.bos_token_id
    if token is None:
        token = tokenizer.eos_token_id
    if token is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token for empty contexts")
    return token


def context_bos(model_or_config) -> bool:
    """Whether lm-eval 0.4 scores this model's requests with a BOS in front of each context:
    where its family says so (``Family.eval_bos``), the family read from the config's
    ``model_type`` or its text model's (a multimodal Gemma 3 holds a ``gemma3_text`` one).
    No other model gets one, whether or not restorelcc supports its family."""
    config = getattr(model_or_config, "config", model_or_config)
    types = {getattr(config, "model_type", None)}
    if callable(getattr(config, "get_text_config", None)):
        types.add(getattr(config.get_text_config(), "model_type", None))
    return any(t in FAMILIES and FAMILIES[t].eval_bos for t in types)


def encode_request(
    tokenizer, context: str, continuation: str, bos: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids ``(context_ids, continuation_ids)`` split the way the harness splits them.

    ``bos``: keep the special tokens the tokenizer puts in front of the context (its BOS),
    as the harness does for the families ``context_bos`` names; else none at all."""
    if not continuation:
        raise ValueError(f"empty continuation for context {context[-40:]!r}")
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not stripped:  # "" (the harness's case) or whitespace only, which becomes ""
        cont = _text_ids(tokenizer, continuation)
        ctx = [prefix_token_id(tokenizer)]
    else:
        encode = encode_unterminated if bos else _text_ids
        whole = encode(tokenizer, stripped + continuation)
        ctx = encode(tokenizer, stripped)
        cont = whole[len(ctx) :]
    if not ctx or not cont:
        raise ValueError(
            f"request ({context[-40:]!r}, {continuation!r}) gives no "
            f"{'context' if not ctx else 'continuation'} token ids"
        )
    return list(ctx), list(cont)


def _text_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` alone, no special token added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def model_max_length(model_or_config, tokenizer=None) -> int:
    """The longest input the model (or its config, before the weights load) takes: the
    positions it serves (``model_positions``: RoPE scaling included), or a sane tokenizer
    limit where lower."""
    limits = [model_positions(model_or_config)]
    if tokenizer is not None and getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limits = [n for n in limits if n]
    return min(limits) if limits else 2048


def loglikelihoods(
    model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "loglikelihood",
    share_context: bool = True,
) -> list[Score]:
    """``Score`` of every ``(context, continuation)`` request, in request order, each
    tokenized by ``encode_request`` with a BOS only where ``context_bos(model)``; scored
    in eval mode (no dropout), the model's mode restored after."""
    bos = context_bos(model)
    encoded = [encode_request(tokenizer, ctx, cont, bos) for ctx, cont in requests]
    max_length = model_max_length(model, tokenizer)
    with eval_mode(model):
        return score_tokens(model, encoded, batch_size, max_length, progress, desc, share_context)


@torch.inference_mode()
def score_tokens(
    model,
    requests: Sequence[TokenRequest],
    batch_size: int = 16,
    max_length: int = 2048,
    progress: bool = True,
    desc: str = "loglikelihood",
    share_context: bool = True,
) -> list[Score]:
    """Scores of token-level requests; see the module docstring for the batching.

    ``share_context``: requests with identical context ids run as one packed row
    (``restorelcc.eval.packing``); the first row with two or more multi-token choices is
    checked against unpacked scoring and packing is dropped, with a warning, if the model
    disagrees (e.g. custom attention that ignores 4-D masks).

    Raises ``NonFiniteError`` (naming ``desc``, e.g. the task) if a score is NaN or inf.
    """
    batch_size = positive_count(batch_size, "batch_size")
    for i, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError(f"request {i} needs non-empty context and continuation ids")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens > {max_length}")
    scores: list[Score | None] = [None] * len(requests)
    if share_context:
        packable, plain = _split_packable(requests, max_length, _sliding_window(model))
    else:
        packable, plain = [], list(range(len(requests)))
    # a request is one answer choice of a task's question: the bar counts those
    bar = tqdm(total=len(requests), desc=desc, unit="choice", disable=not progress, leave=False)
    with bar:
        if packable:
            plain = sorted(
                plain + _score_packed(model, requests, packable, batch_size, scores, bar)
            )
        _score_plain(model, requests, plain, batch_size, max_length, scores, bar)
    _check_finite(scores, desc)
    return scores  # type: ignore[return-value]


def _check_finite(scores: Sequence[Score], desc: str) -> None:
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s.logprob)]
    if bad:
        raise NonFiniteError(
            f"{desc}: {len(bad)} of {len(scores)} log-likelihoods are not finite (request "
            f"{bad[0]}: {scores[bad[0]].logprob}); the model gives NaN/inf logits (NaN or inf "
            "weights, or fp16 overflow), so no accuracy can be read from it"
        )


def _sliding_window(model) -> int | None:
    """The attention window of a model whose layers may attend to fewer than all previous
    ids (Mistral, Gemma 2/3, Cohere 2...), else None. Read from the config as written:
    a config that sets a window but does not use it only costs some packing."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return window if isinstance(window, int) and window > 0 else None


def _split_packable(requests, max_length, window: int | None = None) -> tuple[list[int], list[int]]:
    """Indices of requests sharing their context with another (and fitting untruncated).

    With a sliding ``window``, only requests whose context and continuation fit in it are
    packed: the packed rows' 4-D mask replaces the model's own, window included, and within
    the window it sees what plain scoring sees."""
    limit = max_length + 1 if window is None else min(max_length + 1, window)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        by_context.setdefault(tuple(ctx), []).append(i)
    packable, plain = [], []
    for ctx, members in by_context.items():
        fits = all(len(ctx) + len(requests[i][1]) <= limit for i in members)
        (packable if len(members) > 1 and fits else plain).extend(members)
    return sorted(packable), sorted(plain)


def _score_packed(model, requests, indices, batch_size, scores, bar) -> list[int]:
    """Score ``indices`` in packed rows. Returns the indices left unscored: none, or all
    from the first row where packing matters on, if the model disagrees there with
    unpacked scoring (or refuses packed inputs)."""
    rows = sorted(pack_requests(requests, indices), key=lambda r: (-len(r), r.context))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    device, dtype = model_device(model), float_dtype(model)
    verified = False
    for batch in batches:
        inputs = packed_inputs(batch, dtype)
        segment = inputs.pop("segment")
        keep = segment > 0
        for b, row in enumerate(batch):
            keep[b, len(row.context) - 1] = True
        try:
            logits = _continuation_logits(
                model, keep, **{k: v.to(device) for k, v in inputs.items()}
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            if verified or out_of_memory(exc):
                raise  # out of memory is no refusal of packed rows
            warn_user(f"context sharing off: model refused packed rows ({exc})")
            return _unscored(indices, scores)
        flat = _flat_index(keep)
        picks = [
            ([flat[b][p] for p in positions], cont)
            for b, row in enumerate(batch)
            for (_, cont), positions in zip(row.members, logit_positions(row), strict=True)
        ]
        picked = iter(_scores(logits, picks))
        results = {}
        for row in batch:
            members = {i: next(picked) for i, _ in row.members}
            # Masks and position ids only matter with two or more continuation segments.
            if not verified and sum(bool(s) for s in row.segments) > 1:
                if not _agrees_with_plain(model, requests, members, dtype):
                    return _unscored(indices, scores)
                verified = True
            results.update(members)
        for i, score in results.items():
            scores[i] = score
        bar.update(len(results))
    return []


def _unscored(indices, scores) -> list[int]:
    return [i for i in indices if scores[i] is None]


def _agrees_with_plain(model, requests, results: dict[int, Score], dtype) -> bool:
    check: list[Score | None] = [None] * len(requests)
    indices = sorted(results)
    _score_plain(model, requests, indices, len(indices), 10**9, check, None)
    atol, rtol = (1e-3, 1e-4) if dtype == torch.float32 else (5e-2, 1e-2)
    for i in indices:
        error = abs(results[i].logprob - check[i].logprob)
        if error > atol + rtol * abs(check[i].logprob):
            warn_user(
                f"context sharing off: packed rows differ from plain scoring by {error:.3g} "
                "(custom attention that ignores 4-D masks or position ids?)"
            )
            return False
    return True


def _flat_index(keep: torch.Tensor) -> list[list[int]]:
    """``[B][T]`` lists: each ``True`` position of the CPU mask ``keep`` ``[B, T]`` numbered
    in row-major order (its row in the ``[keep.sum(), vocab]`` logits), -1 elsewhere."""
    flat = torch.full(keep.shape, -1, dtype=torch.long)
    flat[keep] = torch.arange(int(keep.sum()))
    return flat.tolist()


def _scores(logits: torch.Tensor, picks: Sequence[Pick]) -> list[Score]:
    """``Score`` of each ``(logits rows, continuation ids)`` pick of one batch's logits."""
    return [Score(*score) for score in continuation_scores(logits, picks)]


def _score_plain(model, requests, indices, batch_size, max_length, scores, bar) -> None:
    """One right-padded row per distinct input sequence, longest first."""
    rows: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        ctx, cont = requests[i]
        full = [*ctx, *cont][-(max_length + 1) :]
        rows.setdefault(tuple(full[:-1]), []).append(i)
    # Longest first (ties broken by content): similar lengths share a batch, little padding.
    order = sorted(rows, key=lambda key: (-len(key), key))
    device = model_device(model)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = len(batch[0])
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        keep = torch.zeros(len(batch), width, dtype=torch.bool)
        for b, key in enumerate(batch):
            input_ids[b, : len(key)] = torch.tensor(key)
            attention[b, : len(key)] = 1
            longest = max(len(requests[i][1]) for i in rows[key])
            keep[b, len(key) - longest : len(key)] = True
        logits = _continuation_logits(
            model, keep, input_ids=input_ids.to(device), attention_mask=attention.to(device)
        )
        flat = _flat_index(keep)
        members = [(b, i) for b, key in enumerate(batch) for i in rows[key]]
        picks = []
        for b, i in members:
            cont, end = requests[i][1], len(batch[b])
            picks.append((flat[b][end - len(cont) : end], cont))
        for (_, i), score in zip(members, _scores(logits, picks), strict=True):
            scores[i] = score
        if bar is not None:
            bar.update(len(members))


# Model classes that refused a boolean ``logits_to_keep`` (no such argument, or a
# transformers release before 5.2x, which indexes with it as a slice and fails), so that
# each batch does not pay for a failed forward. A class is remembered only when the same
# forward without ``logits_to_keep`` then succeeds: an unrelated TypeError or IndexError
# raises from that second call and leaves the class alone.
_NO_MASKED_LOGITS: set[type] = set()


def _continuation_logits(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """Logits ``[keep.sum(), vocab]`` at the ``True`` positions of ``keep`` ``[B, T]``.

    Asks the model for those positions only (``logits_to_keep`` as a boolean mask); a model
    that ignores or refuses that gets the full logits, sliced here.
    """
    count = int(keep.sum())
    device = inputs["input_ids"].device
    if type(model) not in _NO_MASKED_LOGITS:
        try:
            out = model(**inputs, logits_to_keep=keep.to(device)).logits
        except (TypeError, IndexError):
            out = model(**inputs).logits  # fails again, and raises, if not logits_to_keep's
            _NO_MASKED_LOGITS.add(type(model))
            return out[keep.to(out.device)]
        if out.dim() == 2 and out.shape[0] == count:
            return out
        if out.dim() == 3 and out.shape[:2] == keep.shape:
            return out[keep.to(out.device)]
    out = model(**inputs).logits
    return out[keep.to(out.device)]
