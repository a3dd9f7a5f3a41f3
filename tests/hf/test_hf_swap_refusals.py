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


class ScaledLinear(nn.Linear):
    """An nn.Linear subclass that computes something else (as fake-quantized QAT ones do)."""

    def forward(self, x):
        return super().forward(x) * 0.5


def _replace_k_proj(model, layer: int, make) -> None:
    old = attention(model, layer).k_proj
    new = make(old.in_features, old.out_features, bias=old.bias is not None)
    new.load_state_dict(old.state_dict())
    attention(model, layer).k_proj = new


def test_a_linear_subclass_is_refused_not_swapped_silently():
    """isinstance(nn.Linear) had let it through: its forward was dropped (logits moved by 2)."""
    model = _mixed_model()
    _replace_k_proj(model, 1, ScaledLinear)
    before = _modules(model)
    with pytest.raises(SwapError, match="layer 1 self_attn.k_proj is .*ScaledLinear, not a plain"):
        swap_attention(model)
    assert _modules(model) == before


def test_a_parametrized_projection_is_refused_naming_the_remedy():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def forward(self, weight):
            return weight * (weight != 0)

    model = _mixed_model()
    parametrize.register_parametrization(attention(model, 0).v_proj, "weight", Mask())
    with pytest.raises(SwapError, match="layer 0 self_attn.v_proj has parametrizations .weight"):
        swap_attention(model)
    assert parametrize.is_parametrized(attention(model, 0).v_proj)


def test_torch_pruning_hooks_are_refused_naming_prune_remove():
    from torch.nn.utils import prune

    model = _mixed_model()
    prune.l1_unstructured(attention(model, 1).q_proj, "weight", 0.5)
    with pytest.raises(SwapError, match=r"torch.nn.utils.prune.remove\(module, 'weight'\)"):
        swap_attention(model)
    prune.remove(attention(model, 1).q_proj, "weight")
    swap_attention(model)


@pytest.mark.parametrize(("backend", "layer"), [("semi_structured", 1), ("streams", 0)])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_backend_that_cannot_run_a_format_is_refused_at_the_swap(backend, layer, dry_run):
    """It had been accepted, and failed at the first forward of the swapped model."""
    model = _mixed_model()
    before = _modules(model)
    with pytest.raises(SwapError, match=f"layer {layer} .* the {backend} backend needs a"):
        swap_attention(model, backend=backend, dry_run=dry_run)
    assert _modules(model) == before
    # a format the backend runs is fine (semi_structured on CUDA only: the test below)
    if backend == "streams":
        swap_attention(model, format="bitmap", backend=backend, layers=[0], dry_run=True)


@pytest.mark.parametrize("dry_run", [False, True])
def test_semi_structured_on_cpu_weights_is_refused_at_the_swap(dry_run):
    """It was accepted, and failed at the first forward ("the semi_structured backend runs
    on CUDA tensors only, x is on cpu"). "auto" runs the same weights there."""
    model = _mixed_model()
    before = _modules(model)
    with pytest.raises(SwapError) as refused:
        swap_attention(model, format="2:4", layers=[0], backend="semi_structured", dry_run=dry_run)
    assert str(refused.value) == (
        "layer 0 qkv: the semi_structured backend runs on CUDA only, and its weights are on "
        "cpu (move the model to a GPU before the swap, or pass backend='auto')"
    )
    assert _modules(model) == before
    swap_attention(model, format="2:4", layers=[0], dry_run=dry_run)


def test_layers_must_be_an_iterable_of_indices():
    with pytest.raises(ValueError, match="layers must be an iterable of decoder layer indices"):
        swap_attention(_mixed_model(), layers=1)
