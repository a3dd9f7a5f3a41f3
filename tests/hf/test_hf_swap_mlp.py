"""swap_attention(mlp=True): the MLP swapped too, gate/up packed as one (like q/k/v) and
down_proj alone; logits, launches, unswap bit for bit, generation, state dicts, refusals."""

import copy

import pytest
import torch
from _hf_swap_helpers import (
    FAMILIES,
    MLP_PROJECTIONS,
    PATTERNS,
    add_o_bias,
    assert_generation_matches,
    assert_matches,
    linear_state,
    logits,
    mlp,
    prune_attention,
    prune_mlp,
    pruned_model,
    random_ids,
    same_bits,
)
from torch import nn

from restorelcc import swap_attention, unswap_attention
from restorelcc.hf.attention import PackedProjections, ProjectionView, SparseLinear
from restorelcc.hf.swap import SwapError
from restorelcc.testing import TINY_SHAPES, tiny_model


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("name", FAMILIES)
def test_swapped_mlp_logits_match_and_unswap_is_bit_identical(name, pattern):
    pruned = pruned_model(name, pattern, mlp=True)
    model = copy.deepcopy(pruned)
    report = swap_attention(model, mlp=True)
    layers = TINY_SHAPES[name][1]
    groups = {(g.layer, g.group): g.format for g in report.groups}
    expected_groups = ("qkv", "o_proj", "gate_up", "down_proj")
    assert groups == {(i, g): PATTERNS[pattern] for i in range(layers) for g in expected_groups}
    assert report.to_dict()["mlp"] is True
    assert isinstance(mlp(model, 0).packed_gate_up, PackedProjections)
    assert isinstance(mlp(model, 0).gate_proj, ProjectionView)
    assert isinstance(mlp(model, 0).down_proj, SparseLinear)
    assert_matches(model, pruned, random_ids(), torch.float32)
    model.half()
    assert unswap_attention(model) == list(range(layers))
    for names_owner in ({}, {"names": MLP_PROJECTIONS, "owner": mlp}):
        before, after = (
            linear_state(pruned.half(), **names_owner),
            linear_state(model, **names_owner),
        )
        assert before.keys() == after.keys()
        assert all(same_bits(before[key], after[key]) for key in before)


def test_by_default_the_mlp_stays_nn_linear():
    model = pruned_model("llama-gqa", "2:4", mlp=True)
    report = swap_attention(model)
    assert {g.group for g in report.groups} == {"qkv", "o_proj"} and not report.mlp
    assert all(type(getattr(mlp(model, 1), n)) is nn.Linear for n in MLP_PROJECTIONS)


def test_generate_matches_with_the_mlp_swapped():
    pruned = pruned_model("qwen2-gqa", "unstructured", mlp=True)
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, mlp=True)
    assert_generation_matches(swapped, pruned, random_ids(1, 6), 5, torch.float32)


def test_state_dict_and_save_pretrained_are_the_plain_models(tmp_path):
    from transformers import AutoModelForCausalLM

    pruned = prune_mlp(prune_attention(tiny_model("qwen2-gqa"), "2:4"), "2:4")  # no o bias
    swapped = copy.deepcopy(pruned)
    swap_attention(swapped, mlp=True)
    plain, ours = pruned.state_dict(), swapped.state_dict()
    assert list(ours) == list(plain) and all(torch.equal(ours[k], plain[k]) for k in plain)
    swapped.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = random_ids()
    assert torch.equal(logits(loaded, ids), logits(pruned, ids))


def test_an_unpruned_mlp_is_left_dense_and_a_pruned_one_alone_is_swapped():
    model = add_o_bias(prune_attention(tiny_model("llama-gqa"), "2:4"))
    report = swap_attention(copy.deepcopy(model), mlp=True)
    mlp_groups = ("gate_up", "down_proj")
    assert {g.format for g in report.groups if g.group in mlp_groups} == {"dense"}
    mlp_only = prune_mlp(tiny_model("llama-gqa"), "unstructured", layers=[1])
    reference = copy.deepcopy(mlp_only)
    report = swap_attention(mlp_only, mlp=True)
    assert report.swapped_layers == [1]
    assert {g.group for g in report.groups if g.format != "dense"} == {"gate_up", "down_proj"}
    assert_matches(mlp_only, reference, random_ids(), torch.float32)
    with pytest.raises(SwapError, match="layer 1 is already swapped"):
        swap_attention(mlp_only)  # its attention is plain nn.Linear, its MLP is not
    assert unswap_attention(mlp_only) == [1]


def test_mlp_refusals_name_the_matrix():
    model = pruned_model("llama-mha", "unstructured", mlp=True)
    with pytest.raises(SwapError, match=r"layer 0 mlp\.gate_proj does not fit the 2:4 format"):
        swap_attention(prune_attention(model, "2:4"), "2:4", mlp=True)
    assert all(type(getattr(mlp(model, 0), n)) is nn.Linear for n in MLP_PROJECTIONS)
    mlp(model, 1).up_proj = nn.Identity()
    not_linear = r"layer 1 mlp\.up_proj is torch\.nn\..*\.Identity, not a plain nn\.Linear"
    with pytest.raises(SwapError, match=not_linear):
        swap_attention(model, mlp=True)
    swap_attention(model)  # the attention alone does not look at the MLP
    half = prune_attention(tiny_model("llama-mha"), "2:4")
    prune_attention(half, "2:4", names=("gate_proj", "down_proj"), owner=mlp)
    with pytest.raises(SwapError, match=r"layer 0 mlp\.up_proj is not pruned .* gate_proj/up_proj"):
        swap_attention(half, mlp=True)  # gate and up are one launch: both sparse or neither
