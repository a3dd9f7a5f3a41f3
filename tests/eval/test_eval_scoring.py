"""Batched log-likelihood scoring against a direct per-request computation."""

import warnings
from types import SimpleNamespace

import pytest
import torch

from restorelcc.errors import NonFiniteError
from restorelcc.eval.scoring import (
    Score,
    encode_request,
    loglikelihoods,
    model_max_length,
    score_tokens,
)
from restorelcc.eval.tasks import Question
from restorelcc.evaluate import score_questions
from restorelcc.testing import TINY_SHAPES, byte_tokenizer, tiny_model

REQUESTS = [
    ("Question: what is red?\nAnswer:", " a colour"),
    ("Question: what is red?\nAnswer:", " a fruit that is sweet"),
    ("Short", " x"),
    ("A much longer context that pads everything else in its batch quite a lot", " end"),
    ("Question: what is red?\nAnswer:", " y"),
    ("Question: what is red?\nAnswer:", " z"),  # same input ids as the previous request
    ("Trailing space moves ", "over"),
]


@pytest.fixture(scope="module", params=["llama-gqa", "qwen2-gqa"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def direct_score(model, ctx_ids, cont_ids, max_length=10_000) -> tuple[float, bool]:
    """One unpadded forward per request; log-softmax over the whole vocabulary."""
    full = (list(ctx_ids) + list(cont_ids))[-(max_length + 1) :]
    inputs = torch.tensor([full[:-1]])
    with torch.no_grad():
        logprobs = model(input_ids=inputs).logits[0].double().log_softmax(-1)
    n = len(cont_ids)
    positions = torch.arange(len(full) - 1 - n, len(full) - 1)
    targets = torch.tensor(cont_ids)
    picked = logprobs[positions, targets]
    greedy = bool((logprobs[positions].argmax(-1) == targets).all())
    return float(picked.sum()), greedy


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_equals_direct(model, tok, batch_size):
    scores = loglikelihoods(model, tok, REQUESTS, batch_size=batch_size, progress=False)
    for (ctx, cont), score in zip(REQUESTS, scores, strict=True):
        expected, greedy = direct_score(model, *encode_request(tok, ctx, cont))
        assert score.logprob == pytest.approx(expected, abs=2e-4)
        assert score.is_greedy == greedy


def test_padding_does_not_change_a_score(model, tok):
    alone = loglikelihoods(model, tok, REQUESTS[2:3], batch_size=1, progress=False)[0]
    padded = loglikelihoods(model, tok, REQUESTS, batch_size=len(REQUESTS), progress=False)[2]
    assert padded.logprob == pytest.approx(alone.logprob, abs=1e-5)


def test_greedy_continuation_is_recognised(model, tok):
    ctx = tok("Hello there")["input_ids"]
    with torch.no_grad():
        ids = list(ctx)
        for _ in range(4):  # greedy-decode four tokens
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy, other = score_tokens(model, [(ctx, ids[len(ctx) :]), (ctx, [65, 66, 67, 68])], 4)
    assert greedy.is_greedy
    expected_other = direct_score(model, ctx, [65, 66, 67, 68])[1]
    assert other.is_greedy == expected_other


def test_truncation_keeps_the_right_end(model, tok):
    ctx, cont = encode_request(tok, "x" * 40 + " the context", " and its end")
    (score,) = score_tokens(model, [(ctx, cont)], max_length=20, progress=False)
    expected, _ = direct_score(model, ctx, cont, max_length=20)
    assert score.logprob == pytest.approx(expected, abs=2e-4)
    with pytest.raises(ValueError, match="continuation of 12 tokens > 8"):
        score_tokens(model, [(ctx, cont)], max_length=8, progress=False)


class IgnoresLogitsToKeep(torch.nn.Module):
    """A wrapper whose forward has no ``logits_to_keep``: the scorer slices full logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )


class IgnoresPackedMasks(IgnoresLogitsToKeep):
    """Custom attention that drops 4-D masks and position ids: packing must switch off."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return self.inner(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep
        )


def test_models_without_logits_to_keep_still_score(model, tok):
    wrapped = IgnoresLogitsToKeep(model)
    a = loglikelihoods(wrapped, tok, REQUESTS, batch_size=4, progress=False)
    b = loglikelihoods(model, tok, REQUESTS, batch_size=4, progress=False)
    assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-5)


class SlicesWithLogitsToKeep(IgnoresLogitsToKeep):
    """transformers before 5.2x: ``hidden[:, logits_to_keep]``, which a [B, T] boolean mask
    cannot index (IndexError). Counts its forwards."""

    def __init__(self, inner):
        super().__init__(inner)
        self.forwards = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        self.forwards += 1
        logits = self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits
        index = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return SimpleNamespace(logits=logits[:, index, :])


