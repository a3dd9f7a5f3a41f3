"""The demo's rows and table: one ``Row`` per evaluated model, the fractions of the
perplexity and accuracy gaps that each method closes, and the text table.

Accuracy comes two ways. The headline (``accuracy``, ``mean_accuracy``, ``acc_gap_closed``)
takes each task's headline metric (``evaluate.headline_metric``: ``acc_norm`` for HellaSwag,
ARC-Challenge and OpenBookQA). The paper's figures (LLaMA-7B dense 59.99, its fractions of
the gap closed) take plain ``acc`` on every task, as Wanda's lm-eval protocol does: here
``mean_plain_acc`` and ``plain_acc_gap_closed``."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from restorelcc.evaluate import headline_metric, perplexity_protocol
from restorelcc.io import format_table

# Methods whose rows are evaluated and timed with their adapters unmerged, beside the
# pruned weights, while their sparsity kept is of the adapters merged into them.
UNMERGED_METHODS = ("lora", "dora")


@dataclass
class Row:
    """One evaluated model of the demo table."""

    pattern: str
    method: str
    perplexity: float
    accuracy: dict[str, float]  # each task's headline metric
    # every metric the scorer gives, by task: items, requests, acc, acc_stderr, acc_norm...
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    trainable_parameters: int = 0
    # block sparsity of the model evaluated (lora, dora: of the pruned weights under their
    # unmerged adapters)
    sparsity: float | None = None
    # the share of the pruned model's zeros left with the restoration in the weights: folded
    # (restorelcc, lofit, training-free) or merged (lora, dora: evaluated unmerged)
    sparsity_kept: float | None = None
    latency_ratio: float | None = None
    # wall seconds spent making the restoration (lora, dora: training; the others: the steps
    # their report's "seconds" times); None on rows that have none (dense, pruned: the demo
    # report's "stages" time those)
    seconds: float | None = None
    notes: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """The mean of each task's headline metric."""
        return statistics.fmean(self.accuracy.values()) if self.accuracy else float("nan")

    @property
    def mean_plain_acc(self) -> float:
        """The mean of plain ``acc`` over the tasks: the paper's mean accuracy."""
        values = [metrics["acc"] for metrics in self.metrics.values()]
        return statistics.fmean(values) if values else float("nan")


def headline_accuracy(evaluation: dict) -> dict[str, float]:
    return {name: metrics[headline_metric(name)] for name, metrics in evaluation["tasks"].items()}


def differs_from_plain(tasks) -> bool:
    """Whether some task of ``tasks`` has a headline metric other than plain ``acc``, so that
    the headline mean is not the paper's."""
    return any(headline_metric(task) != "acc" for task in tasks)


def accuracy_column(task: str) -> str:
    """The table's header for ``task``: its name, with the metric where it is not ``acc``
    (``hellaswag (acc_norm)``)."""
    metric = headline_metric(task)
    return task if metric == "acc" else f"{task} ({metric})"


def gap_closed(
    pruned: float, method: float, dense: float, *, higher_is_better: bool
) -> float | None:
    """The fraction of what pruning lost that ``method`` wins back, ``(method - pruned) /
    (dense - pruned)``: 1 = back to dense, 0 = no better than pruned, negative = worse.
    ``higher_is_better``: the metric's direction (accuracy: ``True``, perplexity:
    ``False``).

    ``None`` when pruning lost nothing (the pruned score as good as the dense one or
    better: the formula would read a method's regression there as a gain) or an infinite
    amount (a pruned perplexity that overflowed)."""
    loss = dense - pruned if higher_is_better else pruned - dense
    return (method - pruned) / (dense - pruned) if 1e-12 < loss < math.inf else None


def sparsity_kept(pruned: float, candidate: float) -> float | None:
    """``candidate / pruned`` block sparsity: the fraction of the pruned model's zeros still
    there. ``None`` when the pruned model has no zeros (structured pruning: its savings are
    in the shapes, which every method here keeps)."""
    return None if pruned == 0 else candidate / pruned


def derived_rows(rows: list[Row]) -> list[dict]:
    """``rows`` (dense first, then each pattern's pruned row and its methods' rows) as
    dicts, with the gap-closed fractions relative to dense and the pattern's pruned row."""
    dense = rows[0]
    out = []
    pruned = None
    for row in rows:
        if row.method.startswith("pruned"):
            pruned = row
        entry = asdict(row) | {
            "mean_accuracy": row.mean_accuracy,
            "mean_plain_acc": row.mean_plain_acc,
        }
        if pruned is not None and row is not pruned and row.pattern == pruned.pattern:
            entry["ppl_gap_closed"] = gap_closed(
                pruned.perplexity, row.perplexity, dense.perplexity, higher_is_better=False
            )
            means = {"acc_gap_closed": "mean_accuracy", "plain_acc_gap_closed": "mean_plain_acc"}
            for key, mean in means.items():
                before, after, target = (getattr(r, mean) for r in (pruned, row, dense))
                entry[key] = gap_closed(before, after, target, higher_is_better=True)
        out.append(entry)
    return out


def format_rows(entries: list[dict], perplexity: dict | None = None) -> str:
    """The demo table of ``derived_rows``' entries, then notes: which accuracy is the
    paper's, where the headline is not, which model the unmerged methods' (lora, dora)
    sparsity kept is of, where they have rows, and how ``perplexity`` (a
    ``PerplexityResult``'s fields: source, tokens, window, stride) was measured, if given."""
    plain = bool(entries) and differs_from_plain(entries[0]["accuracy"])
    rows = []
    for entry in entries:
        cells = {
            "pattern": entry["pattern"],
            "method": entry["method"],
            "ppl": entry["perplexity"],
        }
        cells |= {accuracy_column(task): acc for task, acc in entry["accuracy"].items()}
        cells["mean acc"] = entry["mean_accuracy"]
        if plain:
            cells["paper mean acc"] = entry["mean_plain_acc"]
        cells |= {
            "ppl gap closed": _percent(entry.get("ppl_gap_closed")),
            "acc gap closed": _percent(entry.get("acc_gap_closed")),
        }
        if plain:
            cells["paper acc gap closed"] = _percent(entry.get("plain_acc_gap_closed"))
        cells |= {
            "trainable": f"{entry['trainable_parameters']:,}",  # 921,600
            "sparsity kept": _percent(entry["sparsity_kept"]),
            "latency": None if entry["latency_ratio"] is None else f"{entry['latency_ratio']:.2f}x",
        }
        rows.append(cells)
    notes = []
    if plain:
        notes.append(
            "paper mean acc, paper acc gap closed: plain acc on every task, the paper's metric; "
            "mean acc, acc gap closed: the task columns as headed (acc_norm where marked)"
        )
    unmerged = sorted({e["method"] for e in entries} & set(UNMERGED_METHODS))
    if unmerged:
        notes.append(
            f"{', '.join(unmerged)}: evaluated and timed with the adapters unmerged, beside "
            "the pruned weights; their sparsity kept is with the adapters merged into them"
        )
    if perplexity is not None:
        notes.append(f"ppl: perplexity ({perplexity_protocol(perplexity)})")
    return "\n".join([format_table(rows), *([""] + notes if notes else [])])


def _percent(value: float | None) -> str | None:
    """``value`` as a whole percentage (``-0.07`` -> ``-7%``); one that rounds to zero is
    ``0%``, never ``-0%``."""
    if value is None:
        return None
    text = f"{100 * value:.0f}"
    return f"{'0' if text == '-0' else text}%"
