"""Formats: exact pack/unpack round trips, pattern validation, fused weights, bad input.
(State dicts: test_kernels_formats_state.py; unpack in bands and the peak memory of
pack and unpack: test_kernels_formats_bands.py.)"""

import re

import numpy as np
import pytest
import torch
from _kernels_helpers import random_24
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lcc_kernels import (
    BitmapWeight,
    Sparse24Weight,
    concat,
    format_common,
    pack,
    pack_many,
    packed_nbytes,
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
def test_unpack_is_contiguous_for_unaligned_k(fmt):
    dense = unpack(pack(random_24(8, 60), fmt, tile=(8, 32)))
    assert dense.shape == (8, 60) and dense.is_contiguous()


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_every_zero_comes_back_as_positive_zero(fmt, dtype):
    # Row 0, group 0 keeps 1.0 and, to fill its second 2:4 slot, its first zero: a -0.0.
    # Group 1 holds only -0.0: both slots are kept zeros.
    weight = torch.tensor([[-0.0, 0.0, 1.0, 0.0, -0.0, -0.0, -0.0, -0.0]], dtype=dtype)
    dense = unpack(pack(weight, fmt, tile=(1, 32)))
    assert torch.equal(dense, weight)
    assert not bool(torch.signbit(dense).any()), dense


def test_pack_refuses_a_weight_without_data():
    with pytest.raises(ValueError, match="meta device"):
        pack(torch.empty(4, 8, device="meta"))
    with pytest.raises(ValueError, match="meta device"):
        pack_many([torch.empty(4, 8, device="meta")], "bitmap")


INTEGER_16 = [np.int64(16), np.uint8(16), np.array(16), torch.tensor(16)]
NOT_INTEGERS = [
    16.0, np.float64(16), torch.tensor(16.0), True, np.True_, torch.tensor(True),
    torch.tensor([16]), torch.tensor(16, device="meta"),  # a size on a device: a sync
]  # fmt: skip


@pytest.mark.parametrize("rows", INTEGER_16, ids=repr)
def test_a_tile_of_numpy_or_torch_integers_is_a_tile_of_ints(rows):
    """As Plan takes them: any integer scalar becomes an int, in pack, packed_nbytes and
    the container (which had truncated a float)."""
    weight = random_24(32, 64)
    expected = pack(weight, "bitmap", tile=(16, 32))
    packed = pack(weight, "bitmap", tile=(rows, np.int32(32)))
    assert packed.tile == (16, 32) and all(type(t) is int for t in packed.tile)
    assert torch.equal(packed.bits, expected.bits) and torch.equal(packed.values, expected.values)
    assert packed_nbytes(weight, "bitmap", tile=[rows, 32]) == expected.nbytes
    fields = (expected.bits, expected.values, expected.offsets, (32, 64))
    rebuilt = BitmapWeight(*fields, (rows, 32), expected.nnz, (32,))
    assert rebuilt.tile == (16, 32) and all(type(t) is int for t in rebuilt.tile)


@pytest.mark.parametrize("rows", NOT_INTEGERS, ids=repr)
def test_a_tile_of_floats_or_bools_is_refused(rows):
    weight = random_24(32, 64)
    message = re.escape(f"bitmap tile must be a pair of ints (rows, columns), got ({rows!r}, 32)")
    with pytest.raises(ValueError, match=message):
        pack(weight, "bitmap", tile=(rows, 32))
    with pytest.raises(ValueError, match=message):
        packed_nbytes(weight, "bitmap", tile=(rows, 32))
    packed = pack(weight, "bitmap", tile=(16, 32))
    fields = (packed.bits, packed.values, packed.offsets, (32, 64))
    with pytest.raises(ValueError, match=message):
        BitmapWeight(*fields, (rows, 32), packed.nnz, (32,))


@pytest.mark.parametrize("split_sizes", [(2.0, 2.0), (True, True, True, True), 4, ("4",)])
def test_split_sizes_must_be_ints(split_sizes):
    with pytest.raises(ValueError, match="split_sizes must be a sequence of ints"):
        pack(random_24(4, 8), split_sizes=split_sizes)


def test_split_output_refuses_what_is_not_an_output_vector():
    packed = pack(random_24(4, 8))
    with pytest.raises(
        ValueError, match=r"output must be a tensor \[..., N\] with N = 4, got \(\)"
    ):
        split_output(torch.tensor(1.0), packed)
    with pytest.raises(ValueError, match="got list"):
        split_output([1.0, 2.0, 3.0, 4.0], packed)
    with pytest.raises(ValueError, match="must be a Sparse24Weight or BitmapWeight, got Tensor"):
        split_output(torch.zeros(2, 4), torch.zeros(4, 8))


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_to_moves_the_tensors_and_refuses_a_dtype(fmt):
    packed = pack(random_24(8, 64), fmt, tile=(8, 32))
    packed.cache["dense"] = unpack(packed)
    moved = packed.to("cpu")
    assert type(moved) is type(packed) and moved.cache == {}
    assert moved.split_sizes == packed.split_sizes and torch.equal(unpack(moved), unpack(packed))
    with pytest.raises(ValueError, match=r"takes a device, got the dtype torch.float16"):
        packed.to(torch.float16)
    with pytest.raises(ValueError, match="takes a device, got 'gpu0'"):
        packed.to("gpu0")


@FEW
@given(weights_unstructured(), weights_24(), st.sampled_from([32, 100, 4096]))
def test_packing_in_bands_equals_packing_at_once(case, weight_24, band):
    # Pack cuts a weight into bands of rows (to bound its working memory); small bands
    # give the same tensors as one band over the whole weight.
    weight, tile = case
    whole = [pack(weight, "bitmap", tile=tile), pack(weight_24, "2:4")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(format_common, "PACK_BAND", band)
        banded = [pack(weight, "bitmap", tile=tile), pack(weight_24, "2:4")]
    for one, other in zip(banded, whole, strict=True):
        for name in one.TENSOR_FIELDS:
            assert torch.equal(getattr(one, name), getattr(other, name)), (one.format, name)
    assert banded[0].nnz == whole[0].nnz and torch.equal(unpack(banded[0]), weight)