def test_models_whose_logits_to_keep_takes_no_mask_still_score(model, tok, monkeypatch):
    import restorelcc.eval.scoring as scoring

    monkeypatch.setattr(scoring, "_NO_MASKED_LOGITS", set())  # no class remembered yet
    wrapped = SlicesWithLogitsToKeep(model)
    a = loglikelihoods(wrapped, tok, REQUESTS, batch_size=2, progress=False)
    b = loglikelihoods(model, tok, REQUESTS, batch_size=2, progress=False)
    assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-5)
    batches = wrapped.forwards - 1  # one refused forward, then one per batch
    assert batches >= 2
    loglikelihoods(wrapped, tok, REQUESTS, batch_size=2, progress=False)
    assert wrapped.forwards == 1 + 2 * batches  # the refusal was remembered


def test_packing_switches_off_when_the_model_ignores_masks(model, tok):
    with pytest.warns(UserWarning, match="context sharing off: packed rows differ"):
        a = loglikelihoods(IgnoresPackedMasks(model), tok, REQUESTS, progress=False)
    b = loglikelihoods(model, tok, REQUESTS, progress=False)
    assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-5)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_packed_equals_unpacked(model, tok, batch_size):
    encoded = [encode_request(tok, c, k) for c, k in REQUESTS]
    packed = score_tokens(model, encoded, batch_size, progress=False)
    plain = score_tokens(model, encoded, batch_size, progress=False, share_context=False)
    assert [s.logprob for s in packed] == pytest.approx([s.logprob for s in plain], abs=1e-5)
    assert [s.is_greedy for s in packed] == [s.is_greedy for s in plain]


def test_encode_request_follows_the_harness(tok):
    ctx, cont = encode_request(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"
    ctx, cont = encode_request(tok, "", "yes")
    assert ctx == [tok.bos_token_id] and tok.decode(cont) == "yes"
    with pytest.raises(ValueError, match="empty continuation"):
        encode_request(tok, "ctx", "")


def test_a_whitespace_only_context_is_an_empty_one(model, tok):
    """Its whitespace moves to the continuation (the harness's rule), which leaves the
    context empty: the BOS stands in, as for "" (it used to fail as empty context ids)."""
    ctx, cont = encode_request(tok, "   ", "word")
    assert ctx == [tok.bos_token_id] and tok.decode(cont) == "   word"
    assert encode_request(tok, "", "   word") == (ctx, cont)
    _, expected = loglikelihoods(model, tok, [("ok", " a"), ("   ", "word")], progress=False)
    assert expected.logprob == pytest.approx(direct_score(model, ctx, cont)[0], abs=2e-4)


def test_non_finite_log_likelihoods_raise_naming_the_task(tok):
    """A NaN model used to get a plausible accuracy (every argmax on choice 0)."""
    broken = tiny_model("llama-gqa")
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"^arc_easy: 7 of 7 log-likelihoods are not fin"):
        loglikelihoods(broken, tok, REQUESTS, progress=False, desc="arc_easy")


class FailsForAnotherReason(IgnoresLogitsToKeep):
    """A forward that raises a TypeError of its own while ``fail`` is set, whether or not
    ``logits_to_keep`` is given."""

    fail = True

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        if self.fail:
            raise TypeError("an unrelated bug")
        self.masked_calls += not isinstance(logits_to_keep, int)
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
        )


def test_an_unrelated_type_error_does_not_turn_off_masked_logits(model, tok, monkeypatch):
    import restorelcc.eval.scoring as scoring

    monkeypatch.setattr(scoring, "_NO_MASKED_LOGITS", set())
    wrapped = FailsForAnotherReason(model)
    wrapped.masked_calls = 0
    with pytest.raises(TypeError, match="an unrelated bug"):
        loglikelihoods(wrapped, tok, REQUESTS, progress=False, share_context=False)
    assert type(wrapped) not in scoring._NO_MASKED_LOGITS
    wrapped.fail = False
    a = loglikelihoods(wrapped, tok, REQUESTS, progress=False, share_context=False)
    assert wrapped.masked_calls == 1  # still asked for the continuation positions only
    b = loglikelihoods(model, tok, REQUESTS, progress=False, share_context=False)
    assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-5)


