"""What ``save_packed`` refuses before writing anything, because ``load_packed`` could not
read it back: a folder without the tokenizer, a model that is not a causal LM, a swapped
module with hooks; and the ``torch.compile`` wrapper it unwraps rather than writing names
that ``load_packed`` refuses."""

import json

import pytest
import torch
from _hf_packed_helpers import IDS, tiny_pruned
from _hf_swap_helpers import prune_attention

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf import load_packed, save_packed, swap_attention
from restorelcc.hf.packed_checkpoint import PACKED_INFO
from restorelcc.hf.swap_plan import SwapError
from restorelcc.testing import byte_tokenizer, tiny_config


@pytest.mark.parametrize("tokenizer, got", [(None, "none"), ("byte", "a str")])
def test_a_missing_tokenizer_is_refused_before_anything_is_written(tmp_path, tokenizer, got):
    """Without one, the folder was written and load_packed then refused it ("has no
    tokenizer")."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model)
    with pytest.raises(ValueError) as refused:
        save_packed(model, tmp_path / "packed", tokenizer)
    assert str(refused.value) == (
        f"save_packed needs the model's tokenizer, got {got}: load_packed reads it from the "
        "folder; pass it as save_packed(model, folder, tokenizer)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_sequence_classifier_is_refused_naming_its_class(tmp_path):
    """It was saved, and load_packed (AutoModelForCausalLM) then refused the folder:
    "unexpected ['score.weight'], missing ['lm_head.weight']"."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_config("llama-gqa")
    config.num_labels = 3
    model = prune_attention(AutoModelForSequenceClassification.from_config(config), "2:4")
    swap_attention(model)
    with pytest.raises(UnsupportedModelError) as refused:
        save_packed(model, tmp_path / "packed", byte_tokenizer())
    assert str(refused.value) == (
        "save_packed: LlamaForSequenceClassification is not a causal language model; packed "
        "folders hold causal LMs, which load_packed builds with AutoModelForCausalLM "
        "(LlamaForCausalLM for this config): unswap_attention(model) and save it with "
        "save_pretrained instead"
    )
    assert list(tmp_path.iterdir()) == []


@torch.no_grad()
def test_a_compiled_model_is_saved_as_the_model_it_wraps(tmp_path):
    """Its names all started with "_orig_mod.", which load_packed refused ("layer 0 qkv is
    at model.layers.0.self_attn.packed_qkv, not {... '_orig_mod.model.layers...'})."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model, mlp=True)
    compiled = torch.compile(model, backend="eager")
    folder = save_packed(compiled, tmp_path / "packed", byte_tokenizer())
    manifest = json.loads((folder / PACKED_INFO).read_text())
    assert [entry["module"] for entry in manifest["groups"][:2]] == [
        "model.layers.0.self_attn.packed_qkv",
        "model.layers.0.self_attn.o_proj",
    ]
    loaded, _ = load_packed(folder)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize(
    "module, kind, found",
    [
        ("self_attn.o_proj", "forward", "forward hooks"),  # a SparseLinear
        ("self_attn.q_proj", "forward_pre", "forward pre-hooks"),  # a ProjectionView
        ("self_attn.packed_qkv", "forward", "forward hooks"),  # a PackedProjections
        ("mlp.up_proj", "full_backward", "backward hooks"),
    ],
    ids=["sparse-linear", "view", "packed-projections", "mlp-view"],
)
@torch.no_grad()
def test_a_swapped_module_with_hooks_is_refused_naming_it(tmp_path, module, kind, found):
    """The hooks were left out of the folder without a word: a forward hook doubling
    o_proj's output ran in the saved model and not in the one load_packed gave back."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model, mlp=True)
    register = getattr(model.model.layers[1].get_submodule(module), f"register_{kind}_hook")
    handle = register(lambda *args: None)
    with pytest.raises(SwapError) as refused:
        save_packed(model, tmp_path / "packed", byte_tokenizer())
    assert str(refused.value) == (
        f"save_packed: model.layers.1.{module} has {found}, which a packed checkpoint cannot "
        "hold (load_packed would give the model without them): remove them (handle.remove()) "
        "before saving, and register them again on the loaded model if needed"
    )
    assert list(tmp_path.iterdir()) == []
    handle.remove()
    loaded, _ = load_packed(save_packed(model, tmp_path / "packed", byte_tokenizer()))
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
