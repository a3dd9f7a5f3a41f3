"""The main job: prune -> restore -> fold -> evaluate, with the baselines side by side.

For each sparsity pattern: prune the dense model with Wanda (or another method), then
restore it with RestoreLCC and with the baselines a user would otherwise pick (LoRA on
q/k/v/o with the same data and steps, training-free mean compensation; LoFiT when asked),
fold, and evaluate everything on the same perplexity text and zero-shot tasks. The report
gives, per method, the fraction of the perplexity gap and of the mean-accuracy gap closed,
the trainable parameters, the sparsity kept and the measured inference latency against the
pruned model.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from restorelcc.assets import DEFAULT_MODEL, load_config, load_model
from restorelcc.baselines import (
    block_sparsity,
    lofit_baseline,
    lora_baseline,
    merged_sparsity,
    training_free,
)
from restorelcc.data import (
    calibration_batches,
    calibration_texts,
    instruction_pairs,
    perplexity_texts,
)
from restorelcc.errors import RestoreLCCError
from restorelcc.evaluate import PAPER_TASKS, evaluate_model, resolve_tasks
from restorelcc.hf.families import head_geometry
from restorelcc.io import atomic_directory, atomic_write_json, format_table, run_metadata
from restorelcc.lcc.pipeline import RestoreConfig, restore
from restorelcc.lcc.probing import head_count
from restorelcc.lcc.train import TrainConfig
from restorelcc.prune import prune_model
from restorelcc.prune.masks import parse_pattern
from restorelcc.prune.validate import CALIBRATED_METHODS, PruneSpec, check_model, check_spec
from restorelcc.prune.validate import METHODS as PRUNE_METHODS

METHODS = ("lora", "lofit", "training-free", "restorelcc")
DEFAULT_METHODS = ("lora", "training-free", "restorelcc")  # LoFiT trains twice: opt in
# One headline metric per task: length-normalised accuracy where the harness's convention
# is to report it (answers of very different lengths), plain accuracy elsewhere.
HEADLINE_METRIC = {
    "hellaswag": "acc_norm",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}
# What ``--paper`` changes: the paper's budget (hours on a CPU).
PAPER_SETTINGS = dict(
    calibration_samples=128,
    calibration_seqlen=2048,
    train_pairs=2000,
    probe_pairs=1000,
    epochs=3,
    max_length=500,
    tasks=PAPER_TASKS,  # the 7 tasks of the paper
    limit=None,
    ppl_tokens=65536,
)
# DemoConfig fields that must be integers >= 1.
POSITIVE_FIELDS = (
    "calibration_samples",
    "calibration_seqlen",
    "train_pairs",
    "probe_pairs",
    "lora_rank",
    "epochs",
    "batch_size",
    "max_length",
    "ppl_tokens",
    "latency_rounds",
)


class DemoArgumentError(RestoreLCCError, ValueError):
    """A demo setting that cannot be carried out; the message names its ``demo`` option."""


def option(field_name: str) -> str:
    """The ``restorelcc demo`` option of a ``DemoConfig`` field: ``train_pairs`` ->
    ``--train-pairs``."""
    return "--" + field_name.replace("_", "-")


def _flagged(flag: str, check, *args, **kwargs):
    """``check(*args, **kwargs)``, its error re-raised as one naming the option ``flag``."""
    try:
        return check(*args, **kwargs)
    except (RestoreLCCError, ValueError) as exc:
        raise DemoArgumentError(f"{flag}: {exc}") from None


@dataclass
class DemoConfig:
    """Budget of the demo. Defaults fit ~25-30 minutes on 2 CPU cores for ``smollm2-135m``;
    ``paper()`` gives the paper's settings (hours on a CPU). Each field is the ``restorelcc
    demo`` option of the same name (``option(name)``); construction checks every setting
    that needs no data or model, and its errors name those options."""

    model: str = DEFAULT_MODEL
    prune_method: str = "wanda"
    patterns: tuple[str, ...] = ("unstructured", "2:4")
    sparsity: float = 0.5
    structured_sparsity: float = 0.2  # for the "heads" pattern (paper: 20% structured)
    calibration_source: str = "mix"
    calibration_samples: int = 32
    calibration_seqlen: int = 256
    pairs_source: str = "mix"
    train_pairs: int = 192
    probe_pairs: int = 128
    heads: int | float = 0.25  # a count, or a fraction of all heads
    lr: float = 1e-3
    lora_lr: float = 1e-3
    lora_rank: int = 8
    epochs: int = 1
    batch_size: int = 8
    max_length: int = 256
    tasks: tuple[str, ...] = ("arc_easy", "piqa", "hellaswag")
    limit: int | None = 100
    ppl_tokens: int = 4096
    ppl_source: str = "lambada"  # or a user text source (perplexity_texts), e.g. WikiText-2
    methods: tuple[str, ...] = DEFAULT_METHODS
    latency_rounds: int = 15
    seed: int = 0
    progress: bool = True
    device: str = "cpu"

    @classmethod
    def paper(cls, **overrides) -> DemoConfig:
        """The paper's budget (``PAPER_SETTINGS``); ``overrides`` win over it."""
        return cls(**(PAPER_SETTINGS | overrides))

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise DemoArgumentError(
                f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}"
            )
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DemoArgumentError(f"{option(name)} must be positive, got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise DemoArgumentError(
                f"--limit must be a positive count or 'all', got {self.limit!r}"
            )
        # The training checks are TrainConfig's and RestoreConfig's, one setting at a time.
        _flagged("--max-length", TrainConfig, max_length=self.max_length)
        _flagged("--lr", TrainConfig, lr=self.lr)
        _flagged("--lora-lr", TrainConfig, lr=self.lora_lr)
        if "restorelcc" in self.methods:
            _flagged("--probe-pairs", RestoreConfig, probe_pairs=self.probe_pairs)
        if self.prune_method not in PRUNE_METHODS:
            raise DemoArgumentError(
                f"--prune-method must be one of {', '.join(PRUNE_METHODS)}, "
                f"got {self.prune_method!r}"
            )
        if not self.patterns:
            raise DemoArgumentError("--patterns: give at least one sparsity pattern")
        self.patterns = tuple(str(self.prune_spec(pattern).pattern) for pattern in self.patterns)
        self.tasks = tuple(_flagged("--tasks", resolve_tasks, self.tasks))
        if not self.tasks:
            raise DemoArgumentError("--tasks: the demo compares accuracy: give at least one task")

    def prune_spec(self, pattern: str) -> PruneSpec:
        """The pruning request for one of ``patterns``, checked by ``check_spec`` (errors
        name the option at fault: ``--patterns``, ``--sparsity`` or ``--structured-sparsity``)."""
        parsed = _flagged("--patterns", parse_pattern, pattern)
        if parsed.kind == "heads":
            flag, sparsity = "--structured-sparsity", self.structured_sparsity
        else:
            flag, sparsity = "--sparsity", self.sparsity
        # the sparsity on its own first, so that its error names its own option
        _flagged(flag, check_spec, self.prune_method, sparsity, "unstructured")
        return _flagged(
            f"--patterns {parsed} with {flag} {float(sparsity):g}",
            check_spec,
            self.prune_method,
            sparsity,
            parsed,
        )

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(
            lr=lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
            progress=self.progress,
        )


