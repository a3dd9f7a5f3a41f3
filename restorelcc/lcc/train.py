"""The response-only causal-LM training loop, generic over a set of trainable parameters.

RestoreLCC trains its per-head ``beta, b``; the LoRA/DoRA baselines train their adapter
matrices; both go through ``train_response_lm`` with the same data order, steps and
schedule. The loss is the cross-entropy of the response tokens (and the EOS that ends
them) only; the LM head runs only at the positions that predict those tokens. The model's own
parameters are frozen for the duration (their ``requires_grad`` is restored afterwards)
and the loop checks that no gradient reached them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.data import InstructionPair, is_integer, is_real, positive_count, unique_pairs
from restorelcc.errors import ArgumentError, DataError, NonFiniteError, warn_user
from restorelcc.hf.families import eval_mode, head_geometry, model_device
from restorelcc.lcc.capture_taps import o_proj_taps, pad_right
from restorelcc.lcc.finite import LOW_PRECISION_HINT
from restorelcc.lcc.tokens import (
    TRAINING_LENGTH_FLAGS,
    check_pairs,
    encode_pairs,
    warn_pairs_cut,
)


@dataclass
class TrainConfig:
    """Optimisation settings (research code: AdamW lr 1e-3, 3 epochs, batch 8, max length
    500, linear decay, no weight decay, and the Hugging Face ``Trainer``'s clipping of the
    gradient norm to 1). ``max_steps`` overrides ``epochs`` when set; ``max_grad_norm=None``
    does not clip.
    ``validation_pairs``: the last pairs given are held out of training (and of RestoreLCC's
    probing) and their response loss is measured before and after training."""

    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    max_length: int = 500
    max_steps: int | None = None
    seed: int = 0
    progress: bool = True
    validation_pairs: int = 0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if not (is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive and finite, got {self.lr!r}")
        positive_count(self.epochs, "epochs")
        positive_count(self.batch_size, "batch_size")
        if self.max_steps is not None:
            positive_count(self.max_steps, "max_steps")
        if positive_count(self.max_length, "max_length") < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if not is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        pairs = self.validation_pairs
        if not is_integer(pairs) or pairs < 0:
            raise ValueError(f"validation_pairs must be an integer >= 0, got {pairs!r}")
        norm = self.max_grad_norm
        if norm is not None and not (is_real(norm) and math.isfinite(norm) and norm > 0):
            raise ValueError(
                f"max_grad_norm must be a positive finite number, or None, got {norm!r}"
            )

    def split(self, pairs: Sequence[InstructionPair]) -> tuple[list, list]:
        """(training pairs, held-out pairs): the last ``validation_pairs`` are held out."""
        pairs = list(pairs)
        if self.validation_pairs and self.validation_pairs >= len(pairs):
            raise DataError(
                f"validation_pairs {self.validation_pairs} leaves no training pair "
                f"out of {len(pairs)}"
            )
        cut = len(pairs) - self.validation_pairs
        return pairs[:cut], pairs[cut:]

    def total_steps(self, pairs: int) -> int:
        return self.max_steps or self.epochs * math.ceil(pairs / self.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(repr=False)  # one per step
    grad_norms: list[float] = field(repr=False)  # per step, before clipping
    seconds: float
    response_tokens: int  # target tokens seen over all steps
    trainable_parameters: int
    # Response loss on the held-out pairs: {"pairs", "before", "after"}; None without any.
    validation: dict | None = None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["final_loss"] = self.final_loss
        out["first_loss"] = self.losses[0] if self.losses else None
        return out


def _batches(n: int, batch_size: int, seed: int):
    """Endless stream of index batches: a fresh seeded permutation per epoch."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def collate(
    encoded: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids [B, T], mask [B, T], positions [M, 2], targets [M])``.

    ``positions`` are the (row, position) pairs whose next token is a response token and
    ``targets`` those tokens.
    """
    ids, mask = pad_right([p + r for p, r in encoded], pad_id)
    rows, cols, targets = [], [], []
    for row, (prompt, response) in enumerate(encoded):
        start = len(prompt) - 1
        rows += [row] * len(response)
        cols += range(start, start + len(response))
        targets += response
    positions = torch.tensor([rows, cols], dtype=torch.long).T
    return ids, mask, positions, torch.tensor(targets, dtype=torch.long)


def response_loss(model: nn.Module, ids, mask, positions, targets) -> torch.Tensor:
    """Mean cross-entropy of ``targets [M]`` predicted at ``positions [M, 2]`` (row, column)
    of ``ids [B, T]``.

    The model's own forward makes the logits, so whatever it does after its LM head
    (Granite's ``logits_scaling``, Cohere's ``logit_scale``, Gemma 2's soft-capping) is
    done here too; a pre-hook hands the LM head the ``M`` gathered hidden states only, so
    no ``[B, T, vocab]`` logits are made.
    """
    device = model_device(model)
    rows, cols = positions[:, 0].to(device), positions[:, 1].to(device)

    def gather(module, args):
        return (args[0][rows, cols],) + tuple(args[1:])  # [M, hidden]

    handle = model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        handle.remove()
    return nn.functional.cross_entropy(out.logits.float(), targets.to(device))


def _pad_id(tokenizer) -> int:
    """The id that fills padded positions (masked out, so any valid id does)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def heldout_loss(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[InstructionPair],
    batch_size: int = 8,
    max_length: int = 500,
) -> float:
    """Token-weighted response-only cross-entropy of ``model`` on ``pairs``."""
    encoded, _ = encode_pairs(tokenizer, pairs, max_length, eos=True)
    return _encoded_loss(model, encoded, _pad_id(tokenizer), batch_size)


@torch.no_grad()
def _encoded_loss(
    model: nn.Module, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> float:
    """``heldout_loss`` of pairs already encoded as ``(prompt ids, response ids + EOS)``."""
    total = count = 0.0
    for start in range(0, len(encoded), batch_size):
        ids, mask, positions, targets = collate(encoded[start : start + batch_size], pad_id)
        total += float(response_loss(model, ids, mask, positions, targets)) * len(targets)
        count += len(targets)
    return total / count


@contextlib.contextmanager
def frozen_except(model: nn.Module, trainable: Sequence[nn.Parameter]):
    """Only ``trainable`` require grad inside; the model's flags are restored on exit."""
    keep = {id(p) for p in trainable}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        for p in trainable:
            p.requires_grad_(True)
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def _gradless(
    model: nn.Module, trainable: Sequence[nn.Parameter]
) -> list[tuple[str, nn.Parameter]]:
    """The frozen parameters that hold no gradient now (so must hold none after a step)."""
    keep = {id(p) for p in trainable}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in keep and p.grad is None]


def _check_no_stray_grads(watched: list[tuple[str, nn.Parameter]]) -> None:
    stray = [name for name, p in watched if p.grad is not None]
    if stray:
        raise RuntimeError(f"gradient reached frozen model parameters: {stray[:3]}")


@torch.no_grad()
def _first_non_finite_o_proj_input(model: nn.Module, ids, mask) -> str | None:
    """Re-run the decoder on the batch: the first layer whose ``o_proj`` input (at real
    tokens) holds inf/NaN, and its heads, or None. Only on the error path."""
    g = head_geometry(model)
    device = model_device(model)
    real = mask.bool().to(device)
    found: list[str] = []

    def read(layer: int, x: torch.Tensor) -> None:
        if found:
            return
        bad = ~torch.isfinite(x[real].reshape(-1, g.heads, g.head_dim))
        heads = bad.any(dim=2).any(dim=0).nonzero().flatten().tolist()
        if heads:
            found.append(f"layer {layer}, heads {heads[:8]}")

    # the LoRA/DoRA baselines train a model whose o_proj is peft's wrapper
    with o_proj_taps(model, read, stop_after_last=False, through_adapters=True):
        model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device))
    return found[0] if found else None


