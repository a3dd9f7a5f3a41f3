"""Containers built directly (Sparse24Weight(...), BitmapWeight(...)) or by
dataclasses.replace check their data as load_state_dict does, so that corrupt tensors are
refused instead of computing garbage or reading out of bounds; pack(), concat() and .to()
do not read the data again, and check_data=False skips the check where asked. Their
shape and nnz are integers, as a tile is; pack checks a tile and the 2:4 pattern once."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from _kernels_helpers import random_24, random_unstructured

from lcc_kernels import (
    BitmapWeight,
    Sparse24Weight,
    concat,
    format_24,
    formats,
    pack,
    pack_many,
    packed_nbytes,
)

FORMATS = ["2:4", "bitmap"]


def _w24() -> Sparse24Weight:
    return pack(random_24(24, 72), "2:4")


def _bitmap() -> BitmapWeight:
    return pack(random_unstructured(24, 72, 0.4), "bitmap", tile=(16, 32))


def _corrupt_meta(packed: Sparse24Weight) -> torch.Tensor:
    """packed.meta with the groups of row 2's word 1 (groups 8..15) given indices (0, 0)."""
    meta = packed.meta.clone()
    meta[2, 1] = 0
    return meta


def _offsets_past_values(packed: BitmapWeight) -> torch.Tensor:
    """packed.offsets with the last tile's run starting far past the stored values."""
    offsets = packed.offsets.clone()
    offsets[-1] = 100_000
    return offsets


def test_a_24_weight_with_corrupt_meta_is_refused_when_built():
    packed = _w24()
    meta = _corrupt_meta(packed)
    message = "2:4 meta is corrupt: row 2, group 8 has in-group indices"
    with pytest.raises(ValueError, match=message):
        Sparse24Weight(packed.values, meta, packed.shape, packed.split_sizes)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(packed, meta=meta)


def test_a_bitmap_weight_with_offsets_past_its_values_is_refused_when_built():
    packed = _bitmap()
    offsets = _offsets_past_values(packed)
    message = "bitmap offsets are corrupt at tile 5: start 100000"
    fields = (packed.bits, packed.values, offsets, packed.shape, packed.tile, packed.nnz)
    with pytest.raises(ValueError, match=message):
        BitmapWeight(*fields, packed.split_sizes)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(packed, offsets=offsets)


