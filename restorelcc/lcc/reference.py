"""The research code's protocol, one sample and one head at a time: the test oracle for
the batched implementation and the baseline of ``benchmarks/bench_capture_probe.py``.

Capture: four full forwards per pair (dense ``q``, pruned ``q``, dense ``q + r+``, dense
``q + r-``), one sequence per forward, with the LM head and all hidden states computed as
the research code's ``model(..., output_hidden_states=True)`` does, reading the ``o_proj``
inputs at the last token. Components and probes: per head, an SVD of the differences and a
separate ``nn.Linear`` probe (sigmoid, ``BCELoss``, Adam, full batch).

Not re-created on purpose: the research code's fp16 capture and fp16/bf16 casts of the
directions (its precision defects) and its head-index arithmetic (its layer/head bug);
both protocols see the same token ids, split and probe initialisation, so they differ only
in how the work is organised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from restorelcc.hf.families import head_geometry, model_device
from restorelcc.lcc.capture import ProbeActivations
from restorelcc.lcc.capture_taps import o_proj_taps
from restorelcc.lcc.probing import (
    PROBE_EPOCHS,
    PROBE_LR,
    SPLIT_SEED,
    TEST_FRACTION,
    probe_init,
    split_pairs,
)
from restorelcc.lcc.tokens import ProbeSequences


@torch.no_grad()  # not inference_mode: callers may edit the results or train on them
def last_token_full_forward(model: nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """One sequence, one full forward (LM head included); ``[L, H, d]`` fp32 at its end."""
    g = head_geometry(model)
    out: list[torch.Tensor | None] = [None] * g.layers

    def read(layer: int, x: torch.Tensor) -> None:
        out[layer] = x[0, -1].float().cpu()

    tokens = torch.tensor([list(ids)], device=model_device(model))
    with o_proj_taps(model, read, stop_after_last=False):
        model(input_ids=tokens, output_hidden_states=True)
    return torch.stack(out).reshape(g.layers, g.heads, g.head_dim)


def capture_one_by_one(
    dense: nn.Module, pruned: nn.Module, sequences: ProbeSequences, progress: bool = True
) -> ProbeActivations:
    """``Zd, Zp, Z+, Z-`` with four full single-sequence forwards per pair."""
    zd, zp, zpos, zneg = [], [], [], []
    for q, pos, neg in tqdm(
        zip(sequences.prompts, sequences.positives, sequences.negatives, strict=True),
        total=len(sequences),
        desc="capture one by one",
        unit="prompt",  # as capture_probe_activations counts: one per pair
        disable=not progress,
    ):
        zd.append(last_token_full_forward(dense, q))
        zp.append(last_token_full_forward(pruned, q))
        zpos.append(last_token_full_forward(dense, list(q) + list(pos)))
        zneg.append(last_token_full_forward(dense, list(q) + list(neg)))
    return ProbeActivations(
        dense=torch.stack(zd),
        pruned=torch.stack(zp),
        positive=torch.stack(zpos),
        negative=torch.stack(zneg),
    )


def _probe_one_head(
    pos: torch.Tensor,
    neg: torch.Tensor,
    train_idx: torch.Tensor,
    test_idx: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    epochs: int,
    lr: float,
) -> float:
    """The research code's probe for one head: ``nn.Linear`` + sigmoid + ``BCELoss``."""
    x_train = torch.cat([pos[train_idx], neg[train_idx]])
    y_train = torch.cat([torch.ones(len(train_idx)), torch.zeros(len(train_idx))])
    x_test = torch.cat([pos[test_idx], neg[test_idx]])
    y_test = torch.cat([torch.ones(len(test_idx)), torch.zeros(len(test_idx))])
    probe = nn.Linear(x_train.shape[-1], 1)
    with torch.no_grad():
        probe.weight.copy_(weight[None])
        probe.bias.copy_(bias[None])
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = criterion(torch.sigmoid(probe(x_train)).squeeze(1), y_train)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (torch.sigmoid(probe(x_test)).squeeze(1) >= 0.5).float()
    return float((predicted == y_test).float().mean())


def components_and_probes_per_head(
    acts: ProbeActivations,
    k: int = 10,
    epochs: int = PROBE_EPOCHS,
    lr: float = PROBE_LR,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head: SVD of ``Zd - Zp`` (fp32), rank-``k`` compensation, one probe.

    Returns ``(scores [L, H], directions [L, H, d, d], compensation [L, H, d])``. ``k``
    defaults to the research code's 10.
    """
    n, layers, heads, d = acts.dense.shape
    train_idx, test_idx = split_pairs(n, test_fraction, seed)
    init_w, init_b = probe_init(layers * heads, 2 * d, seed)
    scores = torch.zeros(layers * heads)
    directions = torch.zeros(layers * heads, d, d)
    compensation = torch.zeros(layers * heads, d)
    bar = tqdm(range(layers * heads), desc="probe per head", unit="head", disable=not progress)
    for index in bar:
        layer, head = divmod(index, heads)
        zd, zp = acts.dense[:, layer, head], acts.pruned[:, layer, head]
        u, s, vh = torch.linalg.svd(zd - zp, full_matrices=False)
        top = min(k, s.shape[0])
        comp = (u[:, :top].mean(0) * s[:top]) @ vh[:top]
        directions[index, : vh.shape[0]] = vh
        compensation[index] = comp
        shifted = zp + comp
        pos = torch.cat([shifted, acts.positive[:, layer, head]], dim=-1)
        neg = torch.cat([shifted, acts.negative[:, layer, head]], dim=-1)
        scores[index] = _probe_one_head(
            pos, neg, train_idx, test_idx, init_w[index], init_b[index], epochs, lr
        )
    return (
        scores.reshape(layers, heads),
        directions.reshape(layers, heads, d, d),
        compensation.reshape(layers, heads, d),
    )
