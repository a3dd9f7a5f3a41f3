"""The demo's settings: ``DemoConfig``, one field per ``restorelcc demo`` option, checked
when built (errors name the option), and the paper's budget."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from restorelcc.assets import DEFAULT_MODEL
from restorelcc.commands.dtypes import DTYPES
from restorelcc.commands.options import (
    check_perplexity_options,
    flag,
    name_flags,
    resolve_device,
)
from restorelcc.data import DEFAULT_PERPLEXITY_SOURCE
from restorelcc.demo_table import UNMERGED_METHODS
from restorelcc.errors import RestoreLCCError
from restorelcc.evaluate import PAPER_TASKS, resolve_tasks
from restorelcc.lcc.config import check_probe_counts
from restorelcc.lcc.train import TrainConfig
from restorelcc.prune.masks import parse_pattern
from restorelcc.prune.sparsegpt import BLOCK_SIZE, DAMPENING
from restorelcc.prune.validate import CALIBRATED_METHODS, PruneSpec, check_options, check_spec
from restorelcc.prune.validate import METHODS as PRUNE_METHODS

METHODS = ("lora", "dora", "lofit", "training-free", "restorelcc")
# DoRA is LoRA's variant (the paper's tables have both); LoFiT trains twice: opt in
DEFAULT_METHODS = ("lora", "training-free", "restorelcc")
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
    "channel_multiple",
)

DEMO_REPORT = "report.json"  # what an --out folder holds: --overwrite replaces only such a one
PROBE_PAIRS = 128  # DemoConfig.probe_pairs' preset
# Methods that capture activations on the first probe_pairs of the training pairs.
CAPTURING_METHODS = ("restorelcc", "training-free")
CALIBRATION_FIELDS = ("calibration_source", "calibration_samples", "calibration_seqlen")
# The fields that name data: the report records what each named when read (<field>_origin).
DATA_SOURCES = ("pairs_source", "calibration_source", "ppl_source")


class DemoArgumentError(RestoreLCCError, ValueError):
    """A demo setting that cannot be carried out; the message names its ``demo`` option."""


# The ``restorelcc demo`` option of a ``DemoConfig`` field: ``train_pairs`` -> ``--train-pairs``.
option = flag


def as_flags(message: str, fields: Mapping[str, str]) -> str:
    """A library check's ``message`` with each of ``fields`` (the name the check gives a
    setting -> the demo option it stands for) written as that option, as ``name_flags``
    writes it: ``pass sparsity=0.6`` -> ``pass --sparsity 0.6``; ``lr must be positive``
    -> ``--lora-lr must be positive`` (``{"lr": "--lora-lr"}``)."""
    for field, demo_flag in fields.items():
        named = name_flags(message, [field])
        message = re.sub(rf"{re.escape(flag(field))}(?![\w-])", demo_flag, named)
    return message


def flagged(label: str, check, *args, fields: Mapping[str, str] | None = None, **kwargs):
    """``check(*args, **kwargs)``, its error re-raised as a ``DemoArgumentError`` naming the
    option(s) ``label``: its message ``as_flags(message, fields)``, after ``label:`` unless
    it starts with ``label`` already (``--lr must be positive``). A ``DemoArgumentError``
    names its options already: it goes through as it is."""
    try:
        return check(*args, **kwargs)
    except DemoArgumentError:
        raise
    except (RestoreLCCError, ValueError) as exc:
        message = as_flags(str(exc), fields or {})
        raise DemoArgumentError(
            message if message.startswith(label) else f"{label}: {message}"
        ) from None


def refuse_repeated(label: str, values: tuple[str, ...]) -> None:
    """``DemoArgumentError`` naming the option ``label`` and each of ``values`` given
    more than once: ``--patterns: 2:4 given more than once``."""
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise DemoArgumentError(f"{label}: {', '.join(repeated)} given more than once")


@dataclass
class DemoConfig:
    """Budget of the demo. Defaults fit ~24 minutes on 2 idle CPU cores for ``smollm2-135m``;
    ``paper()`` gives the paper's settings (hours on a CPU). Each field is the ``restorelcc
    demo`` option of the same name (``option(name)``); construction checks every setting
    that needs no data or model, and its errors name those options."""

    model: str = DEFAULT_MODEL
    prune_method: str = "wanda"
    patterns: tuple[str, ...] = ("unstructured", "2:4")
    sparsity: float = 0.5
    structured_sparsity: float = 0.2  # for the "heads" pattern (paper: 20% structured)
    channel_multiple: int = 1  # "heads": kept MLP channels per layer a multiple of it
    calibration_source: str = "mix"
    calibration_samples: int = 32
    calibration_seqlen: int = 256
    pairs_source: str = "mix"
    train_pairs: int = 192
    # None: PROBE_PAIRS, or train_pairs where fewer (a preset never exceeds the pairs there
    # are; a larger value given is refused)
    probe_pairs: int | None = None
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
    ppl_source: str = DEFAULT_PERPLEXITY_SOURCE  # or user text (perplexity_texts): WikiText-2
    # None: 512 or the model's length, half the window (perplexity_windows); the paper's
    # WikiText-2 protocol: 2048 and 2048 (disjoint windows of LLaMA's length)
    ppl_window: int | None = None
    ppl_stride: int | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    latency_rounds: int = 15
    seed: int = 0
    progress: bool = True
    device: str = "cpu"  # as --device takes it (cpu, cuda, cuda:1...), and checked as it is
    dtype: str = "auto"  # every model's (DTYPES); pruning computes in float32 whatever it is

    @classmethod
    def paper(cls, **overrides) -> DemoConfig:
        """The paper's budget (``PAPER_SETTINGS``); ``overrides`` win over it. Its probe
        pairs are at most the ``train_pairs`` given."""
        settings = PAPER_SETTINGS | overrides
        train = settings["train_pairs"]
        if overrides.get("probe_pairs") is None and isinstance(train, int):
            settings["probe_pairs"] = min(PAPER_SETTINGS["probe_pairs"], train)
        return cls(**settings)

    def __post_init__(self) -> None:
        if self.probe_pairs is None and isinstance(self.train_pairs, int):
            self.probe_pairs = min(PROBE_PAIRS, self.train_pairs)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise DemoArgumentError(
                f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}"
            )
        if not self.methods:  # `--methods ''` ran the dense and pruned rows alone
            raise DemoArgumentError(
                "--methods: the demo compares restorations: give at least one of "
                f"{', '.join(METHODS)}"
            )
        refuse_repeated("--methods", self.methods)  # the report recorded each as given
        # as the command line checks it (a missing CUDA device had ended in torch's bare
        # AssertionError, from the calibration memory check)
        self.device = str(flagged("--device", resolve_device, self.device))
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DemoArgumentError(f"{option(name)} must be positive, got {value!r}")
        if self.dtype not in DTYPES:
            choices = ", ".join(DTYPES)
            raise DemoArgumentError(f"--dtype must be one of {choices}, got {self.dtype!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise DemoArgumentError(
                f"--limit must be a positive count or 'all', got {self.limit!r}"
            )
        # The training checks are TrainConfig's and RestoreConfig's, one setting at a time
        # (``fields``: the names their messages give the options).
        length = {"max_length": "--max-length"}
        flagged("--max-length", TrainConfig, max_length=self.max_length, fields=length)
        flagged("--lr", TrainConfig, lr=self.lr, fields={"lr": "--lr"})
        flagged("--lora-lr", TrainConfig, lr=self.lora_lr, fields={"lr": "--lora-lr"})
        self._check_pair_counts()
        self.perplexity_windows()
        if self.prune_method not in PRUNE_METHODS:
            raise DemoArgumentError(
                f"--prune-method must be one of {', '.join(PRUNE_METHODS)}, "
                f"got {self.prune_method!r}"
            )
        if not self.patterns:
            raise DemoArgumentError("--patterns: give at least one sparsity pattern")
        self.patterns = tuple(str(self.prune_spec(pattern).pattern) for pattern in self.patterns)
        refuse_repeated("--patterns", self.patterns)
        self.tasks = tuple(flagged("--tasks", resolve_tasks, self.tasks))
        if not self.tasks:
            raise DemoArgumentError("--tasks: the demo compares accuracy: give at least one task")

    def _check_pair_counts(self) -> None:
        """RestoreLCC and training-free capture the first ``probe_pairs`` of the
        ``train_pairs``; RestoreLCC's probes need ``MIN_PROBE_PAIRS`` of them. LoRA, DoRA
        and LoFiT train on any pair count."""
        capturing = [m for m in CAPTURING_METHODS if m in self.methods]
        names = ("--probe-pairs", "--train-pairs", "--methods")
        check_probe_counts(
            self.probe_pairs, self.train_pairs, capturing, names=names, error=DemoArgumentError
        )

    def perplexity_windows(self, model_config=None, tokenizer=None) -> tuple[int, int]:
        """The perplexity's ``(window, stride)`` for the model of ``model_config`` (None: not
        known yet) and its ``tokenizer``: ``check_perplexity_options``, a fault a
        ``DemoArgumentError`` naming ``--ppl-window`` or ``--ppl-stride``."""
        return check_perplexity_options(self, model_config, DemoArgumentError, tokenizer)

    def unused_options(self) -> list[tuple[tuple[str, ...], str]]:
        """The fields that this run ignores, in groups, each with why: ``restorelcc demo``
        refuses those typed on its command line (``refuse_unused``)."""
        methods = set(self.methods)
        chosen = f"--methods {','.join(self.methods)}"
        patterns = {parse_pattern(p).kind for p in self.patterns}
        unused = []
        if not methods & {"restorelcc", "lofit"}:
            why = f"{chosen} trains no heads (only restorelcc and lofit do)"
            unused.append((("heads", "lr"), why))
        if not methods & set(UNMERGED_METHODS):
            unused.append((("lora_rank", "lora_lr"), f"{chosen} trains no LoRA or DoRA"))
        if not methods & set(CAPTURING_METHODS):
            why = f"{chosen} captures no activations (only restorelcc and training-free do)"
            unused.append((("probe_pairs",), why))
        if methods == {"training-free"}:
            unused.append((("epochs", "batch_size"), f"{chosen} trains nothing"))
        if self.prune_method not in CALIBRATED_METHODS:
            why = f"--prune-method {self.prune_method} uses no calibration data"
            unused.append((CALIBRATION_FIELDS, why))
        if "heads" not in patterns:
            given = f"--patterns {','.join(self.patterns)}"
            why = f"used by --patterns heads (structured pruning) only, and {given} has no heads"
            unused.append((("structured_sparsity", "channel_multiple"), why))
        if patterns == {"heads"}:
            unused.append((("sparsity",), "--patterns heads takes --structured-sparsity"))
        return unused

    def prune_spec(self, pattern: str) -> PruneSpec:
        """The pruning request for one of ``patterns``, checked by ``check_spec`` and
        ``check_options`` (errors name the option at fault: ``--patterns``, ``--sparsity``,
        ``--structured-sparsity`` or ``--channel-multiple``)."""
        parsed = flagged("--patterns", parse_pattern, pattern)
        structured = parsed.kind == "heads"
        named = self.spec_flags(parsed.kind)  # check_spec's names for the settings
        sparsity_flag = named["sparsity"]
        sparsity = self.structured_sparsity if structured else self.sparsity
        multiple = self.channel_multiple if structured else 1  # it shapes the plan only
        # the sparsity on its own first, so that its error names its own option
        method = self.prune_method
        flagged(sparsity_flag, check_spec, method, sparsity, "unstructured", fields=named)
        label = f"--patterns {parsed} with {sparsity_flag} {float(sparsity):g}"
        spec = flagged(label, check_spec, method, sparsity, parsed, None, multiple, fields=named)
        # prune_model's own settings, as the demo leaves them (e.g. SparseGPT's column block)
        flagged(label, check_options, spec, 1, BLOCK_SIZE, DAMPENING)
        return spec

    @staticmethod
    def spec_flags(kind: str) -> dict[str, str]:
        """The pruning checks' names for this demo's settings (``sparsity``,
        ``channel_multiple``) -> the options they are, for a pattern of ``kind``."""
        sparsity = "--structured-sparsity" if kind == "heads" else "--sparsity"
        return {"sparsity": sparsity, "channel_multiple": option("channel_multiple")}

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(
            lr=lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
            progress=self.progress,
        )
