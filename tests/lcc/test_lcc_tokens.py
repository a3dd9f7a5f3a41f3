"""Fitting pairs to a maximum length keeps the BOS a tokenizer puts in front."""

import pytest
from tokenizers import processors

from restorelcc.data import InstructionPair
from restorelcc.lcc.tokens import encode_pair, encode_probe_set, encode_prompt, fit_lengths
from restorelcc.lcc.train import collate
from restorelcc.testing import byte_tokenizer


def bos_tokenizer():
    """The byte tokenizer, prepending BOS like Llama, Mistral or Gemma tokenizers do."""
    tokenizer = byte_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return tokenizer


def long_pair(words=100):
    return InstructionPair(
        "### Instruction:\n" + "word " * words + "\n\n### Response:", "\nanswer" * 10
    )


def test_the_test_tokenizer_adds_a_bos():
    ids = bos_tokenizer()("hi")["input_ids"]
    assert ids[0] == byte_tokenizer().bos_token_id
    assert ids[1:] == byte_tokenizer()("hi")["input_ids"]  # the plain one adds none


def test_fit_lengths_keeps_the_first_tokens_and_the_end_of_the_prompt():
    prompt, response = list(range(10)), list(range(100, 110))
    assert fit_lengths(prompt, response, 12) == ([4, 5, 6, 7, 8, 9], response[:6])
    assert fit_lengths(prompt, response, 12, keep_start=1) == ([0, 5, 6, 7, 8, 9], response[:6])
    assert fit_lengths(prompt, response, 12, keep_start=2) == ([0, 1, 6, 7, 8, 9], response[:6])
    # Always at least one token of the prompt's end (its response marker), then the start.
    assert fit_lengths(prompt, response, 4, keep_start=3) == ([0, 9], response[:2])
    assert fit_lengths(prompt, response[:2], 12, keep_start=1) == (prompt, response[:2])
    with pytest.raises(ValueError, match="keep_start"):
        fit_lengths(prompt, response, 12, keep_start=-1)


def test_truncated_pairs_keep_the_bos_in_capture_and_training():
    tokenizer = bos_tokenizer()
    bos = tokenizer.bos_token_id
    pair = long_pair()
    full_prompt, full_response = encode_pair(tokenizer, pair, 10_000, eos=True)
    assert full_prompt[0] == bos and full_prompt.count(bos) == 1
    prompt, response = encode_pair(tokenizer, pair, 64, eos=True)
    assert len(prompt) + len(response) == 64
    assert prompt[0] == bos and prompt.count(bos) == 1
    assert prompt[1:] == full_prompt[len(full_prompt) - len(prompt) + 1 :]  # the end
    assert response == full_response[: len(response)]
    ids, _, _, _ = collate([(prompt, response)], tokenizer.pad_token_id)
    assert ids[0, 0] == bos
    pairs = [long_pair(100), long_pair(60), InstructionPair("### Instruction:\nhi", "\nyes")]
    probe = encode_probe_set(tokenizer, pairs, [1, 2, 0], 64)
    assert all(p[0] == bos and p.count(bos) == 1 for p in probe.prompts)
    assert all(len(p) + len(r) <= 64 for p, r in zip(probe.prompts, probe.negatives, strict=True))


def test_without_a_bos_truncation_keeps_the_end_only():
    tokenizer = byte_tokenizer()
    full_prompt, _ = encode_pair(tokenizer, long_pair(), 10_000)
    prompt, response = encode_pair(tokenizer, long_pair(), 64)
    assert prompt == full_prompt[len(full_prompt) - len(prompt) :]


def test_a_prompt_captured_alone_leaves_no_room_for_its_response():
    tokenizer = bos_tokenizer()
    full_prompt, _ = encode_pair(tokenizer, long_pair(20), 10_000)
    assert len(full_prompt) < 200
    assert encode_prompt(tokenizer, long_pair(20), 200) == full_prompt  # room for the pair cuts it
    assert len(encode_pair(tokenizer, long_pair(20), 200)[0]) < len(full_prompt)
    cut = encode_prompt(tokenizer, long_pair(20), 64)
    assert len(cut) == 64 and cut[0] == tokenizer.bos_token_id
    assert cut[1:] == full_prompt[len(full_prompt) - 63 :]
