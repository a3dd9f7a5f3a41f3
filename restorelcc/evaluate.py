"""Evaluate a causal LM in process: zero-shot multiple choice and perplexity.

``evaluate_model(model, tokenizer, tasks="paper", limit=200)`` scores the first ``limit``
items of each task by log-likelihood, on the splits lm-evaluation-harness 0.4 scores, with
its prompts (``restorelcc.eval.tasks``) and its tokenization of context and continuation
(no special tokens but, for Gemma, a BOS in front: ``restorelcc.eval.scoring``, which
also batches), and, unless turned off, the sliding-window perplexity on LAMBADA passages
(``restorelcc.eval.perplexity``; ``ppl_window`` and ``ppl_stride`` set its windows). Works
for any Hugging Face causal LM, including pruned and restored ones and the tiny test models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from restorelcc.data import positive_count
from restorelcc.eval.perplexity import (
    DEFAULT_TOKENS,
    PerplexityResult,
    perplexity,
    perplexity_documents,
    perplexity_report,
    perplexity_windows,
    windows_per_forward,
)
from restorelcc.eval.scoring import Score, loglikelihoods, model_max_length
from restorelcc.eval.tasks import (
    PAPER_TASKS,
    TASKS,
    Question,
    resolve_task,
    resolve_tasks,
    task_questions,
)
from restorelcc.hf.families import check_is_model, eval_mode
from restorelcc.io import counted

__all__ = [
    "DEFAULT_TOKENS",
    "PAPER_TASKS",
    "TASKS",
    "PerplexityResult",
    "evaluate_model",
    "evaluate_task",
    "loglikelihoods",
    "perplexity",
    "perplexity_protocol",
    "perplexity_settings",
    "perplexity_report",
    "resolve_tasks",
]


# One headline metric per task: length-normalised accuracy where the harness's convention
# is to report it (answers of very different lengths), plain accuracy elsewhere.
HEADLINE_METRIC = {
    "hellaswag": "acc_norm",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}


def headline_metric(task: str) -> str:
    """The metric that stands for ``task``'s accuracy in summaries: ``acc`` or ``acc_norm``."""
    return HEADLINE_METRIC.get(task, "acc")


def perplexity_settings(ppl: dict) -> dict:
    """How a perplexity (``PerplexityResult.as_dict``) was measured: its ``source``,
    ``tokens`` scored, ``window`` and ``stride``, as the reports record them."""
    return {key: ppl[key] for key in ("source", "tokens", "window", "stride")}


def perplexity_protocol(ppl: dict) -> str:
    """``perplexity_settings`` as the summaries print them: ``lambada, 4096 tokens, window
    512, stride 256``, then ``, in bfloat16`` where ``ppl`` records the ``dtype`` the
    models were scored in (``prune --eval``'s and ``restore --eval``'s evaluations)."""
    tokens = counted(ppl["tokens"], "token")
    dtype = f", in {ppl['dtype']}" if ppl.get("dtype") else ""
    return f"{ppl['source']}, {tokens}, window {ppl['window']}, stride {ppl['stride']}{dtype}"


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and the standard error of the mean (sample standard deviation, as the harness)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def _first_argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_questions(questions: Sequence[Question], scores: Sequence[Score]) -> dict[str, list]:
    """Per-question correctness under ``acc`` (raw log-likelihood) and ``acc_norm``
    (log-likelihood divided by the choice's length in characters)."""
    acc, acc_norm, at = [], [], 0
    for q in questions:
        lls = [s.logprob for s in scores[at : at + len(q.continuations)]]
        at += len(q.continuations)
        acc.append(float(_first_argmax(lls) == q.gold))
        normed = [ll / max(len(c), 1) for ll, c in zip(lls, q.choices, strict=True)]
        acc_norm.append(float(_first_argmax(normed) == q.gold))
    return {"acc": acc, "acc_norm": acc_norm}


