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


def test_inputs_autocast_knows_nothing_of_still_run_or_fail_clearly():
    """The autocast check had raised on the meta device and on a list."""
    swapped = pruned_model("llama-gqa", "unstructured")
    swap_attention(swapped)
    q_proj = attention(swapped, 0).q_proj
    meta = copy.deepcopy(q_proj.owner).to("meta")
    assert meta(torch.randn(2, 96, device="meta"))[0].device.type == "meta"
    for module in (q_proj, attention(swapped, 0).o_proj):
        with pytest.raises(ValueError, match="x must be a torch.Tensor, got list"):
            module([[0.0] * module.in_features])
