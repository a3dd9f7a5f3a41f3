"""packed_nbytes: the nbytes of pack / pack_many, counted without packing, for both formats
(stacked weights, odd shapes, tiles, dtypes, all-zero, -0.0 and NaN), and its bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcc_kernels import format_bitmap, format_common, pack, pack_many, packed_nbytes

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
TILES = [(1, 32), (4, 32), (16, 64), (64, 64), (8, 128), (32, 256)]
FEW = settings(max_examples=40, deadline=None)


def _mark_special_values(weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`weight` [N, K] with about a quarter of its zeros turned to -0.0 (pruned, as +0.0)
    and a quarter of its nonzeros to NaN (kept: NaN != 0)."""
    pick = torch.rand(weight.shape, generator=gen) < 0.25
    weight = weight.clone()
    weight[pick & (weight == 0)] = -0.0
    weight[pick & (weight != 0)] = float("nan")
    return weight


@st.composite
def stacked_unstructured(draw):
    """1 to 3 weights [N_i, K] of one dtype, N_i unlike each other, any K, any density."""
    k = draw(st.integers(1, 300))
    rows = draw(st.lists(st.integers(1, 70), min_size=1, max_size=3))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 0.7, 1.0]))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    weights = []
    for n in rows:
        mask = torch.rand(n, k, generator=gen) < density
        weight = (torch.randn(n, k, generator=gen) + 0.01) * mask
        weights.append(_mark_special_values(weight, gen).to(dtype))
    return weights, draw(st.sampled_from(TILES))


