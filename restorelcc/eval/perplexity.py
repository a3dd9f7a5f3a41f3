"""Perplexity over a fixed token budget with a sliding window.

The documents (LAMBADA passages by default) are joined by a blank line and tokenized as one
stream, cut to ``tokens + 1`` ids: with the special tokens the tokenizer puts in front (e.g.
a BOS), as Wanda's and SparseGPT's scripts tokenize theirs (the zero-shot scoring,
``restorelcc.eval.scoring``, follows lm-eval instead: no special token but Gemma's BOS),
and without those it appends (e.g. an EOS: no text to score).
Windows of ``window`` ids start every ``stride`` ids; each window scores only the ids the
previous window did not reach: with ``stride < window`` every id after the first is
predicted exactly once, and all but the first window's ids see at least ``window - stride``
ids of context (the Hugging Face "perplexity of fixed-length models" scheme); with
``stride == window`` the windows are disjoint (the protocol of the pruning papers'
WikiText-2 figures) and each window's first id goes unscored. Perplexity is ``exp(total negative
log-likelihood / scored ids)``. Joined passages see the end of the previous passage, so the
figure is lower than scoring each passage alone.

A NaN or inf total NLL (NaN/inf weights, fp16 overflow) raises ``NonFiniteError``. A finite
mean NLL above ~709 nats gives a perplexity of ``inf`` (``exp`` overflows a float), which
``PerplexityResult.as_dict`` writes as ``None`` (JSON ``null``: JSON has no infinity);
``nll`` and ``tokens`` still give the figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from restorelcc.data import (
    CHARS_PER_TOKEN_BOUND,
    DEFAULT_PERPLEXITY_SOURCE,
    DOCUMENT_SEPARATOR,
    encode_unterminated,
    perplexity_texts,
    positive_count,
)
from restorelcc.errors import DataError, NonFiniteError
from restorelcc.eval.scoring import model_max_length
from restorelcc.hf.families import check_is_model, eval_mode, model_device

DEFAULT_TOKENS = 8192
DEFAULT_WINDOW = 512  # shortened to the model's length where that is less


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float  # inf when exp(nll / tokens) overflows a float
    nll: float  # total negative log-likelihood, nats (always finite)
    tokens: int  # ids scored
    window: int
    stride: int
    source: str

    def as_dict(self) -> dict:
        """The fields for a JSON report: an infinite ``perplexity`` becomes ``None``."""
        fields = dict(self.__dict__)
        if not math.isfinite(self.perplexity):
            fields["perplexity"] = None
        return fields


def perplexity_of(nll: float, count: int) -> float:
    """``exp(nll / count)``, or ``inf`` where that overflows a float."""
    try:
        return math.exp(nll / count)
    except OverflowError:
        return math.inf


def token_stream(tokenizer, texts: Sequence[str], tokens: int) -> torch.Tensor:
    """The first ``tokens + 1`` ids of the joined documents, ``[n]`` LongTensor.

    Tokenizes a growing prefix of the joined text, not all of it (a corpus file of hundreds
    of MB is one document). The ids kept are those on which the prefix and one twice as long
    agree, so a word cut at the prefix's end never enters the stream: they are the ids of
    the whole text wherever tokenization is local (pre-tokenized BPE, SentencePiece).
    """
    joined = DOCUMENT_SEPARATOR.join(texts)
    chars = (tokens + 1) * CHARS_PER_TOKEN_BOUND
    ids = encode_unterminated(tokenizer, joined[:chars])
    while chars < len(joined):
        longer = encode_unterminated(tokenizer, joined[: 2 * chars])
        if len(ids) > tokens and ids[: tokens + 1] == longer[: tokens + 1]:
            break
        ids, chars = longer, 2 * chars
    return torch.tensor(ids[: tokens + 1], dtype=torch.long)


def perplexity_windows(
    window: int | None,
    stride: int | None,
    limit: int | None = None,
    names: tuple[str, str] = ("window", "stride"),
) -> tuple[int, int]:
    """The ``(window, stride)`` a perplexity uses, for a model that takes ``limit`` tokens.

    ``window`` None: ``DEFAULT_WINDOW``, or ``limit`` where that is less; ``stride`` None:
    half the window. A ``window`` given must be 2 to ``limit``, a ``stride`` given 1 to the
    window: ``ValueError`` otherwise, naming them as ``names`` (the command line's
    ``--ppl-window``, ``--ppl-stride``). ``limit`` None: the model is not known yet, and a
    window given is not checked against it."""
    window_name, stride_name = names
    cut = ""  # why the window is what it is, where the stride is refused for it
    if window is None:
        window = DEFAULT_WINDOW
        if limit is not None and limit < window:
            window, cut = limit, f" (the default {DEFAULT_WINDOW} cut to the model's length)"
    else:
        window = positive_count(window, window_name)
        if window < 2:
            raise ValueError(
                f"{window_name} must be at least 2 (one id predicts nothing), got {window}"
            )
        if limit is not None and window > limit:
            raise ValueError(
                f"{window_name} {window}: longer than the {limit} tokens the model takes "
                f"(its max_position_embeddings, or its tokenizer's limit); give {limit} or less"
            )
    if stride is None:
        return window, max(1, window // 2)
    stride = positive_count(stride, stride_name)
    if stride > window:
        raise ValueError(
            f"{stride_name} {stride}: longer than the window, {window}{cut}, so tokens between "
            f"windows would go unscored; give {stride_name} {window} or less"
        )
    return window, stride


def window_plan(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, scored)`` per window over a stream of ``length`` ids.

    The window covers ids ``[begin, end)`` and scores its last ``scored`` ids. With
    ``stride < window`` every id but the stream's first is scored exactly once; with
    ``stride == window`` (disjoint windows) each window's first id goes unscored.
    """
    if window < 2:
        raise ValueError(f"need a window of at least 2 ids (one predicts nothing), got {window}")
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    plan, prev_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + window, length)
        # a window's first id has no context inside it (only possible when stride == window)
        scored = min(end - max(prev_end, 1), end - begin - 1)
        if scored > 0:
            plan.append((begin, end, scored))
        prev_end = end
        if end == length:
            break
    return plan