@dataclass
class Row:
    """One evaluated model of the demo table."""

    pattern: str
    method: str
    perplexity: float
    accuracy: dict[str, float]
    trainable_parameters: int = 0
    sparsity: float | None = None
    sparsity_kept: float | None = None
    latency_ratio: float | None = None
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        return statistics.fmean(self.accuracy.values()) if self.accuracy else float("nan")


def headline_accuracy(evaluation: dict) -> dict[str, float]:
    return {
        name: metrics[HEADLINE_METRIC.get(name, "acc")]
        for name, metrics in evaluation["tasks"].items()
    }


def gap_closed(pruned: float, method: float, dense: float) -> float | None:
    """``(method - pruned) / (dense - pruned)``: 1 = back to dense, 0 = no better than
    pruned, negative = worse. ``None`` when pruning left no gap."""
    gap = dense - pruned
    return None if abs(gap) < 1e-12 else (method - pruned) / gap


def folded_candidate(restoration, pruned: nn.Module, sparsity: float) -> tuple[nn.Module, dict]:
    """A copy of ``pruned`` with ``restoration`` folded, and its demo row's fields."""
    model = restoration.fold(copy.deepcopy(pruned))
    train = restoration.report.get("train")
    fields = {
        "trainable_parameters": restoration.trainable_parameters,
        "sparsity": block_sparsity(model),
        "sparsity_kept": sparsity_kept(sparsity, block_sparsity(model)),
        "seconds": sum(restoration.report["seconds"].values()),
    }
    if train:
        fields["notes"] = {
            "selected_heads": int(restoration.heads.shape[0]),
            "stage_seconds": restoration.report["seconds"],
            "final_loss": train["final_loss"],
        }
    return model, fields


