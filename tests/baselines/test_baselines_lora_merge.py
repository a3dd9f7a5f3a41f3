"""LoRA and DoRA adapters, trained, give the same logits merged into the pruned weights as
beside them (to fp32 rounding), and merging fills the pruned zeros: the demo evaluates them
unmerged and reports the sparsity kept once merged."""

import copy

import pytest
import torch

from restorelcc.baselines import block_sparsity, lora_baseline, merged_sparsity
from restorelcc.lcc import TrainConfig
from restorelcc.prune import prune_model
from restorelcc.testing import byte_tokenizer, synthetic_pairs, tiny_model


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merged_and_unmerged_adapters_agree_and_merging_lowers_sparsity(dora):
    pruned = tiny_model("llama-3x5")
    prune_model(pruned, "magnitude", 0.5)
    config = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, progress=False)
    result = lora_baseline(pruned, byte_tokenizer(), synthetic_pairs(16), config, rank=2, dora=dora)
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = result.model(ids).logits
        merged_model = copy.deepcopy(result.model).merge_and_unload()
        merged = merged_model(ids).logits
        plain = pruned(ids).logits
    assert (unmerged - plain).abs().max() > 1e-2  # trained: the adapters change the logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert block_sparsity(result.model.get_base_model()) == block_sparsity(pruned)
    assert merged_sparsity(result) == block_sparsity(merged_model) < block_sparsity(pruned)
