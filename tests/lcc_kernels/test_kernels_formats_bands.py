"""Unpack a band of rows at a time (PACK_BAND positions; format_common.band_rows): small
bands give the dense weight of one band, bit for bit, at shapes whose last band, row
block or K tile is partial; and the peak memory of pack and unpack, measured in a fresh
process. (Pack in bands: test_kernels_formats.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _kernels_helpers import random_24, random_unstructured

from lcc_kernels import BitmapWeight, format_24, format_bitmap, format_common, pack, unpack
from lcc_kernels.format_common import _SAME_SIZE_INT

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _unpack_counting_bands(monkeypatch, packed, band_positions):
    """unpack(packed) with PACK_BAND = band_positions -> (dense, positions of each band)."""
    module, band_function = {
        "bitmap": (format_bitmap, "_gather_tiles"),
        "2:4": (format_24, "_unpack_24_band"),
    }[packed.format]
    bands = []
    unpack_band = getattr(module, band_function)

    def counting_band(*args):
        out = unpack_band(*args)
        bands.append(out.numel())
        return out

    with monkeypatch.context() as patch:
        patch.setattr(format_common, "PACK_BAND", band_positions)
        patch.setattr(module, band_function, counting_band)
        return unpack(packed), bands


def _bits(dense: torch.Tensor) -> torch.Tensor:
    return dense.view(_SAME_SIZE_INT[dense.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n, k, tile, band_blocks",
    [
        (37, 150, (4, 32), 2),  # 5 bands of 8 rows, the last one 5 (a block and a row)
        (70, 33, (16, 64), 0),  # a band under one block: a block per band, the last 6 rows
        (129, 65, (8, 128), 3),  # 6 bands of 24 rows, the last one 9
        (9, 300, (1, 32), 4),  # 3 bands of 4 one-row blocks; 10 K tiles, the last 12 columns
        (5, 40, (64, 64), 1),  # one block, taller than the weight: one band
    ],
    ids=str,
)
def test_bitmap_unpack_in_small_bands_equals_one_band(monkeypatch, n, k, tile, band_blocks, dtype):
    weight = random_unstructured(n, k, 0.4, dtype)
    weight[n // 2] = -0.0  # a row of pruned -0.0: +0.0 once unpacked
    packed = pack(weight, "bitmap", tile=tile)
    block = tile[0] * -(-k // tile[1]) * tile[1]  # positions of one padded row block
    whole, one = _unpack_counting_bands(monkeypatch, packed, 1 << 40)
    banded, many = _unpack_counting_bands(monkeypatch, packed, band_blocks * block or 1)
    band_rows = max(band_blocks, 1) * tile[0]
    assert len(one) == 1 and one[0] == block * -(-n // tile[0])
    assert len(many) == -(-n // band_rows) and max(many) == max(band_blocks, 1) * block
    assert banded.dtype == dtype and banded.shape == (n, k) and banded.is_contiguous()
    assert torch.equal(_bits(banded), _bits(whole)) and torch.equal(banded, weight)
    assert not bool(torch.signbit(banded[weight == 0]).any())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n, k, band_rows",
    [
        (1, 4, 1),  # K = 4 of a 64-position padded row
        (13, 60, 1),  # 13 bands of a row
        (23, 132, 5),  # 5 bands of 5 rows, the last one 3; K = 132 of 192
        (64, 256, 7),  # 10 bands of 7 rows, the last one 1; K a multiple of 64
    ],
    ids=str,
)
def test_24_unpack_in_small_bands_equals_one_band(monkeypatch, n, k, band_rows, dtype):
    weight = random_24(n, k, dtype)
    second = weight[:, 1::4]
    second[second == 0] = -0.0  # pruned -0.0 in every group's slot 1: +0.0 once unpacked
    packed = pack(weight, "2:4")
    padded_k = -(-k // 64) * 64
    whole, one = _unpack_counting_bands(monkeypatch, packed, 1 << 40)
    banded, many = _unpack_counting_bands(monkeypatch, packed, band_rows * padded_k)
    assert len(one) == 1 and one[0] == n * padded_k
    assert len(many) == -(-n // band_rows) and max(many) == min(band_rows, n) * padded_k
    assert banded.dtype == dtype and banded.shape == (n, k) and banded.is_contiguous()
    assert torch.equal(_bits(banded), _bits(whole)) and torch.equal(banded, weight)
    assert not bool(torch.signbit(banded[weight == 0]).any())


def test_bitmap_unpack_of_a_weight_without_values():
    # A state dict may store an all-zero weight without its run of zeros: the gather has
    # no slot to read.
    packed = pack(torch.zeros(6, 40), "bitmap", tile=(4, 32))
    empty = BitmapWeight(packed.bits, packed.values[:0], packed.offsets, (6, 40), (4, 32), 0, (6,))
    empty.validate_data()
    dense = unpack(empty)
    assert dense.shape == (6, 40) and not bool(_bits(dense).any())  # +0.0 everywhere


@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_unpack_in_bands_traces_whole(monkeypatch, fmt):
    # The reference path unpacks inside compiled graphs (torch.compile(fullgraph=True)):
    # the bands must be cut by shape alone, never by the data.
    weight = random_24(40, 136, torch.bfloat16)
    packed = pack(weight, fmt, tile=(8, 32))
    # bitmap: 5 bands of one 8-row block (K padded to 160); 2:4: 14 bands of 3 rows (192)
    monkeypatch.setattr(format_common, "PACK_BAND", 3 * 192)
    compiled = torch.compile(lambda: unpack(packed), fullgraph=True, backend="aot_eager")
    dense = compiled()
    assert torch.equal(_bits(dense), _bits(unpack(packed))) and torch.equal(dense, weight)


_PEAK_SCRIPT = """
import sys
import torch
from lcc_kernels import pack, unpack

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