def forward_latency(
    models: dict[str, nn.Module], vocab: int, rounds: int, baseline: str
) -> dict[str, float]:
    """Forward time of each model relative to ``models[baseline]`` on one 128-token sequence:
    the median over rounds of the per-round ratio. Rounds interleave the models so that a
    change of machine load hits them alike. Returns the ratio per model name."""
    ids = torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(next(iter(models.values())).parameters()).device)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(ids)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                sync()
                start = time.perf_counter()
                model(ids)
                sync()
                times[name].append(time.perf_counter() - start)
    return {
        name: statistics.median(t / b for t, b in zip(times[name], times[baseline], strict=True))
        for name in models
    }


def sparsity_kept(pruned: float, candidate: float) -> float | None:
    """``candidate / pruned`` block sparsity: the fraction of the pruned model's zeros still
    there. ``None`` when the pruned model has no zeros (structured pruning: its savings are
    in the shapes, which every method here keeps)."""
    return None if pruned == 0 else candidate / pruned


class Demo:
    """Runs the configured job; ``run()`` returns the JSON-able report."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.rows: list[Row] = []
        self.log: dict = {"stages": {}}

    def evaluate(self, model: nn.Module, tokenizer) -> dict:
        c = self.config
        return evaluate_model(
            model,
            tokenizer,
            tasks=list(c.tasks),
            limit=c.limit,
            ppl_tokens=c.ppl_tokens,
            ppl_source=c.ppl_source,
            progress=c.progress,
        )

    def add_row(self, pattern: str, method: str, evaluation: dict, **fields) -> Row:
        row = Row(
            pattern=pattern,
            method=method,
            perplexity=evaluation["perplexity"]["perplexity"],
            accuracy=headline_accuracy(evaluation),
            **fields,
        )
        self.rows.append(row)
        return row

    def check_inputs(self) -> list:
        """Every check that reads data or the model's config, before any model loads;
        returns the training pairs."""
        c = self.config
        if {"restorelcc", "lofit"} & set(c.methods):
            geometry = head_geometry(load_config(c.model))
            _flagged("--heads", head_count, geometry, c.heads)
        _flagged("--ppl-source", perplexity_texts, c.ppl_source, n=1)
        if c.prune_method in CALIBRATED_METHODS:
            _flagged("--calibration-source", calibration_texts, c.calibration_source, n=1)
        return _flagged(
            "--pairs-source", instruction_pairs, c.pairs_source, n=c.train_pairs, seed=c.seed
        )

    def run(self) -> dict:
        c = self.config
        start = time.perf_counter()
        torch.manual_seed(c.seed)
        pairs = self.check_inputs()
        dense, tokenizer = load_model(c.model, device=c.device)
        for pattern in c.patterns:  # N:M needs input widths divisible by M
            _flagged(f"--patterns {pattern}", check_model, dense, c.prune_spec(pattern))
        calibration = None
        if c.prune_method in CALIBRATED_METHODS:
            calibration = calibration_batches(
                tokenizer,
                c.calibration_source,
                c.calibration_samples,
                c.calibration_seqlen,
                c.seed,
            )
        self.add_row("-", "dense", self.evaluate(dense, tokenizer), sparsity=block_sparsity(dense))
        for pattern in c.patterns:
            self.run_pattern(dense, tokenizer, pattern, calibration, pairs)
        report = self.report()
        report["wall_s"] = round(time.perf_counter() - start, 1)
        return report

    def run_pattern(self, dense, tokenizer, pattern, calibration, pairs) -> None:
        c = self.config
        pruned = copy.deepcopy(dense)
        spec = c.prune_spec(pattern)
        prune_report = prune_model(
            pruned,
            spec.method,
            spec.sparsity,
            str(spec.pattern),
            calibration,
            calibration_source=c.calibration_source,
            progress=c.progress,
        )
        sparsity = block_sparsity(pruned)
        self.log["stages"][f"prune {pattern}"] = round(prune_report.seconds, 1)
        self.add_row(
            pattern,
            f"pruned ({c.prune_method})",
            self.evaluate(pruned, tokenizer),
            sparsity=sparsity,
            sparsity_kept=sparsity_kept(sparsity, sparsity),
            latency_ratio=1.0,
        )
        candidates: dict[str, tuple[nn.Module, dict]] = {}
        if "lora" in c.methods:
            lora = lora_baseline(
                pruned, tokenizer, pairs, c.train_config(c.lora_lr), rank=c.lora_rank
            )
            candidates["lora"] = (
                lora.model,
                {
                    "trainable_parameters": lora.trainable_parameters,
                    "sparsity": block_sparsity(lora.model.get_base_model()),
                    "sparsity_kept": sparsity_kept(sparsity, merged_sparsity(lora)),
                    "seconds": lora.train.seconds,
                    "notes": {
                        "rank": c.lora_rank,
                        "final_loss": lora.train.final_loss,
                        "evaluated": "unmerged (merging would densify the weights)",
                    },
                },
            )
        if "training-free" in c.methods:
            free = training_free(
                dense,
                pruned,
                tokenizer,
                pairs[: c.probe_pairs],
                max_length=c.max_length,
                progress=c.progress,
            )
            candidates["training-free"] = folded_candidate(free, pruned, sparsity)
        if "lofit" in c.methods:
            lofit = lofit_baseline(
                pruned, tokenizer, pairs, RestoreConfig(heads=c.heads, train=c.train_config(c.lr))
            )
            candidates["lofit"] = folded_candidate(lofit, pruned, sparsity)
        if "restorelcc" in c.methods:
            config = RestoreConfig(
                heads=c.heads,
                probe_pairs=c.probe_pairs,
                capture_max_length=c.max_length,
                train=c.train_config(c.lr),
            )
            restoration = restore(dense, pruned, tokenizer, pairs, config)
            candidates["restorelcc"] = folded_candidate(restoration, pruned, sparsity)
        latency = forward_latency(
            {"pruned": pruned, **{k: m for k, (m, _) in candidates.items()}},
            dense.config.vocab_size,
            c.latency_rounds,
            baseline="pruned",
        )
        for method, (model, fields) in candidates.items():
            fields["latency_ratio"] = latency[method]
            self.add_row(pattern, method, self.evaluate(model, tokenizer), **fields)

    def derived(self) -> list[dict]:
        """Rows with the gap-closed fractions, relative to dense and the pattern's pruned."""
        dense = self.rows[0]
        out = []
        pruned = None
        for row in self.rows:
            if row.method.startswith("pruned"):
                pruned = row
            entry = asdict(row) | {"mean_accuracy": row.mean_accuracy}
            if pruned is not None and row is not pruned and row.pattern == pruned.pattern:
                entry["ppl_gap_closed"] = gap_closed(
                    pruned.perplexity, row.perplexity, dense.perplexity
                )
                entry["acc_gap_closed"] = gap_closed(
                    pruned.mean_accuracy, row.mean_accuracy, dense.mean_accuracy
                )
            out.append(entry)
        return out

    def table(self) -> str:
        rows = []
        for entry in self.derived():
            cells = {
                "pattern": entry["pattern"],
                "method": entry["method"],
                "ppl": entry["perplexity"],
            }
            cells |= {task: acc for task, acc in entry["accuracy"].items()}
            cells |= {
                "mean acc": entry["mean_accuracy"],
                "ppl gap closed": _percent(entry.get("ppl_gap_closed")),
                "acc gap closed": _percent(entry.get("acc_gap_closed")),
                "trainable": entry["trainable_parameters"],
                "sparsity kept": _percent(entry["sparsity_kept"]),
                "latency": None
                if entry["latency_ratio"] is None
                else f"{entry['latency_ratio']:.2f}x",
            }
            rows.append(cells)
        return format_table(rows)

    def report(self) -> dict:
        return {
            "config": asdict(self.config),
            "rows": self.derived(),
            "stages": self.log["stages"],
            "run_metadata": run_metadata(),
        }


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.0f}%"