def _non_finite_loss_message(model, ids, mask, step, steps, value, total_value, norm) -> str:
    if math.isfinite(total_value):
        what = f"gradient (norm {norm}; response loss {value:.4g}, finite)"
    elif math.isfinite(value):
        what = f"penalty (response loss {value:.4g}, with the penalty {total_value})"
    else:
        what = f"response loss ({value})"
    where = _first_non_finite_o_proj_input(model, ids, mask)
    if where:
        located = f"the trained (pruned) model's o_proj input is first non-finite at {where}"
    else:
        located = "the trained (pruned) model's o_proj inputs are finite (the overflow is later)"
    return (
        f"non-finite {what} at training step {step + 1} of {steps}; {located}. Causes: a "
        f"non-finite weight or compensation, or overflow: {LOW_PRECISION_HINT}"
    )


@dataclass(frozen=True)
class TrainingPairs:
    """``encode_training_pairs``' result: the training pairs (``encoded``) and the held-out
    ones (``held_out``), each as ``(prompt ids, response ids + EOS)`` within ``max_length``,
    and how many of them all that length cut (``cut``)."""

    encoded: list[tuple[list[int], list[int]]]
    held_out: list[tuple[list[int], list[int]]]
    max_length: int
    cut: int

    def warn_cut(self) -> int:
        """Warn of the pairs ``max_length`` cut, if any; returns ``cut``."""
        total = len(self.encoded) + len(self.held_out)
        return warn_pairs_cut(
            self.cut, total, self.max_length, "max_length", TRAINING_LENGTH_FLAGS, eos=True
        )


def encode_training_pairs(
    tokenizer, pairs: Sequence[InstructionPair], config: TrainConfig
) -> TrainingPairs:
    """``pairs`` checked, split (``config.split``) and encoded within ``config.max_length``,
    the pairs it cut counted (not warned of: ``TrainingPairs.warn_cut``). Raises the
    ``DataError`` that the data or the tokenizer would make ``train_response_lm`` raise (a
    bad or empty pair, too few pairs, no EOS token) with no model run: callers check here
    before their costly steps, and can hand the result to ``train_response_lm``."""
    pairs = check_pairs(pairs, what="training pairs")
    repeats = len(pairs) - len(unique_pairs(pairs))
    if repeats:  # the data loaders drop them; a list given directly may hold some
        warn_user(
            f"{repeats} of {len(pairs)} training pairs repeat an earlier pair exactly: a repeat "
            "can sit on both sides of the held-out (validation_pairs) and probe splits; "
            "restorelcc.data.unique_pairs drops them, as the data loaders do"
        )
    pairs, held_out = config.split(pairs)
    encoded, cut = encode_pairs(tokenizer, pairs, config.max_length, eos=True)
    held_out, held_out_cut = encode_pairs(tokenizer, held_out, config.max_length, eos=True)
    return TrainingPairs(encoded, held_out, config.max_length, cut + held_out_cut)


