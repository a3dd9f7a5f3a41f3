"""A NaN or inf weight in a matrix to prune is refused before anything changes, naming the
weight and how many such values it holds: no score ranks it (``topk`` puts NaN above every
value), so it used to be kept and written to the checkpoint. Non-finite calibration inputs
name this block as a possible cause, not only earlier ones."""

import copy
import math

import pytest
import torch

from restorelcc.errors import NonFiniteError
from restorelcc.hf.families import decoder_layers
from restorelcc.prune import prune_model
from restorelcc.testing import tiny_model

TOKENS = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "method, pattern",
    [
        ("magnitude", "unstructured"),
        ("wanda", "unstructured"),
        ("sparsegpt", "2:4"),
        ("wanda", "heads"),
    ],
)
def test_a_non_finite_weight_is_refused_naming_it(method, pattern):
    model = tiny_model("llama-gqa")
    layers = decoder_layers(model)
    layers[1].mlp.down_proj.weight.data[0, :2] = torch.tensor([math.nan, math.inf])
    layers[0].self_attn.k_proj.weight.data[3, 5] = -math.inf
    before = copy.deepcopy(model)
    tokens = None if method == "magnitude" else TOKENS
    with pytest.raises(NonFiniteError) as error:
        prune_model(model, method, 0.5, pattern, tokens, progress=False)
    message = str(error.value)
    assert "not finite (NaN or inf) in 2 of the matrices" in message
    assert "layers.0.self_attn.k_proj (1 of its 3072 weights)" in message
    assert "layers.1.mlp.down_proj (2 of its 19200 weights)" in message
    for (name, a), b in zip(model.state_dict().items(), before.state_dict().values(), strict=True):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), name  # untouched


def test_non_finite_inputs_name_this_block_as_a_possible_cause():
    """A NaN norm weight (not a matrix to prune) of layer 0 spoils its own MLP's inputs."""
    model = tiny_model("llama-gqa")
    decoder_layers(model)[0].post_attention_layernorm.weight.data[0] = math.nan
    with pytest.raises(NonFiniteError, match="inputs of layers.0.mlp.gate_proj") as error:
        prune_model(model, "wanda", 0.5, calibration=TOKENS, progress=False)
    assert "a weight of this block or an earlier one that is not finite?" in str(error.value)