@pytest.mark.parametrize("batch_size", [0, 2.5, True])
def test_batch_size_must_be_a_positive_integer(model, tok, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        loglikelihoods(model, tok, REQUESTS, batch_size=batch_size, progress=False)


def test_model_max_length_uses_the_position_limit(model, tok):
    assert model_max_length(model, tok) == model.config.max_position_embeddings


def test_model_max_length_counts_the_positions_rope_scaling_extends_to():
    """A config with YaRN (factor 4 over 1024 original positions) serves 4096 positions,
    as prune's and restore's length checks read it; a tokenizer limit below still wins."""
    from transformers import LlamaConfig

    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    config = LlamaConfig(max_position_embeddings=1024, rope_scaling=scaling)
    assert model_max_length(config) == 4096
    assert model_max_length(config, SimpleNamespace(model_max_length=2048)) == 2048


def test_acc_norm_divides_by_characters():
    q = Question(("c", "c"), (" a", " bbbbbbbb"), gold=1, choices=("a", "bbbbbbbb"))
    per = score_questions([q], [Score(-2.0, False), Score(-4.0, False)])
    # acc picks the likelier choice 0; acc_norm compares -2/1 with -4/8 and picks choice 1
    assert per == {"acc": [0.0], "acc_norm": [1.0]}


def test_ties_pick_the_first_choice_like_argmax():
    q = Question(("c",) * 3, (" a", " b", " c"), gold=0, choices=("a", "b", "c"))
    per = score_questions([q], [Score(-1.0, False)] * 3)
    assert per == {"acc": [1.0], "acc_norm": [1.0]}


def forward_shapes(model, fn) -> list[tuple[int, ...]]:
    shapes = []
    handle = model.register_forward_hook(
        lambda m, args, kw, out: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        fn()
    finally:
        handle.remove()
    return shapes


def test_one_forward_per_batch_and_shared_rows(model, tok):
    encoded = [encode_request(tok, c, k) for c, k in REQUESTS]
    unpacked = forward_shapes(model, lambda: score_tokens(model, encoded, share_context=False))
    # 7 requests, two of which have identical input ids (one-token answers " y" and " z")
    assert len(unpacked) == 1 and unpacked[0][0] == len(REQUESTS) - 1
    packed = forward_shapes(model, lambda: score_tokens(model, encoded))
    # the four requests on "Question: what is red?" become one packed row, checked once
    # against plain scoring (3 distinct rows); the other three requests run one row each
    context = len(encoded[0][0])
    width = context + sum(len(encoded[i][1]) - 1 for i in (0, 1, 4, 5))
    check = (3, context + len(encoded[1][1]) - 1)
    rest = (3, max(len(c) + len(k) - 1 for c, k in encoded[2:4] + encoded[6:]))
    assert packed == [(1, width), check, rest]


@pytest.mark.parametrize("name", sorted(TINY_SHAPES))
def test_packed_equals_unpacked_for_every_family(name, tok):
    family_model = tiny_model(name)
    encoded = [encode_request(tok, c, k) for c, k in REQUESTS]
    packed = score_tokens(family_model, encoded, 16, progress=False)
    plain = [score_tokens(family_model, [r], 1, progress=False)[0] for r in encoded]
    # fp32 sums of ~20 log-probabilities of ~3 nats: rounding is ~1e-7 relative per term
    expected = pytest.approx([s.logprob for s in plain], rel=1e-6, abs=1e-5)
    assert [s.logprob for s in packed] == expected


@pytest.mark.parametrize("name", ["mistral-gqa", "gemma3-gqa"])
def test_shared_contexts_longer_than_a_sliding_window_score_as_plain_rows(name):
    # The packed rows' 4-D mask has no window: beyond it, packing would see more context.
    model = tiny_model(name, sliding_window=8)
    context = list(range(10, 40))  # 30 ids: past the window
    requests = [(context, [50]), (context, [51]), ([60, 61, 62], [70, 71]), ([60, 61, 62], [72])]
    packed = score_tokens(model, requests, 16, progress=False)
    plain = score_tokens(model, requests, 16, progress=False, share_context=False)
    for a, b in zip(packed, plain, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB"),
        # the CPU allocator's, as torch words it: a plain RuntimeError
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 100000000000000 bytes. Error code 12"
        ),
    ],
)
def test_running_out_of_memory_is_no_refusal_of_packed_rows(model, tok, monkeypatch, error):
    """A packed batch that runs out of memory must fail the run, not turn context sharing
    off with a warning and go on scoring row by row."""
    import restorelcc.eval.scoring as scoring

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(scoring, "_continuation_logits", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "context sharing off" would be raised here
        with pytest.raises(type(error), match="allocate"):
            loglikelihoods(model, tok, REQUESTS, progress=False)


def test_the_bar_says_it_counts_answer_choices(model, tok, monkeypatch):
    """One request is one answer choice, not one question: the bar's unit says so."""
    import io

    from tqdm import tqdm

    import restorelcc.eval.scoring as scoring

    bars = []

    def recording_bar(*args, **kwargs):  # shown, into a buffer: it keeps its counts
        bars.append(tqdm(*args, **{**kwargs, "disable": False, "file": io.StringIO()}))
        return bars[-1]

    monkeypatch.setattr(scoring, "tqdm", recording_bar)
    loglikelihoods(model, tok, REQUESTS, batch_size=3, progress=False, desc="arc_easy")
    assert [(bar.desc, bar.unit, bar.total, bar.n) for bar in bars] == [
        ("arc_easy", "choice", len(REQUESTS), len(REQUESTS))
    ]
