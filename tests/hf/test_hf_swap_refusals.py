"""A swap that fails part way (a bad argument, a group that cannot be packed) leaves the
model as it was; wrapped or hooked projections are refused with a message saying why."""

import pytest
import torch
from _hf_swap_helpers import attention, prune_attention
from torch import nn

import lcc_kernels
from restorelcc.errors import UnsupportedModelError
from restorelcc.hf import swap
from restorelcc.hf.families import decoder_layers
from restorelcc.hf.swap import SwapError, swap_attention, unswap_attention
from restorelcc.testing import tiny_model


def _mixed_model():
    """Layer 0 pruned 2:4, layer 1 unstructured (so "auto" packs layer 1 as bitmap)."""
    model = prune_attention(tiny_model("llama-mha"), "2:4", layers=[0])
    return prune_attention(model, "unstructured", layers=[1])


def _modules(model):
    return {name: module for name, module in model.named_modules()}


@pytest.mark.parametrize("tile", [(8, 48), (0, 64), (8,), "8x64"])
def test_a_bad_bitmap_tile_is_refused_before_any_module_is_replaced(tile):
    model = _mixed_model()
    before = _modules(model)
    with pytest.raises(ValueError, match="bitmap tile"):
        swap_attention(model, bitmap_tile=tile)
    assert _modules(model) == before
    assert type(attention(model, 0).q_proj) is nn.Linear


def test_a_group_that_fails_to_pack_puts_back_the_groups_already_replaced(monkeypatch):
    model = _mixed_model()
    kinds = {name: type(module) for name, module in model.named_modules()}
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    real, calls = lcc_kernels.pack_many, []

    def fail_on_the_last_group(weights, format, **kwargs):
        calls.append(format)
        if len(calls) == 2 * len(decoder_layers(model)):
            raise RuntimeError("out of memory")
        return real(weights, format, **kwargs)

    monkeypatch.setattr(swap.lcc_kernels, "pack_many", fail_on_the_last_group)
    with pytest.raises(RuntimeError, match="out of memory"):
        swap_attention(model)
    assert calls == ["2:4", "2:4", "bitmap", "bitmap"]
    assert {name: type(module) for name, module in model.named_modules()} == kinds
    assert model.state_dict().keys() == weights.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_a_peft_wrapped_projection_is_named_with_its_class_and_the_remedy():
    peft = pytest.importorskip("peft")
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["q_proj"], r=2))
    with pytest.raises(
        SwapError, match=r"q_proj is peft\.tuners\.lora\..*Linear.*merge_and_unload"
    ):
        swap_attention(wrapped.get_base_model())


def test_a_peft_model_is_named_as_one_with_the_remedy():
    peft = pytest.importorskip("peft")
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["q_proj"], r=2))
    with pytest.raises(UnsupportedModelError, match="PeftModel.*merge_and_unload.*get_base_model"):
        swap_attention(wrapped)


def test_offloaded_weights_on_the_meta_device_are_refused():
    model = prune_attention(tiny_model("llama-gqa"), "2:4").to("meta")
    with pytest.raises(SwapError, match="layer 0 self_attn.q_proj .*meta device.*offloaded"):
        swap_attention(model)


@pytest.mark.parametrize("kind", ["forward", "forward_pre"])
def test_a_projection_with_hooks_is_refused_naming_it(kind):
    model = _mixed_model()
    before = _modules(model)
    register = getattr(attention(model, 1).k_proj, f"register_{kind}_hook")
    register(lambda *args: None)
    with pytest.raises(SwapError, match=f"layer 1 self_attn.k_proj has {kind.replace('_', ' ')}"):
        swap_attention(model)
    assert _modules(model) == before


def test_unswap_refuses_a_swapped_module_with_hooks_and_changes_nothing():
    model = _mixed_model()
    swap_attention(model)
    handle = attention(model, 1).q_proj.register_forward_hook(lambda *args: None)
    before = _modules(model)
    with pytest.raises(SwapError, match="layer 1 self_attn.q_proj has forward hooks"):
        unswap_attention(model)
    assert _modules(model) == before
    handle.remove()
    assert unswap_attention(model) == [0, 1]
