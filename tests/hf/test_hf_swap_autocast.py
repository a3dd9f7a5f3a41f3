"""Under torch.autocast a swapped fp32 model runs as the unswapped one does: outputs in
autocast's dtype (the product itself in the packed weights' fp32)."""

import copy

import pytest
import torch
from _hf_swap_helpers import attention, logits, pruned_model, random_ids

from restorelcc.hf.swap import swap_attention


@pytest.mark.parametrize("mlp", [False, True])
def test_a_swapped_model_runs_under_autocast(mlp):
    """It had raised "x dtype torch.bfloat16 does not match the weight dtype" at o_proj."""
    pruned = pruned_model("llama-gqa", "unstructured", mlp=mlp)
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, mlp=mlp)
    ids = random_ids()
    exact = logits(pruned, ids).double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(3, 96)
        assert attention(swapped, 0).q_proj(x).dtype == attention(pruned, 0).q_proj(x).dtype
        ours, theirs = swapped(ids).logits, pruned(ids).logits
    assert ours.dtype == theirs.dtype
    error, torch_error = (ours.double() - exact).abs().max(), (theirs.double() - exact).abs().max()
    assert error <= 2 * torch_error + 1e-2, (error, torch_error)
