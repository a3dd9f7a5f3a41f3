"""Zero-shot multiple-choice tasks in lm-evaluation-harness's default prompt formats.

Each task turns one dataset row into a ``Question``: a context per choice (the same string
for every choice except in WinoGrande's partial scoring), a continuation per choice (the
harness's target delimiter, a space, then the choice), the gold index, and the choice
strings whose character lengths normalise ``acc_norm``. Items are the first rows of each
task's scored split (``restorelcc.data.eval_sets``), in stored order: the splits lm-eval
scores, validation for BoolQ (super_glue's, passages titled), RTE, HellaSwag, WinoGrande
and PIQA, test for ARC-Easy, ARC-Challenge and OpenBookQA.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from restorelcc.data import EVAL_TASKS, eval_dataset, positive_count
from restorelcc.errors import DataError

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Question:
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choices: tuple[str, ...]  # the text whose length (characters) normalises acc_norm


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]  # the harness's reported metrics for this task
    question: Callable[[dict], Question]


def shared_context(context: str, choices: list[str], gold: int) -> Question:
    """A question whose choices all follow the same context."""
    return Question(
        contexts=(context,) * len(choices),
        continuations=tuple(TARGET_DELIMITER + c for c in choices),
        gold=gold,
        choices=tuple(choices),
    )


def _arc(row: dict) -> Question:
    return shared_context(f"Question: {row['question']}\nAnswer:", row["choices"], row["gold"])


def _openbookqa(row: dict) -> Question:
    return shared_context(row["question_stem"], row["choices"], row["gold"])


def _piqa(row: dict) -> Question:
    return shared_context(
        f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])
    )


def clean_hellaswag(text: str) -> str:
    """HellaSwag's cleanup: drop WikiHow ``[title]``/``[header]`` artifacts, double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> Question:
    # str.capitalize also lowercases the rest of ctx_b, as the harness's preprocessing does.
    context = f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}"
    endings = [clean_hellaswag(e) for e in row["endings"]]
    return shared_context(clean_hellaswag(context), endings, int(row["label"]))


def _boolq(row: dict) -> Question:
    context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    return shared_context(context, ["no", "yes"], int(row["label"]))  # 1 = yes


def _rte(row: dict) -> Question:
    context = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
    return shared_context(context, ["True", "False"], int(row["label"]))  # 0 = entailment


def _winogrande(row: dict) -> Question:
    """Partial scoring: the option goes into the context, the rest of the sentence is scored."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
    rest = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return Question(contexts, (rest, rest), {"1": 0, "2": 1}[row["answer"]], contexts)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("boolq", ("acc",), _boolq),
        Task("rte", ("acc",), _rte),
        Task("hellaswag", ("acc", "acc_norm"), _hellaswag),
        Task("winogrande", ("acc",), _winogrande),
        Task("arc_easy", ("acc", "acc_norm"), _arc),
        Task("arc_challenge", ("acc", "acc_norm"), _arc),
        Task("openbookqa", ("acc", "acc_norm"), _openbookqa),
        Task("piqa", ("acc", "acc_norm"), _piqa),
    )
}
assert set(TASKS) == set(EVAL_TASKS), "every evaluation source needs a prompt format"

# The paper's seven zero-shot tasks (BoolQ, RTE, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA).
PAPER_TASKS: tuple[str, ...] = (
    "boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
)  # fmt: skip


def _task_key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from ``"all"``, ``"paper"``, ``"a,b"`` or a list; unknown names raise.
    ``"none"`` or an empty list: no task (perplexity only); ``"none"`` with tasks raises."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    none_asked = False
    for raw in names:
        name = _task_key(raw)
        if name == "none":
            none_asked = True
        if name in ("", "none"):
            continue
        expanded = {"all": list(TASKS), "paper": list(PAPER_TASKS)}.get(name, [name])
        for task in expanded:
            if task not in TASKS:
                raise DataError(
                    f"unknown task {str(raw).strip()!r}; valid: {', '.join(TASKS)}, all, "
                    "paper, none"
                )
            if task not in out:
                out.append(task)
    if not out and names and not none_asked:
        raise DataError(f"no tasks given; valid: {', '.join(TASKS)}, all, paper, none")
    if none_asked and out:
        raise DataError(
            f"tasks {','.join(map(str, names))}: 'none' (no task, perplexity only) cannot be "
            "combined with tasks; give either 'none' or task names"
        )
    return out


def resolve_task(name: str) -> str:
    """The one task ``name`` names (any case, ``-`` for ``_``); ``DataError`` listing the
    valid names for anything else (``"all"``, ``"paper"``, ``"none"``, ``"a,b"``)."""
    key = _task_key(name)
    if key not in TASKS:
        raise DataError(f"{name!r} is not one task; name one of: {', '.join(TASKS)}")
    return key


def task_questions(name: str, limit: int | None = None) -> list[Question]:
    """The first ``limit`` questions (all when None) of task ``name``."""
    task = TASKS[resolve_task(name)]
    if limit is not None:
        limit = positive_count(limit, "limit")
    rows = eval_dataset(task.name)
    count = len(rows) if limit is None else min(limit, len(rows))
    try:
        return [task.question(rows[i]) for i in range(count)]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"evaluation data for {name!r} has an unexpected layout: {exc}") from exc
