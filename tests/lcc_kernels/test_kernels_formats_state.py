"""Packed weight state dicts: safetensors round trips, and every malformed entry refused by
name (missing, unexpected, wrong type, dtype, shape or device, corrupt data)."""

import copy
import dataclasses
import io

import pytest
import torch
from _kernels_helpers import random_24, random_unstructured
from safetensors.torch import load_file, save_file

from lcc_kernels import BitmapWeight, Sparse24Weight, load_state_dict, pack, sparse_linear, unpack

FORMATS = ["2:4", "bitmap"]


def packed_state(fmt: str) -> dict[str, torch.Tensor]:
    """The state dict of an [8, 64] 2:4 weight packed as `fmt`."""
    return pack(random_24(8, 64), fmt, tile=(8, 32)).to_state_dict()


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_state_dict_survives_safetensors(tmp_path, fmt):
    weight = random_24(40, 136, torch.bfloat16)
    packed = pack(weight, fmt, tile=(16, 32))
    save_file(packed.to_state_dict(), tmp_path / "w.safetensors")
    loaded = load_state_dict(load_file(tmp_path / "w.safetensors"))
    assert type(loaded) is type(packed) and loaded.shape == packed.shape
    assert torch.equal(unpack(loaded), weight)


def test_state_dict_with_corrupt_24_meta_is_refused():
    state = pack(random_24(8, 64), "2:4").to_state_dict()
    state["meta"][3, 1] = 0  # word 1 = value slots 16..31 = groups 8..15, now indices (0, 0)
    with pytest.raises(ValueError, match="row 3, group 8 "):
        load_state_dict(state)


@pytest.mark.parametrize("padding_value", [1.0, float("nan")])
def test_24_padding_beyond_k_must_hold_zeros(padding_value):
    # K = 60 pads to 64: value slots 30 and 31 of every row belong to no column, and the
    # kernels read them; a state dict whose K shrank leaves real values there.
    state = pack(random_24(4, 60), "2:4").to_state_dict()
    state["values"][2, 31] = padding_value
    with pytest.raises(ValueError, match="row 2 holds nonzeros in the padding beyond K = 60"):
        load_state_dict(state)
    state = pack(random_24(4, 64), "2:4").to_state_dict()
    state["info"][2] = 60
    with pytest.raises(ValueError, match="padding beyond K = 60"):
        load_state_dict(state)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.__setitem__("info", s["info"][:2]), r"'info' must be 1-D integers \(format"),
        (lambda s: s.__setitem__("info", s["info"][:0]), "no 'info' entry"),
        (lambda s: s.__setitem__("info", s["info"].double()), "'info' must be 1-D integers"),
        (lambda s: s.pop("split_sizes"), "lacks 'split_sizes'"),
        (lambda s: s.pop("values"), "lacks 'values'"),
    ],
)
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_state_dict_entries_are_checked_by_name(fmt, mutate, message):
    state = pack(random_24(8, 64), fmt, tile=(8, 32)).to_state_dict()
    mutate(state)
    with pytest.raises(ValueError, match=message):
        load_state_dict(state)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s["offsets"].__setitem__(1, 4), "offsets are corrupt at tile 1"),
        (lambda s: s["offsets"].__setitem__(-1, 10**6), "offsets are corrupt"),
        (lambda s: s["info"].__setitem__(5, 3), "nnz"),
        (lambda s: s["bits"].__setitem__((-1, -1), -1), "padding|nnz"),
    ],
)
def test_state_dict_with_corrupt_bitmap_is_refused(corrupt, message):
    state = pack(random_unstructured(20, 70, 0.5), "bitmap", tile=(8, 32)).to_state_dict()
    corrupt(state)
    with pytest.raises(ValueError, match=message):
        load_state_dict(state)


