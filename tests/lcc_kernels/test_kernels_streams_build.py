"""build_streams a band at a time (streams.py, PACK_BAND): a weight built in many small
bands gives the same layout, tensor for tensor, as one built in a single band.

Bands of PACK_BAND positions cover whole row blocks (several per band) or, where a block
holds more, lanes of one block; rows are dealt to blocks longest stream first, so a band's
rows are scattered over the weight. The weights have an empty row, a dense one and a gap
wider than any step (escape entries); N = 75 fills no block.
"""

import pytest
import torch
from _kernels_helpers import random_unstructured

import lcc_kernels.streams as streams_module
from lcc_kernels import format_common, pack
from lcc_kernels.streams import build_streams

N, K = 75, 136


def _awkward(density: float, dtype: torch.dtype) -> torch.Tensor:
    weight = random_unstructured(N, K, density, dtype)
    weight[1, 3 : K - 2] = 0  # one gap of many steps
    weight[2] = 0
    weight[3] = torch.randn(K).to(dtype) + 4.0  # no zero
    return weight


def _build_counting_bands(monkeypatch, weight, block_n, split, step_bits, band_positions):
    """build_streams with PACK_BAND = band_positions -> (streams, bands it filled)."""
    filled = []
    fill_band = streams_module._fill_band

    def counting_fill_band(streams, band, rows, lengths):
        filled.append(band)
        fill_band(streams, band, rows, lengths)

    with monkeypatch.context() as patch:
        patch.setattr(format_common, "PACK_BAND", band_positions)
        patch.setattr(streams_module, "_fill_band", counting_fill_band)
        return build_streams(weight, block_n, split, step_bits), filled


@pytest.mark.parametrize(
    "block_n, split, band_rows",
    [
        (1, 1, 1),  # a row per band
        (8, 3, 16),  # two whole blocks per band
        (16, 2, 5),  # lanes of one block: 5, 5, 5 and 1
        (32, 5, 32),  # one block per band, the last one part empty
        (128, 4, 7),  # one block, lanes 7 at a time up to the last row
    ],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("density, dtype", [(0.3, torch.bfloat16), (0.6, torch.float16)])
@pytest.mark.parametrize("step_bits", [3, 4, None])
def test_small_bands_build_the_layout_of_one_band(
    monkeypatch, block_n, split, band_rows, density, dtype, step_bits
):
    weight = _awkward(density, dtype)
    whole, one = _build_counting_bands(monkeypatch, weight, block_n, split, step_bits, 1 << 40)
    banded, many = _build_counting_bands(
        monkeypatch, weight, block_n, split, step_bits, band_rows * K
    )
    assert len(one) == 1
    lanes = [band.blocks * band.lanes for band in many]
    assert max(lanes) <= band_rows and sum(lanes) >= N and len(many) > 1
    assert banded.step_bits == whole.step_bits
    for field, got, expected in zip(
        ("values", "steps", "starts", "group_base", "groups", "row_ids"),
        banded.tensors,
        whole.tensors,
        strict=True,
    ):
        assert got.dtype == expected.dtype and torch.equal(got, expected), field
    assert torch.equal(banded.to_dense(), weight)


def test_small_bands_of_a_bitmap_weight(monkeypatch):
    weight = _awkward(0.5, torch.float16)
    packed = pack(weight, "bitmap")
    whole, _ = _build_counting_bands(monkeypatch, packed, 16, 3, None, 1 << 40)
    banded, bands = _build_counting_bands(monkeypatch, packed, 16, 3, None, 3 * K)
    assert len(bands) == 4 * 6 + 4  # blocks of 16 lanes 3 at a time; the last has 11 rows
    assert all(torch.equal(a, b) for a, b in zip(banded.tensors, whole.tensors, strict=True))
    assert torch.equal(banded.to_dense(), weight)
