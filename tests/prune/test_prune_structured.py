"""Structured pruning: GQA-aware head removal, MLP channels, config update, reload."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from restorelcc.hf.families import decoder_layers, head_geometry
from restorelcc.prune import PruneArgumentError, prune_model
from restorelcc.testing import tiny_model


def zeroed_equivalent(dense, removed: dict, geometry):
    """The dense model with removed heads' o_proj columns and removed channels zeroed.

    Removing a query head equals zeroing its o_proj input columns (heads are independent
    until o_proj), and removing an MLP channel equals zeroing its down_proj column.
    """
    model = copy.deepcopy(dense)
    hd = geometry.head_dim
    for index, layer in enumerate(decoder_layers(model)):
        gone = removed[index]
        with torch.no_grad():
            for h in gone["heads"]:
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            layer.mlp.down_proj.weight[:, gone["channel_index"]] = 0
    return model


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-gqa", "mistral-gqa", "llama-mha"])
def test_removal_equals_zeroing_heads_and_channels(name):
    dense = tiny_model(name)
    geometry = head_geometry(dense)
    pruned = copy.deepcopy(dense)
    report = prune_model(pruned, "magnitude", 0.5, "heads")
    removed = report.structured["removed_per_layer"]
    assert report.structured["plan"]["kv_groups_removed"] == geometry.kv_heads // 2
    group = geometry.heads // geometry.kv_heads
    for index, layer in enumerate(decoder_layers(dense)):
        gone = removed[index]
        # whole KV groups: a removed KV head takes exactly its query heads along
        assert sorted(gone["heads"]) == sorted(
            h for kv in gone["kv_heads"] for h in range(kv * group, (kv + 1) * group)
        )
        # the channels kept are those whose gate rows survive, in order
        kept_gate = decoder_layers(pruned)[index].mlp.gate_proj.weight
        full_gate = layer.mlp.gate_proj.weight
        kept = [
            j
            for j in range(full_gate.shape[0])
            if any(torch.equal(full_gate[j], r) for r in kept_gate)
        ]
        gone["channel_index"] = [j for j in range(full_gate.shape[0]) if j not in kept]
        assert len(gone["channel_index"]) == gone["channels"]
    reference = zeroed_equivalent(dense, removed, geometry)
    tokens = torch.randint(0, 259, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(tokens).logits, reference(tokens).logits, rtol=1e-4, atol=1e-4
        )


def test_removes_lowest_energy_groups_and_channels():
    dense = tiny_model("llama-gqa")  # 6 heads, 2 KV heads, head_dim 16
    pruned = copy.deepcopy(dense)
    report = prune_model(pruned, "magnitude", 0.3, "heads", head_fraction=0.5)
    for index, layer in enumerate(decoder_layers(dense)):
        o = layer.self_attn.o_proj.weight.tolist()
        energy = [0.0, 0.0]
        for row in o:
            for j, value in enumerate(row):
                energy[j // 48] += value * value  # query heads 0-2 read KV 0, heads 3-5 KV 1
        gone = report.structured["removed_per_layer"][index]
        assert gone["kv_heads"] == [min(range(2), key=lambda g: energy[g])]
        down = layer.mlp.down_proj.weight
        column = [sum(v * v for v in down[:, j].tolist()) for j in range(down.shape[1])]
        lowest = sorted(range(len(column)), key=lambda j: column[j])[: gone["channels"]]
        kept_down = decoder_layers(pruned)[index].mlp.down_proj.weight
        survivors = [j for j in range(down.shape[1]) if j not in set(lowest)]
        torch.testing.assert_close(kept_down, down[:, survivors])


def test_wanda_structured_fraction_config_and_reload(tmp_path):
    model = tiny_model("llama-gqa")
    tokens = torch.randint(0, 259, (6, 24))
    params_before = sum(p.numel() for p in model.parameters())
    report = prune_model(model, "wanda", 0.25, "heads", calibration=tokens, head_fraction=0.5)
    s = report.structured
    assert abs(s["removed_fraction_of_blocks"] - 0.25) < 0.01
    assert s["model_params"] == [params_before, sum(p.numel() for p in model.parameters())]
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (3, 1)
    assert cfg.intermediate_size == s["intermediate_size"][1] < 200
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits)


def test_single_kv_head_keeps_attention():
    model = tiny_model("llama-3x5")  # one KV head: no group can go
    report = prune_model(model, "magnitude", 0.3, "heads")
    assert report.structured["kv_heads"] == [1, 1]
    assert report.structured["plan"]["channels_removed"] > 0
    assert abs(report.structured["removed_fraction_of_blocks"] - 0.3) < 0.01


@pytest.mark.parametrize("sparsity, groups", [(0.2, 0), (0.25, 1), (0.6, 2), (0.9, 3)])
def test_default_groups_never_exceed_the_target_share(sparsity, groups):
    # 4 KV groups: floor(sparsity * 4), at most 3; hidden 48 takes any head count from 1 to 4
    model = tiny_model("llama-mha", hidden_size=48)
    report = prune_model(model, "magnitude", sparsity, "heads")
    assert report.structured["plan"]["kv_groups_removed"] == groups
    assert abs(report.structured["removed_fraction_of_blocks"] - sparsity) < 0.01


def test_head_fraction_and_unreachable_sparsity():
    model = tiny_model("llama-mha")  # 4 KV groups
    report = prune_model(copy.deepcopy(model), "magnitude", 0.5, "heads", head_fraction=0.5)
    assert report.structured["heads"] == [4, 2]
    with pytest.raises(PruneArgumentError, match="out of reach"):
        prune_model(model, "magnitude", 0.99, "heads")
    with pytest.raises(PruneArgumentError, match="more than"):
        prune_model(model, "magnitude", 0.1, "heads", head_fraction=0.75)


def test_head_counts_the_config_cannot_save_are_avoided(tmp_path):
    # Llama configs refuse hidden 64 with 3 heads (64 % 3): 30% would remove 1 of 4 groups.
    model = tiny_model("llama-mha")
    report = prune_model(model, "magnitude", 0.3, "heads", progress=False)
    assert model.config.num_attention_heads == 4  # MLP channels only
    assert report.to_dict()["structured"]["plan"]["kv_groups_removed"] == 0
    model.save_pretrained(tmp_path)
    AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(
        PruneArgumentError, match="leaves 3 attention heads, which transformers"
    ) as e:
        prune_model(tiny_model("llama-mha"), "magnitude", 0.3, "heads", head_fraction=0.25)
    # transformers' reason, without its indentation and exception-type prefix
    assert str(e.value).endswith(
        "refuses to save: The hidden size (64) is not a multiple of the number of attention "
        "heads (3)."
    )
