"""The checks of a packed checkpoint's manifest (``restorelcc_packed.json``) and tensors
that each have a case of their own: a group entry that is not an object, names a layer
outside the model or sits at another module path; a packed weight whose rows are split
otherwise, or whose in-features differ, than the config makes; ``has_bias`` that disagrees
with the stored bias, or is not one true/false flag per projection; a ``group`` that is not
a string; a backend the format cannot run; a tie of a name the model does not have;
manifest keys of the wrong type and an unknown dtype. Where ``packed_swap`` (what
bench reads before loading) checks the same thing, both readers are tried."""

import json

import pytest
import torch
from _hf_packed_helpers import edit_manifest, edit_weights, saved_packed

from restorelcc.hf import load_packed
from restorelcc.hf.packed_checkpoint import PACKED_INFO, packed_swap
from restorelcc.loading import CheckpointError

READERS = pytest.mark.parametrize("read", [load_packed, packed_swap], ids=["load", "swap"])
# saved_packed: llama-gqa (2 layers; q 96, k 32, v 32 rows; hidden 96), attention swapped 2:4;
# its groups in order: layer 0 qkv, layer 0 o_proj, layer 1 qkv, layer 1 o_proj.
QKV, O_PROJ = 0, 1


@READERS
@pytest.mark.parametrize("layer", [2, -1], ids=["the-layer-count", "negative"])
def test_a_layer_outside_the_model_names_no_group(tmp_path, read, layer):
    """Layer 2 of 2 layers indexed past the blocks; -1 took the last block (and read an
    entry of layer 1 as one of layer 0's)."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][QKV].update(layer=layer))
    with pytest.raises(CheckpointError, match=r"names no group of this model \(2 layers;"):
        read(folder)


@READERS
def test_a_group_entry_that_is_not_an_object_is_refused(tmp_path, read):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"].append(3))
    with pytest.raises(CheckpointError, match="a group entry must be an object, got 3"):
        read(folder)


def test_an_entry_at_another_module_path_is_refused(tmp_path):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][QKV].update(module="foo.bar"))
    with pytest.raises(
        CheckpointError, match="layer 0 qkv is at model.layers.0.self_attn.packed_qkv, not"
    ):
        load_packed(folder)


def _edit_config(folder, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "fields, made",
    [
        # 160 rows either way, split 128/16/16 (8 heads, 1 KV head) not 96/32/32
        (
            {"num_attention_heads": 8, "num_key_value_heads": 1},
            r"\(160, 96\) split \[128, 16, 16\]",
        ),
        # the split of the saved one, from 120 in-features (head_dim kept at 16)
        ({"hidden_size": 120}, r"\(160, 120\) split \[96, 32, 32\]"),
    ],
    ids=["same-rows-other-split", "same-split-other-in-features"],
)
def test_a_config_that_differs_in_the_split_or_the_in_features_alone(tmp_path, fields, made):
    folder = saved_packed(tmp_path)
    _edit_config(folder, head_dim=16, **fields)
    with pytest.raises(
        CheckpointError,
        match=r"model.layers.0.self_attn.packed_qkv: the packed weight is \(160, 96\) split "
        rf"\[96, 32, 32\]; this model's config makes {made}",
    ):
        load_packed(folder)


@pytest.mark.parametrize(
    "group, has_bias, weights, biases",
    [
        (O_PROJ, [True], {}, "None"),  # a bias flagged, none stored
        (O_PROJ, [True], {"model.layers.0.self_attn.o_proj.bias": torch.zeros(7)}, r"\(7,\)"),
    ],
    ids=["flagged-but-absent", "bias-of-another-size"],
)
def test_has_bias_that_disagrees_with_the_stored_bias(tmp_path, group, has_bias, weights, biases):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][group].update(has_bias=has_bias))
    edit_weights(folder, lambda t: t.update(weights))
    with pytest.raises(
        CheckpointError, match=rf"does not match its tensors \(format '2:4', bias {biases}\)"
    ):
        load_packed(folder)


@READERS
@pytest.mark.parametrize(
    "group, has_bias",
    [
        (QKV, [False]),  # one flag for three projections
        (O_PROJ, [False, False]),
        (O_PROJ, 1),
        (O_PROJ, None),
        (QKV, [1, 0, 0]),
        (QKV, "fff"),
        (O_PROJ, ["false"]),
    ],
    ids=["too-few", "too-many", "a-number", "null", "numbers", "a-string", "a-string-flag"],
)
def test_has_bias_that_is_not_one_flag_per_projection_is_refused(tmp_path, read, group, has_bias):
    """1 and null had raised a raw TypeError out of load_packed (and eval --model), and
    packed_swap had accepted them; [1, 0, 0] loaded as flags."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][group].update(has_bias=has_bias))
    count, names = [(3, "q_proj, k_proj, v_proj"), (1, "o_proj")][group]
    with pytest.raises(CheckpointError) as refused:
        read(folder)
    message = str(refused.value)
    assert message.startswith(f"{folder / PACKED_INFO}: ")
    assert (
        f"has_bias must be a list of {count} true/false flags (one per projection of "
        f"{names}), got {has_bias!r} (entry {{'layer': 0, "
    ) in message


@READERS
@pytest.mark.parametrize("group", [["qkv"], {"qkv": 1}, None, 3], ids=str)
def test_a_group_that_is_not_a_string_is_refused(tmp_path, read, group):
    """["qkv"] and {"qkv": 1} had raised a raw TypeError (unhashable) out of both."""
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][QKV].update(group=group))
    with pytest.raises(CheckpointError) as refused:
        read(folder)
    assert str(refused.value) == (
        f"{folder / PACKED_INFO}: entry {{'layer': 0, 'group': {group!r}, "
        "'module': 'model.layers.0.self_attn.packed_qkv', 'format': '2:4', 'dtype': "
        "'float32', 'backend': 'auto', 'decode_streams': False, 'has_bias': [False, False, "
        f"False]}}: group must be a string, got {group!r}"
    )


@READERS
def test_a_backend_that_cannot_run_the_groups_format_is_refused(tmp_path, read):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m["groups"][QKV].update(backend="streams"))
    with pytest.raises(
        CheckpointError, match="the streams backend needs a bitmap weight, got a 2:4 one"
    ):
        read(folder)


def test_refuses_a_tie_of_a_name_the_model_does_not_have(tmp_path):
    folder = saved_packed(tmp_path)
    edit_manifest(
        folder, lambda m: m["tied"].update({"model.bogus.weight": "model.embed_tokens.weight"})
    )
    with pytest.raises(CheckpointError, match="cannot tie model.bogus.weight to"):
        load_packed(folder)


@READERS
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tied", [], "'tied' must be a dict"),
        ("dtype", 1, "'dtype' must be a str"),
        ("groups", {}, "'groups' must be a list"),
        ("dtype", "int8", "unknown dtype 'int8'"),
    ],
)
def test_refuses_manifest_fields_of_the_wrong_type_or_an_unknown_dtype(
    tmp_path, read, field, value, message
):
    folder = saved_packed(tmp_path)
    edit_manifest(folder, lambda m: m.update({field: value}))
    with pytest.raises(CheckpointError, match=f"{PACKED_INFO}: {message}"):
        read(folder)