def plot(report: dict, path: str | Path) -> Path:
    """Perplexity and mean accuracy per method and pattern, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    dense = rows[0]
    patterns = list(dict.fromkeys(r["pattern"] for r in rows[1:]))
    fig, axes = plt.subplots(len(patterns), 2, figsize=(10, 3.2 * len(patterns)), squeeze=False)
    for i, pattern in enumerate(patterns):
        group = [r for r in rows if r["pattern"] == pattern]
        names = [r["method"] for r in group]
        for ax, key, label in (
            (axes[i][0], "perplexity", "perplexity (lower is better)"),
            (axes[i][1], "mean_accuracy", "mean zero-shot accuracy"),
        ):
            ax.bar(names, [r[key] for r in group], color="tab:blue")
            ax.axhline(dense[key], color="tab:green", linestyle="--", label="dense")
            ax.set_title(f"{pattern}: {label}", fontsize=10)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
            ax.legend(fontsize=8)
        axes[i][0].set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_demo(config: DemoConfig, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Run the job, write ``report.json`` and ``plot.png`` into ``out_dir``, return the
    report (with the text table under ``"table"``).

    ``out_dir`` is refused at once if it is a file, or a non-empty directory unless
    ``overwrite``; it appears (or is replaced) only when the whole job has succeeded."""
    demo = Demo(config)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        report = demo.run()
        report["table"] = demo.table()
        atomic_write_json(tmp / "report.json", report)
        plot(report, tmp / "plot.png")
    return report
