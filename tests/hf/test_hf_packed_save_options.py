"""What ``save_packed`` keeps and ``load_packed`` / ``packed_swap`` give back beyond the
weights: eval mode, the generation config, the groups of a model swapped in its MLP only,
the pack options recorded under ``info`` only where they are valid; and the order of
``save_packed``'s refusals."""

import pytest
import torch
from _hf_packed_helpers import IDS, edit_manifest, saved_packed
from _hf_swap_helpers import prune_attention, prune_mlp

from restorelcc.hf import load_packed, save_packed, swap_attention
from restorelcc.hf.attention import PackedLinear
from restorelcc.hf.packed_checkpoint import packed_swap
from restorelcc.testing import byte_tokenizer, tiny_model


def test_loads_in_eval_mode(tmp_path):
    """from_config builds a model in training mode: dropout would be live."""
    loaded, _ = load_packed(saved_packed(tmp_path))
    assert not [name for name, module in loaded.named_modules() if module.training]


def test_the_generation_config_comes_back(tmp_path):
    model = prune_attention(tiny_model("llama-gqa"), "2:4")
    swap_attention(model)
    model.generation_config.max_new_tokens = 7
    loaded, _ = load_packed(save_packed(model, tmp_path / "packed", byte_tokenizer()))
    assert loaded.generation_config.max_new_tokens == 7


@torch.no_grad()
def test_a_model_swapped_in_its_mlp_only_keeps_its_mlp_packed(tmp_path):
    """q/k/v and o_proj left dense come first in each layer: the packed groups after them
    are saved too."""
    model = prune_mlp(tiny_model("llama-gqa"), "unstructured")
    report = swap_attention(model, mlp=True)
    formats = {"qkv": "dense", "o_proj": "dense", "gate_up": "bitmap", "down_proj": "bitmap"}
    expected = [(layer, group, format) for layer in (0, 1) for group, format in formats.items()]
    assert [(g.layer, g.group, g.format) for g in report.groups] == expected
    before = model(IDS).logits
    loaded, _ = load_packed(save_packed(model, tmp_path / "packed", byte_tokenizer()))
    packed = {name for name, m in loaded.named_modules() if isinstance(m, PackedLinear)}
    assert packed == {
        f"model.layers.{layer}.mlp.{name}"
        for layer in (0, 1)
        for name in ("packed_gate_up", "down_proj")
    }
    assert torch.equal(loaded(IDS).logits, before)


VALID = {"format": "2:4", "mlp": False, "decode_streams": False}


@pytest.mark.parametrize(
    "info",
    [
        {"swap": {**VALID, "format": "bogus"}},
        {"swap": {**VALID, "mlp": "yes"}},
        {"swap": {**VALID, "decode_streams": 1}},
        {"swap": ["2:4"]},
        "2:4",
    ],
    ids=[
        "unknown-format",
        "mlp-not-bool",
        "decode-streams-not-bool",
        "swap-not-object",
        "info-not-object",
    ],  # fmt: skip
)
def test_pack_options_recorded_invalid_are_read_from_the_groups(tmp_path, info):
    """A swap report that is not what restorelcc pack records: the options are those the
    groups show (their one format 2:4, no MLP, no decode streams), not the report's."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m.update(info=info))
    options = packed_swap(folder)
    assert options["recorded"] is False
    assert (options["format"], options["mlp"], options["decode_streams"]) == ("2:4", False, False)
    assert type(options["mlp"]) is bool and type(options["decode_streams"]) is bool


def test_pack_options_recorded_valid_are_taken(tmp_path):
    """The counterpart of the above: the same folder with a valid report is read so."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m.update(info={"swap": {**VALID, "format": "auto"}}))
    options = packed_swap(folder)
    assert (options["recorded"], options["format"]) == (True, "auto")


def test_a_non_empty_folder_is_refused_before_the_model_is_looked_at(tmp_path):
    """An unswapped model and a non-empty folder: the folder is named, as for a swapped
    model, and left as it was."""
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{folder} is not empty"):
        save_packed(tiny_model("llama-gqa"), folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
