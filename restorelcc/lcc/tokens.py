"""Instruction pairs -> token ids, shared by capture and training.

A pair is tokenized with ``restorelcc.data.tokenize_pair`` into ``prompt ids`` and
``response ids`` whose concatenation is the tokenized pair, so the prompt is an exact prefix
of the prompt-plus-response sequence: in a causal model the activation at the prompt's last
position of a ``q + r`` forward *is* the activation of ``q`` alone. Capture relies on this
to share one forward between ``q`` and ``q + r``.

Fitting to ``max_length`` (``fit_lengths``): a pair's prompt and response are fitted
together (``encode_pair``), and captures use that same prompt (``encode_prompt``,
``encode_probe_set``), so the prompt whose last token gives ``Zd`` and ``Zp`` depends on
the pair and ``max_length`` only: the probe path and the random-heads and training-free
paths read the same position, whatever negative a probe pair is given. The negative's
response (``r-``) is cut to the room left after that prompt. ``fit_pair`` tells which pairs a
length cuts as it fits them (``encode_pairs``, ``encode_prompts`` and ``encode_probe_set``
count them) and ``warn_pairs_cut`` warns of them: cut prompts can become identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from restorelcc.data import InstructionPair, tokenize_pair
from restorelcc.errors import ArgumentError, DataError, warn_user


def check_tokenizer(tokenizer) -> None:
    """``ArgumentError`` unless ``tokenizer`` can be called as a Hugging Face tokenizer is."""
    if not callable(tokenizer):
        raise ArgumentError(
            f"tokenizer must be the model's Hugging Face tokenizer (load_model returns "
            f"(model, tokenizer)), got {tokenizer!r:.80}"
        )


def check_pairs(
    items: Sequence, minimum: int = 1, what: str = "instruction pairs"
) -> list[InstructionPair]:
    """Validate ``items`` (objects with ``.prompt``/``.response``, or 2-tuples of strings).

    Returns ``InstructionPair``s. Raises ``DataError`` naming the first bad item, or when
    fewer than ``minimum`` are given.
    """
    if items is None:
        raise DataError(f"no {what} given")
    pairs = []
    for i, item in enumerate(items):
        if isinstance(item, tuple | list) and len(item) == 2:
            prompt, response = item
        else:
            prompt = getattr(item, "prompt", None)
            response = getattr(item, "response", None)
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(
                f"{what}[{i}] is not a (prompt, response) pair of strings: {type(item).__name__}"
            )
        if not prompt.strip():
            raise DataError(f"{what}[{i}] has an empty prompt")
        if not response.strip():
            raise DataError(f"{what}[{i}] has an empty response (prompt: {prompt[:60]!r})")
        source = getattr(item, "source", "")
        pairs.append(InstructionPair(prompt, response, source if isinstance(source, str) else ""))
    if len(pairs) < minimum:
        raise DataError(f"need at least {minimum} {what}, got {len(pairs)}")
    return pairs


def fit_lengths(
    prompt: list[int], response: list[int], max_length: int, keep_start: int = 0
) -> tuple[list[int], list[int]]:
    """Truncate ``prompt + response`` to ``max_length`` tokens.

    The response keeps up to ``max(max_length - len(prompt), max_length // 2)`` tokens from
    its start; the prompt fills the rest from its end (the template's response marker sits
    at the end of the prompt, so that is the part to keep), except that its first
    ``keep_start`` tokens (the special tokens the tokenizer put in front, e.g. BOS) are kept
    as long as at least one token of the end still fits.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if keep_start < 0:
        raise ValueError(f"keep_start must be >= 0, got {keep_start}")
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_response = min(len(response), max(max_length - len(prompt), max_length // 2))
    return keep_prompt_end(prompt, max_length - keep_response, keep_start), response[:keep_response]


def keep_prompt_end(prompt: list[int], keep: int, keep_start: int = 0) -> list[int]:
    """``prompt`` cut to ``keep`` (>= 1) tokens: its first ``keep_start`` tokens (fewer if
    ``keep`` is small: at least one token of the end stays) and then its end."""
    if keep >= len(prompt):
        return prompt
    start = min(keep_start, keep - 1)
    return prompt[:start] + prompt[len(prompt) - keep + start :]


def leading_special_tokens(tokenizer, ids: Sequence[int]) -> int:
    """How many of ``ids``' first tokens are special tokens (BOS and the like)."""
    special = set(tokenizer.all_special_ids)
    count = 0
    while count < len(ids) and ids[count] in special:
        count += 1
    return count


def _tokenize(tokenizer, pair: InstructionPair) -> tuple[list[int], list[int]]:
    """``tokenize_pair`` as lists; ``DataError`` if the prompt or the response is empty."""
    prompt, response = tokenize_pair(tokenizer, pair)
    if not prompt or not response:
        raise DataError(f"pair tokenizes to an empty prompt or response: {pair.prompt[:60]!r}")
    return list(prompt), list(response)


def _unfitted(tokenizer, pair: InstructionPair, eos: bool) -> tuple[list[int], list[int]]:
    """``_tokenize`` with an EOS appended to the response if ``eos``, not yet fitted."""
    prompt, response = _tokenize(tokenizer, pair)
    if eos:
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token to end responses with")
        response.append(tokenizer.eos_token_id)
    return prompt, response


def fit_pair(
    tokenizer, pair: InstructionPair, max_length: int, eos: bool = False
) -> tuple[list[int], list[int], bool]:
    """``(prompt ids, response ids, cut)``: the ids fitted to ``max_length`` (``eos``
    appends EOS to the response first) and whether fitting cut them (their tokens were more
    than ``max_length`` together).

    Truncation keeps the prompt's leading special tokens (e.g. the BOS that Llama, Mistral
    or Gemma tokenizers add): models are trained with them at position 0.
    """
    prompt, response = _unfitted(tokenizer, pair, eos)
    cut = len(prompt) + len(response) > max_length
    keep_start = leading_special_tokens(tokenizer, prompt)
    return *fit_lengths(prompt, response, max_length, keep_start), cut


def encode_pair(
    tokenizer, pair: InstructionPair, max_length: int, eos: bool = False
) -> tuple[list[int], list[int]]:
    """``(prompt ids, response ids)`` fitted to ``max_length`` (``fit_pair``); ``eos``
    appends EOS."""
    return fit_pair(tokenizer, pair, max_length, eos)[:2]


def encode_pairs(
    tokenizer, pairs: Sequence[InstructionPair], max_length: int, eos: bool = False
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``encode_pair`` of each of ``pairs``, and how many of them it cut."""
    fitted = [fit_pair(tokenizer, p, max_length, eos) for p in pairs]
    return [(prompt, response) for prompt, response, _ in fitted], sum(c for *_, c in fitted)


# What sets each length on the command line, for the warnings: ``--max-length`` is
# training's in both commands; ``restorelcc restore`` captures (restorelcc's and
# training-free's) at ``RestoreConfig``'s ``capture_max_length``, with no flag for it.
TRAINING_LENGTH_FLAGS = "--max-length on the command line"
CAPTURE_LENGTH_FLAGS = "restorelcc demo's --max-length sets it, restorelcc restore's does not"


def warn_pairs_cut(
    cut: int, total: int, max_length: int, name: str, flags: str, eos: bool = False
) -> int:
    """Warn, when ``cut`` (of ``total``) pairs were longer than ``max_length`` tokens (the EOS
    included if ``eos``) and were cut, naming the length as ``name`` (its API field) and
    ``flags`` (what sets it on the command line). Returns ``cut``."""
    if cut:
        warn_user(
            f"{cut} of {total} pairs were longer than {name} {max_length} tokens"
            f"{' (with the EOS)' if eos else ''} and were cut: the prompt keeps its end (and "
            "leading special tokens), the response its start, so cut prompts can become "
            f"identical; raise {name} ({flags}) or give shorter pairs"
        )
    return cut


def encode_prompt(tokenizer, pair: InstructionPair, max_length: int) -> list[int]:
    """The prompt ids that captures read ``Zd``/``Zp`` at (their last token): the prompt
    as ``encode_pair`` fits it beside the pair's own response. They depend on the pair and
    ``max_length`` only, so the probe path (which runs ``q + r+`` and ``q + r-`` after
    them) and the paths that capture the prompt alone read the same position."""
    return encode_pair(tokenizer, pair, max_length)[0]


def encode_prompts(
    tokenizer, pairs: Sequence[InstructionPair], max_length: int
) -> tuple[list[list[int]], int]:
    """``encode_prompt`` of each of ``pairs``, and how many of the pairs ``encode_pair`` cut."""
    encoded, cut = encode_pairs(tokenizer, pairs, max_length)
    return [prompt for prompt, _ in encoded], cut


@dataclass(frozen=True)
class ProbeSequences:
    """Token ids for probing: per pair a prompt and its two continuations (r+, r-).
    ``cut``: how many of the pairs (prompt and r+) ``encode_probe_set`` cut."""

    prompts: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]]
    cut: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def encode_probe_set(
    tokenizer,
    pairs: Sequence[InstructionPair],
    negative_index: Sequence[int],
    max_length: int,
    pool: Sequence[InstructionPair] | None = None,
) -> ProbeSequences:
    """Tokenize prompts, responses and the mined negatives (``pool[negative_index[i]]``,
    ``pool`` the pairs the negatives were mined among: ``pairs`` unless given).

    Pair ``i``'s prompt ids and ``r+`` are ``encode_pair(tokenizer, pairs[i], max_length)``,
    whatever its negative (the result's ``cut`` counts the pairs that cut); ``r-`` (the
    negative's response tokenized after this prompt) keeps its first
    ``max_length - len(prompt)`` tokens.
    """
    pool = pairs if pool is None else pool
    prompts, positives, negatives = [], [], []
    cut = 0
    for pair, j in zip(pairs, negative_index, strict=True):
        prompt, positive, was_cut = fit_pair(tokenizer, pair, max_length)
        # tokenize_pair's prompt ids are the prompt's own tokenization, whatever follows it
        _, negative = _tokenize(tokenizer, InstructionPair(pair.prompt, pool[j].response))
        prompts.append(prompt)
        positives.append(positive)
        negatives.append(negative[: max_length - len(prompt)])
        cut += was_cut
    return ProbeSequences(prompts, positives, negatives, cut)
