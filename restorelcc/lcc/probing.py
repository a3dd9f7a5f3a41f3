"""Contrastive probing: score every head, then select heads.

For head ``(l, h)`` the probe sees ``m+ = [Zp + c ; Z+]`` (label 1) and ``m- = [Zp + c ; Z-]``
(label 0), ``2d`` features, and is a logistic regression trained on 70% of the pairs (split
by pair, seed 42) with Adam (lr 0.01, 200 full-batch epochs, BCE) as in the research code.
The head's score is the probe's accuracy on the other 30%. Its held-out BCE is kept too:
accuracies over ``2 * ceil(0.3 N)`` examples take few values, so many heads tie, and
``select_heads`` breaks those ties by the lower held-out loss rather than by index (which
would always favour the earliest layers). Accuracy stays the ranking. Where even the best
head's accuracy is one that the best of as many probes guessing at random would reach, the
pipeline warns (``warn_if_at_chance``): the selection is then as good as a random one.

All heads train together: the weights are stacked ``[heads, 2d]`` and each head's loss is
its own mean BCE, so every head gets exactly its own gradient and, Adam being elementwise,
exactly its own optimiser trajectory: one vectorised problem equals ``heads`` separate ones.
Heads are processed in chunks; a problem that fits in ``SINGLE_THREAD_BYTES`` runs on one
CPU thread: its epochs are many small matrix-vector products, for which intra-op threading
costs more than it gives on a few shared cores (measured on 2 loaded cores, 256 pairs x 270
heads: 49 s with 2 threads, 11 s with 1).

Two properties worth knowing. The compensation ``c`` is the same in both halves of a pair
and for every pair, so a probe with a bias can absorb it: with ``standardize`` the scores
do not depend on ``c`` at all, and without it ``c`` only changes Adam's path (on SmolLM2,
50% magnitude, 60 pairs: 63 of the top 67 heads the same with ``c = 0``). The lost
components act through training, not selection. And the gradient is that of BCE on the
logits, (sigmoid - y) / n, everywhere: where the research code's BCE on a sigmoid that
rounds to 0 or 1 in fp32 (logits beyond ~17) gives a confidently wrong example no gradient,
ours keeps it, so scores can differ from the research code's on models with very large
activations (on SmolLM2 all 270 match).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.data import is_integer, is_real
from restorelcc.errors import ArgumentError, DataError, warn_user
from restorelcc.hf.families import HeadGeometry
from restorelcc.lcc.capture import ProbeActivations
from restorelcc.lcc.finite import check_finite_heads

PROBE_EPOCHS = 200
PROBE_LR = 0.01
TEST_FRACTION = 0.3
SPLIT_SEED = 42
PROBE_CHUNK_BYTES = 256 * 2**20  # training features per chunk of heads (bounds memory)
SINGLE_THREAD_BYTES = 512 * 2**20  # below this, probes train on one CPU thread
# warn_if_at_chance: the best score is taken for chance where the best of as many probes
# guessing at random reaches it more often than this (a one-sided test at 5%)
CHANCE_OF_BEST = 0.05


class ProbeScores(NamedTuple):
    """Per head (``[heads]`` or ``[L, H]``), on the held-out pairs: ``accuracy`` in [0, 1]
    (the score that ranks heads) and ``loss``, the mean BCE (breaks accuracy ties)."""

    accuracy: torch.Tensor
    loss: torch.Tensor


def held_out_pairs(n: int, test_fraction: float = TEST_FRACTION) -> int:
    """How many of ``n`` probing pairs ``split_pairs`` holds out to score the probes."""
    return math.ceil(test_fraction * n)


def check_split(n: int, test_fraction: float = TEST_FRACTION) -> int:
    """How many of ``n`` probing pairs ``split_pairs`` holds out; ``DataError`` if either
    side of the split would be empty (``ValueError`` for a fraction outside (0, 1))."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = held_out_pairs(n, test_fraction)
    if n - n_test < 1 or n_test < 1:
        raise DataError(
            f"{n} probing pairs cannot be split {1 - test_fraction:.0%}/{test_fraction:.0%} "
            f"(probe_test_fraction {test_fraction}): both sides need a pair; give more "
            "probe pairs or another probe_test_fraction"
        )
    return n_test


