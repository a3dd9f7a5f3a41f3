"""The demo's settings: ``DemoConfig``, one field per ``restorelcc demo`` option, checked
when built (errors name the option), and the paper's budget."""

from __future__ import annotations

from dataclasses import dataclass

from restorelcc.assets import DEFAULT_MODEL
from restorelcc.data import DEFAULT_PERPLEXITY_SOURCE
from restorelcc.errors import RestoreLCCError
from restorelcc.evaluate import PAPER_TASKS, resolve_tasks
from restorelcc.lcc.pipeline import RestoreConfig
from restorelcc.lcc.train import TrainConfig
from restorelcc.prune.masks import parse_pattern
from restorelcc.prune.sparsegpt import BLOCK_SIZE, DAMPENING
from restorelcc.prune.validate import METHODS as PRUNE_METHODS
from restorelcc.prune.validate import PruneSpec, check_options, check_spec

METHODS = ("lora", "lofit", "training-free", "restorelcc")
DEFAULT_METHODS = ("lora", "training-free", "restorelcc")  # LoFiT trains twice: opt in
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


def flagged(flag: str, check, *args, **kwargs):
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
    ppl_source: str = DEFAULT_PERPLEXITY_SOURCE  # or user text (perplexity_texts): WikiText-2
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
        flagged("--max-length", TrainConfig, max_length=self.max_length)
        flagged("--lr", TrainConfig, lr=self.lr)
        flagged("--lora-lr", TrainConfig, lr=self.lora_lr)
        if "restorelcc" in self.methods:
            flagged("--probe-pairs", RestoreConfig, probe_pairs=self.probe_pairs)
        if self.prune_method not in PRUNE_METHODS:
            raise DemoArgumentError(
                f"--prune-method must be one of {', '.join(PRUNE_METHODS)}, "
                f"got {self.prune_method!r}"
            )
        if not self.patterns:
            raise DemoArgumentError("--patterns: give at least one sparsity pattern")
        self.patterns = tuple(str(self.prune_spec(pattern).pattern) for pattern in self.patterns)
        self.tasks = tuple(flagged("--tasks", resolve_tasks, self.tasks))
        if not self.tasks:
            raise DemoArgumentError("--tasks: the demo compares accuracy: give at least one task")

    def prune_spec(self, pattern: str) -> PruneSpec:
        """The pruning request for one of ``patterns``, checked by ``check_spec`` and
        ``check_options`` (errors name the option at fault: ``--patterns``, ``--sparsity`` or
        ``--structured-sparsity``)."""
        parsed = flagged("--patterns", parse_pattern, pattern)
        if parsed.kind == "heads":
            flag, sparsity = "--structured-sparsity", self.structured_sparsity
        else:
            flag, sparsity = "--sparsity", self.sparsity
        # the sparsity on its own first, so that its error names its own option
        flagged(flag, check_spec, self.prune_method, sparsity, "unstructured")
        label = f"--patterns {parsed} with {flag} {float(sparsity):g}"
        spec = flagged(label, check_spec, self.prune_method, sparsity, parsed)
        # prune_model's own settings, as the demo leaves them (e.g. SparseGPT's column block)
        flagged(label, check_options, spec, 1, BLOCK_SIZE, DAMPENING)
        return spec

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(
            lr=lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
            progress=self.progress,
        )
