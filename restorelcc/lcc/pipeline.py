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
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from restorelcc.data import InstructionPair
from restorelcc.errors import warn_user
from restorelcc.hf.families import HeadGeometry, family_of, head_geometry, model_device
from restorelcc.lcc.capture import (
    capture_last_token,
    capture_probe_activations,
)
from restorelcc.lcc.capture_precision import (
    captured_dtype,
    check_capture_attention,
)
from restorelcc.lcc.compat import check_compatible, to_pruned_heads
from restorelcc.lcc.components import lost_components
from restorelcc.lcc.config import (
    MIN_PROBE_PAIRS,
    RestoreConfig,
    check_components_k,
    checked_config,
)
from restorelcc.lcc.fingerprint import ModelFingerprint, model_fingerprint
from restorelcc.lcc.heads import HeadCompensation
from restorelcc.lcc.negatives import mine_negatives
from restorelcc.lcc.probing import (
    check_split,
    head_count,
    probe_heads,
    random_heads,
    select_heads,
    warn_if_at_chance,
)
from restorelcc.lcc.restoration import Restoration, check_made_for
from restorelcc.lcc.tokens import (
    CAPTURE_LENGTH_FLAGS,
    check_pairs,
    check_tokenizer,
    encode_probe_set,
    encode_prompts,
    warn_pairs_cut,
)
from restorelcc.lcc.train import (
    TrainingPairs,
    encode_training_pairs,
    train_response_lm,
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
    ``pairs`` (training and held-out) and their token ids (``training``, encoded with the
    tokenizer ``plan_heads`` was given), the report and the seconds of each stage so far.
    It holds neither model: the dense one can go once it is made."""

    config: RestoreConfig
    geometry: HeadGeometry
    fingerprint: ModelFingerprint
    pairs: list[InstructionPair]
    training: TrainingPairs
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


def _capture_cut(cut: int, pairs: int, config: RestoreConfig) -> dict[str, int]:
    """The capture's entry of the report's ``pairs_cut`` (``plan_heads`` records training's
    ``max_length`` first): ``cut`` of the ``pairs`` captured were longer than
    ``capture_max_length``, warned of."""
    length = config.capture_max_length
    flags = CAPTURE_LENGTH_FLAGS
    return {"capture_max_length": warn_pairs_cut(cut, pairs, length, "capture_max_length", flags)}


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
    if config.selection == "probe":  # before the captures, not after them
        check_split(len(probe_set), config.probe_test_fraction)
    if config.selection == "probe" and config.components_k > len(probe_set):
        warn_user(  # N differences have at most N directions
            f"components_k {config.components_k} exceeds the {len(probe_set)} probe pairs: "
            f"the probing compensation sums {min(len(probe_set), geometry.head_dim)} "
            "directions (the report's components_k_used)"
        )
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
    # encoded (and the pairs training's max_length cuts warned of) before the long stages
    training = encode_training_pairs(tokenizer, pairs, config.train)
    report["pairs_cut"] = {"max_length": training.warn_cut()}  # capture's added below

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
            report["pairs_cut"].update(_capture_cut(sequences.cut, len(probe_set), config))
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
            prompts, cut = encode_prompts(tokenizer, probe_set, config.capture_max_length)
            report["pairs_cut"].update(_capture_cut(cut, len(probe_set), config))
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
    report["components_k_used"] = components.k  # min(components_k, probe pairs, head_dim)
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
        config,
        geometry,
        fingerprint,
        pairs,
        training,
        heads,
        directions,
        scores,
        report,
        stage.seconds,
    )


def train_heads(plan: HeadPlan, pruned: nn.Module, tokenizer, check: bool = True) -> Restoration:
    """``restore``'s second step: train the compensation of ``plan``'s heads on its pairs
    through ``pruned``, the model ``plan`` was made for (``plan`` is not modified).
    ``check=False`` skips comparing ``pruned`` with the plan's fingerprint (a pass over
    every weight) where the caller made the plan from it. The pairs' ids are
    ``plan.training``, encoded with the tokenizer ``plan_heads`` was given: ``tokenizer``
    (its pad id) must be that one."""
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
            plan.training,
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
