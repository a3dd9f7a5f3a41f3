"""Scoring and perplexity with a tokenizer that appends EOS (a post-processor template, as
``add_eos_token=True`` gives): the EOS must neither end a context nor be scored as text,
where the BOS the tokenizer puts in front is kept (Gemma's scoring, the perplexity stream)
or not (every other family's scoring)."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from restorelcc.data import encode_unterminated
from restorelcc.eval.perplexity import token_stream
from restorelcc.eval.scoring import encode_request, loglikelihoods
from restorelcc.testing import byte_tokenizer, tiny_model


def _templated(single: str):
    """The byte tokenizer with a post-processor template (``<s>`` BOS, ``</s>`` EOS)."""
    tok = byte_tokenizer()
    specials = [("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(name, i) for name, i in specials if name in single]
    )
    return tok


@pytest.fixture(scope="module")
def eos_tok():
    tok = _templated("<s> $A </s>")
    assert tok("ab")["input_ids"] == [tok.bos_token_id, *_plain(tok, "ab"), tok.eos_token_id]
    return tok


@pytest.fixture(scope="module")
def bos_tok():
    return _templated("<s> $A")


def _plain(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize(
    ("context", "continuation", "context_text", "continuation_text"),
    [
        ("Question: x\nAnswer:", " yes", "Question: x\nAnswer:", " yes"),
        ("Answer: ", "yes", "Answer:", " yes"),  # trailing whitespace moves over
    ],
)
def test_the_split_falls_before_the_continuation_not_at_the_eos(
    eos_tok, context, continuation, context_text, continuation_text, bos
):
    ctx, cont = encode_request(eos_tok, context, continuation, bos)
    assert ctx == [eos_tok.bos_token_id] * bos + _plain(eos_tok, context_text)
    assert cont == _plain(eos_tok, continuation_text)


@pytest.mark.parametrize("name", ["llama-gqa", "gemma-mha"])
def test_an_appended_eos_changes_no_score(eos_tok, bos_tok, name):
    model = tiny_model(name)
    requests = [("Question: what is red?\nAnswer:", " a colour"), ("Short", " x"), ("Hi ", "yo")]
    with_eos = loglikelihoods(model, eos_tok, requests, progress=False)
    without = loglikelihoods(model, bos_tok, requests, progress=False)
    assert with_eos == without
    for bos in (False, True):
        assert [encode_request(eos_tok, *r, bos) for r in requests] == [
            encode_request(bos_tok, *r, bos) for r in requests
        ]


def test_the_perplexity_stream_ends_in_text_not_in_the_eos(eos_tok):
    texts = ["ab", "cd"]
    text_ids = [eos_tok.bos_token_id, *_plain(eos_tok, "ab\n\ncd")]
    # a budget past the end of the texts: all of them, no EOS scored after the last
    assert token_stream(eos_tok, texts, tokens=50).tolist() == text_ids
    # the first document alone is tokens + 1 ids only with its EOS: the stream must go on
    # into the next document instead of ending in that EOS
    stream = token_stream(eos_tok, ["abc", "d"], tokens=4)
    assert stream.tolist() == [eos_tok.bos_token_id, *_plain(eos_tok, "abc\n")]


def test_special_ids_the_text_itself_gives_stay():
    """An unknown word's UNK (and a literal "</s>") are the text's own: only what the
    tokenizer adds is dropped."""
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "Answer": 3, ":": 4, "yes": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    assert tok("Answer: zebra")["input_ids"] == [1, 3, 4, 0, 2]
    assert encode_unterminated(tok, "Answer: zebra") == [1, 3, 4, 0]
    assert encode_unterminated(tok, "Answer: </s>") == [1, 3, 4, 2]
    assert encode_unterminated(tok, "<s>") == [1, 1]  # the BOS put in front, then the text's
    assert encode_request(tok, "<s>", " yes", bos=True) == ([1, 1], [5])
    assert encode_request(tok, "Answer:", " zebra", bos=True) == ([1, 3, 4], [0])
    assert encode_request(tok, "Answer: zebra", " yes", bos=True) == ([1, 3, 4, 0], [5])
    # without the BOS put in front (every family but Gemma), the text's own "<s>" stays
    assert encode_request(tok, "<s>", " yes") == ([1], [5])
    assert encode_request(tok, "Answer: zebra", " </s>") == ([3, 4, 0], [2])
