"""Baselines in RestoreLCC's harness: same data, same training loop, same steps.

- ``lora_baseline`` / ``dora_baseline``: LoRA or DoRA (``peft``) on q/k/v/o of every layer,
  trained with ``train_response_lm`` exactly as RestoreLCC's ``beta, b`` are. Merging them
  writes dense deltas into the pruned weights (``merged_sparsity`` measures what is left);
  unmerged, they cost extra matmuls at inference.
- ``training_free``: ``c = mean(Zd - Zp)`` at the prompt's last token for every head, no
  training, folded like RestoreLCC (the first-order bias correction method.md suggests);
  captured as RestoreLCC captures (``capture_dtype``, fp32 by default).
- ``random_heads_restore``: RestoreLCC with heads drawn at random (the paper's ablation).
- ``lofit_baseline``: LoFiT (Yin et al., 2024), the paper's other head-level baseline:
  per-head scaling vectors ``z <- (1 + A) * z`` trained with an L1 penalty pick the heads
  (largest L2 norm ``|A(l, h)|_2``, as the authors' code ranks them), then a free bias
  vector per picked head is trained; only the biases are kept, so it folds like
  RestoreLCC's compensation.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from restorelcc.errors import UnsupportedModelError, layer_ranges
from restorelcc.hf.families import (
    block_linear,
    decoder_layers,
    family_of,
    head_geometry,
    model_device,
)
from restorelcc.io import counted
from restorelcc.lcc.capture import capture_last_token
from restorelcc.lcc.capture_precision import (
    captured_dtype,
    check_capture_attention,
    check_capture_dtype,
)
from restorelcc.lcc.compat import check_compatible, to_pruned_heads
from restorelcc.lcc.config import RestoreConfig, checked_config
from restorelcc.lcc.fingerprint import model_fingerprint
from restorelcc.lcc.heads import HeadCompensation, o_proj_input_hooks
from restorelcc.lcc.pipeline import restore
from restorelcc.lcc.probing import head_count
from restorelcc.lcc.restoration import Restoration
from restorelcc.lcc.tokens import (
    CAPTURE_LENGTH_FLAGS,
    check_pairs,
    check_tokenizer,
    encode_prompts,
    warn_pairs_cut,
)
from restorelcc.lcc.train import (
    TrainConfig,
    TrainResult,
    encode_training_pairs,
    train_response_lm,
)

DEFAULT_LORA_RANK = 8
LOFIT_L1 = 1e-3  # weight of the L1 penalty on LoFiT's head-selection scales


@dataclass
class LoraResult:
    """A trained LoRA/DoRA baseline. ``model`` is the ``peft`` model (adapters unmerged);
    ``pairs_cut``: ``{"max_length": n}``, the pairs training's length cut (as RestoreLCC's
    report counts them)."""

    name: str
    model: nn.Module
    rank: int
    train: TrainResult
    pairs_cut: dict[str, int]

    @property
    def trainable_parameters(self) -> int:
        return self.train.trainable_parameters

    def summary(self) -> dict:
        return {
            "method": self.name,
            "rank": self.rank,
            "trainable_parameters": self.trainable_parameters,
            "final_loss": self.train.final_loss,
            "seconds": self.train.seconds,
            "pairs_cut": self.pairs_cut,
        }


def lora_baseline(
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    config: TrainConfig | None = None,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float | None = None,
    dora: bool = False,
    copy_model: bool = True,
) -> LoraResult:
    """Train LoRA (or DoRA) adapters on q/k/v/o of ``pruned`` with RestoreLCC's loop.

    ``alpha`` defaults to ``2 * rank``; no dropout, and the adapters' initialisation is
    seeded with ``config.seed``: the same seed gives the same run. With ``copy_model``
    (default) ``pruned`` itself is left untouched. DoRA refuses, before any training, a
    model with an all-zero q/k/v/o output row (``check_dora_rows``).
    """
    from peft import LoraConfig, get_peft_model

    config = checked_config(config, TrainConfig)
    check_tokenizer(tokenizer)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if dora:
        check_dora_rows(pruned)
    training = encode_training_pairs(tokenizer, pairs, config)
    pairs_cut = {"max_length": training.warn_cut()}
    family = family_of(pruned)
    model = copy.deepcopy(pruned) if copy_model else pruned
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=0.0,
        target_modules=[family.q_proj, family.k_proj, family.v_proj, family.o_proj],
        use_dora=dora,
        bias="none",
    )
    name = "dora" if dora else "lora"
    with warnings.catch_warnings():
        # peft still calls a transformers property deprecated in 5.x; nothing for users to do
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        # peft draws lora_A from the global generator: seed it, so the seed fixes the run
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(config.seed)
            peft_model = get_peft_model(model, peft_config)
        base = peft_model.get_base_model()
        params = [p for p in base.parameters() if p.requires_grad]
        result = train_response_lm(base, tokenizer, training, params, config, desc=f"train {name}")
    return LoraResult(name=name, model=peft_model, rank=rank, train=result, pairs_cut=pairs_cut)


def check_dora_rows(pruned: nn.Module) -> None:
    """``UnsupportedModelError`` if a q/k/v/o weight ``[out, in]`` of ``pruned`` has an
    all-zero output row: DoRA divides each row by its weight norm (``0 / 0``, NaN at the
    first training step). Pruning with one threshold per matrix (magnitude) can zero whole
    rows; per-row pruning (Wanda, N:M patterns) keeps a share of every row."""
    family = family_of(pruned)
    rows: dict[str, int] = {}
    layers: dict[str, list[int]] = {}
    for name in family.attention_linears:
        for layer, block in enumerate(decoder_layers(pruned)):
            zero = int((block_linear(block, name).weight == 0).all(dim=1).sum())
            if zero:
                rows[name] = rows.get(name, 0) + zero
                layers.setdefault(name, []).append(layer)
    if rows:
        where = "; ".join(
            f"{name}: {counted(count, 'row')} ({'layers' if len(layers[name]) > 1 else 'layer'}"
            f" {layer_ranges(layers[name])})"
            for name, count in rows.items()
        )
        raise UnsupportedModelError(
            f"DoRA cannot train this model: {counted(sum(rows.values()), 'all-zero output row')}"
            f" in its q/k/v/o weights ({where}); DoRA divides each row by its norm, which is "
            "0 / 0 = NaN at the first step. Pruning with one threshold per matrix "
            "(magnitude) zeroes whole rows: use LoRA instead, or prune per row (Wanda, or a "
            "2:4 pattern)"
        )


def dora_baseline(
    pruned, tokenizer, pairs, config=None, rank=DEFAULT_LORA_RANK, **kw
) -> LoraResult:
    """``lora_baseline(..., dora=True)``."""
    return lora_baseline(pruned, tokenizer, pairs, config, rank, dora=True, **kw)


def block_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over every decoder-block linear weight (for ``peft`` layers, the
    wrapped base layer's weight, i.e. without the unmerged adapters)."""
    family = family_of(model)
    zeros = total = 0
    for layer in decoder_layers(model):
        for name in family.block_linears:
            module = layer.get_submodule(name)
            weight = getattr(module, "base_layer", module).weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total


