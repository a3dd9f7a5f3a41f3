"""The main job: prune -> restore -> fold -> evaluate, with the baselines side by side.

For each sparsity pattern: prune the dense model with Wanda (or another method), then
restore it with RestoreLCC and with the baselines a user would otherwise pick (LoRA on
q/k/v/o with the same data and steps, training-free mean compensation; DoRA and LoFiT when
asked), fold, and evaluate everything on the same perplexity text and zero-shot tasks. The
report gives, per method, the fraction of the perplexity gap and of the mean-accuracy gap
closed (none where pruning lost nothing: ``gap_closed``; the accuracy on each task's
headline metric and on plain ``acc``, the paper's: ``demo_table``), every metric of every
task, the trainable parameters, the sparsity kept, the measured inference latency against
the pruned model and each step's time, and how the perplexity was measured (its windows
included).

Every model runs in ``DemoConfig.dtype`` (``--dtype``); pruning alone computes in float32
(as ``restorelcc prune`` does), on a float32 copy of the dense model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from restorelcc.assets import load_config, load_model
from restorelcc.baselines import (
    block_sparsity,
    check_dora_rows,
    lofit_baseline,
    lora_baseline,
    merged_sparsity,
    training_free,
)
from restorelcc.commands.dtypes import resolve_dtype
from restorelcc.data import (
    TooFewItemsError,
    calibration_batches,
    calibration_texts,
    instruction_pairs,
    perplexity_texts,
)
from restorelcc.demo_config import (
    DATA_SOURCES,
    DEMO_REPORT,
    DemoArgumentError,
    DemoConfig,
    flagged,
)
from restorelcc.demo_plot import plot
from restorelcc.demo_table import (
    UNMERGED_METHODS,
    Row,
    derived_rows,
    format_rows,
    headline_accuracy,
    sparsity_kept,
)
from restorelcc.evaluate import evaluate_model, headline_metric, perplexity_settings
from restorelcc.hf.families import check_length_fits, family_of, head_geometry
from restorelcc.io import atomic_write_json
from restorelcc.latency import interleaved_rounds, median_ratios
from restorelcc.lcc.config import RestoreConfig
from restorelcc.lcc.pipeline import StageTimer, restore
from restorelcc.lcc.probing import head_count
from restorelcc.output_dirs import atomic_directory
from restorelcc.provenance import run_metadata
from restorelcc.prune import prune_model
from restorelcc.prune.api import check_config
from restorelcc.prune.memory import check_calibration_memory
from restorelcc.prune.precision import cast_parameters
from restorelcc.prune.validate import CALIBRATED_METHODS

# The order of each pattern's restored rows (DemoConfig.methods picks which).
CANDIDATE_ORDER = ("lora", "dora", "training-free", "lofit", "restorelcc")
# How the calibration's messages name its sample count and length (DemoConfig's fields).
CALIBRATION_FLAGS = ("--calibration-samples", "--calibration-seqlen")


def folded_candidate(restoration, pruned: nn.Module, sparsity: float) -> tuple[nn.Module, dict]:
    """A copy of ``pruned`` with ``restoration`` (made from it in this run) folded, and its
    demo row's fields."""
    model = restoration.fold(copy.deepcopy(pruned), check=False)
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
    the median over rounds of the per-round ratio. Rounds interleave the models, who goes
    first rotating (``restorelcc.latency.interleaved_rounds``), so that a change of machine
    load hits them alike. Returns the ratio per model name."""
    ids = torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(next(iter(models.values())).parameters()).device)
    calls = {name: (lambda model=model: model(ids)) for name, model in models.items()}
    with torch.no_grad():
        times = interleaved_rounds(
            calls, rounds, sync=torch.cuda.synchronize if ids.is_cuda else None
        )
    return median_ratios(times, baseline)


class Demo:
    """Runs the configured job; ``run()`` returns the JSON-able report."""

    def __init__(self, config: DemoConfig):
        self.config = config
        # what --dtype means on the run's device: the models' dtype, pruning aside
        self.dtype = resolve_dtype(config.dtype, torch.device(config.device))
        self.rows: list[Row] = []
        self.stage = StageTimer()  # wall seconds of each step of run(), in order
        # how the perplexities were measured (source, tokens, window, stride): every model
        # of the run alike; None until one is evaluated
        self.perplexity_protocol: dict | None = None
        # what each data source named when read for the run (Sourced.origin), by field;
        # None for calibration where the pruning method takes none
        self.origins: dict[str, dict | None] = dict.fromkeys(DATA_SOURCES)
        self.ppl_texts: list[str] | None = None  # read by check_inputs(), scored for each row

    def evaluate(self, model: nn.Module, tokenizer, stage: str) -> dict:
        """``model`` evaluated on the configured text and tasks, timed as ``stage``."""
        c = self.config
        with self.stage(stage):
            evaluation = evaluate_model(
                model,
                tokenizer,
                tasks=list(c.tasks),
                limit=c.limit,
                ppl_tokens=c.ppl_tokens,
                ppl_source=c.ppl_source,
                ppl_texts=self.ppl_texts,
                progress=c.progress,
                ppl_window=c.ppl_window,
                ppl_stride=c.ppl_stride,
            )
        self.perplexity_protocol = perplexity_settings(evaluation["perplexity"])
        return evaluation

    def add_row(self, pattern: str, method: str, evaluation: dict, **fields) -> Row:
        row = Row(
            pattern=pattern,
            method=method,
            # None: exp(mean NLL) overflowed a float (PerplexityResult.as_dict)
            perplexity=evaluation["perplexity"]["perplexity"] or math.inf,
            accuracy=headline_accuracy(evaluation),
            metrics={task: dict(metrics) for task, metrics in evaluation["tasks"].items()},
            **fields,
        )
        self.rows.append(row)
        return row

    def check_inputs(self) -> list:
        """Every check that reads data or the model's config, before any model loads;
        returns the training pairs, and keeps the perplexity text (``self.ppl_texts``, what
        every row is scored on) and what each data source named when it was read here
        (``self.origins``: a file's sha256 of the bytes parsed; the calibration's is replaced
        by that of the read ``run`` tokenizes)."""
        c = self.config
        model_config = load_config(c.model)
        flagged(f"--model {c.model}", family_of, model_config)  # every method needs its family
        if c.prune_method in CALIBRATED_METHODS:
            label = f"--calibration-seqlen {c.calibration_seqlen}"
            flagged(label, check_length_fits, c.calibration_seqlen, model_config, label)
            flagged(
                CALIBRATION_FLAGS[0], check_calibration_memory, model_config, c.prune_method,
                c.calibration_samples, c.calibration_seqlen, c.device, flags=CALIBRATION_FLAGS,
            )  # fmt: skip
        for pattern in c.patterns:  # N:M input widths, the structured plan: from the config
            spec = c.prune_spec(pattern)
            named = c.spec_flags(spec.pattern.kind)
            flagged(f"--patterns {pattern}", check_config, model_config, spec, fields=named)
        if {"restorelcc", "lofit"} & set(c.methods):
            geometry = head_geometry(model_config)
            flagged("--heads", head_count, geometry, c.heads, fields={"heads": "--heads"})
        self.ppl_texts = flagged("--ppl-source", perplexity_texts, c.ppl_source)
        self.origins["ppl_source"] = self.ppl_texts.origin
        c.perplexity_windows(model_config)
        if c.prune_method in CALIBRATED_METHODS:
            texts = flagged("--calibration-source", calibration_texts, c.calibration_source, n=1)
            self.origins["calibration_source"] = texts.origin

        def train_pairs():
            try:
                return instruction_pairs(c.pairs_source, n=c.train_pairs, seed=c.seed)
            except TooFewItemsError as exc:  # the count is --train-pairs', not the source's
                raise DemoArgumentError(
                    f"--train-pairs {c.train_pairs}, but --pairs-source {c.pairs_source} "
                    f"holds {exc.held} pairs"
                ) from None

        pairs = flagged("--pairs-source", train_pairs)
        self.origins["pairs_source"] = pairs.origin
        return pairs

    def run(self, pairs: list | None = None) -> dict:
        """The job; ``pairs``: what ``check_inputs()`` returned, if it has run already.

        The dense model is read in float32 (``source``: each pattern prunes a copy of it);
        for another ``self.dtype`` the dense row, the restorations and the baselines use a
        copy in that dtype on the device, and ``source`` stays in host memory."""
        c = self.config
        start = time.perf_counter()
        torch.manual_seed(c.seed)
        pairs = self.check_inputs() if pairs is None else pairs
        with self.stage("load"):
            if self.dtype == torch.float32:
                source, tokenizer = load_model(c.model, dtype=torch.float32, device=c.device)
                dense = source
            else:
                source, _ = load_model(c.model, dtype=torch.float32, device="cpu")
                dense, tokenizer = load_model(c.model, dtype=self.dtype, device=c.device)
        c.perplexity_windows(dense.config, tokenizer)  # its tokenizer's limit too
        calibration = None
        if c.prune_method in CALIBRATED_METHODS:
            with self.stage("calibration data"):
                calibration = calibration_batches(
                    tokenizer,
                    c.calibration_source,
                    c.calibration_samples,
                    c.calibration_seqlen,
                    c.seed,
                    flags=CALIBRATION_FLAGS,
                )
            self.origins["calibration_source"] = calibration.origin  # the read it was made of
        evaluation = self.evaluate(dense, tokenizer, "evaluate dense")
        self.add_row("-", "dense", evaluation, sparsity=block_sparsity(dense))
        for pattern in c.patterns:
            self.run_pattern(source, dense, tokenizer, pattern, calibration, pairs)
        report = self.report()
        report["wall_s"] = round(time.perf_counter() - start, 1)
        return report

    def run_pattern(self, source, dense, tokenizer, pattern, calibration, pairs) -> None:
        """One pattern's rows: a copy of the float32 ``source`` pruned (in float32, as
        ``prune_model`` computes), then cast to ``self.dtype``, restored and evaluated
        beside ``dense`` (the source in that dtype)."""
        c = self.config
        spec = c.prune_spec(pattern)
        with self.stage(f"prune {pattern}"):
            pruned = copy.deepcopy(source).to(c.device)
            prune_model(
                pruned,
                spec.method,
                spec.sparsity,
                str(spec.pattern),
                calibration,
                calibration_source=c.calibration_source,
                channel_multiple=spec.channel_multiple,
                progress=c.progress,
            )
            cast_parameters(pruned, self.dtype)  # buffers as `dense` was loaded: inv_freq float32
        if "dora" in c.methods:  # a model DoRA cannot train: refused before it is scored
            check_dora_rows(pruned)
        sparsity = block_sparsity(pruned)
        label = f"pruned ({c.prune_method})"
        self.add_row(
            pattern,
            label,
            self.evaluate(pruned, tokenizer, f"evaluate {pattern} {label}"),
            sparsity=sparsity,
            sparsity_kept=sparsity_kept(sparsity, sparsity),
            latency_ratio=1.0,
        )
        candidates = {}
        for method in (m for m in CANDIDATE_ORDER if m in c.methods):
            with self.stage(f"restore {pattern} {method}"):
                candidates[method] = self.candidate(
                    method, dense, pruned, tokenizer, pairs, sparsity
                )
        with self.stage(f"latency {pattern}"):
            latency = forward_latency(
                {"pruned": pruned, **{k: m for k, (m, _) in candidates.items()}},
                dense.config.vocab_size,
                c.latency_rounds,
                baseline="pruned",
            )
        for method, (model, fields) in candidates.items():
            fields["latency_ratio"] = latency[method]
            evaluation = self.evaluate(model, tokenizer, f"evaluate {pattern} {method}")
            self.add_row(pattern, method, evaluation, **fields)

    def candidate(
        self, method: str, dense, pruned, tokenizer, pairs: list, sparsity: float
    ) -> tuple[nn.Module, dict]:
        """``pruned`` restored by ``method`` (one of ``CANDIDATE_ORDER``; ``pruned`` is left
        as it is), and its demo row's fields; ``sparsity``: the pruned model's block
        sparsity."""
        c = self.config
        if method in UNMERGED_METHODS:  # lora, dora (DoRA's magnitudes are trainable too)
            train = c.train_config(c.lora_lr)
            lora = lora_baseline(
                pruned, tokenizer, pairs, train, rank=c.lora_rank, dora=method == "dora"
            )
            merged = merged_sparsity(lora)
            return lora.model, {
                "trainable_parameters": lora.trainable_parameters,
                # the model evaluated: the pruned weights, the adapters beside them
                "sparsity": block_sparsity(lora.model.get_base_model()),
                "sparsity_kept": sparsity_kept(sparsity, merged),  # the adapters merged in
                "seconds": lora.train.seconds,
                "notes": {
                    "rank": c.lora_rank,
                    "final_loss": lora.train.final_loss,
                    "evaluated": "unmerged (merging would densify the weights)",
                    "sparsity": "of the pruned weights, the unmerged adapters beside them",
                    "sparsity_kept": "of the weights with the adapters merged into them",
                    "merged_sparsity": merged,
                },
            }
        if method == "training-free":
            restoration = training_free(
                dense,
                pruned,
                tokenizer,
                pairs[: c.probe_pairs],
                max_length=c.max_length,
                progress=c.progress,
            )
        elif method == "lofit":
            config = RestoreConfig(heads=c.heads, train=c.train_config(c.lr))
            restoration = lofit_baseline(pruned, tokenizer, pairs, config)
        elif method == "restorelcc":
            config = RestoreConfig(
                heads=c.heads,
                probe_pairs=c.probe_pairs,
                capture_max_length=c.max_length,
                train=c.train_config(c.lr),
            )
            restoration = restore(dense, pruned, tokenizer, pairs, config)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(CANDIDATE_ORDER)}")
        return folded_candidate(restoration, pruned, sparsity)

    def derived(self) -> list[dict]:
        """The rows as JSON, with the gap-closed fractions (``demo_table.derived_rows``)."""
        return derived_rows(self.rows)

    def table(self) -> str:
        """The text table, with its notes (``demo_table.format_rows``)."""
        return format_rows(self.derived(), self.perplexity_protocol)

    def report(self) -> dict:
        return {
            "config": asdict(self.config),
            # what config's pairs_source, calibration_source and ppl_source named when
            # read: the pairs trained on, the calibration tokenized, the text scored
            **{f"{name}_origin": origin for name, origin in self.origins.items()},
            "dtype": str(self.dtype).removeprefix("torch."),  # what --dtype meant here
            # which metric each task's number in rows[i]["accuracy"] is (and so what
            # mean_accuracy and acc_gap_closed average); rows[i]["metrics"] holds them all,
            # mean_plain_acc and plain_acc_gap_closed are on plain acc: the paper's
            "accuracy_metric": {task: headline_metric(task) for task in self.config.tasks},
            "perplexity_protocol": self.perplexity_protocol,
            "rows": self.derived(),
            # wall seconds per step, in run order: load, calibration data, evaluate dense,
            # then per pattern prune, evaluate <pattern> pruned (...), restore <pattern>
            # <method>, latency <pattern>, evaluate <pattern> <method>
            "stages": {name: round(t, 1) for name, t in self.stage.seconds.items()},
            "run_metadata": run_metadata(),
        }


def run_demo(config: DemoConfig, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Run the job, write ``report.json`` and ``plot.png`` into ``out_dir``, return the
    report (with the text table under ``"table"``).

    ``out_dir`` is refused at once if it is a file, or a non-empty directory unless
    ``overwrite``; it appears (or is replaced) only when the whole job has succeeded."""
    demo = Demo(config)
    pairs = demo.check_inputs()  # before the folder is made: bad input leaves nothing
    with atomic_directory(out_dir, overwrite=overwrite, replaces=DEMO_REPORT) as tmp:
        report = demo.run(pairs)
        report["table"] = demo.table()
        atomic_write_json(tmp / DEMO_REPORT, report)
        plot(report, tmp / "plot.png")
    return report