def windows_per_forward(window: int, per_default_window: int = 4) -> int:
    """How many windows of ``window`` ids run per forward: ``per_default_window`` for windows
    of ``DEFAULT_WINDOW`` ids or fewer, fewer for longer ones, so that the logits over the
    vocabulary they keep (up to ``window`` positions each) stay near what
    ``per_default_window`` windows of ``DEFAULT_WINDOW`` keep (4 of 512: ~1 GB for a 49k
    vocabulary in float32). At least 1."""
    return max(1, per_default_window * DEFAULT_WINDOW // max(window, DEFAULT_WINDOW))


def scored_count(tokens: int, window: int, stride: int) -> int:
    """The ids a full budget of ``tokens`` scores (a stream of ``tokens + 1`` ids, as
    ``token_stream`` cuts it): ``tokens``, less one per window after the first where the
    windows are disjoint (``stride == window``)."""
    return sum(scored for _, _, scored in window_plan(tokens + 1, window, stride))


@torch.inference_mode()
def stream_nll(
    model, ids: torch.Tensor, window: int, stride: int, batch_size: int = 4, progress: bool = True
) -> tuple[float, int]:
    """``(total NLL in nats, ids scored)`` of a ``[n]`` id stream under the sliding window."""
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"need a 1-D stream of at least 2 ids, got shape {tuple(ids.shape)}")
    batch_size = positive_count(batch_size, "batch_size")
    device = model_device(model)
    plan = window_plan(len(ids), window, stride)
    total, count = 0.0, 0
    # Windows of equal length and scored count batch together: all but the first and last.
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for w in plan:
        groups.setdefault((w[1] - w[0], w[2]), []).append(w)
    batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    bar = tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False)
    for batch in bar:  # a batch: up to batch_size windows
        inputs = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
        keep = max(s for _, _, s in batch)
        # logits at positions [-keep-1, -1) predict the last ``keep`` ids of each window
        logits = _last_logits(model, inputs, keep + 1)[:, :-1]
        for row, (_, _, scored) in enumerate(batch):
            targets = inputs[row, -scored:]
            total += F.cross_entropy(logits[row, -scored:].float(), targets, reduction="sum").item()
            count += scored
    return total, count


_NO_LOGITS_TO_KEEP: set[type] = set()  # model classes whose forward refuses it


