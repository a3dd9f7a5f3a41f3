"""The real default model on a handful of items (marked slow; seconds)."""

import math

import pytest

from restorelcc.assets import load_model, resolve_model
from restorelcc.eval.scoring import encode_request, loglikelihoods
from restorelcc.eval.tasks import task_questions
from restorelcc.evaluate import evaluate_model

pytestmark = pytest.mark.slow


def test_smollm2_handful_of_items():
    model, tok = load_model("smollm2-135m")
    report = evaluate_model(model, tok, tasks="piqa,winogrande", limit=3, ppl_tokens=256,
                            batch_size=8, progress=False)  # fmt: skip
    assert report["tasks"]["piqa"]["items"] == 3 and report["tasks"]["winogrande"]["items"] == 3
    ppl = report["perplexity"]["perplexity"]
    # a trained model is far from the uniform guess over 49,152 tokens
    assert math.isfinite(ppl) and ppl < 1000

    # the real BPE tokenizer: batched, packed, padded scores equal one-at-a-time scores
    questions = task_questions("piqa", limit=3)
    requests = [(c, k) for q in questions for c, k in zip(q.contexts, q.continuations, strict=True)]
    batched = loglikelihoods(model, tok, requests, batch_size=8, progress=False)
    single = loglikelihoods(model, tok, requests, batch_size=1, progress=False, share_context=False)
    for a, b in zip(batched, single, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.is_greedy == b.is_greedy


def test_smollm2_tokenizer_appends_no_special_token():
    """So dropping appended special tokens (an EOS) leaves its splits as they were."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    for question in task_questions("piqa", limit=3):
        for context, continuation in zip(question.contexts, question.continuations, strict=True):
            whole = tok(context + continuation)["input_ids"]
            assert whole == tok(context + continuation, add_special_tokens=False)["input_ids"]
            ctx, cont = encode_request(tok, context, continuation)
            assert ctx + cont == whole and ctx == tok(context.rstrip())["input_ids"]


def test_smollm2_token_stream_of_one_long_document_is_a_prefix_of_its_ids():
    """The stream tokenizes a prefix only; a word cut at the prefix's end must not show."""
    from transformers import AutoTokenizer

    from restorelcc.data import encode_unterminated, perplexity_texts
    from restorelcc.eval.perplexity import token_stream

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    text = " ".join(perplexity_texts("lambada")[:300])  # one document of ~120k characters
    whole = encode_unterminated(tok, text)
    for tokens in (7, 500, 4000, len(whole) + 10):
        assert token_stream(tok, [text], tokens).tolist() == whole[: tokens + 1]
