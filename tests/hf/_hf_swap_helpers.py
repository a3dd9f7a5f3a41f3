"""Shared by the attention-swap tests: magnitude pruning of the attention projections of
the tiny models, an o_proj bias and the error rule of kernels.md on logits."""

import copy

import torch
from torch import nn

from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.latency import LOGITS_ATOL
from restorelcc.testing import TINY_SHAPES, tiny_model

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
FAMILIES = sorted(TINY_SHAPES)
PATTERNS = {"2:4": "2:4", "unstructured": "bitmap"}  # pruning -> the format "auto" picks
# Added to twice PyTorch's own error (the tolerance rule of the kernel tests).
ATOL = LOGITS_ATOL


def attention(model, layer: int) -> nn.Module:
    return decoder_layers(model)[layer].get_submodule(family_of(model).attention)


def mlp(model, layer: int) -> nn.Module:
    return decoder_layers(model)[layer].get_submodule(family_of(model).mlp)


@torch.no_grad()
def prune_attention(model, pattern: str, layers=None, names=PROJECTIONS, owner=attention):
    """Zero the smallest-magnitude weights of q/k/v/o (of ``names`` of ``owner(model,
    layer)``) in place: "2:4" keeps the 2 largest of every 4 along K, "unstructured" keeps
    the largest 40% of each row (60% sparse)."""
    for i in range(len(decoder_layers(model))) if layers is None else layers:
        for name in names:
            weight = getattr(owner(model, i), name).weight
            if pattern == "2:4":
                groups = weight.abs().reshape(weight.shape[0], -1, 4)
                keep = groups.argsort(-1, descending=True)[..., :2]
                mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
                mask = mask.reshape(weight.shape)
            else:
                kept = round(0.4 * weight.shape[1])
                order = weight.abs().argsort(-1, descending=True)[:, :kept]
                mask = torch.zeros_like(weight, dtype=torch.bool).scatter_(-1, order, True)
            weight.mul_(mask)
    return model


@torch.no_grad()
def add_o_bias(model, seed: int = 7):
    """Give every o_proj a random bias (a folded compensation or an existing bias)."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(len(decoder_layers(model))):
        o_proj = attention(model, i).o_proj
        o_proj.bias = nn.Parameter(0.5 * torch.randn(o_proj.out_features, generator=generator))
    return model


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def assert_matches(swapped, pruned, ids, dtype) -> None:
    """max |swapped - fp64| <= 2 x max |plain PyTorch at dtype - fp64| + ATOL[dtype], where
    swapped is at dtype and pruned is the unswapped fp32 model."""
    assert_logits_match(logits(swapped, ids), pruned, ids, dtype)


def assert_logits_match(ours: torch.Tensor, pruned, ids, dtype) -> None:
    """``assert_matches`` for logits [B, T, vocab] already computed by the swapped model
    (under inference_mode, say) from ids [B, T]."""
    oracle = logits(copy.deepcopy(pruned).double(), ids)
    plain = logits(copy.deepcopy(pruned).to(dtype), ids)
    assert ours.dtype == dtype and not torch.isnan(ours).any()
    torch_error = (plain.double() - oracle).abs().max().item()
    error = (ours.double() - oracle).abs().max().item()
    limit = 2 * torch_error + ATOL[dtype]
    assert error <= limit, f"max error {error:.3g} > {limit:.3g} (PyTorch's: {torch_error:.3g})"


def prune_mlp(model, pattern: str, layers=None):
    """``prune_attention`` of gate/up/down_proj."""
    return prune_attention(model, pattern, layers, MLP_PROJECTIONS, mlp)


def linear_state(model, names=PROJECTIONS, owner=attention) -> dict[str, torch.Tensor]:
    """Every attention weight and bias (of ``names`` of ``owner``), by name."""
    state = {}
    for i in range(len(decoder_layers(model))):
        for name in names:
            module = getattr(owner(model, i), name)
            assert type(module) is nn.Linear, f"layer {i} {name} is {type(module).__name__}"
            state[f"{i}.{name}.weight"] = module.weight.detach()
            if module.bias is not None:
                state[f"{i}.{name}.bias"] = module.bias.detach()
    return state


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, with -0.0 and +0.0 counted as the same (pruned zeros lose the sign)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal((a + 0.0).view(ints), (b + 0.0).view(ints))


def assert_generation_matches(swapped, pruned, prompt, new_tokens: int, dtype) -> None:
    """Greedy ``generate`` (KV cache) of the swapped model gives the pruned model's tokens,
    and each step's logits obey the rule of ``assert_matches`` against one fp64 forward."""
    settings = dict(
        max_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=258,
    )
    ours = swapped.generate(prompt, **settings)
    plain = copy.deepcopy(pruned).to(dtype).generate(prompt, **settings)
    assert torch.equal(ours.sequences, plain.sequences)
    oracle = logits(copy.deepcopy(pruned).double(), ours.sequences[:, :-1])
    oracle = oracle[:, prompt.shape[1] - 1 :]  # [batch, new_tokens, vocab]
    error = (torch.stack(ours.logits, 1).double() - oracle).abs().max().item()
    torch_error = (torch.stack(plain.logits, 1).double() - oracle).abs().max().item()
    limit = 2 * torch_error + ATOL[dtype]
    assert error <= limit, f"max error {error:.3g} > {limit:.3g} (PyTorch's: {torch_error:.3g})"


def pruned_model(name: str, pattern: str, seed: int = 0, mlp: bool = False):
    """A tiny model with its attention (and with ``mlp``, its MLP) pruned to ``pattern``
    and an o_proj bias."""
    model = add_o_bias(prune_attention(tiny_model(name, seed=seed), pattern))
    return prune_mlp(model, pattern) if mlp else model


def random_ids(batch: int = 2, length: int = 11) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length))