torch.set_num_threads(1)
operation, fmt = sys.argv[1:]
weight = torch.ones(4096, 4096, dtype=torch.float16)
weight[:, ::2] = 0
if operation == "unpack":
    unpack(pack(weight[:64], fmt))  # the first call's one-off allocations
    packed = pack(weight, fmt)
    del weight
try:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident size (VmHWM) restarts from the current one
except OSError as exc:  # not permitted here, or a kernel before 4.0
    print("cannot reset the peak:", exc)
    sys.exit(77)
before = kib("VmRSS")
if operation == "pack":
    pack(weight, fmt)
else:
    unpack(packed)
print(kib("VmHWM") - before)
"""


def _peak_mib(operation: str, fmt: str) -> float:
    """The rise of the peak resident size over one `operation` ("pack" or "unpack") of a
    4096 x 4096 fp16 weight at 50% in `fmt`, in a fresh process, in MiB.

    glibc maps every block of 64 KiB or more on its own and unmaps it when freed, so that
    the resident size follows the tensors alive (with its default, a moving threshold, the
    freed blocks it keeps add 0 to 40 MiB from one run to the next)."""
    repository = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": repository,
        "MALLOC_MMAP_THRESHOLD_": str(64 << 10),
    }
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, operation, fmt],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode == 77:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_pack_peak_memory_is_a_few_times_the_weight(fmt):
    # A 32 MiB fp16 weight at 50%: the int64 copies over every position that pack made
    # once took its peak to ~440 (2:4) and ~490 MiB (bitmap) above the weight; it packs in
    # bands now (under 100 MiB each).
    peak_mib = _peak_mib("pack", fmt)
    assert peak_mib < 6 * 32, f"{fmt} pack peaked at +{peak_mib:.0f} MiB for a 32 MiB weight"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
@pytest.mark.parametrize("fmt", ["2:4", "bitmap"])
def test_unpack_peak_memory_is_near_the_output(fmt):
    # The 32 MiB fp16 output plus one band's working tensors (PACK_BAND positions, at most
    # 24 bytes each): ~38 (2:4) and ~44 MiB (bitmap). Unpacking the whole weight at once
    # peaked at ~96 and ~272 MiB.
    peak_mib = _peak_mib("unpack", fmt)
    assert peak_mib < 32 + 24, f"{fmt} unpack peaked at +{peak_mib:.0f} MiB for a 32 MiB output"
