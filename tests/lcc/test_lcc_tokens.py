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


def eos_tokenizer():
    """The byte tokenizer, adding BOS and EOS like a Llama tokenizer with add_eos_token."""
    tokenizer = byte_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
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


def test_a_captured_prompt_is_fitted_beside_its_own_response():
    tokenizer = bos_tokenizer()
    pair = long_pair(20)
    for max_length in (10_000, 200, 64, 2):
        assert (
            encode_prompt(tokenizer, pair, max_length)
            == encode_pair(tokenizer, pair, max_length)[0]
        )
    full_prompt, full_response = encode_pair(tokenizer, pair, 10_000)
    cut = encode_prompt(tokenizer, pair, 160)  # the 70-token response fits beside it
    assert len(cut) == 160 - len(full_response) and cut[0] == tokenizer.bos_token_id
    assert cut[1:] == full_prompt[len(full_prompt) - len(cut) + 1 :]


def probe_pairs():
    """Prompts short and long, responses short and long, so that negatives differ in
    length from the responses they replace."""
    return [
        long_pair(100),
        InstructionPair("### Instruction:\nhi\n\n### Response:", "\nyes"),
        InstructionPair("### Instruction:\n" + "x" * 50 + "\n\n### Response:", "\n" + "y" * 300),
        long_pair(5),
    ]


@pytest.mark.parametrize("make_tokenizer", [byte_tokenizer, bos_tokenizer], ids=["plain", "bos"])
def test_probe_prompts_are_encode_prompt_whatever_the_negative(make_tokenizer):
    tokenizer = make_tokenizer()
    pairs = probe_pairs()
    max_length = 160
    want = [encode_pair(tokenizer, p, max_length) for p in pairs]
    assert [prompt for prompt, _ in want] == [
        encode_prompt(tokenizer, p, max_length) for p in pairs
    ]
    for negative_index in ([1, 2, 3, 0], [2, 0, 0, 2], [3, 3, 1, 1]):
        probe = encode_probe_set(tokenizer, pairs, negative_index, max_length)
        assert list(zip(probe.prompts, probe.positives, strict=True)) == want, negative_index
        for i, (pair, j) in enumerate(zip(pairs, negative_index, strict=True)):
            negative = encode_pair(
                tokenizer, InstructionPair(pair.prompt, pairs[j].response), 10_000
            )[1]
            assert probe.negatives[i] == negative[: max_length - len(want[i][0])]
    # pair 0's long prompt is cut for its own short response, not for pair 2's long one
    probe = encode_probe_set(tokenizer, pairs, [2, 2, 0, 1], max_length)
    assert len(probe.prompts[0]) == max_length - len(want[0][1]) > max_length // 2
    assert len(probe.negatives[0]) == len(want[0][1]) < len(pairs[2].response)


def test_a_tokenizer_that_appends_eos_ends_no_prompt_with_it():
    tokenizer = eos_tokenizer()
    eos = tokenizer.eos_token_id
    pairs = [long_pair(5), long_pair(8), long_pair(100)]
    for pair in pairs:
        prompt, response = encode_pair(tokenizer, pair, 10_000, eos=True)
        assert prompt[-1] != eos and prompt.count(eos) == 0
        assert response[-1] == eos and response.count(eos) == 1  # only the one asked for
        assert encode_prompt(tokenizer, pair, 96)[-1] != eos
    probe = encode_probe_set(tokenizer, pairs, [1, 2, 0], 96)
    assert all(eos not in ids for ids in probe.prompts + probe.positives + probe.negatives)
