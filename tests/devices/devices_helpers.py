"""Helpers of the cross-device tests (a unique module name, imported by them): the
devices, tiny inputs, and checks that tensors live where they should."""

import copy

import pytest
import torch

from restorelcc.hf.families import decoder_layers, family_of
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
PAD = 258  # the byte tokenizer's pad id


def token_ids(device: str, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random byte ids ``[batch, length]``, drawn on the CPU (same on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=generator).to(device)


def assert_on(device: str, *items) -> None:
    """Every tensor, parameter and buffer of ``items`` lives on ``device``."""
    for item in items:
        if isinstance(item, torch.Tensor):
            tensors = {"tensor": item}
        else:
            tensors = dict(item.named_parameters()) | dict(item.named_buffers())
        assert tensors, f"{type(item).__name__} holds no tensor"
        wrong = {name: t.device for name, t in tensors.items() if t.device.type != device}
        assert not wrong, f"not on {device}: {dict(list(wrong.items())[:3])}"


@torch.no_grad()
def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def assert_finite_on(device: str, tensor: torch.Tensor) -> None:
    assert tensor.device.type == device
    assert torch.isfinite(tensor).all()


def pruned_pair(name: str, device: str, method: str = "magnitude", pattern="unstructured"):
    """(dense, pruned) on ``device``; the pruned one by ``method`` at 50% (of the block
    parameters for ``heads``)."""
    dense = tiny_model(name).to(device)
    pruned = copy.deepcopy(dense)
    prune_model(pruned, method, 0.5, pattern, progress=False)
    return dense, pruned


def linear_weights(model) -> dict[str, torch.Tensor]:
    family = family_of(model)
    return {
        f"{i}.{name}": layer.get_submodule(name).weight.detach().clone()
        for i, layer in enumerate(decoder_layers(model))
        for name in family.block_linears
    }