def split_pairs(
    n: int, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle ``n`` pair indices with ``seed``; ``ceil(test_fraction * n)`` go to the test set.

    Returns ``(train_idx, test_idx)``, LongTensors. Raises ``DataError`` if a side is empty.
    """
    n_test = check_split(n, test_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def probe_features(
    acts: ProbeActivations, compensation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m+, m-)``, each ``[L*H, N, 2d]`` fp32, from activations ``[N, L, H, d]`` and the
    probing compensation ``[L, H, d]``. Raises ``NonFiniteError`` naming the input, layer
    and head if one holds inf/NaN (a probe would silently score such a head 0.5)."""
    n, layers, heads, d = acts.pruned.shape
    if compensation.shape != (layers, heads, d):
        raise ValueError(f"compensation shape {tuple(compensation.shape)} != {(layers, heads, d)}")
    for tensor, what in (
        (acts.pruned, "the pruned model's activations (Zp)"),
        (acts.positive, "the dense model's activations after the positive response (Z+)"),
        (acts.negative, "the dense model's activations after the negative response (Z-)"),
        (compensation[None], "the probing compensation"),
    ):
        check_finite_heads(tensor, what)
    shifted = (acts.pruned + compensation.to(acts.pruned.device)).reshape(n, layers * heads, d)
    pos = torch.cat([shifted, acts.positive.reshape(n, -1, d)], dim=-1)
    neg = torch.cat([shifted, acts.negative.reshape(n, -1, d)], dim=-1)
    return pos.transpose(0, 1).contiguous(), neg.transpose(0, 1).contiguous()


def probe_init(heads: int, features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial ``(weights [heads, features], bias [heads])``, U(-1/sqrt(f), 1/sqrt(f)) like
    ``nn.Linear``'s default, from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    bound = features**-0.5
    weights = (torch.rand(heads, features, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(heads, generator=generator) * 2 - 1) * bound
    return weights, bias


def train_probes(
    positive: torch.Tensor,
    negative: torch.Tensor,
    train_idx: torch.Tensor,
    test_idx: torch.Tensor,
    epochs: int = PROBE_EPOCHS,
    lr: float = PROBE_LR,
    standardize: bool = False,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = SPLIT_SEED,
    progress: bool = False,
) -> ProbeScores:
    """Held-out accuracy and mean BCE of a logistic-regression probe per head.

    ``positive``/``negative``: ``[heads, N, f]`` (label 1 / 0), pair ``i`` in row ``i``
    of both. ``standardize`` scales each feature by the training split's mean and std
    (per head), which makes the score independent of the head's activation scale; the
    research code does not. ``init``: ``(weights [heads, f], bias [heads])``, else
    ``probe_init(seed)``. Returns ``ProbeScores``: ``accuracy [heads]`` in [0, 1] and
    ``loss [heads]`` (mean BCE over the held-out examples, both labels).
    """
    heads, n, f = positive.shape
    if negative.shape != positive.shape:
        raise ValueError(
            f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} differ"
        )
    device = positive.device  # the probes train where the features are; scores on the CPU
    weights, bias = init if init is not None else probe_init(heads, f, seed)
    weights, bias = weights.to(device), bias.to(device)
    scores = torch.zeros(heads)
    losses = torch.zeros(heads)
    n_train = 2 * len(train_idx)
    chunk = max(1, PROBE_CHUNK_BYTES // (n_train * f * 4))
    labels = lambda count: torch.cat([torch.ones(count), torch.zeros(count)]).to(device)
    y_train, y_test = labels(len(train_idx)), labels(len(test_idx))
    small = heads * n_train * f * 4 <= SINGLE_THREAD_BYTES and positive.device.type == "cpu"
    with _threads(1) if small else contextlib.nullcontext():
        chunks = range(0, heads, chunk)
        for start in tqdm(chunks, desc="probe heads", unit="chunk", disable=not progress):
            part = slice(start, start + chunk)
            x_train = torch.cat([positive[part, train_idx], negative[part, train_idx]], dim=1)
            x_test = torch.cat([positive[part, test_idx], negative[part, test_idx]], dim=1)
            if standardize:
                mean = x_train.mean(dim=1, keepdim=True)
                std = x_train.std(dim=1, keepdim=True).clamp_min(1e-6)
                x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
            w0, b0 = weights[part].clone(), bias[part].clone()
            w, b = _fit_logistic(x_train, y_train, w0, b0, epochs, lr)
            logits = torch.einsum("hnf,hf->hn", x_test, w) + b[:, None]
            predicted = (torch.sigmoid(logits) >= 0.5).float()
            scores[part] = (predicted == y_test).float().mean(dim=1).cpu()
            losses[part] = (
                nn.functional.binary_cross_entropy_with_logits(
                    logits, y_test.expand_as(logits), reduction="none"
                )
                .mean(dim=1)
                .cpu()
            )
    return ProbeScores(scores, losses)


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, epochs: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch Adam on the mean BCE of each head; ``x [h, n, f]``, ``y [n]``."""
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    x_t = x.transpose(1, 2).contiguous()  # [h, f, n] for the gradient's matmul
    for _ in range(epochs):
        with torch.no_grad():
            logits = torch.bmm(x, w.unsqueeze(2)).squeeze(2) + b[:, None]  # [h, n]
            # d(mean BCE)/d(logit) = (sigmoid(logit) - y) / n (BCE on a sigmoid gives the
            # same until the sigmoid saturates in fp32; see the module docstring)
            residual = (torch.sigmoid(logits) - y) / x.shape[1]
            w.grad = torch.bmm(x_t, residual.unsqueeze(2)).squeeze(2)
            b.grad = residual.sum(dim=1)
        optimizer.step()
    return w.detach(), b.detach()


def probe_heads(
    acts: ProbeActivations,
    compensation: torch.Tensor,
    epochs: int = PROBE_EPOCHS,
    lr: float = PROBE_LR,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
    standardize: bool = False,
    progress: bool = False,
) -> ProbeScores:
    """Held-out probe accuracy and BCE of every head, each ``[L, H]`` (see the module
    docstring); ``select_heads(scores.accuracy, count, tie_break=scores.loss)``."""
    n, layers, heads, _ = acts.pruned.shape
    train_idx, test_idx = split_pairs(n, test_fraction, seed)
    pos, neg = probe_features(acts, compensation)
    accuracy, loss = train_probes(
        pos, neg, train_idx, test_idx, epochs, lr, standardize, seed=seed, progress=progress
    )
    return ProbeScores(accuracy.reshape(layers, heads), loss.reshape(layers, heads))


def score_heads(
    acts: ProbeActivations,
    compensation: torch.Tensor,
    epochs: int = PROBE_EPOCHS,
    lr: float = PROBE_LR,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
    standardize: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Probe accuracy of every head, ``[L, H]`` (``probe_heads`` also gives the loss)."""
    return probe_heads(
        acts, compensation, epochs, lr, test_fraction, seed, standardize, progress
    ).accuracy


def chance_of_best(best: float, examples: int, heads: int) -> float:
    """The probability that the best of ``heads`` probes that guess at random scores
    ``best`` or more on ``examples`` held-out examples: a guessing probe's correct count is
    Binomial(``examples``, 1/2) (half the examples are positive: chance is 0.5), the
    examples and the heads taken as independent."""
    correct = round(best * examples)
    one_head = sum(math.comb(examples, k) for k in range(correct, examples + 1)) / 2**examples
    return 1.0 if one_head >= 1 else -math.expm1(heads * math.log1p(-one_head))


def warn_if_at_chance(accuracy: torch.Tensor, pairs: int, test_fraction: float = TEST_FRACTION):
    """Warn where the best probe ``accuracy`` ``[L, H]``, scored on the held-out part of
    ``pairs`` probing pairs, is one that the best of as many probes guessing at random
    reaches more often than ``CHANCE_OF_BEST`` (``chance_of_best``): no head was then found
    to tell a prompt's own response from another's, and the heads selected are as good as
    random ones."""
    held_out = held_out_pairs(pairs, test_fraction)
    examples = 2 * held_out  # each pair's positive and negative response
    best, heads = float(accuracy.max()), accuracy.numel()
    chance = chance_of_best(best, examples, heads)
    if chance > CHANCE_OF_BEST:
        percent = math.floor(chance * 1000) / 10  # floored: 99.9, not 100, below 1
        warn_user(
            f"probing found no head above chance: the best held-out probe accuracy, "
            f"{best:.3f} ({round(best * examples)} of {examples} held-out examples), is "
            f"reached by the best of {heads} heads guessing at random {percent:g}% of the "
            "time, so the heads selected may be no better than random ones; more probe pairs "
            f"may tell heads apart ({pairs} given; the probes are scored on {held_out} of them, "
            "a positive and a negative example each)"
        )


def check_heads(heads, total: int | None = None) -> int | float:
    """``heads`` checked: an integer (a Python or numpy int, not a bool) from 1 to
    ``total`` (None: no upper bound, for a check made before the model is known) is a count,
    returned as an ``int``; a real in (0, 1] a fraction of all heads, returned as a
    ``float``. ``ArgumentError`` otherwise."""
    if isinstance(heads, bool):
        raise ArgumentError(f"heads must be a count or a fraction, got {heads!r}")
    if is_integer(heads):
        if total is not None:
            return _count_in_range(heads, total, "heads")
        if heads < 1:
            raise ArgumentError(f"heads must be at least 1, got {heads}")
        return int(heads)
    if is_real(heads) and 0 < heads <= 1:
        return float(heads)
    count = "(an integer >= 1)" if total is None else f"in [1, {total}]"
    raise ArgumentError(f"heads must be a count {count} or a fraction in (0, 1], got {heads!r}")


def head_count(geometry: HeadGeometry, heads: int | float) -> int:
    """``heads`` as a count of ``geometry``'s heads: an integer is a count, a real in
    (0, 1] a fraction of all heads (``check_heads`` checks it)."""
    total = geometry.total_heads
    value = check_heads(heads, total)
    return value if isinstance(value, int) else max(1, round(value * total))


def _count_in_range(count: int, total: int, name: str = "count") -> int:
    if not is_integer(count):
        raise ArgumentError(f"{name} must be an integer, got {count!r}")
    if not 1 <= count <= total:
        raise ArgumentError(f"{name} must be between 1 and {total} (all heads), got {count}")
    return int(count)


def select_heads(
    scores: torch.Tensor, count: int, tie_break: torch.Tensor | None = None
) -> torch.Tensor:
    """Top ``count`` heads of ``scores [L, H]`` as ``[count, 2]`` (layer, head) rows, best
    first: higher score first; among equal scores, lower ``tie_break [L, H]`` first (the
    pipeline passes the probes' held-out loss); what still ties goes to the lower
    (layer, head)."""
    layers, heads = scores.shape
    count = _count_in_range(count, layers * heads)
    order = torch.arange(layers * heads, device=scores.device)
    if tie_break is not None:
        if tie_break.shape != scores.shape:
            raise ValueError(
                f"tie_break shape {tuple(tie_break.shape)} != scores shape {tuple(scores.shape)}"
            )
        order = torch.sort(tie_break.to(scores.device).flatten(), stable=True).indices
    flat = scores.flatten()[order]
    order = order[torch.sort(flat, descending=True, stable=True).indices[:count]]
    return torch.stack([order // heads, order % heads], dim=1)


def random_heads(geometry: HeadGeometry, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct heads drawn uniformly with ``seed``, ``[count, 2]`` sorted."""
    count = _count_in_range(count, geometry.total_heads)
    flat = torch.randperm(geometry.total_heads, generator=torch.Generator().manual_seed(seed))
    flat = torch.sort(flat[:count]).values
    return geometry.layer_and_head(flat)
