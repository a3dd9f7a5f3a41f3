"""Formats: exact pack/unpack round trips, pattern validation, state dicts, fused weights."""

import pytest
import torch
from _kernels_helpers import random_24, random_unstructured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lcc_kernels import (
    BitmapWeight,
    Sparse24Weight,
    concat,
    load_state_dict,
    pack,
    pack_many,
    split_output,
    unpack,
)
from lcc_kernels.formats import VALUE_ALIGN

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def weights_24(draw):
    """A dense weight where each group of 4 keeps 0, 1 or 2 values (ragged patterns)."""
    n = draw(st.integers(1, 24))
    groups = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    kept = torch.randint(0, 3, (n, groups, 1), generator=gen)
    order = torch.rand(n, groups, 4, generator=gen).argsort(-1)
    mask = order < kept
    values = torch.randn(n, groups, 4, generator=gen) + 0.01
    return (values * mask).reshape(n, 4 * groups).to(dtype)


@st.composite
def weights_unstructured(draw):
    n = draw(st.integers(1, 70))
    k = draw(st.integers(1, 150))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.7, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    tile = draw(st.sampled_from([(1, 32), (4, 32), (16, 64), (64, 64), (8, 128)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mask = torch.rand(n, k, generator=gen) < density
    return (torch.randn(n, k, generator=gen) + 0.01).mul(mask).to(dtype), tile


@FEW
@given(weights_24())
def test_24_round_trip_is_exact(weight):
    packed = pack(weight, "2:4")
    assert isinstance(packed, Sparse24Weight)
    assert packed.values.dtype == weight.dtype and packed.meta.dtype == torch.int32
    assert torch.equal(unpack(packed), weight)
    packed.validate_data()


@FEW
@given(weights_24(), st.data())
def test_24_validation_names_the_offending_group(weight, data):
    n, k = weight.shape
    row = data.draw(st.integers(0, n - 1))
    group = data.draw(st.integers(0, k // 4 - 1))
    nonzeros = data.draw(st.integers(3, 4))
    bad = weight.clone()
    bad[row, 4 * group : 4 * group + 4] = 0
    bad[row, 4 * group : 4 * group + nonzeros] = 1.5
    with pytest.raises(ValueError, match=rf"row {row}, group {group} .* has {nonzeros} nonzeros"):
        pack(bad, "2:4")


@FEW
@given(weights_unstructured())
def test_bitmap_round_trip_is_exact(case):
    weight, tile = case
    packed = pack(weight, "bitmap", tile=tile)
    assert isinstance(packed, BitmapWeight)
    assert packed.nnz == int((weight != 0).sum())
    dense = unpack(packed)
    assert torch.equal(dense, weight)
    assert not bool(torch.signbit(dense[weight == 0]).any())  # pruned: +0.0, not -0.0
    assert bool((packed.offsets % VALUE_ALIGN == 0).all())
    packed.validate_data()


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


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_unpack_is_contiguous_for_unaligned_k(fmt):
    dense = unpack(pack(random_24(8, 60), fmt, tile=(8, 32)))
    assert dense.shape == (8, 60) and dense.is_contiguous()


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


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_pack_many_splits_the_fused_output(fmt):
    q, k, v = random_24(24, 64), random_24(8, 64), random_24(8, 64)
    fused = pack_many([q, k, v], fmt, tile=(16, 32))
    assert fused.split_sizes == (24, 8, 8)
    x = torch.randn(3, 64)
    parts = split_output(x @ unpack(fused).T, fused)
    for part, weight in zip(parts, (q, k, v), strict=True):
        torch.testing.assert_close(part, x @ weight.T)


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_concat_of_packed_equals_packing_the_concatenation(fmt):
    a, b = random_24(20, 72), random_24(12, 72)
    joined = concat([pack(a, fmt, tile=(8, 32)), pack(b, fmt, tile=(8, 32))])
    assert joined.split_sizes == (20, 12)
    assert torch.equal(unpack(joined), torch.cat([a, b]))


@pytest.mark.parametrize(
    "weight, fmt, kwargs, message",
    [
        (torch.ones(4, 8, dtype=torch.int32), "2:4", {}, "dtype"),
        (torch.ones(8), "2:4", {}, "2-D"),
        (torch.ones(0, 8), "bitmap", {}, "empty"),
        (torch.zeros(4, 10), "2:4", {}, "divisible by 4"),
        (torch.zeros(4, 8), "csr", {}, "unknown format"),
        (torch.zeros(4, 8), "bitmap", {"tile": (3, 32)}, "tile"),
        (torch.zeros(4, 8), "bitmap", {"tile": (4, 16)}, "tile"),
        (torch.zeros(4, 8), "bitmap", {"tile": 64}, "pair of ints"),
        (torch.zeros(4, 8).to_sparse(), "2:4", {}, "dense \\(strided\\)"),
        (torch.zeros(4, 8), "2:4", {"split_sizes": (3, 2)}, "split_sizes"),
    ],
)
def test_pack_refuses_bad_input(weight, fmt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pack(weight, fmt, **kwargs)


def test_mixed_weights_are_refused():
    with pytest.raises(ValueError, match="share K"):
        pack_many([torch.zeros(4, 8), torch.zeros(4, 12)])
    bad = torch.zeros(4, 8)
    bad[1, :3] = 1.0  # three nonzeros in the first group of its row 1
    with pytest.raises(ValueError, match="weight 2 is not 2:4 sparse: row 1, group 0"):
        pack_many([random_24(4, 8), random_24(4, 8), bad])
    with pytest.raises(ValueError, match="does not match"):
        concat([pack(torch.zeros(4, 8)), pack(torch.zeros(4, 8), "bitmap")])
    with pytest.raises(ValueError, match="features"):
        split_output(torch.zeros(2, 5), pack(torch.zeros(4, 8)))


def test_containers_check_their_layout():
    packed = pack(random_24(8, 64), "2:4")
    with pytest.raises(ValueError, match="values must have shape"):
        Sparse24Weight(packed.values[:, :-1].contiguous(), packed.meta, (8, 64), (8,))
    with pytest.raises(ValueError, match="meta must be int32"):
        Sparse24Weight(packed.values, packed.meta.long(), (8, 64), (8,))


@pytest.mark.parametrize("dtype, bits", [(torch.bfloat16, 0x7FC1), (torch.float16, 0x7E01)])
def test_24_round_trip_keeps_nan_payloads(dtype, bits):
    weight = torch.zeros(2, 8, dtype=dtype)
    weight.view(torch.int16)[0, 1] = bits
    weight[1, 4] = 3.0
    restored = unpack(pack(weight, "2:4"))
    assert torch.equal(restored.view(torch.int16), weight.view(torch.int16))
