"""``restore``: capture -> lost components -> probing -> head selection -> training.

Example::

    dense, tok = load_model("smollm2-135m")
    pruned, _ = load_model("smollm2-135m"); prune_model(pruned, "magnitude", 0.5)
    pairs = instruction_pairs("squad", n=256)
    restoration = restore(dense, pruned, tok, pairs, RestoreConfig(heads=0.25))
    restoration.fold(pruned)              # or .save(dir), .export_merged(pruned, dir, tok)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from restorelcc.data import InstructionPair, is_real, positive_count
from restorelcc.errors import ArgumentError
from restorelcc.hf.families import HeadGeometry, family_of, head_geometry, model_device
from restorelcc.lcc.capture import (
    capture_last_token,
    capture_probe_activations,
)
from restorelcc.lcc.capture_precision import (
    captured_dtype,
    check_capture_attention,
    check_capture_dtype,
)
from restorelcc.lcc.compat import check_compatible, to_pruned_heads
from restorelcc.lcc.components import PAPER_K, lost_components
from restorelcc.lcc.fingerprint import ModelFingerprint, model_fingerprint
from restorelcc.lcc.heads import INIT_STD, HeadCompensation
from restorelcc.lcc.negatives import check_method as check_negatives_method
from restorelcc.lcc.negatives import mine_negatives
from restorelcc.lcc.probing import (
    PROBE_EPOCHS,
    PROBE_LR,
    SPLIT_SEED,
    TEST_FRACTION,
    check_heads,
    head_count,
    probe_heads,
    random_heads,
    select_heads,
    warn_if_at_chance,
)
from restorelcc.lcc.restoration import Restoration, check_made_for
from restorelcc.lcc.tokens import check_pairs, encode_probe_set, encode_prompt, warn_cut_pairs
from restorelcc.lcc.train import TrainConfig, train_response_lm

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


class StageTimer:
    """Wall time per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class HeadPlan:
    """What capture, components and probing decide before training: ``heads`` ``[S, 2]``
    (layer, head) to compensate, their lost directions ``directions`` ``[S, d, d]``, the
    probe accuracies ``scores`` ``[L, H]`` (None under random selection), the checked
    ``pairs`` (training and held-out), the report and the seconds of each stage so far. It
    holds neither model: the dense one can go once it is made."""

    config: RestoreConfig
    geometry: HeadGeometry
    fingerprint: ModelFingerprint
    pairs: list[InstructionPair]
    heads: torch.Tensor
    directions: torch.Tensor
    scores: torch.Tensor | None
    report: dict
    seconds: dict[str, float]


def restore(
    dense: nn.Module,
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    config: RestoreConfig | None = None,
) -> Restoration:
    """Learn a RestoreLCC restoration of ``pruned`` towards ``dense`` from ``pairs``.

    ``pairs``: instruction pairs (``.prompt`` in its template, ``.response``). Neither model
    is modified. Raises ``UnsupportedModelError`` for models that do not match (or are
    not models: ``NotAModelError``), ``DataError`` for empty or malformed data and
    ``ArgumentError`` for a config or tokenizer of the wrong kind or more heads than the
    model has. The result's ``report["seconds"]`` times each stage. ``plan_heads`` then
    ``train_heads`` is the same in two steps, between which the dense model (needed for
    capture only) can be let go.
    """
    plan = plan_heads(dense, pruned, tokenizer, pairs, config)
    return train_heads(plan, pruned, tokenizer, check=False)  # made from pruned


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


def check_tokenizer(tokenizer) -> None:
    """``ArgumentError`` unless ``tokenizer`` can be called as a Hugging Face tokenizer is."""
    if not callable(tokenizer):
        raise ArgumentError(
            f"tokenizer must be the model's Hugging Face tokenizer (load_model returns "
            f"(model, tokenizer)), got {tokenizer!r:.80}"
        )