def merged_sparsity(result: LoraResult) -> float:
    """Block sparsity after merging the adapters into a copy of the weights."""
    merged = copy.deepcopy(result.model).merge_and_unload()
    return block_sparsity(merged)


@torch.no_grad()
def training_free(
    dense: nn.Module,
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    max_length: int = RestoreConfig.capture_max_length,
    batch_tokens: int | None = None,
    progress: bool = True,
    capture_dtype: str = RestoreConfig.capture_dtype,
) -> Restoration:
    """``c(l, h) = mean_i (Zd - Zp)`` at each prompt's last token, every head, no training.

    The defaults capture as RestoreLCC does (``RestoreConfig``'s): ``max_length`` caps
    each pair's tokens as ``capture_max_length`` does (512); ``Zd, Zp [N, layers, heads,
    head_dim]`` are captured at ``capture_dtype``: ``"float32"`` casts a bf16/fp16 model to
    fp32 for its capture and back, one model at a time, ``"model"`` captures in the dtype
    the models run in. The report's ``capture_dtype`` records what each model was captured
    in, its ``pairs_cut`` ``{"max_length": n}`` how many pairs ``max_length`` cut (warned of).

    Returned as a ``Restoration`` (identity directions, ``beta = 0``, ``b = c [heads,
    head_dim]``) that folds, saves and exports like RestoreLCC's.
    """
    check_tokenizer(tokenizer)
    head_map = check_compatible(dense, pruned)
    check_capture_dtype(capture_dtype)
    models = {"dense": dense, "pruned": pruned}
    for name, model in models.items():  # both before the first capture: fail early
        check_capture_attention(model, capture_dtype, name)
    pairs = check_pairs(pairs, minimum=1)
    start = time.perf_counter()
    prompts, cut = encode_prompts(tokenizer, pairs, max_length)
    cut = warn_pairs_cut(cut, len(pairs), max_length, "max_length", CAPTURE_LENGTH_FLAGS)
    captured = {name: captured_dtype(model, capture_dtype) for name, model in models.items()}
    zd, zp = (
        capture_last_token(
            model, prompts, batch_tokens, progress, f"capture {name}", name, capture_dtype
        )
        for name, model in models.items()  # one after the other, as RestoreLCC's
    )
    zd = to_pruned_heads(zd, head_map)
    g = head_geometry(pruned)
    mean = (zd.double() - zp.double()).mean(0).reshape(g.total_heads, g.head_dim).float()
    flat = torch.arange(g.total_heads)
    heads = g.layer_and_head(flat)
    return Restoration(
        model_type=family_of(pruned).model_type,
        geometry=g,
        heads=heads,
        directions=torch.eye(g.head_dim).expand(g.total_heads, -1, -1).clone(),
        beta=torch.zeros(g.total_heads, g.head_dim),
        b=mean,
        fingerprint=model_fingerprint(pruned),
        method="training-free",
        hyperparameters={
            "pairs": len(pairs),
            "max_length": max_length,
            "capture_dtype": capture_dtype,
        },
        report={
            "capture_dtype": captured,
            "pairs_cut": {"max_length": cut},
            "seconds": {"capture+mean": time.perf_counter() - start},
        },
    )