def test_check_data_false_skips_the_data_check_only():
    packed = _bitmap()
    unchecked = dataclasses.replace(packed, offsets=_offsets_past_values(packed), check_data=False)
    with pytest.raises(ValueError, match="bitmap offsets are corrupt"):
        unchecked.validate_data()
    with pytest.raises(ValueError, match=r"bitmap offsets must be int32 of shape \(6,\)"):
        dataclasses.replace(packed, offsets=packed.offsets[:5].clone(), check_data=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_concat_and_to_do_not_read_the_data_again(fmt, monkeypatch):
    """The library's own containers hold data it made or checked: building them costs
    no pass over the data (and no host sync on a GPU)."""
    container = Sparse24Weight if fmt == "2:4" else BitmapWeight
    monkeypatch.setattr(container, "validate_data", lambda self: pytest.fail("data read"))
    dense = random_24(24, 72)
    packed = pack(dense, fmt, tile=(16, 32))
    assert packed.to("cpu").shape == (24, 72)
    assert concat([packed, packed]).shape == (48, 72)


@pytest.mark.parametrize("fmt", FORMATS)
def test_containers_on_the_meta_device_check_their_layout_only(fmt):
    """A meta container (shapes only, as when a model is built before its weights) has
    no data to check."""
    packed = pack(random_24(24, 72), fmt, tile=(16, 32))
    on_meta = {name: getattr(packed, name).to("meta") for name in packed.TENSOR_FIELDS}
    assert dataclasses.replace(packed, **on_meta).device.type == "meta"


def test_containers_refuse_lazy_negation_views():
    """A _neg_view() holds the values negated in memory, which the kernels read as it is."""
    packed = _w24()
    with pytest.raises(ValueError, match="2:4 values is a lazy negation view"):
        Sparse24Weight(packed.values._neg_view(), packed.meta, packed.shape, packed.split_sizes)
    bitmap = _bitmap()
    with pytest.raises(ValueError, match="bitmap values is a lazy negation view"):
        dataclasses.replace(bitmap, values=bitmap.values._neg_view())


@pytest.mark.parametrize(
    "shape", [(24.9, 72), (24, 72.0), ("24", "72"), (24, 72, 1), (24,), 24, (True, 72)], ids=repr
)
def test_a_shape_must_be_a_pair_of_ints(shape):
    """int() of each entry had truncated floats, parsed strings and dropped a third."""
    w24, bitmap = _w24(), _bitmap()
    message = re.escape(f"shape must be a pair of ints (N, K), got {shape!r}")
    with pytest.raises(ValueError, match="2:4 " + message):
        Sparse24Weight(w24.values, w24.meta, shape, (24,))
    fields = (bitmap.bits, bitmap.values, bitmap.offsets)
    with pytest.raises(ValueError, match="bitmap " + message):
        BitmapWeight(*fields, shape, bitmap.tile, bitmap.nnz, (24,))
    rebuilt = Sparse24Weight(w24.values, w24.meta, (np.int64(24), torch.tensor(72)), (24,))
    assert rebuilt.shape == (24, 72) and all(type(size) is int for size in rebuilt.shape)


@pytest.mark.parametrize("nnz", [0.9, 0.0, "0", torch.tensor(0.0)], ids=repr)
def test_a_bitmap_nnz_must_be_an_int(nnz):
    bitmap = _bitmap()
    fields = (bitmap.bits, bitmap.values, bitmap.offsets, bitmap.shape, bitmap.tile)
    nnz = bitmap.nnz + nnz if isinstance(nnz, float) else nnz
    with pytest.raises(ValueError, match=re.escape(f"bitmap nnz must be an int, got {nnz!r}")):
        BitmapWeight(*fields, nnz, (24,))
    rebuilt = BitmapWeight(*fields, np.int32(bitmap.nnz), (24,))
    assert rebuilt.nnz == bitmap.nnz and type(rebuilt.nnz) is int


@pytest.mark.parametrize("tile", [(3, 5), "junk", None, (16.0, 32)], ids=repr)
def test_a_bad_tile_is_refused_for_24_weights_too(tile):
    """A tile went unchecked (and unused) for 2:4: one is checked whatever the format."""
    weight = random_24(8, 64)
    with pytest.raises(ValueError, match="bitmap tile must be"):
        pack(weight, "2:4", tile=tile)
    with pytest.raises(ValueError, match="bitmap tile must be"):
        pack_many([weight, weight], "2:4", tile=tile)
    with pytest.raises(ValueError, match="bitmap tile must be"):
        packed_nbytes(weight, "2:4", tile=tile)


def test_a_good_tile_leaves_24_weights_as_they_are():
    weight = random_24(8, 64)
    default = pack(weight, "2:4")
    for packed in (pack(weight, "2:4", tile=(16, 32)), pack_many([weight], "2:4", tile=[1, 32])):
        assert torch.equal(packed.values, default.values) and torch.equal(packed.meta, default.meta)
    assert packed_nbytes(weight, "2:4", tile=(16, 32)) == default.nbytes


def test_the_24_pattern_is_checked_once_per_weight(monkeypatch):
    """pack_many checked each weight, then pack checked the stacked copy again."""
    checked, real = [], format_24._check_24

    def counting(weight, name="weight"):
        checked.append(name)
        real(weight, name)

    monkeypatch.setattr(formats, "_check_24", counting)
    monkeypatch.setattr(format_24, "_check_24", counting)
    packed = pack_many([random_24(8, 64), random_24(4, 64)], "2:4")
    assert checked == ["weight 0", "weight 1"] and packed.split_sizes == (8, 4)
    checked.clear()
    pack(random_24(8, 64), "2:4")
    assert checked == ["weight"]