@st.composite
def stacked_24(draw):
    """1 to 3 2:4 weights [N_i, K] of one dtype, K any multiple of 4 (rarely of 64)."""
    k = 4 * draw(st.integers(1, 70))
    rows = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    weights = []
    for n in rows:
        kept = torch.randint(0, 3, (n, k // 4, 1), generator=gen)
        mask = torch.rand(n, k // 4, 4, generator=gen).argsort(-1) < kept
        weight = (torch.randn(n, k // 4, 4, generator=gen) + 0.01) * mask
        weights.append(_mark_special_values(weight.reshape(n, k), gen).to(dtype))
    return weights


@FEW
@given(stacked_unstructured())
def test_bitmap_nbytes_equals_the_packed_weights(case):
    weights, tile = case
    assert packed_nbytes(weights, "bitmap", tile=tile) == (
        pack_many(weights, "bitmap", tile=tile).nbytes
    )
    one = weights[0]
    assert packed_nbytes(one, "bitmap", tile=tile) == pack(one, "bitmap", tile=tile).nbytes


@FEW
@given(stacked_24())
def test_24_nbytes_equals_the_packed_weights(weights):
    assert packed_nbytes(weights, "2:4") == pack_many(weights, "2:4").nbytes
    assert packed_nbytes(weights[0]) == pack(weights[0]).nbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 100), (64, 64), (65, 130)])
def test_all_zero_weights(shape, dtype):
    zeros = torch.zeros(shape, dtype=dtype)
    negative_zeros = torch.full(shape, -0.0, dtype=dtype)
    for weight in (zeros, negative_zeros):
        for tile in [(1, 32), (64, 64)]:
            expected = pack(weight, "bitmap", tile=tile).nbytes
            assert packed_nbytes(weight, "bitmap", tile=tile) == expected
            assert packed_nbytes([weight, weight], "bitmap", tile=tile) == (
                pack_many([weight, weight], "bitmap", tile=tile).nbytes
            )
    if shape[1] % 4 == 0:
        assert packed_nbytes([zeros, negative_zeros], "2:4") == (
            pack_many([zeros, negative_zeros], "2:4").nbytes
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_is_kept_and_negative_zero_pruned_as_pack_does(dtype):
    # One (1, 32) tile per row: 9 NaN store 16 values (8 if NaN were pruned), one 1.0 and
    # eight -0.0 store 8 (16 if -0.0 were kept).
    weight = torch.zeros(2, 32, dtype=dtype)
    weight[0, :9] = float("nan")
    weight[1, 0], weight[1, 1:9] = 1.0, -0.0
    packed = pack(weight, "bitmap", tile=(1, 32))
    assert packed.values.numel() == 16 + 8
    assert packed_nbytes(weight, "bitmap", tile=(1, 32)) == packed.nbytes


def test_a_tile_shared_by_two_weights_is_counted_once():
    # q's last 3 rows and k's first 5 share one 8-row tile holding 8 nonzeros: one run of
    # VALUE_ALIGN = 8 values, not two (counting the weights apart would give 16).
    q, k = torch.zeros(11, 32), torch.zeros(5, 32)
    q[8:, 0], k[:, 0] = 1.0, 1.0
    packed = pack_many([q, k], "bitmap", tile=(8, 32))
    assert packed.values.numel() == 8
    assert packed_nbytes([q, k], "bitmap", tile=(8, 32)) == packed.nbytes


@pytest.mark.parametrize("band", [1, 50, 4096])
def test_counting_in_bands_of_rows_gives_the_same_bytes(band):
    # Bands of PACK_BAND positions need not hold whole tiles of rows (50 positions here
    # cut a 4-row tile).
    weights = [torch.randn(9, 100) * (torch.rand(9, 100) < 0.3) for _ in range(2)]
    expected = pack_many(weights, "bitmap", tile=(4, 32)).nbytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(format_common, "PACK_BAND", band)
        assert packed_nbytes(weights, "bitmap", tile=(4, 32)) == expected


def test_non_contiguous_weights():
    weight = (torch.randn(96, 40) * (torch.rand(96, 40) < 0.5)).t()
    assert packed_nbytes(weight, "bitmap") == pack(weight, "bitmap").nbytes


def test_too_many_values_is_refused_as_pack_refuses_it():
    # 3 tiles of (4, 32) with 1, 9 and 0 nonzeros store 8 + 16 = 24 values; int32 offsets
    # are stood in for by a limit of 24 (refused) or 25 (allowed).
    weight = torch.zeros(4, 96)
    weight[0, 0] = 1.0
    weight[:, 32:34] = 2.0
    weight[0, 40] = 3.0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(format_bitmap, "MAX_BITMAP_VALUES", 25)
        assert packed_nbytes(weight, "bitmap", tile=(4, 32)) == (
            pack(weight, "bitmap", tile=(4, 32)).nbytes
        )
        patch.setattr(format_bitmap, "MAX_BITMAP_VALUES", 24)
        for count in (packed_nbytes, pack):
            with pytest.raises(ValueError, match="too many nonzeros for int32 tile offsets"):
                count(weight, "bitmap", tile=(4, 32))


NOT_24 = torch.zeros(4, 8)
NOT_24[1, :3] = 1.0  # three nonzeros in the first group of its row 1


@pytest.mark.parametrize(
    "weights, fmt, kwargs, message",
    [
        ([torch.zeros(4, 8)], "csr", {}, "unknown format 'csr'"),
        ([], "bitmap", {}, "needs at least one weight"),
        ([torch.zeros(8)], "bitmap", {}, "2-D"),
        ([torch.zeros(2, 4, 8)], "2:4", {}, "2-D"),
        ([torch.zeros(4, 8, dtype=torch.int32)], "bitmap", {}, "dtype"),
        ([torch.zeros(0, 8)], "bitmap", {}, "empty"),
        ([torch.zeros(4, 8, device="meta")], "bitmap", {}, "meta device"),
        ([torch.zeros(4, 8).to_sparse()], "bitmap", {}, "dense \\(strided\\)"),
        ([torch.zeros(4, 8), [[0.0] * 8]], "bitmap", {}, "torch.Tensor"),
        ([torch.zeros(4, 8), torch.zeros(4, 12)], "bitmap", {}, "share K = 8"),
        ([torch.zeros(4, 8), torch.zeros(4, 8).half()], "2:4", {}, "share K = 8 and dtype"),
        ([torch.zeros(4, 10)], "2:4", {}, "divisible by 4"),
        ([torch.zeros(4, 8), NOT_24], "2:4", {}, "weight 1 is not 2:4 sparse: row 1, group 0"),
        ([torch.zeros(4, 8)], "bitmap", {"tile": (3, 32)}, "tile"),
        ([torch.zeros(4, 8)], "bitmap", {"tile": (4, 16)}, "tile"),
        ([torch.zeros(4, 8)], "bitmap", {"tile": 64}, "pair of ints"),
    ],
)
def test_bad_input_is_refused_as_pack_many_refuses_it(weights, fmt, kwargs, message):
    for count in (packed_nbytes, pack_many):
        with pytest.raises(ValueError, match=message):
            count(weights, fmt, **kwargs)