def plan_heads(
    dense: nn.Module,
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    config: RestoreConfig | None = None,
) -> HeadPlan:
    """``restore``'s first step: capture, lost components, probing and head selection."""
    config = checked_config(config)
    check_tokenizer(tokenizer)
    head_map = check_compatible(dense, pruned)
    for model, name in ((dense, "dense"), (pruned, "pruned")):
        check_capture_attention(model, config.capture_dtype, name)
    pairs = check_pairs(pairs, minimum=MIN_PROBE_PAIRS)
    geometry = head_geometry(pruned)
    count = head_count(geometry, config.heads)
    check_components_k(config.components_k, geometry)
    # Held-out pairs (config.train.validation_pairs) take no part in head selection either.
    training_set = check_pairs(
        config.train.split(pairs)[0],
        minimum=MIN_PROBE_PAIRS,
        what=f"pairs left for probing after validation_pairs={config.train.validation_pairs}",
    )
    probe_set = training_set[: config.probe_pairs]
    stage = StageTimer()
    progress = config.progress
    train_pairs = len(pairs) - config.train.validation_pairs
    report: dict = {"train_pairs": train_pairs, "probe_pairs": len(probe_set)}
    report["capture_dtype"] = {  # what the captures ran in, the models' or float32
        name: captured_dtype(model, config.capture_dtype)
        for name, model in (("dense", dense), ("pruned", pruned))
    }
    if head_geometry(dense) != geometry:
        report["dense_heads"] = head_map.tolist()  # per layer, the dense head of each head
    report["pairs_cut"] = {  # pairs longer than training's and capture's lengths (warned)
        "max_length": warn_cut_pairs(tokenizer, pairs, config.train.max_length, eos=True),
        "capture_max_length": warn_cut_pairs(
            tokenizer, probe_set, config.capture_max_length, "capture_max_length"
        ),
    }

    with stage("fingerprint"):
        fingerprint = model_fingerprint(pruned)
    scores = None
    if config.selection == "probe":
        with stage("negatives"):  # among all training pairs, as the paper mines its 2,000
            negative_index, report["negatives"] = mine_negatives(
                [p.response for p in training_set], config.negatives, queries=len(probe_set)
            )
        with stage("capture"):
            sequences = encode_probe_set(
                tokenizer,
                probe_set,
                negative_index,
                config.capture_max_length,
                pool=training_set,
            )
            acts = capture_probe_activations(
                dense,
                pruned,
                sequences,
                config.capture_batch_tokens,
                progress,
                head_map,
                config.capture_dtype,
            )
            zd, zp = acts.dense, acts.pruned
    else:
        with stage("capture"):
            prompts = [encode_prompt(tokenizer, p, config.capture_max_length) for p in probe_set]
            zd, zp = (
                capture_last_token(
                    model,
                    prompts,
                    config.capture_batch_tokens,
                    progress,
                    f"capture {name}",
                    name,
                    config.capture_dtype,
                )
                for model, name in ((dense, "dense"), (pruned, "pruned"))
            )
            zd = to_pruned_heads(zd, head_map)
    with stage("components"):
        components = lost_components(zd, zp, config.components_k)
    if config.selection == "probe":
        with stage("probing"):
            probes = probe_heads(
                acts,
                components.compensation,
                config.probe_epochs,
                config.probe_lr,
                config.probe_test_fraction,
                config.probe_seed,
                config.probe_standardize,
                progress,
            )
            scores = probes.accuracy
            # Accuracies over few held-out pairs tie often: the lower held-out loss decides.
            heads = select_heads(scores, count, tie_break=probes.loss)
            warn_if_at_chance(scores, len(probe_set), config.probe_test_fraction)
        del acts
    else:
        heads = random_heads(geometry, count, config.train.seed)
    directions = components.directions[heads[:, 0], heads[:, 1]]
    return HeadPlan(
        config, geometry, fingerprint, pairs, heads, directions, scores, report, stage.seconds
    )


def train_heads(plan: HeadPlan, pruned: nn.Module, tokenizer, check: bool = True) -> Restoration:
    """``restore``'s second step: train the compensation of ``plan``'s heads on its pairs
    through ``pruned``, the model ``plan`` was made for (``plan`` is not modified).
    ``check=False`` skips comparing ``pruned`` with the plan's fingerprint (a pass over
    every weight) where the caller made the plan from it."""
    config, heads, scores, geometry = plan.config, plan.heads, plan.scores, plan.geometry
    check_tokenizer(tokenizer)
    check_made_for(pruned, geometry, plan.fingerprint if check else None, "the plan")
    report = dict(plan.report)
    stage = StageTimer()
    stage.seconds.update(plan.seconds)
    module = HeadCompensation(geometry, heads, plan.directions, config.init_std, config.train.seed)
    module.to(model_device(pruned))
    with stage("train"):
        result = train_response_lm(
            pruned,
            tokenizer,
            plan.pairs,
            list(module.parameters()),
            config.train,
            context=lambda: module.attached(pruned),
            desc="train RestoreLCC",
        )
    report["train"] = result.to_dict()
    report["seconds"] = dict(stage.seconds)
    if scores is not None:
        cut = scores[heads[:, 0], heads[:, 1]].min()
        report["selected_score_min"] = float(cut)
        report["score_mean"] = float(scores.mean())
        report["score_ties_at_cut"] = {  # how many heads the held-out loss chose between
            "heads": int((scores == cut).sum()),
            "selected": int((scores[heads[:, 0], heads[:, 1]] == cut).sum()),
        }
    method = "restorelcc" if config.selection == "probe" else "restorelcc-random-heads"
    return Restoration.from_compensation(
        module,
        family_of(pruned).model_type,
        plan.fingerprint,
        method=method,
        hyperparameters=config.to_dict(),
        scores=scores,
        report=report,
    )
