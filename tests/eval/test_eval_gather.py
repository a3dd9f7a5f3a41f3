"""Batched reading of continuation scores, bit for bit against the per-request reading."""

import pytest
import torch

import restorelcc.eval.gather as gather
import restorelcc.eval.scoring as scoring
from restorelcc.eval.gather import continuation_scores
from restorelcc.eval.scoring import score_tokens
from restorelcc.testing import tiny_model

VOCAB = 259


def per_request_scores(logits, picks) -> list[tuple[float, bool]]:
    """The reading the batched one replaced: per pick, its own gather of logits rows,
    float32 log-softmax, ``.sum()`` and syncs."""
    out = []
    for rows, ids in picks:
        target = torch.tensor(ids, device=logits.device)
        picked = logits[torch.tensor(rows, device=logits.device)].float().log_softmax(-1)
        logprob = picked.gather(1, target[:, None]).sum().item()
        out.append((logprob, bool((picked.argmax(-1) == target).all())))
    return out


def picks_over(logits: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Picks of 1 to 40 ids over ``logits`` ``[60, vocab]``: shared rows (a packed row's
    last context row serves every choice), repeated rows, rows no pick reads (padding),
    greedy picks and picks greedy up to their last id."""
    greedy = logits.float().argmax(-1).tolist()
    generator = torch.Generator().manual_seed(1)

    def random_ids(n):
        return torch.randint(0, VOCAB, (n,), generator=generator).tolist()

    rows_of = [
        [0],
        [0, 1, 2, 3, 4, 5, 6],
        [0, 7, 8],
        [0, 9],
        [12],
        [12],  # one-token answers sharing their row
        list(range(14, 54)),  # longer than some chunks
        [54, 54, 55],
        [56, 57, 58, 59],
    ]  # rows 10, 11, 13 are padding
    picks = [(rows, random_ids(len(rows))) for rows in rows_of]
    picks[3] = (picks[3][0], [greedy[r] for r in picks[3][0]])
    picks[4] = (picks[4][0], [greedy[12]])
    almost = [greedy[r] for r in picks[8][0]]
    almost[-1] = (almost[-1] + 1) % VOCAB
    picks[8] = (picks[8][0], almost)
    picks.append((list(range(14, 54)), [greedy[r] for r in range(14, 54)]))
    return picks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows_per_chunk", [None, 1, 5, 9], ids=lambda n: f"chunk{n}")
def test_batched_scores_are_the_per_request_ones_bit_for_bit(dtype, rows_per_chunk, monkeypatch):
    logits = (torch.randn(60, VOCAB) * 3).to(dtype)
    picks = picks_over(logits)
    if rows_per_chunk is not None:
        monkeypatch.setattr(gather, "CHUNK_BYTES", rows_per_chunk * 8 * VOCAB)
        lengths = [len(ids) for _, ids in picks]
        assert len(gather._chunks(lengths, rows_per_chunk)) > 3  # chunks really split
    expected = per_request_scores(logits, picks)
    assert [greedy for _, greedy in expected] == [False] * 3 + [True] * 2 + [False] * 4 + [True]
    assert continuation_scores(logits, picks) == expected  # floats compared exactly


def test_chunks_hold_whole_picks_of_at_most_the_given_rows():
    assert gather._chunks([2, 3, 1, 4, 9, 1], 5) == [(0, 5), (5, 10), (10, 19), (19, 20)]
    assert gather._chunks([7], 5) == [(0, 7)]


def test_bad_picks_are_refused():
    logits = torch.randn(4, VOCAB)
    assert continuation_scores(logits, []) == []
    with pytest.raises(
        ValueError, match=r"logits must be \[rows, vocab\], got shape \(1, 4, 259\)"
    ):
        continuation_scores(logits[None], [([0], [1])])
    with pytest.raises(ValueError, match="one logits row per continuation id"):
        continuation_scores(logits, [([0, 1], [1])])
    with pytest.raises(ValueError, match="one logits row per continuation id"):
        continuation_scores(logits, [([], [])])


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama-gqa")


def requests_of_all_shapes(model) -> list[tuple[list[int], list[int]]]:
    """Contexts of 1 to 37 ids and continuations of 1 to 15: rows padded in their batch,
    shared contexts (packed rows), one-token answers sharing a row, greedy continuations."""
    question, other = list(range(40, 77)), [5, 6, 7]
    with torch.no_grad():
        ids = list(question)
        for _ in range(5):  # greedy-decode five ids
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return [
        (question, ids[len(question) :]),
        (question, [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114]),
        ([9], [10, 11]),
        (question, [120]),
        (question, [121]),
        (other, [30, 31, 32, 33]),
        (other, [34]),
        (list(range(130, 150)), [150, 151, 152]),
        ([200, 201], ids[len(question) : len(question) + 1]),
        ([9, 10], [11]),  # the same input ids as ([9], [10, 11])
    ]


@pytest.mark.parametrize("share_context", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_scores_equal_the_per_request_reading_of_the_same_logits(
    model, share_context, batch_size, monkeypatch
):
    requests = requests_of_all_shapes(model)

    def score(reader, rows_per_chunk):
        monkeypatch.setattr(scoring, "continuation_scores", reader)
        monkeypatch.setattr(gather, "CHUNK_BYTES", rows_per_chunk * 8 * VOCAB)
        return score_tokens(
            model, requests, batch_size, progress=False, share_context=share_context
        )

    expected = score(per_request_scores, 1)
    assert any(s.is_greedy for s in expected) and not all(s.is_greedy for s in expected)
    for rows_per_chunk in (2, 10**6):
        assert score(continuation_scores, rows_per_chunk) == expected
