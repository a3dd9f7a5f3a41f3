"""``RestoreConfig``, RestoreLCC's hyper-parameters, and the checks of them that need no
model (``checked_config``, ``check_probe_counts``) or only its head geometry
(``check_components_k``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from restorelcc.data import is_integer, is_real, positive_count
from restorelcc.errors import ArgumentError
from restorelcc.hf.families import HeadGeometry
from restorelcc.lcc.capture_precision import check_capture_dtype
from restorelcc.lcc.components import PAPER_K
from restorelcc.lcc.heads import INIT_STD
from restorelcc.lcc.negatives import check_method as check_negatives_method
from restorelcc.lcc.probing import PROBE_EPOCHS, PROBE_LR, SPLIT_SEED, TEST_FRACTION, check_heads
from restorelcc.lcc.train import TrainConfig

MIN_PROBE_PAIRS = 4  # a 70/30 split with both sides holding at least one pair


def check_probe_counts(
    probe_pairs: int,
    pairs: int,
    capturing: Sequence[str],
    *,
    names: tuple[str, str, str] = ("probe_pairs", "pairs", "methods"),
    error: type[Exception] = ValueError,
) -> None:
    """Check that the ``capturing`` methods (``restorelcc``, ``training-free``) can capture
    activations on the first ``probe_pairs`` of ``pairs`` training pairs, and that RestoreLCC's
    probes get ``MIN_PROBE_PAIRS`` of them. ``names``: what the caller calls the probe count,
    the pair count and the methods (its command-line flags), for the messages."""
    probe_name, pairs_name, methods_name = names
    if "restorelcc" in capturing:
        for count, name in ((pairs, pairs_name), (probe_pairs, probe_name)):
            if count < MIN_PROBE_PAIRS:
                raise error(
                    f"{name} must be at least {MIN_PROBE_PAIRS} for {methods_name} restorelcc "
                    f"(its probes train on 70% of them and score heads on the rest), got {count}"
                )
    if capturing and probe_pairs > pairs:
        verb = "captures" if len(capturing) == 1 else "capture"
        raise error(
            f"{probe_name} {probe_pairs} exceeds {pairs_name} {pairs}: "
            f"{' and '.join(capturing)} {verb} activations on {probe_name} of the training "
            f"pairs; give {probe_name} {pairs} or fewer, or more {pairs_name}"
        )


@dataclass
class RestoreConfig:
    """Hyper-parameters of RestoreLCC (defaults: the paper's, unless noted).

    ``heads``: a count (an integer), or a fraction of all ``layers x heads`` (a real in
    (0, 1]; research code: 256 of 1,024 = 0.25); a count over the model's heads is refused
    once the model is known, by ``plan_heads``. ``selection``: ``probe`` (the method) or
    ``random`` (the paper's ablation). ``probe_pairs``: pairs used for capture and probing
    (the first ones; paper 1,000); all pairs are used for training. ``components_k``:
    singular directions summed into the probing compensation (paper 1, research code 10).
    ``probe_standardize``: scale probe features per head (the research code does not).
    ``negatives``: ``auto``, ``minilm`` (needs its wheel: ``negatives.check_method``) or
    ``tfidf``; each probe pair's negative is the most similar other response among all the
    training pairs (the held-out validation pairs excepted), as the paper mines its 2,000.
    ``capture_dtype``: ``float32`` (the research code captures in fp16) captures a bf16 or
    fp16 model cast to fp32, one model at a time, and casts it back (``capture_precision``);
    ``model`` captures in the dtype the models run in.
    """

    heads: int | float = 0.25
    selection: str = "probe"
    probe_pairs: int = 1000
    components_k: int = PAPER_K
    probe_epochs: int = PROBE_EPOCHS
    probe_lr: float = PROBE_LR
    probe_test_fraction: float = TEST_FRACTION
    probe_seed: int = SPLIT_SEED
    probe_standardize: bool = False
    negatives: str = "auto"
    capture_max_length: int = 512
    capture_batch_tokens: int | None = None  # None: per device (capture_taps.default_batch_tokens)
    capture_dtype: str = "float32"
    init_std: float = INIT_STD
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """Every value is checked here, before any capture: a bad one fails at once."""
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        self.heads = check_heads(self.heads)  # a numpy count becomes an int (JSON-ready)
        if self.selection not in ("probe", "random"):
            raise ValueError(f"selection must be 'probe' or 'random', got {self.selection!r}")
        if positive_count(self.probe_pairs, "probe_pairs") < MIN_PROBE_PAIRS:
            raise ValueError(
                f"probe_pairs must be at least {MIN_PROBE_PAIRS}, got {self.probe_pairs}"
            )
        positive_count(self.components_k, "components_k")
        if not is_integer(self.probe_seed):
            raise ValueError(f"probe_seed must be an integer, got {self.probe_seed!r}")
        if not isinstance(self.probe_standardize, bool):  # "false" would switch it on
            raise ValueError(
                f"probe_standardize must be True or False, got {self.probe_standardize!r}"
            )
        # minilm: its wheel, before any model loads (random selection mines no negatives)
        check_negatives_method(self.negatives, mined=self.selection == "probe")
        positive_count(self.probe_epochs, "probe_epochs")
        if not is_real(self.probe_lr) or not 0 < self.probe_lr < math.inf:
            raise ValueError(f"probe_lr must be a positive finite number, got {self.probe_lr!r}")
        if not is_real(self.probe_test_fraction) or not 0 < self.probe_test_fraction < 1:
            raise ValueError(
                f"probe_test_fraction must be between 0 and 1 (exclusive), got "
                f"{self.probe_test_fraction!r}"
            )
        if positive_count(self.capture_max_length, "capture_max_length") < 2:
            raise ValueError(
                f"capture_max_length must be at least 2, got {self.capture_max_length}"
            )
        if self.capture_batch_tokens is not None:
            positive_count(self.capture_batch_tokens, "capture_batch_tokens")
        check_capture_dtype(self.capture_dtype)
        if not is_real(self.init_std) or not 0 <= self.init_std < math.inf:
            raise ValueError(f"init_std must be a finite number >= 0, got {self.init_std!r}")

    @property
    def progress(self) -> bool:
        return self.train.progress

    def to_dict(self) -> dict:
        return asdict(self)


def check_components_k(components_k: int, geometry: HeadGeometry) -> None:
    """``ValueError`` if ``components_k`` exceeds ``geometry.head_dim``: a head's lost
    output has no more singular directions than that (``lost_components`` would use
    ``head_dim`` of them while the config recorded more)."""
    if components_k > geometry.head_dim:
        raise ValueError(
            f"components_k must be at most the head_dim, {geometry.head_dim}: a head's lost "
            f"output has no more singular directions (components_k={components_k} given)"
        )


def checked_config(config, kind: type = RestoreConfig):
    """``config``, or the default ``kind()`` (``RestoreConfig``, ``TrainConfig``) for None;
    ``ArgumentError`` for anything else (a dict of its fields, say)."""
    if config is None:
        return kind()
    if not isinstance(config, kind):
        name = kind.__name__
        hint = f": {name}(**fields) makes one from a dict" if isinstance(config, dict) else ""
        raise ArgumentError(
            f"config must be a {name} (or None for the defaults), got a "
            f"{type(config).__name__}{hint}"
        )
    return config
