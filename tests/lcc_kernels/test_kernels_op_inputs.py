"""The custom ops called directly (torch.ops.lcc_kernels.*) check the packed tensors they
are given as the containers check their layout (dtypes, shapes from n / k / tile, one
device, contiguity; no data read) and their config, with a ValueError naming what is
wrong, before anything is launched.

Sizes are odd: N = 24 is one and a half 16-row tiles, K = 72 pads to 128 in 2:4.
"""

import pytest
import torch
from _kernels_helpers import needs_triton, random_24, random_unstructured

from lcc_kernels import Plan, launch, pack, prepare_streams
from lcc_kernels.ops import plan_to_config, streams_config

N, K = 24, 72
OPS = torch.ops.lcc_kernels
SKINNY = plan_to_config(Plan("skinny", 4, 16, 32, split_k=2))
STREAMS = Plan("streams", 1, 16, split_k=2)


def _w24():
    return pack(random_24(N, K), "2:4")


def _bitmap():
    return pack(random_unstructured(N, K, 0.4), "bitmap", tile=(16, 32))


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` [R, C] with the same values, stored column-major."""
    return t.t().contiguous().t()


def _sparse24_cases():
    """(what, values, meta, k, message) that the 2:4 op refuses."""
    w = _w24()
    good = {"values": w.values, "meta": w.meta, "k": K}
    cases = [
        ("values not contiguous", {"values": _noncontiguous(w.values)}, "values must be contig"),
        ("meta not contiguous", {"meta": _noncontiguous(w.meta)}, "2:4 meta must be contiguous"),
        ("values narrowed", {"values": w.values[:, :16].contiguous()}, r"shape \(24, 64\)"),
        ("meta fewer rows", {"meta": w.meta[:4].contiguous()}, r"int32 of shape \(24, 4\)"),
        ("meta int64", {"meta": w.meta.long()}, "2:4 meta must be int32 of shape"),
        ("k larger", {"k": 200}, r"shape \(24, 128\) for weight shape \(24, 200\)"),
        ("k not a multiple of 4", {"k": 70}, r"K > 0 divisible by 4, got \(24, 70\)"),
        ("values 1-D", {"values": w.values.flatten()}, r"values must be 2-D \[N, Kp/2\]"),
    ]
    return [(what, *{**good, **changes}.values(), message) for what, changes, message in cases]


def _no_launch(monkeypatch):
    monkeypatch.setattr(launch, "_issue", lambda *args: pytest.fail("launched"))


@needs_triton
@pytest.mark.parametrize("case", _sparse24_cases(), ids=lambda case: case[0])
def test_sparse24_op_checks_the_packed_tensors(case, monkeypatch):
    _, values, meta, k, message = case
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=message):
        OPS.sparse24_linear(torch.randn(3, k), values, meta, k, None, SKINNY)


def _bitmap_cases():
    """(what, bitmap op arguments after x, message) that the bitmap ops refuse."""
    w = _bitmap()
    good = {"bits": w.bits, "values": w.values, "offsets": w.offsets}
    good |= {"n": N, "k": K, "tile_n": 16, "tile_k": 32, "nnz": w.nnz}
    cases = [
        ("n of 64 rows", {"n": 64}, r"bits must be int32 of shape \(12, 16\)"),
        ("tile of 32 rows", {"tile_n": 32}, r"of shape \(3, 32\) for weight shape"),
        ("tile_k 48", {"tile_k": 48}, "bitmap tile must be"),
        ("bits int64", {"bits": w.bits.long()}, "bits must be int32"),
        ("offsets int64", {"offsets": w.offsets.long()}, "offsets must be int32"),
        ("bits not contiguous", {"bits": _noncontiguous(w.bits)}, "bits must be contiguous"),
        ("values strided", {"values": w.values.repeat_interleave(2)[::2]}, "values must be contig"),
        ("fewer tiles", {"bits": w.bits[:1].contiguous()}, r"shape \(6, 16\)"),
        ("nnz negative", {"nnz": -1}, r"nnz must be in 0 .. N \* K = 1728"),
        ("values short", {"values": w.values[:8].clone()}, r"hold 8 values, fewer than nnz"),
    ]
    return [
        (what, tuple({**good, **changes}.values()), message) for what, changes, message in cases
    ]


@needs_triton
@pytest.mark.parametrize("case", _bitmap_cases(), ids=lambda case: case[0])
@pytest.mark.parametrize("op", ["bitmap_linear", "bitmap_streams_linear"])
def test_bitmap_ops_check_the_packed_tensors(case, op, monkeypatch):
    _, args, message = case
    good = _bitmap()
    layout = prepare_streams(good, STREAMS)
    streams_args = (list(layout.tensors), streams_config(STREAMS, layout))
    _no_launch(monkeypatch)
    x = torch.randn(3, args[4])
    with pytest.raises(ValueError, match=message):
        if op == "bitmap_linear":
            OPS.bitmap_linear(x, *args, None, SKINNY)
        else:
            OPS.bitmap_streams_linear(x, *args, *streams_args, None, True)


def _replaced(layout, **changes) -> list[torch.Tensor]:
    """The tensors of a streams layout in field order, those named in `changes` replaced."""
    return [changes.get(name, getattr(layout, name)) for name in _LAYOUT_TENSORS]


_LAYOUT_TENSORS = ("values", "steps", "starts", "group_base", "groups", "row_ids")


def _streams_cases():
    """(what, bitmap op arguments, layout tensors, layout config, message) that the streams
    op refuses."""
    w = _bitmap()
    layout = prepare_streams(w, STREAMS)
    config = streams_config(STREAMS, layout)
    tensors = list(layout.tensors)
    cases = [
        ("steps int64", _replaced(layout, steps=layout.steps.long()), config, "steps must be 1-D"),
        ("starts narrowed", _replaced(layout, starts=layout.starts[:-1]), config, "starts must"),
        ("values fp64", _replaced(layout, values=layout.values.double()), config, "values must"),
        ("five tensors", tensors[:5], config, "a streams layout is 6 tensors"),
        ("config of five ints", tensors, config[:5], "its config 6 ints"),
        ("block_n 32", tensors, [32, *config[1:]], r"streams \w+ must be 1-D .* block_n 32"),
        ("step_bits 5", tensors, [*config[:2], 5, *config[3:]], "step_bits in"),
    ]
    bitmap_args = (w.bits, w.values, w.offsets, N, K, 16, 32, w.nnz)
    return [(what, bitmap_args, *rest) for what, *rest in cases]


@needs_triton
@pytest.mark.parametrize("case", _streams_cases(), ids=lambda case: case[0])
@pytest.mark.parametrize("forced", [True, False])
def test_streams_op_checks_the_layout(case, forced, monkeypatch):
    _, bitmap_args, tensors, layout_config, message = case
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=message):
        OPS.bitmap_streams_linear(
            torch.randn(2, K), *bitmap_args, tensors, layout_config, None, forced
        )


@needs_triton
@pytest.mark.parametrize("config", [[7], [-1], [0, 16, 64], [0, *SKINNY]], ids=str)
def test_ops_name_a_bad_config(config, monkeypatch):
    w = _w24()
    _no_launch(monkeypatch)
    with pytest.raises(ValueError, match=r"config must be \[\] \(any Triton plan\), \[i\]"):
        OPS.sparse24_linear(torch.randn(3, K), w.values, w.meta, K, None, config)
