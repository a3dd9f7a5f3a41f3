"""The layout checks refuse each input at their edges with a ValueError naming what is
wrong: a config whose backend index is one past TRITON_BACKENDS, streams values in
another dtype than the bitmap's, an empty 2:4 or bitmap weight, float64 or non-tensor
values, tensors on two devices, nnz one past N * K, one value too few; and the data
checks (validate_data) refuse overlapping tile runs and bits set in the padding beyond
the weight's shape. An op given a meta tensor among CPU ones (which runs its fake)
refuses it too.

N = 24, K = 72 in 16 x 32 bitmap tiles: 2 row blocks x 3 K tiles, the last tile's
rows 24..31 and columns 72..95 padding.
"""

import dataclasses

import pytest
import torch
from _kernels_helpers import needs_triton, random_24, random_unstructured

from lcc_kernels import BitmapWeight, Plan, Sparse24Weight, launch, pack, prepare_streams
from lcc_kernels.dispatch import TRITON_BACKENDS
from lcc_kernels.format_24 import check_24_layout
from lcc_kernels.format_bitmap import VALUE_ALIGN, check_bitmap_layout
from lcc_kernels.ops import plan_to_config, streams_config

N, K = 24, 72
TILE = (16, 32)
OPS = torch.ops.lcc_kernels
SKINNY = plan_to_config(Plan("skinny", 4, 16, 32, split_k=2))
STREAMS = Plan("streams", 1, 16, split_k=2)


def _w24() -> Sparse24Weight:
    return pack(random_24(N, K), "2:4")


def _bitmap() -> BitmapWeight:
    return pack(random_unstructured(N, K, 0.4), "bitmap", tile=TILE)


def _no_launch(monkeypatch):
    monkeypatch.setattr(launch, "_issue", lambda *args: pytest.fail("launched"))


@needs_triton
@pytest.mark.parametrize(
    "config", [[len(TRITON_BACKENDS)], [len(TRITON_BACKENDS), *SKINNY[1:]]], ids=str
)
def test_a_backend_index_one_past_the_backends_is_a_bad_config(config, monkeypatch):
    w = _w24()
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=r"config must be \[\] \(any Triton plan\), \[i\]"):
        OPS.sparse24_linear(torch.randn(3, K), w.values, w.meta, K, None, config)


@needs_triton
def test_streams_values_must_have_the_bitmap_values_dtype(monkeypatch):
    w = _bitmap()
    layout = prepare_streams(w, STREAMS)
    tensors = [layout.values.half(), *layout.tensors[1:]]
    bitmap_args = (w.bits, w.values, w.offsets, N, K, *TILE, w.nnz)
    config = streams_config(STREAMS, layout)
    message = (
        r"streams values \(torch.float16, cpu\) must have the bitmap values' dtype and "
        r"device \(torch.float32, cpu\)"
    )
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=message):
        OPS.bitmap_streams_linear(torch.randn(2, K), *bitmap_args, tensors, config, None, True)


def _op_calls_with_a_meta_tensor():
    """(op, the argument on the meta device, a call of the op on x [3, K] on the CPU)."""
    w24, bitmap = _w24(), _bitmap()
    layout = prepare_streams(bitmap, STREAMS)
    on_meta = [layout.values.to("meta"), *layout.tensors[1:]]
    bitmap_args = (bitmap.bits, bitmap.values, bitmap.offsets, N, K, *TILE, bitmap.nnz)
    config = streams_config(STREAMS, layout)
    meta_offsets = (bitmap.bits, bitmap.values, bitmap.offsets.to("meta"), *bitmap_args[3:])
    return [
        (
            "sparse24_linear",
            "meta",
            lambda x: OPS.sparse24_linear(x, w24.values, w24.meta.to("meta"), K, None, SKINNY),
        ),
        ("bitmap_linear", "offsets", lambda x: OPS.bitmap_linear(x, *meta_offsets, None, SKINNY)),
        (
            "dense_linear",
            "weight",
            lambda x: OPS.dense_linear(x, torch.randn(N, K, device="meta"), None, SKINNY),
        ),
        (
            "bitmap_streams_linear",
            "streams values",
            lambda x: OPS.bitmap_streams_linear(x, *bitmap_args, on_meta, config, None, True),
        ),
    ]


@pytest.mark.parametrize("case", _op_calls_with_a_meta_tensor(), ids=lambda case: case[0])
def test_ops_refuse_a_meta_tensor_among_cpu_ones(case, monkeypatch):
    """A call with any argument on the meta device runs the op's fake (the shape rule):
    it refuses a tensor off x's device instead of returning uninitialised memory."""
    op, name, call = case
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=f"lcc_kernels.{op}: {name} on meta but x on cpu"):
        call(torch.randn(3, K))


