import re
from pathlib import Path

import pytest
import torch

from restorelcc.errors import NotAModelError, RestoreLCCError, UnsupportedModelError
from restorelcc.eval.perplexity import stream_nll
from restorelcc.hf import families
from restorelcc.hf.families import NOT_A_MODEL
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


@pytest.mark.parametrize(
    "wrong,message",
    [
        ("pruned-24", "got str; 'pruned-24' is a name or path: load it first with load_model"),
        (
            Path("out/pruned"),
            "got PosixPath; 'out/pruned' is a name or path: load it first with load_model",
        ),
        ("pair", "got tuple; load_model returns (model, tokenizer): unpack it"),
        (torch.nn.Linear(2, 2), "got Linear"),
        (None, "got NoneType"),
    ],
    ids=["name", "path", "load-model-pair", "module", "none"],
)
def test_what_is_not_a_model_is_named_by_every_entry_point(wrong, message):
    """These had read as 'model family None is not supported'."""
    from restorelcc.hf.swap import swap_attention
    from restorelcc.prune import prune_model
    from restorelcc.testing import byte_tokenizer

    if wrong == "pair":
        wrong = (tiny_model("llama-gqa"), byte_tokenizer())
    expected = f"^{re.escape(NOT_A_MODEL)}, {re.escape(message)}"
    for entry_point in (
        families.family_of,
        families.head_geometry,
        swap_attention,
        lambda model: prune_model(model, "magnitude", 0.5, progress=False),
    ):
        with pytest.raises(NotAModelError, match=expected):
            entry_point(wrong)
    assert issubclass(NotAModelError, TypeError) and issubclass(NotAModelError, RestoreLCCError)


def test_a_config_is_a_model_for_what_reads_only_the_config():
    model = tiny_model("llama-gqa")
    assert families.family_of(model.config) is families.family_of(model)
    with pytest.raises(NotAModelError, match=f"^{re.escape(NOT_A_MODEL)}, got LlamaConfig$"):
        families.check_is_model(model.config)
