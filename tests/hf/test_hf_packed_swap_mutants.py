"""``load_packed`` casts every floating-point tensor to each explicit dtype it takes (the
other tests ask for bfloat16 only); a forced backend is checked against the groups the
swap packs, not against the unpruned ones it leaves dense."""

import pytest
import torch
from _hf_packed_helpers import saved_packed
from _hf_swap_helpers import attention, prune_attention
from torch import nn

from restorelcc.hf import load_packed, swap_attention
from restorelcc.hf.attention import PackedLinear
from restorelcc.testing import tiny_model


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_an_explicit_dtype_casts_every_floating_point_tensor(tmp_path, dtype):
    """From a float32 folder: embeddings, norms, the packed weights and the MLP alike."""
    name = str(dtype).removeprefix("torch.")
    loaded, _ = load_packed(saved_packed(tmp_path), dtype=name)
    dtypes = {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()}
    assert dtypes == {dtype}
    assert attention(loaded, 0).packed_qkv.packed.dtype == dtype


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_forced_backend_leaves_the_unpruned_layers_dense(dry_run):
    """Layer 0 pruned (bitmap, which the streams backend runs), layer 1 not: the swap packs
    layer 0 with streams and leaves layer 1's nn.Linear projections as they are."""
    model = prune_attention(tiny_model("llama-mha"), "unstructured", layers=[0])
    report = swap_attention(model, backend="streams", dry_run=dry_run)
    formats = {(row.layer, row.group): row.format for row in report.groups}
    assert formats == {
        (0, "qkv"): "bitmap",
        (0, "o_proj"): "bitmap",
        (1, "qkv"): "dense",
        (1, "o_proj"): "dense",
    }
    assert isinstance(attention(model, 1).q_proj, nn.Linear)
    assert isinstance(attention(model, 0).o_proj, PackedLinear) != dry_run