@pytest.mark.parametrize(
    "split_sizes",
    [
        torch.tensor([4.5, 4.5]),  # floats were truncated to (4, 4)
        torch.tensor([4.0, 4.0]),
        torch.ones(8, dtype=torch.bool),  # was read as (1,) * 8
        torch.tensor([[8]]),  # 2-D: was a TypeError from int()
    ],
    ids=["fractional", "float", "bool", "2-D"],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_split_sizes_must_be_a_vector_of_integers(fmt, split_sizes):
    state = packed_state(fmt)
    state["split_sizes"] = split_sizes
    with pytest.raises(ValueError, match="'split_sizes' must be 1-D integers"):
        load_state_dict(state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_info_must_be_an_integer_tensor(fmt):
    state = packed_state(fmt)
    state["info"] = state["info"].bool()  # all True: format id 1, N = K = 1 if read as ints
    with pytest.raises(ValueError, match="'info' must be 1-D integers"):
        load_state_dict(state)
    state["info"] = [1, 8, 64]
    with pytest.raises(ValueError, match="entry 'info' must be a torch.Tensor, got list"):
        load_state_dict(state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_entries_must_be_tensors_holding_data(fmt):
    state = packed_state(fmt)
    state["values"] = state["values"].tolist()
    with pytest.raises(ValueError, match="entry 'values' must be a torch.Tensor, got list"):
        load_state_dict(state)
    state = packed_state(fmt)
    state["values"] = state["values"].to("meta")
    with pytest.raises(ValueError, match="entry 'values' is on the meta device"):
        load_state_dict(state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unexpected_entries_are_refused_by_name(fmt):
    state = packed_state(fmt)
    state["bias"] = torch.ones(8)
    state["scale"] = torch.ones(1)
    with pytest.raises(ValueError, match="unexpected entries 'bias', 'scale'"):
        load_state_dict(state)


def test_a_state_dict_must_be_a_mapping_of_its_own_format():
    with pytest.raises(ValueError, match="must map names to tensors, got list"):
        load_state_dict([torch.ones(3)])
    with pytest.raises(ValueError, match="format id 2, not '2:4'"):
        Sparse24Weight.from_state_dict(packed_state("bitmap"))
    with pytest.raises(ValueError, match="format id 1, not 'bitmap'"):
        BitmapWeight.from_state_dict(packed_state("2:4"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_new_containers_start_without_the_derived_copies_of_the_old(fmt):
    """weight.cache holds copies of the tensors it was built from (sparse_linear's dense
    and streams copies): a container made by replace(), .to(), deepcopy or a pickle
    (torch.save) starts with an empty one."""
    packed = pack(random_24(8, 64), fmt, tile=(8, 32))
    packed.cache["dense"] = unpack(packed)
    other = pack(random_24(8, 64), fmt, tile=(8, 32))
    replaced = dataclasses.replace(packed, values=other.values)
    assert replaced.cache == {} and packed.cache.keys() == {"dense"}
    assert packed.to("cpu").cache == {}
    assert copy.deepcopy(packed).cache == {}
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.cache == {} and torch.equal(unpack(loaded), unpack(packed))
    assert packed.cache.keys() == {"dense"}  # the original keeps its own


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_drops_the_copies_of_the_data_before_an_in_place_change(fmt):
    """formats.py: after an in-place change of the packed tensors, validate(). It must also
    drop the copies derived from the old data, else the dense backend keeps using them."""
    packed = pack(random_24(8, 64), fmt, tile=(8, 32))
    x = torch.randn(3, 64)
    before = sparse_linear(x, packed, backend="dense")
    assert "dense" in packed.cache
    packed.values.mul_(3)
    packed.validate()
    after = sparse_linear(x, packed, backend="dense")
    torch.testing.assert_close(after, sparse_linear(x, packed, backend="reference"))
    torch.testing.assert_close(after, before * 3)
    assert packed.cache.keys() == {"dense"}  # built again, from the new data


def test_a_failing_validate_drops_the_copies_too():
    packed = pack(random_24(8, 64), "2:4")
    sparse_linear(torch.randn(2, 64), packed, backend="dense")
    packed.meta[3, 1] = 0  # groups 8..15 of row 3: in-group indices (0, 0)
    with pytest.raises(ValueError, match="row 3, group 8 "):
        packed.validate()
    assert packed.cache == {}  # no dense copy of data that no longer is the weight's
