"""Under torch.inference_mode (inference tensors: no version counter) the q/k/v views
still share one launch, and the model's logits are the unswapped model's."""

import copy

import torch
from _hf_swap_helpers import assert_logits_match, attention, pruned_model, random_ids

import lcc_kernels
from restorelcc.hf.swap import swap_attention


def test_inference_mode_keeps_one_qkv_launch_and_right_logits(monkeypatch):
    model = pruned_model("llama-gqa", "unstructured")
    pruned = copy.deepcopy(model)
    swap_attention(model)
    launches = []
    real = lcc_kernels.sparse_linear

    def spy(x, weight, bias=None, **kwargs):
        launches.append(weight.shape)
        return real(x, weight, bias, **kwargs)

    monkeypatch.setattr(lcc_kernels, "sparse_linear", spy)
    ids = random_ids()
    with torch.inference_mode():
        view = attention(model, 0)
        x = torch.randn(2, 5, 96)
        q, k, v = view.q_proj(x), view.k_proj(x), view.v_proj(x)
        assert len(launches) == 1
        plain = attention(pruned, 0)
        for ours, theirs in ((q, plain.q_proj(x)), (k, plain.k_proj(x)), (v, plain.v_proj(x))):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        ours_logits = model(ids).logits
    assert len(launches) == 1 + 2 * len(model.model.layers)  # q/k/v once, o_proj once
    assert_logits_match(ours_logits, pruned, ids, torch.float32)
