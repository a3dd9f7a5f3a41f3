"""The packed containers' checks after they are built: `validate()` after an in-place
change of their tensors, unpickling (torch.load with its default weights_only=True,
copy.deepcopy), and a state dict whose stored N disagrees with its tensors."""

import copy
import io

import pytest
import torch
from _kernels_helpers import random_24, random_unstructured

from lcc_kernels import BitmapWeight, Sparse24Weight, load_state_dict, pack, unpack

N, K = 23, 136  # odd: N fills no tile, K no 64-column 2:4 row (Kp = 192)
TILE = (16, 32)


def _bitmap() -> BitmapWeight:
    return pack(random_unstructured(N, K, 0.4), "bitmap", tile=TILE)


def _offsets_past_values(p):
    p.offsets[-1] = 10**6  # read out of bounds (a crash in the interpreter)


# (format, in-place change, what validate() names)
TAMPERING = [
    ("bitmap", _offsets_past_values, "offsets are corrupt at tile 9: start 1000000"),
    ("bitmap", lambda p: p.offsets.__setitem__(1, -8), "offsets are corrupt at tile 1: start -8"),
    ("bitmap", lambda p: p.bits.fill_(-1), "nnz .* does not match the bitmap"),
    ("2:4", lambda p: p.meta.zero_(), "meta is corrupt: row 0, group 0 has in-group indices"),
    ("2:4", lambda p: p.meta.fill_(-1), r"in-group indices \[3, 3\]"),
    ("2:4", lambda p: p.values[:, -1].fill_(1.0), "row 0 holds nonzeros in the padding"),
    ("2:4", lambda p: setattr(p, "split_sizes", (5, 5)), r"split_sizes \(5, 5\) must be"),
]


def _packed(fmt: str):
    return _bitmap() if fmt == "bitmap" else pack(random_24(N, K), "2:4")


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_validate_passes_on_a_fresh_pack_and_on_the_meta_device(fmt):
    packed = _packed(fmt)
    packed.validate()
    packed.to("meta").validate()  # the layout only: no data to read


@pytest.mark.parametrize(("fmt", "tamper", "message"), TAMPERING)
def test_validate_names_an_in_place_change(fmt, tamper, message):
    packed = _packed(fmt)
    tamper(packed)
    with pytest.raises(ValueError, match=message):
        packed.validate()


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_a_saved_packed_weight_loads_with_the_default_weights_only(fmt):
    """torch.load's default weights_only=True builds the containers (registered as safe
    globals), split_sizes and tile kept, with an empty cache."""
    dense = random_24(N, K)
    packed = pack(dense, fmt, tile=TILE, split_sizes=(10, 13))
    packed.cache["dense"] = unpack(packed)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert type(loaded) is type(packed) and loaded.cache == {}
    assert torch.equal(unpack(loaded), dense)
    assert (loaded.shape, loaded.split_sizes) == ((N, K), (10, 13))
    if fmt == "bitmap":
        assert (loaded.tile, loaded.nnz) == (TILE, packed.nnz)


def test_unpickling_checks_the_data():
    """A container saved after an in-place change, or unpickled from a state missing a
    field, is refused on load rather than built around data the kernels would misread."""
    packed = _bitmap()
    _offsets_past_values(packed)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="offsets are corrupt at tile 9"):
        torch.load(buffer)
    with pytest.raises(ValueError, match="offsets are corrupt at tile 9"):
        copy.deepcopy(packed)
    bare = Sparse24Weight.__new__(Sparse24Weight)
    with pytest.raises(ValueError, match="a pickled Sparse24Weight lacks 'meta', 'shape'"):
        bare.__setstate__({"values": torch.zeros(2, 32), "split_sizes": (2,)})


def test_a_state_dict_with_an_altered_n_names_info_against_the_tensors():
    """The stored N is checked against the tensors before the split sizes: the message
    names info's N and the values' shape, not split_sizes."""
    packed = pack(random_24(24, K), "2:4")
    tensors = r"tensors \(values \[24, 96\], meta \[24, 6\]\)"
    for n, reason in [(23, r"values must have shape \(23, 96\)"), (-24, "weight needs N > 0")]:
        state = packed.to_state_dict()
        state["info"][1] = n
        fit = rf"{tensors} do not fit the stored info \(N={n}, K=136\)"
        with pytest.raises(ValueError, match=f"{fit}.*: 2:4 {reason}"):
            load_state_dict(state)
    state = _bitmap().to_state_dict()
    state["info"][1] = 24  # the same 2 row blocks of 16: the split sizes tell
    with pytest.raises(ValueError, match=r"info \(N=24, K=136, tile_n=16.*sum to N = 24"):
        load_state_dict(state)
