"""The dtypes of a packed checkpoint: ``load_packed(dtype="auto")`` gives each tensor back
in the dtype it was saved in (an fp32 bias of a bf16 model, a model whose parts differ),
an explicit dtype casts them all; each packed module is checked against the dtype its
manifest entry names (an entry without one: the manifest's, which test_hf_packed_checkpoint
checks the embeddings against); the dtypes ``load_packed`` accepts are the ones it lists."""

import pytest
import torch
from _hf_packed_helpers import IDS, edit_manifest, edit_weights, saved_packed, tiny_pruned
from _hf_swap_helpers import attention, same_bits
from torch import nn

from restorelcc.hf import load_packed, save_packed, swap_attention, unswap_attention
from restorelcc.loading import CheckpointError, load_model
from restorelcc.testing import byte_tokenizer, save_checkpoint


def _bf16_with_fp32_o_biases(tmp_path):
    """llama-gqa pruned 2:4, loaded in bf16 (``load_model``: its rotary buffers as
    ``load_packed`` makes them, not cast), each o_proj given an fp32 bias (a restoration
    folded in fp32), swapped with its MLP."""
    dense = save_checkpoint(tiny_pruned("llama-gqa", "2:4"), tmp_path / "dense")
    model, _ = load_model(dense, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    for layer in range(2):
        o_proj = attention(model, layer).o_proj
        o_proj.bias = nn.Parameter(0.5 * torch.randn(o_proj.out_features, generator=generator))
    swap_attention(model, mlp=True)
    return model


def _dtypes(model) -> dict[str, torch.dtype]:
    return {name: tensor.dtype for name, tensor in model.state_dict().items()}


@torch.no_grad()
def test_auto_keeps_an_fp32_bias_of_a_bf16_model(tmp_path):
    """The bias came back bf16 (every tensor cast to the manifest's one dtype), and the
    logits differed by 0.02 from the saved model's."""
    model = _bf16_with_fp32_o_biases(tmp_path)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    loaded, _ = load_packed(folder)
    assert attention(loaded, 0).o_proj.bias.dtype == torch.float32
    assert attention(loaded, 0).o_proj.packed.dtype == torch.bfloat16
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert _dtypes(loaded) == _dtypes(model)


def test_an_explicit_dtype_casts_the_fp32_bias_too(tmp_path):
    model = _bf16_with_fp32_o_biases(tmp_path)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    loaded, _ = load_packed(folder, dtype="bfloat16")
    assert set(_dtypes(loaded).values()) == {torch.bfloat16}
    assert torch.equal(attention(loaded, 1).o_proj.bias, attention(model, 1).o_proj.bias.bfloat16())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp32_embeddings_and_bf16_layers_save_and_load(tmp_path, dtype):
    """save_packed wrote a folder that load_packed refused whatever the dtype asked
    ("packed_qkv holds torch.bfloat16, not the torch.float32 it names"). Now "auto" gives
    the model back as saved, tensor for tensor and dtype for dtype, and an explicit dtype
    gives what load_model of its dense checkpoint, then the same swap, gives."""
    model = tiny_pruned("llama-gqa", "2:4")
    model.model.layers.to(torch.bfloat16)
    dense = save_checkpoint(model, tmp_path / "dense")
    swap_attention(model, mlp=True)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())

    loaded, _ = load_packed(folder)
    assert _dtypes(loaded) == _dtypes(model)
    assert loaded.get_input_embeddings().weight.dtype == torch.float32
    assert attention(loaded, 0).packed_qkv.packed.dtype == torch.bfloat16
    unswap_attention(model), unswap_attention(loaded)
    expected, got = model.state_dict(), loaded.state_dict()
    assert all(same_bits(got[key], tensor) for key, tensor in expected.items())

    reference, _ = load_model(dense, dtype=dtype)
    swap_attention(reference, mlp=True)
    cast, _ = load_packed(folder, dtype=dtype)
    assert set(_dtypes(cast).values()) == {dtype}
    with torch.no_grad():
        assert torch.equal(cast(IDS).logits, reference(IDS).logits)


def test_a_packed_tensor_of_another_dtype_than_its_entry_is_refused(tmp_path):
    """A weights file edited after the save: the check compares each packed module with
    the dtype its own entry records."""
    folder = saved_packed(tmp_path)
    values = "model.layers.0.self_attn.packed_qkv.packed.values"
    edit_weights(folder, lambda tensors: tensors.update({values: tensors[values].half()}))
    with pytest.raises(
        CheckpointError,
        match="model.layers.0.self_attn.packed_qkv holds torch.float16, not the torch.float32 "
        "it names",
    ):
        load_packed(folder)


@pytest.mark.parametrize(
    "dtype, message",
    [
        ("bfloat16", "model.layers.0.self_attn.o_proj holds torch.float32, not the torch.bfloat16"),
        ("float64", "unknown dtype 'float64'"),
    ],
)
def test_an_entry_naming_another_dtype_is_refused(tmp_path, dtype, message):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda manifest: manifest["groups"][1].update(dtype=dtype))
    with pytest.raises(CheckpointError, match=message):
        load_packed(folder)


@torch.no_grad()
def test_entries_without_a_dtype_are_checked_against_the_manifests(tmp_path):
    """Folders saved before the entries recorded their dtype still load, and are still
    checked."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    edit_manifest(folder, lambda manifest: [entry.pop("dtype") for entry in manifest["groups"]])
    loaded, _ = load_packed(folder)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    values = "model.layers.1.self_attn.o_proj.packed.values"
    edit_weights(folder, lambda tensors: tensors.update({values: tensors[values].half()}))
    with pytest.raises(CheckpointError, match="o_proj holds torch.float16, not the torch.float32"):
        load_packed(folder)


@pytest.mark.parametrize("dtype", ["half", "float64", torch.float64, torch.int8])
def test_the_dtypes_listed_are_the_ones_load_packed_takes(tmp_path, dtype):
    """It listed float64 (load_model's list) for "half", then refused float64 itself."""
    with pytest.raises(ValueError) as refused:
        load_packed(tmp_path / "not-read", dtype=dtype)
    assert str(refused.value) == (
        "dtype must be one of float16, bfloat16, float32 (a torch.dtype or its name) or "
        f"'auto' (the checkpoint's own); got {dtype!r}"
    )