def _last_logits(model, inputs: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits ``[B, keep, vocab]`` at the last ``keep`` positions of ``inputs [B, T]``;
    only those are asked for where the model's forward takes ``logits_to_keep``."""
    if type(model) not in _NO_LOGITS_TO_KEEP:
        try:
            return model(input_ids=inputs, logits_to_keep=keep).logits[:, -keep:]
        except TypeError as error:
            if "logits_to_keep" not in str(error):  # another fault: not the argument's
                raise
            _NO_LOGITS_TO_KEEP.add(type(model))
    return model(input_ids=inputs).logits[:, -keep:]


def perplexity_documents(texts: Iterable[str] | None, source: str | None) -> tuple[list[str], str]:
    """``(documents, name)`` that ``perplexity_report`` scores: ``texts`` checked
    (``checked_texts``) and named ``source`` (None: ``"texts"``), or, without ``texts``,
    ``perplexity_texts(source)`` (None: ``DEFAULT_PERPLEXITY_SOURCE``) named by it."""
    if texts is None:
        source = DEFAULT_PERPLEXITY_SOURCE if source is None else source
        return perplexity_texts(source), source
    source = "texts" if source is None else source
    return checked_texts(texts, source), source


def checked_texts(texts: Iterable[str], source: str) -> list[str]:
    """Perplexity documents given by a caller, as a list; refused where ``perplexity_texts``
    would give no such thing: one string (a sequence of characters, each scored as a
    document: ``TypeError``), or documents with no non-blank text (``DataError``). The
    messages name them as ``source``."""
    if isinstance(texts, str):
        raise TypeError(
            f"perplexity texts {source!r}: a sequence of documents, not one str (give [text])"
        )
    texts = list(texts)
    if not any(text.strip() for text in texts):
        raise DataError(f"perplexity source {source!r} holds no text")
    return texts


def perplexity_report(
    model,
    tokenizer,
    texts: Sequence[str] | None = None,
    source: str | None = None,
    tokens: int = DEFAULT_TOKENS,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Sliding-window perplexity of ``texts`` (else of ``perplexity_texts(source)``).

    ``source`` names the documents in the result and the messages: with ``texts``, the
    source the caller read them from (``perplexity_texts(source)``, read once: its
    ``origin`` describes what is scored), or None for ``"texts"``; without, the source read
    here (None: ``DEFAULT_PERPLEXITY_SOURCE``). ``texts`` must be documents, not one string
    (``TypeError``), with some non-blank text (``DataError``, as ``perplexity_texts``).
    ``window``, ``stride``: ids per window and between window starts; None for
    ``perplexity_windows``' defaults (512 or the model's length, half the window). A window
    longer than the model takes is refused (``ValueError``), not cut: the result records the
    window and stride used. ``batch_size`` windows run per forward (None:
    ``windows_per_forward(window)``); each keeps up to ``window`` positions of logits over the
    vocabulary, which bounds the memory. Raises
    ``NonFiniteError`` (naming the source) if the total NLL is NaN or inf,
    ``NotAModelError`` where ``model`` is not one. Scored in eval mode (no dropout), the
    model's mode restored after.
    """
    tokens = positive_count(tokens, "tokens")
    if batch_size is not None:
        batch_size = positive_count(batch_size, "batch_size")
    check_is_model(model)
    window, stride = perplexity_windows(window, stride, model_max_length(model, tokenizer))
    batch_size = batch_size or windows_per_forward(window)
    texts, source = perplexity_documents(texts, source)
    ids = token_stream(tokenizer, texts, tokens)
    if len(ids) < 2:
        raise DataError(f"perplexity source {source!r} gives fewer than 2 tokens")
    with eval_mode(model):  # dropout off, as lm-eval-harness scores; the mode restored
        nll, count = stream_nll(model, ids, window, stride, batch_size, progress)
    if not math.isfinite(nll):
        raise NonFiniteError(
            f"perplexity of {source!r}: the total negative log-likelihood over {count} "
            f"tokens is {nll}; the model gives NaN/inf logits (NaN or inf weights, or fp16 "
            "overflow)"
        )
    return PerplexityResult(perplexity_of(nll, count), nll, count, window, stride, source)


def perplexity(model, tokenizer, **kwargs) -> float:
    """Sliding-window perplexity (see ``perplexity_report`` for the arguments)."""
    return perplexity_report(model, tokenizer, **kwargs).perplexity
