"""swap_attention / unswap_attention refuse bad input with a message naming the problem,
and a refused swap changes nothing."""

import numpy as np
import pytest
import torch
from _hf_swap_helpers import attention, prune_attention
from torch import nn

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf.swap import SwapError, swap_attention, unswap_attention
from restorelcc.testing import tiny_model


@pytest.fixture
def model_24():
    return prune_attention(tiny_model("llama-mha"), "2:4")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "3:4"}, "unknown format '3:4'"),
        ({"backend": "fastest"}, "unknown backend 'fastest'"),
        ({"layers": [2]}, "layer 2 is not a decoder layer index in 0..1"),
        ({"layers": [-1]}, "layer -1 is not"),
        ({"layers": [1, 1]}, "name a layer twice"),
        ({"layers": [True]}, "layer True is not"),
        ({"layers": [0.0]}, "layer 0.0 is not"),
    ],
    ids=["format", "backend", "layer-range", "negative-layer", "duplicate-layer", "bool", "float"],
)
def test_bad_arguments(model_24, kwargs, message):
    with pytest.raises(ValueError, match=message):
        swap_attention(model_24, **kwargs)


def test_layer_indices_of_any_integer_type(model_24):
    report = swap_attention(model_24, layers=[np.int64(1), torch.tensor(0)])
    assert report.swapped_layers == [0, 1]


def test_unstructured_weights_do_not_fit_2_4_and_nothing_changes():
    model = prune_attention(tiny_model("llama-mha"), "2:4", layers=[0])
    prune_attention(model, "unstructured", layers=[1])
    with pytest.raises(
        SwapError,
        match=r"layer 1 self_attn\.q_proj does not fit the 2:4 "
        r"format: row \d+, columns",
    ):
        swap_attention(model, "2:4")
    assert type(attention(model, 0).q_proj) is nn.Linear  # layer 0 was fine, yet untouched
    assert {g.format for g in swap_attention(model, "bitmap").groups} == {"bitmap"}


def test_k_not_divisible_by_4_does_not_fit_2_4():
    model = prune_attention(tiny_model("llama-gqa", hidden_size=66), "unstructured")
    with pytest.raises(SwapError, match="K = 66 is not a multiple of 4"):
        swap_attention(model, "2:4")
    assert swap_attention(model).groups[0].format == "bitmap"  # auto falls back


def test_mixed_dense_and_sparse_qkv_is_refused():
    model = prune_attention(tiny_model("llama-gqa"), "2:4", names=("q_proj", "v_proj", "o_proj"))
    with pytest.raises(
        SwapError,
        match=r"layer 0 self_attn\.k_proj is not pruned \(0\.00% zeros, below min_sparsity "
        r"10%\) while layer 0 self_attn\.q_proj is",
    ):
        swap_attention(model)


def test_swapping_twice_is_refused(model_24):
    swap_attention(model_24, layers=[1])
    with pytest.raises(SwapError, match="layer 1 is already swapped"):
        swap_attention(model_24)
    swap_attention(model_24, layers=[0])  # the other layer still can be


def test_unswap_of_an_unswapped_model_is_refused(model_24):
    with pytest.raises(SwapError, match="no swapped attention layer"):
        unswap_attention(model_24)


def test_float64_weights_are_refused(model_24):
    attention(model_24, 0).v_proj.weight = nn.Parameter(
        torch.zeros(64, 64, dtype=torch.float64), requires_grad=False
    )
    with pytest.raises(SwapError, match=r"layer 0 self_attn\.v_proj has dtype torch.float64"):
        swap_attention(model_24)


def test_unknown_family_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        swap_attention(model)


def test_qkv_with_one_nearly_dense_matrix_is_refused():
    model = prune_attention(tiny_model("llama-gqa"), "2:4", names=("q_proj", "k_proj", "o_proj"))
    with torch.no_grad():
        attention(model, 0).v_proj.weight[0, :3] = 0  # a few exact zeros are not a pruning
    with pytest.raises(SwapError, match=r"layer 0 self_attn\.v_proj is not pruned \(0\.\d+% zeros"):
        swap_attention(model)


def test_work_that_needs_nn_linear_weights_refuses_a_swapped_model(model_24):
    from restorelcc import prune_model
    from restorelcc.hf.families import head_geometry
    from restorelcc.lcc.fold import fold_offsets

    g = head_geometry(model_24)
    swap_attention(model_24)
    swapped = r"self_attn\.(q|o)_proj is swapped for a packed sparse module(.*)unswap_attention"
    with pytest.raises(UnsupportedModelError, match=swapped):
        fold_offsets(model_24, torch.zeros(g.layers, g.heads * g.head_dim))
    with pytest.raises(UnsupportedModelError, match=swapped):
        prune_model(model_24, "magnitude", 0.5, progress=False)
