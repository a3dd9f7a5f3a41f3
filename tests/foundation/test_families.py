import pytest
import torch

from restorelcc.errors import UnsupportedModelError
from restorelcc.hf import families
from restorelcc.testing import TINY_SHAPES, tiny_model


@pytest.mark.parametrize("name", sorted(TINY_SHAPES))
def test_geometry_and_modules_match_the_model(name):
    model = tiny_model(name)
    _, layers, heads, kv_heads, head_dim, hidden = TINY_SHAPES[name]
    geo = families.head_geometry(model)
    assert (geo.layers, geo.heads, geo.kv_heads, geo.head_dim, geo.hidden_size) == (
        layers,
        heads,
        kv_heads,
        head_dim,
        hidden,
    )
    blocks = families.decoder_layers(model)
    assert len(blocks) == layers
    for name_in_block in families.family_of(model).block_linears:
        assert isinstance(families.block_linear(blocks[0], name_in_block), torch.nn.Linear)
    assert families.o_proj_of(model, layers - 1).in_features == heads * head_dim


def test_unknown_family_is_refused():
    class Config:
        model_type = "bert"

    with pytest.raises(UnsupportedModelError, match="'bert' is not supported"):
        families.family_of(Config())