def random_heads_restore(
    dense: nn.Module,
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    config: RestoreConfig | None = None,
) -> Restoration:
    """RestoreLCC with ``config.heads`` heads drawn at random (seed ``config.train.seed``)."""
    config = dataclasses.replace(checked_config(config), selection="random")
    return restore(dense, pruned, tokenizer, pairs, config)


def lofit_baseline(
    pruned: nn.Module,
    tokenizer,
    pairs: Sequence,
    config: RestoreConfig | None = None,
    l1: float = LOFIT_L1,
) -> Restoration:
    """LoFiT on ``pruned`` with RestoreLCC's data, loop and head count (``config.heads``;
    ``config.train`` for both steps, so it trains twice as many steps as RestoreLCC).

    1. Head selection: ``A [L, H*d]`` scales every head's output,
       ``z <- (1 + A) * z``; trained on the response loss + ``l1 * |A|_1``. The heads with
       the largest L2 norm ``|A(l, h)|_2`` are picked, as the authors' code ranks them
       (the norms ``[L, H]`` are the result's ``scores``).
    2. Bias tuning: a bias ``b [S, d]`` added to each picked head's output is trained;
       ``A`` is dropped. Returned as a ``Restoration`` (identity directions, ``beta = 0``)
       that folds, saves and exports like RestoreLCC's. ``pruned`` is not modified.

    ``A`` and ``b`` start from N(0, ``config.init_std``) drawn with ``config.train.seed``,
    as LoFiT's reference code starts them. The pairs are encoded once for both steps; the
    report's ``pairs_cut`` ``{"max_length": n}`` counts those ``config.train`` cut.
    """
    config = checked_config(config)
    check_tokenizer(tokenizer)
    if not l1 >= 0:
        raise ValueError(f"l1 must be >= 0, got {l1}")
    g = head_geometry(pruned)
    count = head_count(g, config.heads)
    training = encode_training_pairs(tokenizer, pairs, config.train)
    pairs_cut = {"max_length": training.warn_cut()}
    device = model_device(pruned)
    generator = torch.Generator().manual_seed(config.train.seed)
    start = torch.randn(g.layers, g.heads * g.head_dim, generator=generator) * config.init_std
    scales = nn.Parameter(start.to(device))

    def scaled(layer: int, z: torch.Tensor) -> torch.Tensor:
        return z + z * scales[layer].to(z.dtype)  # z (1 + A); A's gradient is exact either way

    select = train_response_lm(
        pruned,
        tokenizer,
        training,
        [scales],
        config.train,
        lambda: o_proj_input_hooks(pruned, scaled),
        desc="lofit: select heads",
        penalty=lambda: l1 * scales.abs().sum(),
    )
    norms = scales.detach().reshape(g.total_heads, g.head_dim).norm(dim=1).cpu()
    flat = norms.topk(count).indices.sort().values
    heads = g.layer_and_head(flat)
    identity = torch.eye(g.head_dim).expand(count, -1, -1)
    biases = HeadCompensation(g, heads, identity, config.init_std, config.train.seed).to(device)
    with torch.no_grad():
        biases.beta.zero_()  # identity directions: b alone is LoFiT's bias
    biases.beta.requires_grad_(False)
    tune = train_response_lm(
        pruned,
        tokenizer,
        training,
        [biases.b],
        config.train,
        lambda: biases.attached(pruned),
        desc="lofit: tune biases",
    )
    return Restoration.from_compensation(
        biases,
        family_of(pruned).model_type,
        model_fingerprint(pruned),
        method="lofit",
        hyperparameters={
            "heads": config.heads,
            "l1": l1,
            "init_std": config.init_std,
            "train": config.train.to_dict(),
        },
        scores=norms.reshape(g.layers, g.heads),
        report={
            "pairs_cut": pairs_cut,
            "selection": select.to_dict(),
            "train": tune.to_dict(),
            "seconds": {"select": select.seconds, "train": tune.seconds},
        },
    )


__all__ = [
    "LoraResult",
    "block_sparsity",
    "check_dora_rows",
    "dora_baseline",
    "lofit_baseline",
    "lora_baseline",
    "merged_sparsity",
    "random_heads_restore",
    "training_free",
]
