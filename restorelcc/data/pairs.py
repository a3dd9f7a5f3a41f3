"""Instruction pairs in the Alpaca template, and their tokenization at the boundary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:"
RESPONSE_PREFIX = "\n"


@dataclass(frozen=True)
class InstructionPair:
    """One training example in the Alpaca template.

    ``prompt`` ends with ``### Response:``; ``response`` starts with a newline (Alpaca puts
    the answer on the line after ``### Response:``), so ``prompt + response`` is the full
    natural text. Use ``tokenize_pair`` to get token ids split exactly at the boundary.
    ``source`` names where the pair came from (a built-in name or the user path).
    """

    prompt: str
    response: str
    source: str = ""

    @property
    def text(self) -> str:
        return self.prompt + self.response


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 (Alpaca's name)
    """The Alpaca prompt; the Input section is omitted when ``input`` is empty."""
    instruction, input = instruction.strip(), (input or "").strip()
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def make_pair(instruction: str, input: str, output: str, source: str = "") -> InstructionPair:  # noqa: A002
    return InstructionPair(
        format_prompt(instruction, input), RESPONSE_PREFIX + output.strip(), source
    )


def unique_pairs(pairs: Iterable[InstructionPair]) -> list[InstructionPair]:
    """``pairs`` in order without exact repeats of an earlier pair's ``(prompt, response)``
    (the first of each kept): a repeat would sit on both sides of a train / held-out split."""
    first: dict[tuple[str, str], InstructionPair] = {}
    for pair in pairs:
        first.setdefault((pair.prompt, pair.response), pair)
    return list(first.values())


def tokenize_pair(tokenizer, pair: InstructionPair) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, response_ids)`` with ``prompt_ids + response_ids`` equal to
    the tokenization of ``pair.text`` whenever the tokenizer splits at the boundary.

    The whole text is tokenized once (with the tokenizer's default special tokens, e.g. a
    BOS) and split after the prompt's own tokens. Special tokens a tokenizer appends (an
    EOS, e.g. ``add_eos_token``) are dropped from both first: the prompt must not end in
    one, and the response's EOS is for the caller to add (``encode_pair(eos=True)``). If
    the tokenizer merges across the boundary, the response is tokenized on its own and
    appended instead.
    """
    whole = encode_unterminated(tokenizer, pair.text)
    prompt = encode_unterminated(tokenizer, pair.prompt)
    if whole[: len(prompt)] == prompt and len(whole) > len(prompt):
        return prompt, whole[len(prompt) :]
    return prompt, list(tokenizer(pair.response, add_special_tokens=False)["input_ids"])


def encode_unterminated(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` for a text that something follows (a response, a continuation,
    the rest of a stream): the special tokens the tokenizer puts in front (e.g. a BOS) are
    kept, those it appends (an EOS from ``add_eos_token`` or a post-processor template)
    dropped. What the text itself gives stays, special ids included (an unknown word's
    UNK, a literal ``"</s>"`` or ``"<s>"``): the ids are the tokenizer's front ids, then
    the text's own (tokenized without special tokens)."""
    ids = list(tokenizer(text)["input_ids"])
    own = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    front = _front_ids(tokenizer)
    if ids[front : front + len(own)] == own:
        return ids[: front + len(own)]
    # the added tokens changed how the text itself is split: drop trailing special ids
    special = set(tokenizer.all_special_ids)
    end = len(ids)
    while end > front and ids[end - 1] in special:
        end -= 1
    return ids[:end]


def _front_ids(tokenizer) -> int:
    """How many ids the tokenizer puts in front of a text (a BOS: 1), read off a probe
    text whose own ids hold no special token of the front ones."""
    ids = list(tokenizer("a")["input_ids"])
    own = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(ids) - len(own) + 1):
        if ids[start : start + len(own)] == own:
            return start
    return 0
