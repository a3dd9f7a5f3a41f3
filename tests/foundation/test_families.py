import pytest
import torch

from restorelcc.errors import UnsupportedModelError
from restorelcc.eval.perplexity import stream_nll
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


def test_a_model_spread_over_devices_is_named_not_run_part_way():
    """A device_map spreading a model (or offloading part of it) is refused by the device
    lookup every pipeline stage makes, naming the devices; here one layer on meta."""
    model = tiny_model("llama-gqa")
    assert families.model_device(model) == torch.device("cpu")
    model.model.layers[1].to("meta")
    with pytest.raises(UnsupportedModelError, match=r"on cpu, meta \(a device_map spreading"):
        families.model_device(model)
    with pytest.raises(UnsupportedModelError, match="restorelcc runs a model on one device"):
        stream_nll(model, torch.randint(0, 259, (64,)), window=32, stride=16)


def test_pruning_with_calibration_refuses_a_model_spread_over_devices():
    from restorelcc.prune import prune_model

    model = tiny_model("llama-gqa")
    model.model.layers[1].to("meta")
    with pytest.raises(UnsupportedModelError, match=r"on cpu, meta \(a device_map"):
        prune_model(model, "wanda", 0.5, calibration=torch.randint(0, 259, (2, 8)))
