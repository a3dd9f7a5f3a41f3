"""``restorelcc bench --model`` on ``save_packed`` folders whose re-swap packs other groups
than they hold, or packs them otherwise: a group the folder holds packed that the re-swap
leaves dense, a group held with another backend, and a mixed-format folder, whether the
reference logits are computed first or not (``--no-check``); ``--format`` naming one of a
mixed folder's formats is refused before the weights load."""

import pytest
import torch
from _hf_packed_helpers import NOT_BENCHED, NOTHING_RECORDED, bench_refusal
from _hf_swap_helpers import MLP_PROJECTIONS, mlp, prune_attention

from restorelcc.hf import save_packed, swap_attention
from restorelcc.hf.families import decoder_layers
from restorelcc.testing import byte_tokenizer, tiny_model


@torch.no_grad()
def test_a_group_held_packed_that_the_reswap_leaves_dense_is_refused(tmp_path, capsys):
    """The MLP 5% zeros, packed as bitmaps with min_sparsity=0.01: the re-swap (the
    default 10%) leaves it dense, and the attention alone matched what the folder holds."""
    model = prune_attention(tiny_model("llama-gqa"), "unstructured")
    for layer in range(len(decoder_layers(model))):
        for name in MLP_PROJECTIONS:
            weight = getattr(mlp(model, layer), name).weight
            weight[weight.abs() <= weight.abs().flatten().quantile(0.05)] = 0
    swap_attention(model, "bitmap", mlp=True, min_sparsity=0.01)
    folder = save_packed(model, tmp_path / "low-mlp", byte_tokenizer())
    assert bench_refusal(tmp_path, capsys, folder) == (
        f"--model {folder}: swapped again with format='bitmap', mlp=True, decode_streams=False "
        f"(as its groups show: it holds bitmap weights and {NOTHING_RECORDED}), its unpacked "
        "weights give layer 0 down_proj as dense where the folder holds it as bitmap (backend "
        f"auto, decode_streams False): bench cannot time it as it was packed. {NOT_BENCHED}"
    )


@torch.no_grad()
def test_a_folder_swapped_with_another_backend_is_refused(tmp_path, capsys):
    """Swapped with backend="dense": the re-swap's "auto" is another packing."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model, backend="dense")
    folder = save_packed(model, tmp_path / "dense-backend", byte_tokenizer())
    assert bench_refusal(tmp_path, capsys, folder) == (
        f"--model {folder}: swapped again with format='2:4', mlp=False, decode_streams=False "
        f"(as its groups show: it holds 2:4 weights and {NOTHING_RECORDED}), its unpacked "
        "weights give layer 0 o_proj as 2:4 (backend auto, decode_streams False) where the "
        "folder holds it as 2:4 (backend dense, decode_streams False): bench cannot time it "
        f"as it was packed. {NOT_BENCHED}"
    )


@pytest.fixture
@torch.no_grad()
def mixed_folder(tmp_path):
    """2:4-pruned, layer 0 swapped as a bitmap and layer 1 as 2:4 (save_packed)."""
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model, "bitmap", layers=[0])
    swap_attention(model, "2:4", layers=[1])
    return save_packed(model, tmp_path / "mixed", byte_tokenizer())


def test_a_mixed_folder_is_refused_without_the_check_too(mixed_folder, tmp_path, capsys):
    """--no-check leaves out the dry run before the reference logits: the swap that is
    timed is checked against the folder itself."""
    assert bench_refusal(tmp_path, capsys, mixed_folder, "--no-check") == (
        f"--model {mixed_folder}: swapped again with format='auto', mlp=False, "
        "decode_streams=False (as its groups show: it holds 2:4 and bitmap weights and "
        f"{NOTHING_RECORDED}), its unpacked weights give layer 0 o_proj as 2:4 (backend auto, "
        "decode_streams False) where the folder holds it as bitmap (backend auto, "
        f"decode_streams False): bench cannot time it as it was packed. {NOT_BENCHED}"
    )


@pytest.mark.parametrize("format", ["bitmap", "2:4"])
def test_format_naming_one_of_a_mixed_folders_formats_is_refused_before_loading(
    mixed_folder, tmp_path, capsys, monkeypatch, format
):
    """Only a folder of one format takes --format naming it."""
    import restorelcc.hf.packed_checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded before --format was checked")

    monkeypatch.setattr(restorelcc.hf.packed_checkpoint, "load_packed", refuse)
    assert bench_refusal(tmp_path, capsys, mixed_folder, "--format", format) == (
        f"--format {format}: {mixed_folder} is a packed checkpoint holding 2:4 and bitmap "
        "weights (no pack options recorded), timed as it was packed (leave --format out)"
    )
