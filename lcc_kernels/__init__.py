"""Fused sparse linear Triton kernels for the attention block of pruned models.

    packed = pack(weight, "2:4")            # or "bitmap"; weight [N, K], zeros = mask
    y = sparse_linear(x, packed, bias)      # x [..., K] -> y [..., N], bias in fp32
    qkv = pack_many([wq, wk, wv], "2:4")    # one launch for three projections
    packed_nbytes([wq, wk, wv], "bitmap")   # qkv's nbytes as bitmap, without packing
    q, k, v = split_output(sparse_linear(x, qkv), qkv)
    y = sparse_linear(x, bitmap, bias, decode_streams=True)  # decode: kept values as streams
    prepare_streams(bitmap)                 # build their layout now (before torch.compile)

Knows nothing of transformers or of the restoration method.
"""

from .dispatch import Plan, choose_plan, load_table
from .formats import (
    DEFAULT_BITMAP_TILE,
    BitmapWeight,
    PackedWeight,
    Sparse24Weight,
    concat,
    load_state_dict,
    pack,
    pack_many,
    packed_nbytes,
    split_output,
    unpack,
)
from .interop import from_torch_semi_structured, to_torch_semi_structured
from .linear import dense_linear_triton, prepare_streams, sparse_linear
from .reference import oracle_linear, reference_linear

__all__ = [
    "DEFAULT_BITMAP_TILE",
    "BitmapWeight",
    "PackedWeight",
    "Plan",
    "Sparse24Weight",
    "choose_plan",
    "concat",
    "dense_linear_triton",
    "from_torch_semi_structured",
    "load_state_dict",
    "load_table",
    "oracle_linear",
    "pack",
    "pack_many",
    "packed_nbytes",
    "prepare_streams",
    "reference_linear",
    "sparse_linear",
    "split_output",
    "to_torch_semi_structured",
    "unpack",
]