def _check_encoded_for(pairs: TrainingPairs, config: TrainConfig) -> None:
    """``ArgumentError`` unless ``pairs`` were encoded as ``config`` encodes them."""
    made = (pairs.max_length, len(pairs.held_out))
    if made != (config.max_length, config.validation_pairs):
        raise ArgumentError(
            f"the encoded pairs have max_length {made[0]} and {made[1]} held-out pairs, the "
            f"config max_length {config.max_length} and validation_pairs "
            f"{config.validation_pairs}: encode them with this config"
        )


def train_response_lm(
    model: nn.Module,
    tokenizer,
    pairs: Sequence[InstructionPair] | TrainingPairs,
    parameters: Sequence[nn.Parameter],
    config: TrainConfig,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    desc: str = "train",
    penalty: Callable[[], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``parameters`` on the response tokens of ``pairs``; returns the loss curve.

    ``pairs``: instruction pairs (encoded here, a warning given if ``config.max_length``
    cuts any), or ``encode_training_pairs(tokenizer, pairs, config)`` (its caller warns:
    encoded once for several runs, or for a report of the pairs cut).

    ``model``: a causal LM whose forward already includes whatever ``parameters`` act
    through (LoRA layers), or ``context()`` adds it (RestoreLCC's hooks). AdamW (no weight
    decay), linear decay to zero over ``config.total_steps``, batches drawn from a seeded
    permutation per epoch: the same seed gives the same run. With
    ``config.validation_pairs``, the last pairs are held out and scored before and after.
    ``penalty()``, if given, is added to each step's loss (a regulariser of ``parameters``);
    the losses recorded are the response loss alone. The gradient's norm over
    ``parameters`` is recorded, then clipped to ``config.max_grad_norm``. A non-finite loss
    or gradient raises ``NonFiniteError`` naming the step (and the first layer and heads
    whose ``o_proj`` input is non-finite, if any) before the update, so ``parameters`` stay
    finite.
    """
    parameters = list(parameters)
    if not parameters:
        raise ValueError("no trainable parameters given")
    if isinstance(pairs, TrainingPairs):
        _check_encoded_for(pairs, config)
    else:
        pairs = encode_training_pairs(tokenizer, pairs, config)
        pairs.warn_cut()
    encoded, held_out = pairs.encoded, pairs.held_out
    pad_id = _pad_id(tokenizer)
    steps = config.total_steps(len(encoded))
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    batches = _batches(len(encoded), config.batch_size, config.seed)
    losses: list[float] = []
    grad_norms: list[float] = []
    max_norm = config.max_grad_norm or math.inf  # inf: measured, not clipped
    tokens = 0
    start = time.perf_counter()
    validation = None
    with eval_mode(model):  # no dropout: the run is deterministic for a seed
        watched = _gradless(model, parameters)
        with frozen_except(model, parameters), context():
            if held_out:
                before = _encoded_loss(model, held_out, pad_id, config.batch_size)
            bar = tqdm(range(steps), desc=desc, unit="step", disable=not config.progress)
            for step in bar:
                ids, mask, positions, targets = collate([encoded[i] for i in next(batches)], pad_id)
                loss = response_loss(model, ids, mask, positions, targets)
                optimizer.zero_grad(set_to_none=True)
                total = loss if penalty is None else loss + penalty()
                total.backward()
                if step == 0 or step == steps - 1:
                    _check_no_stray_grads(watched)
                norm = nn.utils.clip_grad_norm_(parameters, max_norm)
                # The step's one host sync (the loss curve needs it), taken before the update
                # so that a non-finite loss or gradient stops the run with finite parameters.
                value, total_value, norm = torch.stack(
                    [loss.detach().float(), total.detach().float(), norm.float().to(loss.device)]
                ).tolist()
                if not math.isfinite(total_value + norm):
                    raise NonFiniteError(
                        _non_finite_loss_message(
                            model, ids, mask, step, steps, value, total_value, norm
                        )
                    )
                optimizer.step()
                schedule.step()
                losses.append(value)
                grad_norms.append(norm)
                tokens += len(targets)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if held_out:
                after = _encoded_loss(model, held_out, pad_id, config.batch_size)
                validation = {"pairs": len(held_out), "before": before, "after": after}
    return TrainResult(
        steps=steps,
        losses=losses,
        grad_norms=grad_norms,
        seconds=time.perf_counter() - start,
        response_tokens=tokens,
        trainable_parameters=sum(p.numel() for p in parameters),
        validation=validation,
    )