def evaluate_task(
    model,
    tokenizer,
    task: str,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    share_context: bool = True,
) -> dict:
    """Metrics of one task: ``{"items", "requests", <metric>, <metric>_stderr, ...}``.

    ``task``: one task name (``DataError`` for anything else, e.g. ``"all"``; use
    ``evaluate_model`` for several). ``share_context=False`` scores every choice in its own
    row (slower; same results up to float rounding). Raises ``NonFiniteError`` if the model
    gives a NaN or inf log-likelihood, ``NotAModelError`` where ``model`` is not one.
    """
    name = resolve_task(task)
    check_is_model(model)
    questions = task_questions(name, limit)
    requests = [
        (ctx, cont)
        for q in questions
        for ctx, cont in zip(q.contexts, q.continuations, strict=True)
    ]
    with eval_mode(model):
        scores = loglikelihoods(
            model, tokenizer, requests, batch_size, progress, name, share_context
        )
    per_question = score_questions(questions, scores)
    result: dict = {"items": len(questions), "requests": len(requests)}
    for metric in TASKS[name].metrics:
        result[metric], result[f"{metric}_stderr"] = _mean_and_stderr(per_question[metric])
    return result


def evaluate_model(
    model,
    tokenizer,
    tasks: str | Sequence[str] = "paper",
    limit: int | None = None,
    perplexity: bool = True,
    ppl_tokens: int = DEFAULT_TOKENS,
    ppl_source: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    ppl_window: int | None = None,
    ppl_stride: int | None = None,
    ppl_texts: Sequence[str] | None = None,
) -> dict:
    """Evaluate ``model`` on ``tasks`` (names, ``"all"`` or ``"paper"``) and perplexity.

    The perplexity scores ``ppl_texts``, documents the caller read (``perplexity_texts``:
    their ``origin`` then describes what was scored; ``ppl_source`` names them, None:
    ``"texts"``), else ``perplexity_texts(ppl_source)`` (None: ``DEFAULT_PERPLEXITY_SOURCE``),
    read once before the tasks, so that a missing or empty source fails before them.
    ``ppl_window``, ``ppl_stride``: the perplexity's windows (``perplexity_report``'s
    ``window`` and ``stride``; None: 512 or the model's length, and half the window).
    Returns ``{"tasks": {name: metrics}, "limit", "perplexity": PerplexityResult as a dict
    or None, "wall_s"}`` (JSON-ready: a perplexity that overflows a float is ``None``, see
    ``PerplexityResult.as_dict``). Deterministic for a given model, data and batch size.
    ``NotAModelError`` where ``model`` is not one (e.g. ``load_model``'s whole
    ``(model, tokenizer)`` pair).
    """
    names = resolve_tasks(tasks)
    # bad counts fail here, not after the tasks that run before perplexity
    if limit is not None:
        positive_count(limit, "limit")
    positive_count(batch_size, "batch_size")
    if perplexity:
        positive_count(ppl_tokens, "ppl_tokens")
        ppl_texts, ppl_source = perplexity_documents(ppl_texts, ppl_source)
    check_is_model(model)  # before the first task, not a failure deep in it
    if perplexity:  # a window and stride the model cannot take fail before the tasks
        window, _ = perplexity_windows(
            ppl_window, ppl_stride, model_max_length(model, tokenizer), ("ppl_window", "ppl_stride")
        )
        ppl_batch = windows_per_forward(window, batch_size // 4)
    start = time.perf_counter()
    report: dict = {"tasks": {}, "limit": limit, "perplexity": None}
    for name in names:
        task_start = time.perf_counter()
        report["tasks"][name] = evaluate_task(model, tokenizer, name, limit, batch_size, progress)
        report["tasks"][name]["wall_s"] = round(time.perf_counter() - task_start, 2)
    if perplexity:
        with eval_mode(model):
            result = perplexity_report(
                model,
                tokenizer,
                texts=ppl_texts,
                source=ppl_source,
                tokens=ppl_tokens,
                window=ppl_window,
                stride=ppl_stride,
                batch_size=ppl_batch,
                progress=progress,
            )
        report["perplexity"] = result.as_dict()
    report["wall_s"] = round(time.perf_counter() - start, 2)
    return report