@needs_triton
def test_the_24_op_refuses_a_weight_of_no_rows(monkeypatch):
    w = _w24()
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=r"needs N > 0 and K > 0 divisible by 4, got \(0, 72\)"):
        OPS.sparse24_linear(torch.randn(3, K), w.values[:0], w.meta[:0], K, None, SKINNY)


def test_a_24_layout_of_no_rows_is_refused():
    w = _w24()
    with pytest.raises(ValueError, match=r"needs N > 0 and K > 0 divisible by 4, got \(0, 72\)"):
        check_24_layout(w.values[:0], w.meta[:0], (0, K))


def _sparse24_cases():
    """(what, Sparse24Weight arguments, message) that it refuses."""
    w = _w24()
    good = {"values": w.values, "meta": w.meta, "shape": w.shape, "split_sizes": w.split_sizes}
    cases = [
        ("values fp64", {"values": w.values.double()}, "2:4 values dtype must be fp16/bf16/fp32"),
        ("meta on meta", {"meta": w.meta.to("meta")}, "2:4 meta on meta but values on cpu"),
        ("values a list", {"values": w.values.tolist()}, "2:4 values must be a torch.Tensor"),
    ]
    return [(what, {**good, **changes}, message) for what, changes, message in cases]


@pytest.mark.parametrize("case", _sparse24_cases(), ids=lambda case: case[0])
def test_a_24_weight_built_from_bad_tensors_is_refused(case):
    _, arguments, message = case
    with pytest.raises(ValueError, match=message):
        Sparse24Weight(**arguments)


def _bitmap_layout_cases():
    """(what, check_bitmap_layout arguments, message) that it refuses."""
    w = _bitmap()
    good = {"bits": w.bits, "values": w.values, "offsets": w.offsets}
    good |= {"shape": (N, K), "tile": TILE, "nnz": w.nnz}
    room = torch.cat([w.values, w.values.new_zeros(N * K + 1)])  # more than N * K + 1 values
    cases = [
        ("no rows", {"shape": (0, K)}, r"bitmap weight needs a non-empty shape, got \(0, 72\)"),
        ("no columns", {"shape": (N, 0)}, r"bitmap weight needs a non-empty shape, got \(24, 0\)"),
        ("values 2-D", {"values": w.values.view(-1, VALUE_ALIGN)}, r"values must be a 1-D fp16"),
        ("values fp64", {"values": w.values.double()}, r"must be a 1-D fp16/bf16/fp32 tensor, got"),
        ("nnz N * K + 1", {"values": room, "nnz": N * K + 1}, r"N \* K = 1728, got 1729"),
        (
            "one value short",
            {"values": w.values[: w.nnz - 1]},
            f"bitmap values hold {w.nnz - 1} values, fewer than nnz {w.nnz}",
        ),
    ]
    return [(what, {**good, **changes}, message) for what, changes, message in cases]


@pytest.mark.parametrize("case", _bitmap_layout_cases(), ids=lambda case: case[0])
def test_check_bitmap_layout_refuses(case):
    _, arguments, message = case
    with pytest.raises(ValueError, match=message):
        check_bitmap_layout(**arguments)


def test_check_bitmap_layout_takes_exactly_nnz_values():
    w = _bitmap()
    check_bitmap_layout(w.bits, w.values[: w.nnz], w.offsets, (N, K), TILE, w.nnz)


def test_a_bitmap_weight_whose_tile_runs_overlap_is_refused():
    """Tile 2's run starting where tile 1's does: each start aligned and in bounds."""
    w = _bitmap()
    offsets = w.offsets.clone()
    offsets[2] = offsets[1]
    message = f"bitmap offsets are corrupt at tile 2: start {int(offsets[1])}, "
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(w, offsets=offsets)


def test_a_bitmap_weight_marking_nonzeros_in_the_padding_is_refused():
    """A bit set at row 31, column 64 (the last tile's local row 15, bit 0), counted in nnz,
    with room for the last tile's longer run: only the padding is wrong."""
    w = _bitmap()
    bits = w.bits.clone()
    bits[-1, 15] |= 1
    values = torch.cat([w.values, w.values.new_zeros(VALUE_ALIGN)])
    with pytest.raises(ValueError, match="bitmap marks nonzeros in the padding beyond the weight"):
        dataclasses.replace(w, bits=bits, values=values, nnz=w.nnz + 1)
