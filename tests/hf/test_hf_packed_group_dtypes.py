"""Each packed group's dtype is checked the same way by ``load_packed`` and by
``packed_swap`` (what ``bench`` and ``eval --swap`` read of a packed folder first): a packed
weight stored in another dtype than its manifest entry records, or an entry naming another
or an unknown dtype, is refused by both with one message naming the group and both dtypes.
``packed_swap`` reads the dtypes from the weights file's header, not the weights."""

import pytest
import torch
from _hf_packed_helpers import edit_manifest, edit_weights, saved_packed, tiny_pruned

from restorelcc.errors import CorruptCacheError
from restorelcc.hf import load_packed, save_packed, swap_attention
from restorelcc.hf.packed_checkpoint import PACKED_INFO, WEIGHTS, packed_swap
from restorelcc.loading import CheckpointError
from restorelcc.testing import byte_tokenizer

READERS = pytest.mark.parametrize("read", [load_packed, packed_swap], ids=["load", "swap"])
QKV = "model.layers.0.self_attn.packed_qkv"
O_PROJ = "model.layers.0.self_attn.o_proj"


def _refusal(read, folder) -> str:
    with pytest.raises(CheckpointError) as caught:
        read(folder)
    return str(caught.value)


def _saved(tmp_path, fmt: str):
    """llama-gqa pruned 2:4, its attention swapped to ``fmt`` (bitmap values are 1-D,
    2:4 values 2-D), saved by ``save_packed``."""
    model = tiny_pruned("llama-gqa", "2:4")
    swap_attention(model, format=fmt)
    return save_packed(model, tmp_path / "packed", byte_tokenizer())


@READERS
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_a_packed_weight_stored_in_another_dtype_is_refused(tmp_path, read, fmt):
    """packed_swap had returned the folder's options, and bench went on to load it."""
    folder = _saved(tmp_path, fmt)
    values = f"{QKV}.packed.values"
    edit_weights(folder, lambda tensors: tensors.update({values: tensors[values].half()}))
    assert _refusal(read, folder) == (
        f"{folder / PACKED_INFO}: the layer 0 qkv group at {QKV} holds torch.float16, not "
        "the torch.float32 it names"
    )


@READERS
def test_an_entry_naming_another_dtype_is_refused(tmp_path, read):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda manifest: manifest["groups"][1].update(dtype="bfloat16"))
    assert _refusal(read, folder) == (
        f"{folder / PACKED_INFO}: the layer 0 o_proj group at {O_PROJ} holds torch.float32, "
        "not the torch.bfloat16 it names"
    )


@READERS
def test_an_entry_naming_an_unknown_dtype_is_refused(tmp_path, read):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda manifest: manifest["groups"][3].update(dtype="float64"))
    assert _refusal(read, folder) == f"{folder / PACKED_INFO}: unknown dtype 'float64'"


@READERS
def test_entries_without_a_dtype_are_checked_against_the_manifests(tmp_path, read):
    """Folders saved before the entries recorded their dtype."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda manifest: [entry.pop("dtype") for entry in manifest["groups"]])
    values = f"{O_PROJ}.packed.values"
    edit_weights(folder, lambda tensors: tensors.update({values: tensors[values].bfloat16()}))
    assert _refusal(read, folder) == (
        f"{folder / PACKED_INFO}: the layer 0 o_proj group at {O_PROJ} holds "
        "torch.bfloat16, not the torch.float32 it names"
    )


def test_packed_swap_reads_the_dtypes_without_the_weights(tmp_path, monkeypatch):
    """The header and an empty slice of each packed values tensor: no tensor is read."""
    from safetensors import safe_open

    folder = saved_packed(tmp_path)
    with safe_open(folder / WEIGHTS, framework="pt") as file:
        handle = type(file)
    monkeypatch.setattr(handle, "get_tensor", lambda *args: pytest.fail("a tensor was read"))
    assert packed_swap(folder)["groups"][(0, "qkv")] == ("2:4", "auto", False)


@READERS
def test_a_weights_file_that_cannot_be_read_is_refused_alike(tmp_path, read):
    folder = saved_packed(tmp_path)
    (folder / WEIGHTS).write_bytes(b"\x00" * 4)
    with pytest.raises(CorruptCacheError, match=f"^cannot read {folder / WEIGHTS}: "):
        read(folder)


def test_the_dtypes_agreeing_the_folder_reads(tmp_path):
    """A bf16 folder: its packed weights and entries agree, so both readers take it."""
    model = tiny_pruned("llama-gqa", "2:4", dtype=torch.bfloat16)
    swap_attention(model)
    folder = save_packed(model, tmp_path / "packed", byte_tokenizer())
    assert packed_swap(folder)["dtype"] == "bfloat16"
    loaded, _ = load_packed(folder)
    assert loaded.model.layers[0].self_attn.packed_qkv.packed.dtype == torch.bfloat16
